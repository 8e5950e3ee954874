"""Build the documentation site into `_docs/` from the notebooks in `nbs/`, offline and without Quarto.

    python tools/docs.py              # build _docs/ from the notebooks' saved outputs
    python tools/docs.py --if-stale   # do nothing when _docs/ was built from the same inputs
    python tools/docs.py --strict     # turn Sphinx warnings into a failure

How: nbdev's own docs pipeline (`nbdev.processors.FilterDefaults`, what `nbdev_docs` runs before Quarto) processes
each notebook: hidden and exported cells go, exported functions and classes get `show_doc` cells, backticked names
link to their entries. Its `exec_show_docs` is left out (it re-runs the notebook's imports and exported cells): the
`show_doc` cells are evaluated in the imported module, so no notebook code runs. This file does Quarto's part (front
matter -> title, show_doc -> API entry, cell options -> MyST-NB tags, links -> links inside the site) and renders the
pages with Sphinx, MyST-NB (notebooks not executed) and the Book theme. MathJax 3 comes from the `django-static-mathjax`
wheel, so maths renders offline; the search index is client-side. Page names are nbdev's (`05_hessian.ipynb` -> `hessian.html`).
"""
from __future__ import annotations
import argparse, ast, contextlib, hashlib, importlib, inspect, io, json, os, re, shutil, sys, tempfile, time, warnings
from itertools import groupby
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent/'docs_assets'
STAMP = '.metanb-docs.json'
MEDIA = {'.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp', '.mp4', '.webm'}
KERNEL = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
          'language_info': {'name': 'python', 'pygments_lexer': 'ipython3'}}

def page_name(rel: Path) -> str:
    "nbdev's page name for a notebook path relative to nbs/: numeric prefix dropped, lower case, no suffix."
    return (rel.parent/re.sub(r'^\d+[a-zA-Z0-9]*_', '', rel.name.lower())).with_suffix('').as_posix()

def discover(nbs: Path) -> dict[str, list[Path]]:
    "The notebooks nbdev documents, by navigation section: `''` holds index.ipynb then nbs/*.ipynb; then one list per sub-folder."
    from nbdev.doclinks import nbglob  # skips files and folders named `_*` or `.*`, as nbdev_docs does
    ps = sorted(nbglob(nbs, as_path=True), key=lambda p: (p.relative_to(nbs).parts[:-1], p.name != 'index.ipynb', p.name))
    names = [page_name(p.relative_to(nbs)) for p in ps]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups: raise SystemExit(f'two notebooks map to the same page name {dups}: rename one of them')
    secs = {'': []}
    for p in ps: secs.setdefault(p.relative_to(nbs).parts[0] if p.parent != nbs else '', []).append(p)
    return secs

# --- Quarto's part: nbdev's processed notebook as a MyST-NB notebook ---
class show_constants:
    "An nbdev processor: show_doc covers functions and classes, so an exported cell's public constants get a code box."
    def __init__(self, nb): self.nb = nb
    def begin(self):
        from execnb.nbio import mk_cell
        for i, c in reversed(list(enumerate(self.nb.cells))):
            if c.cell_type != 'code' or 'export' not in c.directives_: continue
            code = '\n'.join(ast.get_source_segment(c.source, n) for n in (c.parsed_() or []) if isinstance(n, (ast.Assign, ast.AnnAssign))
                             and any(isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store) and t.id[0] != '_' for t in ast.walk(n)))
            if code: self.nb.cells.insert(i+1, mk_cell(f':::{{container}} api-entry api-constants\n```python\n{code}\n```\n:::', 'markdown'))

class in_source_order:
    "An nbdev processor after add_show_docs, which inserts a cell's show_doc cells last name first: put them in source order."
    def __init__(self, nb): self.nb = nb
    def begin(self): self.nb.cells = [c for sd, g in groupby(self.nb.cells, lambda c: bool(c.get('has_sd'))) for c in list(g)[::-1 if sd else 1]]

def api_entry(md: str, ns: dict) -> str:
    "nbdev's show_doc markdown as an API entry: the heading, then a box with the source link, signature and docstring."
    m = re.match(r'\s*---\s*(?:\[source\]\((\S+?)\)\{[^}]*\}\s*)?(#+ (\S+))\n', md)
    if not m: return md
    body = md[m.end():].strip()
    if inspect.isclass(ns.get(m.group(3))):  # fastcore writes `def C(...)->None:` for a class
        body = body.replace('```python\ndef ', '```python\nclass ', 1).replace(')->None:\n```', '):\n```', 1)
    src = f'[source]({m.group(1)}){{.api-source}}\n\n' if m.group(1) else ''
    return f'{m.group(2)}\n\n:::{{container}} api-entry\n{src}{body}\n:::\n'

