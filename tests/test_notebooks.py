"""Run every notebook in nbs/ top to bottom with nbdev's own runner, one test case each.

Cells flagged with a `tst_flags` flag from settings.ini (`slow`, `cuda`) are skipped unless the flag
is passed with `--nb-flags`, e.g. `pytest --nb-flags slow`. `#| eval: false` cells never run.
"""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook  # renamed so pytest does not collect it

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'

def notebooks():
    "Every notebook under nbs/, skipping hidden and underscore-prefixed files and folders."
    return sorted(p for p in NBS.rglob('*.ipynb')
                  if not any(part.startswith(('.', '_')) for part in p.relative_to(NBS).parts))

def test_there_are_notebooks():
    assert len(notebooks()) >= 4, f'expected the library notebooks under {NBS}'

@pytest.mark.parametrize('nb', notebooks(), ids=lambda p: str(p.relative_to(NBS)))
def test_notebook(nb, request):
    flags = set(get_config().tst_flags.replace('|', ' ').split()) - {''}
    force = set(request.config.getoption('nb_flags') or [])
    ok, secs = run_notebook(nb, skip_flags=sorted(flags - force), force_flags=sorted(force), showerr=True)
    assert ok, f'{nb.name} failed (the traceback is in the captured stderr above)'
