"""Build README.md from nbs/index.ipynb without Quarto (nbdev's notebook processing + nbconvert's markdown export).

    python tools/readme.py          # write README.md
    python tools/readme.py --check  # exit 1 if README.md is out of date
"""
import argparse, json, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter
from nbdev.config import get_config
from nbdev.process import NBProcessor
from nbdev.processors import hide_, rm_export, clean_magics, strip_ansi, strip_hidden_metadata, nb2dict

HEADER = '<!-- Generated from nbs/{nb} by tools/readme.py: edit the notebook, not this file. -->\n\n'

def render(nb_path: Path) -> str:
    "Markdown for the notebook at `nb_path`, with nbdev's directives honoured (hidden cells dropped)."
    proc = NBProcessor(nb_path, procs=[strip_hidden_metadata, hide_, rm_export, clean_magics, strip_ansi], process=True)
    nb = nbformat.reads(json.dumps(nb2dict(proc.nb)), as_version=4)  # joins multi-line sources and outputs
    for c in nb.cells:
        c.pop('idx_', None); c.pop('directives_', None)
        if isinstance(c.source, list): c.source = ''.join(c.source)
    nb.metadata['language_info'] = {'name': 'python'}
    md, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    md = '\n'.join(l.rstrip() for l in md.splitlines()).strip() + '\n'
    while '\n\n\n' in md: md = md.replace('\n\n\n', '\n\n')
    return HEADER.format(nb=nb_path.name) + md

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='fail if README.md differs from the notebook')
    a = ap.parse_args()
    cfg = get_config()
    nb_path, out = cfg.nbs_path/cfg.get('readme_nb', 'index.ipynb'), cfg.config_path/'README.md'
    md = render(nb_path)
    if a.check:
        if not out.exists() or out.read_text(encoding='utf-8') != md:
            sys.exit(f'README.md is out of date with {nb_path.name}: run `python tools/readme.py` and commit it')
        print('README.md is up to date')
    else:
        out.write_text(md, encoding='utf-8'); print(f'wrote {out}')

if __name__ == '__main__': main()