_re_callout = re.compile(r'^(\s*):::+\s*\{\s*\.callout-(note|warning|tip|important|caution)[^}]*\}\s*$', re.M)
_re_nblink = re.compile(r'\]\((?!\w+:)([^)\s#]+?)\.(?:ipynb|html)((?:#[^)\s]*)?)\)')

def process(path: Path, nbs: Path, pages: set, docs_url: str) -> dict:
    "The notebook at `path` through nbdev's docs processors, then as a MyST-NB notebook (a dict)."
    from execnb.nbio import read_nb, mk_cell, nb2dict
    from nbdev.config import get_config
    from nbdev.doclinks import NbdevLookup
    from nbdev.process import NBProcessor, extract_directives
    from nbdev.processors import FilterDefaults, add_show_docs, exec_show_docs
    from nbdev.showdoc import show_doc
    nb = read_nb(path)
    procs = [p for p in FilterDefaults().procs() if p is not exec_show_docs]
    proc = NBProcessor(nb=nb, procs=[show_constants, *procs[:procs.index(add_show_docs)+1], in_source_order, *procs[procs.index(add_show_docs)+1:]])
    mod = next((c.directives_['default_exp'][0] for c in nb.cells if 'default_exp' in c.directives_), None)
    try: ns = {**(vars(importlib.import_module(f'{get_config().lib_name}.{mod}')) if mod else {}), 'show_doc': show_doc}
    except Exception as e: raise SystemExit(f'{path}: cannot import its module ({e!r}); run nbdev_export and fix it') from e
    proc.process()
    nl, name = NbdevLookup(), page_name(path.relative_to(nbs))
    def link(m):  # to a notebook (`05_hessian.ipynb`) or a page (`hessian.html`): to its page's source in the site
        target = page_name(Path(os.path.normpath(os.path.relpath(path.parent/m.group(1), nbs)) + '.ipynb'))
        if target not in pages: return m.group(0)
        rel = os.path.relpath(target, os.path.dirname(name) or '.').replace(os.sep, '/')
        return f'](' + rel + '.ipynb' + m.group(2).replace('.', '') + ')'  # MyST's heading slugs drop the dots
    def md(s):
        s = s.replace(docs_url, os.path.relpath(nbs, path.parent).replace(os.sep, '/') + '/')  # nbdev's links to the published docs
        return _re_nblink.sub(link, _re_callout.sub(lambda m: f'{m.group(1)}:::{{{m.group(2)}}}', s))
    fm = getattr(nb, 'frontmatter_', {})
    title = f"# {fm.get('title') or Path(name).name}" + (f"\n\n{{.subtitle}}\n{fm['description']}" if fm.get('description') else '')
    cells = [mk_cell(title, 'markdown')]
    for c in nb.cells:
        if c.cell_type == 'markdown': c.source = md(c.source)
        elif c.cell_type == 'code':
            d = extract_directives(c, remove=False)  # the Quarto cell options, which nbdev leaves in the source
            c.source = re.sub(r'^(?:[ \t]*#\|.*(?:\n|$))+', '', c.source)
            if re.fullmatch(r'show_doc\(.*\)', c.source.strip()):  # an API entry: show_doc's markdown, linkified
                try: entry = eval(c.source, ns)._repr_markdown_()
                except Exception as e: raise SystemExit(f'{path}: {c.source.strip()} failed ({type(e).__name__}: {e})') from e
                cells.append(mk_cell(md(api_entry(nl.linkify(entry), ns)), 'markdown')); continue
            if d.get('output:') == ['false']: c.outputs = []
            if d.get('echo:') == ['false']: c.metadata['tags'] = ['remove-input']
        else: continue  # the front matter
        cells.append(c)
    for i, c in enumerate(cells): c.id = f'c{i}'
    return {'cells': nb2dict(cells), 'metadata': KERNEL, 'nbformat': 4, 'nbformat_minor': 5}

