"""Every public function and class of metanb has a one-line docstring: it is the summary line of its
API reference entry on the docs site (tools/docs.py renders nbdev's show_doc for each name in `__all__`)."""
import importlib, inspect, pkgutil
import pytest
import metanb

def _modules():
    return sorted(m.name for m in pkgutil.walk_packages(metanb.__path__, 'metanb.') if not m.name.endswith('._modidx'))

@pytest.mark.parametrize('modname', _modules())
def test_public_names_have_one_line_docstrings(modname):
    mod = importlib.import_module(modname)
    bad = []
    for nm in getattr(mod, '__all__', []):
        o = getattr(mod, nm, None)
        if not (inspect.isfunction(o) or inspect.isclass(o)) or getattr(o, '__module__', None) != modname: continue
        doc = inspect.cleandoc(o.__doc__ or '')
        if inspect.isclass(o) and doc.startswith(f'{o.__name__}('): doc = ''   # a dataclass's generated signature
        if not doc: bad.append(f'{nm}: no docstring')
        elif len(doc.splitlines()) > 1: bad.append(f'{nm}: docstring is {len(doc.splitlines())} lines (keep one; details go in markdown)')
    assert not bad, f'{modname}: ' + '; '.join(bad) + ' -- fix the exported cell in its notebook and run nbdev_export'