# --- Sphinx ---
CONF = '''\
# Generated by tools/docs.py: edit that file, not this one.
project, author, copyright = {title!r}, {author!r}, {copyright!r}
version = release = {version!r}
extensions = ["myst_nb", "sphinx.ext.mathjax"]
html_theme = "sphinx_book_theme"
html_title = {title!r}
html_static_path = ["_static"]
html_css_files = ["metanb.css"]
html_copy_source = html_show_sourcelink = False
html_last_updated_fmt = None
html_baseurl = {baseurl!r}
html_theme_options = {{
    "repository_url": {git_url!r}, "use_repository_button": bool({git_url!r}), "repository_branch": {branch!r},
    "path_to_docs": "nbs", "use_download_button": False, "use_fullscreen_button": False,
    "home_page_in_toc": True, "show_toc_level": 2, "navigation_with_keys": False,
}}
mathjax_path = "mathjax/tex-chtml-full.js"   # MathJax 3, served from the site itself (no CDN)
mathjax3_config = {{"tex": {{"tags": "ams"}}, "options": {{"enableMenu": False}}}}
nb_execution_mode = "off"                     # pages show what the notebooks saved
nb_ipywidgets_js = {{}}                        # no widget manager from a CDN; widgets fall back to text
nb_render_markdown_format = "myst"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "attrs_inline", "attrs_block", "deflist"]
myst_dmath_double_inline = True
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
pygments_style = "default"
exclude_patterns = []
'''

def _toctree(caption: str, names: list[str]) -> str:
    return '\n'.join(['```{toctree}', ':hidden:', ':maxdepth: 1', f':caption: {caption}', ''] + names + ['```'])

def _fingerprint(nbs: Path) -> str:
    h = hashlib.sha256()
    files = sorted(nbs.rglob('*.ipynb')) + sorted((ROOT/'metanb').rglob('*.py')) + [Path(__file__), ROOT/'settings.ini']
    for f in files + sorted(p for p in ASSETS.rglob('*') if p.is_file()):
        if '.ipynb_checkpoints' not in f.parts: h.update(str(f.relative_to(ROOT)).encode()); h.update(f.read_bytes())
    return h.hexdigest()

def _mathjax_dir() -> Path:
    try: import mathjax
    except ImportError: raise SystemExit('MathJax for offline maths is missing: pip install "django-static-mathjax>=3.2" '
                                         '(it is in the dev extras: pip install -e ".[dev]")')
    d = Path(mathjax.__file__).parent/'static'/'mathjax'/'es5'
    if not (d/'tex-chtml-full.js').exists(): raise SystemExit(f'MathJax not found under {d}: reinstall django-static-mathjax')
    return d

@contextlib.contextmanager
def _lock():
    "One build of this checkout at a time (two pytest-xdist workers, or a test beside `.ci/docs`)."
    try: import fcntl
    except ImportError: yield; return
    path = Path(tempfile.gettempdir())/f'metanb-docs-{hashlib.sha1(str(ROOT).encode()).hexdigest()[:12]}.lock'
    with open(path, 'w') as f: fcntl.flock(f, fcntl.LOCK_EX); yield  # closing the file releases the lock

def build(out: Path | None = None, if_stale: bool = False, strict: bool = False, quiet: bool = False, verbose: bool = False) -> Path:
    "Build the site into `out` (default: settings.ini's doc_path, `_docs`); returns the output folder (absolute)."
    from fastcore.xtras import working_directory
    out = None if out is None else Path(out).resolve()
    with working_directory(ROOT), _lock(): return _build(out, if_stale, strict, quiet, verbose)

def _build(out, if_stale, strict, quiet, verbose) -> Path:
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    cfg = get_config()
    nbs, out = Path(cfg.nbs_path), Path(out or cfg.doc_path).resolve()
    fp = _fingerprint(nbs)
    if if_stale and (out/STAMP).exists():
        with contextlib.suppress(ValueError, KeyError):
            if json.loads((out/STAMP).read_text())['inputs'] == fp:
                if not quiet: print(f'{out} is up to date')
                return out
    t0 = time.time()
    os.environ.setdefault('MPLBACKEND', 'Agg')
    secs = discover(nbs)
    rels = {page_name(p.relative_to(nbs)): p.relative_to(nbs).as_posix() for ps in secs.values() for p in ps}
    if 'index' not in rels: raise SystemExit(f'{nbs}/index.ipynb is missing: it is the home page')
    docs_url = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/') + '/'
    with tempfile.TemporaryDirectory(prefix='metanb-docs-') as tmp:
        tmp = Path(tmp); src, html = tmp/'src', tmp/'html'
        nbds = {page_name(p.relative_to(nbs)): process(p, nbs, set(rels), docs_url) for ps in secs.values() for p in ps}
        # the navigation: hidden toctrees on the home page, in notebook order
        trees = [_toctree((sec or 'library').replace('_', ' ').capitalize(), nms) for sec, ps in secs.items()
                 if (nms := [n for p in ps if (n := page_name(p.relative_to(nbs))) != 'index'])]
        nbds['index']['cells'].append({'cell_type': 'markdown', 'metadata': {}, 'source': '\n\n'.join(trees), 'id': 'toc'})
        for nm, nbd in nbds.items():
            (src/nm).parent.mkdir(parents=True, exist_ok=True)
            (src/f'{nm}.ipynb').write_text(json.dumps(nbd, indent=1), encoding='utf-8')
        for f in nbglob(nbs, file_glob='*', as_path=True):  # images that markdown cells refer to by relative path
            if f.suffix.lower() in MEDIA: (src/f.relative_to(nbs)).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, src/f.relative_to(nbs))
        shutil.copytree(ASSETS, src/'_static')
        mj, mjs = _mathjax_dir(), src/'_static'/'mathjax'
        mjs.mkdir(); shutil.copy2(mj/'tex-chtml-full.js', mjs/'tex-chtml-full.js')
        for sub in ['output/chtml/fonts/woff-v2', 'input/tex/extensions', 'ui', 'a11y']:
            if (mj/sub).exists(): shutil.copytree(mj/sub, mjs/sub)
        (src/'conf.py').write_text(CONF.format(title=cfg.get('title', cfg.lib_name), baseurl=docs_url, branch=cfg.get('branch', 'main'),
            **{k: cfg.get(k, '') for k in ('author', 'copyright', 'version', 'git_url')}), encoding='utf-8')
        warns = [_where(w, src, rels) for w in _sphinx(src, html, tmp/'doctrees', verbose)]
        if warns: print('\n'.join(warns), file=sys.stderr)
        errs = [w for w in warns if re.search(r'\b(ERROR|CRITICAL|SEVERE)\b', w)]
        if errs: raise SystemExit(f'the docs build reported the {len(errs)} error(s) above')
        if strict and warns: raise SystemExit(f'--strict: the docs build gave the {len(warns)} warning(s) above; fix them in the notebooks named')
        for f in (html/'_static').rglob('*.html'): f.unlink()  # the themes' Jinja macro files: not pages
        if (html/'_sources').is_dir() and not any((html/'_sources').iterdir()): (html/'_sources').rmdir()
        (html/'.nojekyll').write_text('')
        (html/STAMP).write_text(json.dumps({'inputs': fp, 'pages': len(nbds)}))
        new, old = out.with_name(out.name + '.new'), out.with_name(out.name + '.old')
        for d in (new, old): shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(html, new)
        if out.exists(): out.rename(old)   # swap, so a server never sees a half-written site
        new.rename(out); shutil.rmtree(old, ignore_errors=True)
    if not quiet: print(f'built {len(nbds)} pages into {out}/ in {time.time()-t0:.1f} s' + (f' ({len(warns)} warnings above)' if warns else ''))
    return out

def _sphinx(src: Path, html: Path, doctrees: Path, verbose: bool) -> list[str]:
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace, patch_docutils
    from sphinx.util.console import nocolor
    nocolor(); warn = io.StringIO()
    with patch_docutils(src), docutils_namespace(), warnings.catch_warnings():
        for w in (DeprecationWarning, PendingDeprecationWarning, FutureWarning): warnings.simplefilter('ignore', w)
        app = Sphinx(str(src), str(src), str(html), str(doctrees), 'html', status=sys.stdout if verbose else io.StringIO(),
                     warning=warn, freshenv=True, verbosity=0, keep_going=True)
        app.build(force_all=True)
        if app.statuscode: raise SystemExit(f'Sphinx failed:\n{warn.getvalue()}')
    return [l for l in warn.getvalue().splitlines() if l.strip()]

def _where(msg: str, src: Path, rels: dict) -> str:
    "Point a Sphinx message at the source notebook instead of the temporary processed copy."
    return re.sub(re.escape(str(src) + os.sep) + r'(.+?)\.ipynb(?::\d+)?:',
                  lambda m: f'nbs/{rels[m.group(1)]}:' if m.group(1) in rels else m.group(0), msg)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, help='output folder (default: doc_path in settings.ini, `_docs`)')
    ap.add_argument('--if-stale', action='store_true', help='skip the build when the output is up to date')
    ap.add_argument('--strict', action='store_true', help='fail on any Sphinx warning')
    ap.add_argument('-v', '--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args()
    build(a.out, if_stale=a.if_stale, strict=a.strict, verbose=a.verbose)

if __name__ == '__main__': main()
