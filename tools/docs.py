"""Build the documentation site into `_docs/` from the notebooks in `nbs/`, offline and without Quarto.

    python tools/docs.py              # build _docs/ from the notebooks' saved outputs
    python tools/docs.py --execute    # run every notebook first (slow), then build
    python tools/docs.py --if-stale   # do nothing when _docs/ was built from the same inputs
    python tools/docs.py --strict     # turn Sphinx warnings into a failure

How: each notebook goes through nbdev's own processors (as `tools/readme.py` does): `#| hide` cells
are dropped, `#| export` cells are replaced by their API reference (nbdev's `show_doc` rendering:
signature with inline parameter comments, docstring, parameter table), directive lines are removed.
The processed notebooks are written to a temporary folder and rendered by Sphinx with MyST-NB
(never executing them) and the Book theme. MathJax 3 is copied from the `django-static-mathjax`
wheel into the site, so pages render maths with no network; Sphinx's search index is client-side.
Pages are named as nbdev names them (`nbs/05_hessian.ipynb` -> `hessian.html`).
"""
from __future__ import annotations
import argparse, ast, contextlib, hashlib, importlib, inspect, io, json, os, re, shutil, sys, tempfile, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent/'docs_assets'
STAMP = '.metanb-docs.json'
MEDIA = {'.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp', '.mp4', '.webm'}
SUBDIR_ORDER = ['tutorials']  # sub-folders of nbs/ that come first in the navigation, in this order

# ---------------------------------------------------------------------------------------------
# Which notebooks, in which order, under which page names
# ---------------------------------------------------------------------------------------------
def _visible(p: Path, base: Path) -> bool:
    return not any(part.startswith(('.', '_')) for part in p.relative_to(base).parts)

def page_name(rel: Path) -> str:
    "nbdev's page name for a notebook path relative to nbs/: numeric prefix dropped, lower case, no suffix."
    return str(rel.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', rel.name.lower())).with_suffix('')).replace(os.sep, '/')

def discover(nbs: Path) -> dict[str, list[Path]]:
    "Notebooks by navigation section: `''` holds index.ipynb then nbs/*.ipynb; then one list per sub-folder."
    top = sorted(p for p in nbs.glob('*.ipynb') if p.name != 'index.ipynb' and _visible(p, nbs))
    secs = {'': ([nbs/'index.ipynb'] if (nbs/'index.ipynb').exists() else []) + top}
    subs = sorted((d for d in nbs.iterdir() if d.is_dir() and _visible(d, nbs)),
                  key=lambda d: (SUBDIR_ORDER.index(d.name) if d.name in SUBDIR_ORDER else len(SUBDIR_ORDER), d.name))
    for d in subs:
        found = sorted(p for p in d.rglob('*.ipynb') if _visible(p, nbs))
        if found: secs[d.name] = found
    names = [page_name(p.relative_to(nbs)) for ps in secs.values() for p in ps]
    dups = {n for n in names if names.count(n) > 1}
    if dups: raise SystemExit(f'two notebooks map to the same page name {sorted(dups)}: rename one of them')
    return secs

# ---------------------------------------------------------------------------------------------
# API reference entries (nbdev's show_doc rendering, from the imported module: nothing is executed)
# ---------------------------------------------------------------------------------------------
def _code(s: str) -> str:
    "`s` as inline code, with a fence longer than any run of backticks inside."
    if not s: return ''
    n = max((len(m) for m in re.findall(r'`+', s)), default=0) + 1
    pad = ' ' if s.startswith('`') or s.endswith('`') else ''
    return f"{'`'*n}{pad}{s}{pad}{'`'*n}"

def _fmt_anno(a) -> str:
    if a is inspect.Parameter.empty: return ''
    if isinstance(a, str): return a
    return inspect.formatannotation(a).replace('NoneType', 'None')

def _source_link(sym, cfg) -> str:
    try:
        f = Path(inspect.getsourcefile(inspect.unwrap(sym))).resolve()
        line = inspect.getsourcelines(inspect.unwrap(sym))[1]
        rel = f.relative_to(ROOT).as_posix()
    except (TypeError, OSError, ValueError): return ''
    git_url = cfg.get('git_url', '').rstrip('/')
    return f"{git_url}/blob/{cfg.get('branch', 'main')}/{rel}#L{line}" if git_url else ''

def _param_table(sym) -> str:
    "A MyST list-table of the parameters (type, default, inline comment), like nbdev's classic show_doc."
    from fastcore.docments import docments
    try: dm = docments(sym, full=True)
    except Exception: return ''
    rows = []
    for nm, d in dm.items():
        if nm in ('self', 'cls'): continue
        anno, default, doc = d.get('anno', inspect.Parameter.empty), d.get('default', inspect.Parameter.empty), d.get('docment') or ''
        if nm == 'return':
            if anno is inspect.Parameter.empty and not doc: continue
            nm, default = '**Returns**', inspect.Parameter.empty
        else:
            kind = {inspect.Parameter.VAR_POSITIONAL: '*', inspect.Parameter.VAR_KEYWORD: '**'}.get(d.get('kind'), '')
            nm = _code(kind + nm)
        dflt = '' if default is inspect.Parameter.empty else _code(getattr(default, '__name__', None) or repr(default))
        rows.append((nm, _code(_fmt_anno(anno)), dflt, ' '.join(doc.split())))
    if not any(r[3] for r in rows): return ''  # as nbdev: a table only when some parameter has an inline comment
    out = ['```{list-table}', ':header-rows: 1', ':class: api-params', '', '* - ', '  - Type', '  - Default', '  - Details']
    for r in rows: out += [f'* - {r[0]}'] + [f'  - {c}' for c in r[1:]]
    return '\n'.join(out + ['```'])

API_WARNINGS: list[str] = []  # problems met while rendering API entries (reported with Sphinx's warnings)

def api_label(name: str, cfg) -> str: return f"{cfg.get('lib_name', 'metanb')}-api-{name.lower()}"

def api_entry(sym, name: str, cfg, level: int = 3, src: str | None = None, label: bool = False) -> str:
    "Markdown for one API reference entry: heading, source link, signature, docstring, parameter table."
    from fastcore.docments import MarkdownRenderer
    label = f"({api_label(name, cfg)})=\n" if label else ''  # the target of `name` links from any page
    head = f"{label}{'#'*level} {name}\n"  # myst_heading_anchors also gives it the id `top_eigenvalue`, as nbdev's links expect
    if src is not None: body = f'```python\n{src}\n```'  # a constant or type alias: its definition
    else:
        try: body = MarkdownRenderer(sym, name=name, title_level=level)._repr_markdown_()
        except Exception as e:  # e.g. source unavailable: signature and docstring without the inline comments
            API_WARNINGS.append(f'WARNING: API entry for {name}: show_doc failed ({type(e).__name__}: {e}); plain signature used')
            try: sig = f'{name.rsplit(".", 1)[-1]}{inspect.signature(sym)}'
            except (TypeError, ValueError): sig = name
            doc = inspect.getdoc(sym) or ''
            body = f'```python\ndef {sig}:\n```' + (f'\n\n*{doc.splitlines()[0]}*' if doc else '')
        if inspect.isclass(inspect.unwrap(sym)):  # fastcore writes `def C(...)->None:` for a class
            body = body.replace('```python\ndef ', '```python\nclass ', 1).replace(')->None:\n```', '):\n```', 1)
        table = _param_table(sym)
        if table: body += '\n\n' + table
    link = _source_link(sym, cfg) if src is None else ''
    link = f'[source]({link}){{.api-source}}\n\n' if link else ''
    return f'{head}\n:::{{container}} api-entry\n{link}{body}\n:::\n'

def _defs(source: str) -> list[tuple[str, str, object]]:
    "(kind, name, node) for the top-level definitions in an exported cell, in order."
    try: tree = ast.parse(source)
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            patched = [d for d in node.decorator_list if (getattr(d, 'id', None) or getattr(d, 'attr', None)) == 'patch']
            if patched and node.args.args and node.args.args[0].annotation is not None:  # fastcore @patch: Class.method
                cls = ast.unparse(node.args.args[0].annotation)
                out.append(('patch', f'{cls}.{node.name}', node)); continue
            out.append(('def', node.name, node))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            tgts = node.targets if isinstance(node, ast.Assign) else [node.target]
            out += [('assign', t.id, node) for t in tgts if isinstance(t, ast.Name)]
    return out

_re_fence = re.compile(r'^\s*(`{3,}|~{3,})')

def linkify(md: str, names: dict, modules: dict, here: str, cfg) -> str:
    """Turn `name`, `name()`, `metanb.mod.name` into links to their API entries and `metanb.mod` into a link to
    its page, as nbdev does; code blocks and headings are left alone. `here` is the current page's name."""
    if not names and not modules: return md
    lib = re.escape(cfg.get('lib_name', 'metanb'))
    alts = '|'.join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or '(?!)'
    pat = re.compile(r'(?<![\[\w`])`((?:' + lib + r'(?:\.\w+)*\.)?(' + alts + r')(\(\))?|' + lib + r'(?:\.\w+)+)`(?![`\]])')
    def _sub(m):
        whole, nm = m.group(1), m.group(2)
        if nm: return f'[`{whole}`](#{api_label(nm, cfg)})'
        page = modules.get(whole)
        if page is None: return m.group(0)
        return f'[`{whole}`]({os.path.relpath(page, os.path.dirname(here) or ".").replace(os.sep, "/")}.ipynb)'
    out, fence = [], None
    for line in md.split('\n'):
        f = _re_fence.match(line)
        if f:
            if fence is None: fence = f.group(1)
            elif f.group(1).startswith(fence[0]) and len(f.group(1)) >= len(fence): fence = None
            out.append(line); continue
        if fence is None and not line.lstrip().startswith('#') and not line.startswith('('): line = pat.sub(_sub, line)
        out.append(line)
    return '\n'.join(out)

# ---------------------------------------------------------------------------------------------
# Notebook processing (nbdev's processors plus the directives Quarto would honour)
# ---------------------------------------------------------------------------------------------
_re_callout = re.compile(r'^(\s*):::+\s*\{\s*\.callout-(note|warning|tip|important|caution)[^}]*\}\s*$', re.M)
_re_nblink = re.compile(r'\]\((?!\w+:)([^)\s#]+?)\.(?:ipynb|html)((?:#[^)\s]*)?)\)')

class Page:
    "One notebook turned into a processed notebook for MyST-NB."
    def __init__(self, path: Path, nbs: Path, cfg, pages: dict[str, str]):
        self.path, self.nbs, self.cfg, self.pages = path, nbs, cfg, pages
        self.rel = path.relative_to(nbs)
        self.name = page_name(self.rel)
        self.registry, self.module = {}, None

    def _link(self, m):
        "Rewrite a relative link to a notebook (`05_hessian.ipynb`, `hessian.html`) to its page's source."
        target = (self.path.parent/m.group(1)).resolve()
        for cand in (target.with_suffix('.ipynb'), target):
            try: rel = cand.with_suffix('.ipynb').relative_to(self.nbs.resolve())
            except ValueError: continue
            nm = self.pages.get(page_name(rel)) or self.pages.get(str(rel.with_suffix('')).replace(os.sep, '/'))
            if nm:
                here = Path(self.name).parent
                return f']({os.path.relpath(nm, here).replace(os.sep, "/")}.ipynb{m.group(2)})'
        return m.group(0)

    def markdown(self, src: str, first: bool) -> str:
        src = _re_callout.sub(lambda m: f'{m.group(1)}:::{{{m.group(2)}}}', src)
        src = _re_nblink.sub(self._link, src)
        if first:  # nbdev's title cell: `# title` then `> subtitle` (one or more `>` lines)
            m = re.match(r'\s*# (.+)\n(?:\s*\n)*((?:>[^\n]*(?:\n|$))+)', src)
            if m:
                sub = ' '.join(l.lstrip('>').strip() for l in m.group(2).splitlines())
                src = f'# {m.group(1).strip()}\n\n{{.subtitle}}\n{sub}\n' + src[m.end():]
        return src

    def _entry(self, sym, name, **kw) -> str:
        "An API entry; the first page to document `name` gets its link target."
        first = name not in self.registry
        if first: self.registry[name] = self.name
        return api_entry(sym, name, self.cfg, label=first, **kw)

    def process(self, module_cache: dict, registry: dict, execute: bool = False) -> dict:
        self.registry = registry
        from nbdev.process import NBProcessor
        from nbdev.processors import _default_exp
        proc = NBProcessor(self.path, procs=[])
        nb = proc.nb
        if execute: _execute(nb, self.path, self.cfg)
        modname = _default_exp(nb)
        mod = None
        if modname:
            full = f"{self.cfg.get('lib_name', 'metanb')}.{modname}"
            if full not in module_cache:
                try: module_cache[full] = importlib.import_module(full)
                except Exception as e:
                    raise SystemExit(f'{self.rel}: cannot import its module {full} to render the API reference ({e!r}); '
                                     'run `nbdev_export` and fix the import error') from e
            mod, self.module = module_cache[full], full
        cells, shown, self.origin = [], set(), []
        # as nbdev's add_show_docs: a name with its own `show_doc(name)` cell gets no automatic entry
        self.explicit = {m.split(',')[0].strip() for c in nb.cells if c.cell_type == 'code'
                         for m in re.findall(r'^show_doc\(([^\n]*)\)\s*$', c.source, re.M)}
        public = list(getattr(mod, '__all__', []) or []) if mod else []
        first_md = next((i for i, c in enumerate(nb.cells) if c.cell_type == 'markdown'), None)
        for i, c in enumerate(nb.cells):
            new = self._cell(c, i == first_md, mod, public, shown)
            cells += new; self.origin += [i] * len(new)
        if mod is not None:  # exported names no cell defined (made by a loop, a re-export, ...): an API section
            rest = [n for n in public if n not in shown]
            if rest:
                cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': '## Also exported'})
                for n in rest:
                    cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': self._entry(getattr(mod, n), n)})
                    shown.add(n)
                self.origin += [None] * (len(rest) + 1)
        if not any(c['cell_type'] == 'markdown' and re.search(r'^# \S', c['source'], re.M) for c in cells):
            cells.insert(0, {'cell_type': 'markdown', 'metadata': {}, 'source': f'# {Path(self.name).name}'})  # a page needs a title
            self.origin.insert(0, None)
        nbd = {'cells': cells, 'nbformat': 4, 'nbformat_minor': 5,
               'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                            'language_info': {'name': 'python', 'pygments_lexer': 'ipython3'}}}
        for i, c in enumerate(nbd['cells']): c['id'] = f'c{i}'
        return nbd

    def _cell(self, c, first_md: bool, mod, public, shown) -> list[dict]:
        "The processed cells that stand for notebook cell `c` (none when hidden)."
        d = c.directives_ or {}
        if 'hide' in d or d.get('include:', [''])[0].lower() == 'false': return []
        if c.cell_type == 'markdown':
            md = {'cell_type': 'markdown', 'metadata': {}, 'source': self.markdown(c.source, first_md)}
            if c.get('attachments'): md['attachments'] = dict(c.attachments)
            return [md]
        if c.cell_type != 'code': return []
        src = c.source
        if 'nbdev_export' in src and len(src.strip().splitlines()) <= 2: return []
        exported = {'export', 'exports'} & set(d)
        if exported or 'exporti' in d or 'default_exp' in d:  # as nbdev: exported code shows as its API entries
            out = [self._code_cell(c, src, d)] if 'exports' in d and src.strip() else []
            return out + (self._api_cells(src, mod, public, shown) if exported and mod is not None else [])
        if re.fullmatch(r'\s*(show_doc\([^\n]*\)\s*)+', src) and mod is not None:
            md = self._show_doc_cells(src, mod, shown)
            if md: return md
        cc = self._code_cell(c, src, d)
        return [cc] if cc['source'] or cc['outputs'] else []

    def where(self, line: int) -> str:
        "A MyST-NB line number in the processed notebook (`(cell+1)*10000 + line`) as a place in the source notebook."
        cell, ln = divmod(line, 10000)
        i = self.origin[cell - 1] if 0 < cell <= len(self.origin) else None
        return f'nbs/{self.rel.as_posix()}' + (f' cell {i} (line {ln})' if i is not None else ' (generated API section)')

    def _code_cell(self, c, src, d) -> dict:
        from nbdev.processors import _re_ansi_escape
        from nbdev.processors import _magics_pattern
        src = _magics_pattern.sub('', src).strip()
        src = '\n'.join(l for l in src.splitlines() if not re.search(r'#\|\s*hide_line\s*$', l))
        outs = [] if d.get('output:', [''])[0].lower() == 'false' else [dict(o) for o in c.get('outputs', [])]
        for o in outs:
            if o.get('output_type') == 'stream':
                t = ''.join(o.get('text', ''))
                o['text'] = _re_ansi_escape.sub('', t)
            if o.get('output_type') == 'error':
                o['traceback'] = [_re_ansi_escape.sub('', t) for t in o.get('traceback', [])]
        tags = ['remove-input'] if d.get('echo:', [''])[0].lower() == 'false' else []
        return {'cell_type': 'code', 'metadata': {'tags': tags} if tags else {}, 'source': src,
                'outputs': outs, 'execution_count': c.get('execution_count')}

    def _api_cells(self, src, mod, public, shown) -> list[dict]:
        "API entries for the names an exported cell defines: one per function/class, one box per run of constants."
        out, consts = [], []
        def flush():
            if not consts: return
            anchors = ''.join(f'<span id="{nm.lower()}"></span>' for nm, _ in consts)
            code = '\n'.join(dict.fromkeys(seg for _, seg in consts))
            out.append(f'{anchors}\n\n:::{{container}} api-entry api-constants\n```python\n{code}\n```\n:::\n')
            consts.clear()
        for kind, nm, node in _defs(src):
            if nm in shown or nm in self.explicit: continue
            if kind == 'patch':
                cls, meth = nm.split('.', 1)
                sym = getattr(getattr(mod, cls, None), meth, None)
                if sym is None or meth.startswith('_'): continue
                flush(); out.append(self._entry(sym, nm)); shown.add(nm); continue
            if nm not in public: continue
            if kind == 'assign':
                seg = ast.get_source_segment(src, node)
                consts.append((nm, seg))
            else: flush(); out.append(self._entry(getattr(mod, nm), nm))
            shown.add(nm)
        flush()
        return [{'cell_type': 'markdown', 'metadata': {}, 'source': s} for s in out]

    def _show_doc_cells(self, src, mod, shown) -> list[dict]:
        "Explicit `show_doc(X.meth)` cells: render them from the imported module (no execution)."
        out = []
        for expr in re.findall(r'show_doc\(([^\n]*)\)\s*$', src, re.M):
            arg = expr.split(',')[0].strip()
            try: sym = eval(arg, vars(mod))  # a dotted name from the notebook's own module
            except Exception: return []
            nm = re.search(r"name\s*=\s*['\"]([^'\"]+)", expr)
            nm = nm.group(1) if nm else arg
            out.append(self._entry(sym, nm, level=4 if '.' in nm else 3)); shown.add(nm)
        return [{'cell_type': 'markdown', 'metadata': {}, 'source': s} for s in out]

def _execute(nb, path: Path, cfg):
    "Run the notebook in place (opt-in `--execute`) the way nbdev_test does, skipping flagged cells."
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    flags = set(cfg.get('tst_flags', '').split('|')) - {''}
    def _no_eval(cell):
        if cell.cell_type != 'code': return True
        if 'nbdev_export' + '(' in cell.source: return True
        d = getattr(cell, 'directives_', {}) or {}
        if d.get('eval:', [''])[0].lower() == 'false': return True
        return flags & d.keys()
    k = CaptureShell(path)
    try:
        with working_directory(path.parent): k.run_all(nb, exc_stop=True, preproc=_no_eval)
    except Exception as e:
        print(k.prettytb(fname=path), file=sys.stderr)
        raise SystemExit(f'--execute: {path} failed ({type(e).__name__}: {e}); fix the notebook or build without --execute') from e

# ---------------------------------------------------------------------------------------------
# Sphinx
# ---------------------------------------------------------------------------------------------
CONF = '''\
# Generated by tools/docs.py: edit that file, not this one.
project = {title!r}
author = {author!r}
copyright = {copyright!r}
version = release = {version!r}
extensions = ["myst_nb", "sphinx.ext.mathjax"]
html_theme = "sphinx_book_theme"
html_title = {title!r}
html_static_path = ["_static"]
html_css_files = ["metanb.css"]
html_copy_source = False
html_show_sourcelink = False
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

def _fingerprint(nbs: Path, execute: bool) -> str:
    h = hashlib.sha256(f'execute={execute}'.encode())
    files = sorted(nbs.rglob('*.ipynb')) + sorted((ROOT/'metanb').rglob('*.py')) + [Path(__file__), ROOT/'settings.ini']
    files += sorted(p for p in ASSETS.rglob('*') if p.is_file())
    for f in files:
        if '.ipynb_checkpoints' in f.parts: continue
        h.update(str(f.relative_to(ROOT)).encode()); h.update(f.read_bytes())
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
    with open(path, 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try: yield
        finally: fcntl.flock(f, fcntl.LOCK_UN)

def build(out: Path | None = None, execute: bool = False, if_stale: bool = False, strict: bool = False,
          quiet: bool = False, verbose: bool = False) -> Path:
    "Build the site into `out` (default: settings.ini's doc_path, `_docs`); returns the output folder (absolute)."
    from fastcore.xtras import working_directory
    out = None if out is None else Path(out).resolve()
    with working_directory(ROOT), _lock(): return _build(out, execute, if_stale, strict, quiet, verbose)

def _build(out, execute, if_stale, strict, quiet, verbose) -> Path:
    from nbdev.config import get_config
    cfg = get_config()
    nbs = Path(cfg.nbs_path)
    out = Path(out or cfg.doc_path).resolve()
    fp = _fingerprint(nbs, execute)
    if if_stale and (out/STAMP).exists():
        try:
            if json.loads((out/STAMP).read_text())['inputs'] == fp:
                if not quiet: print(f'{out} is up to date')
                return out
        except (ValueError, KeyError): pass
    t0 = time.time()
    API_WARNINGS.clear()
    os.environ.setdefault('MPLBACKEND', 'Agg')
    secs = discover(nbs)
    pages = {page_name(p.relative_to(nbs)): page_name(p.relative_to(nbs)) for ps in secs.values() for p in ps}
    if 'index' not in pages: raise SystemExit(f'{nbs}/index.ipynb is missing: it is the home page')
    with tempfile.TemporaryDirectory(prefix='metanb-docs-') as tmp:
        tmp = Path(tmp); src = tmp/'src'; src.mkdir()
        mods, nav, by_name, registry, modpages, n = {}, {}, {}, {}, {}, 0
        for sec, paths in secs.items():
            for p in paths:
                pg = Page(p, nbs, cfg, pages)
                nbd = pg.process(mods, registry, execute=execute)
                if pg.module: modpages.setdefault(pg.module, pg.name)
                dest = src/f'{pg.name}.ipynb'; dest.parent.mkdir(parents=True, exist_ok=True)
                nav.setdefault(sec, []).append((pg.name, nbd)); by_name[pg.name] = pg
                n += 1
        # the navigation: hidden toctrees on the home page, in notebook order
        index_nb = nav[''][0][1]
        lib = [nm for nm, _ in nav[''][1:]]
        trees = []
        if lib: trees.append(_toctree('Library', lib))
        for sec, items in nav.items():
            if sec: trees.append(_toctree(sec.replace('_', ' ').capitalize(), [nm for nm, _ in items]))
        index_nb['cells'].append({'cell_type': 'markdown', 'metadata': {}, 'source': '\n\n'.join(trees), 'id': 'toc'})
        for items in nav.values():
            for nm, nbd in items:
                for c in nbd['cells']:
                    if c['cell_type'] == 'markdown': c['source'] = linkify(c['source'], registry, modpages, nm, cfg)
                (src/f'{nm}.ipynb').write_text(json.dumps(nbd, indent=1), encoding='utf-8')
        for f in nbs.rglob('*'):  # images that markdown cells refer to by relative path
            if f.suffix.lower() in MEDIA and f.is_file() and _visible(f, nbs):
                (src/f.relative_to(nbs)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, src/f.relative_to(nbs))
        static = src/'_static'; static.mkdir()
        for f in ASSETS.iterdir():
            if f.is_file(): shutil.copy2(f, static/f.name)
        mj = _mathjax_dir()
        (static/'mathjax').mkdir()
        shutil.copy2(mj/'tex-chtml-full.js', static/'mathjax'/'tex-chtml-full.js')
        for sub in ['output/chtml/fonts/woff-v2', 'input/tex/extensions', 'ui', 'a11y']:
            if (mj/sub).exists(): shutil.copytree(mj/sub, static/'mathjax'/sub)
        baseurl = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/') + '/'
        (src/'conf.py').write_text(CONF.format(
            title=cfg.get('title', cfg.lib_name), author=cfg.get('author', ''), copyright=cfg.get('copyright', ''),
            version=cfg.get('version', ''), git_url=cfg.get('git_url', ''), branch=cfg.get('branch', 'main'),
            baseurl=baseurl), encoding='utf-8')
        html = tmp/'html'
        warns = API_WARNINGS + [_where(w, src, by_name) for w in _sphinx(src, html, tmp/'doctrees', verbose)]
        if warns: print('\n'.join(warns), file=sys.stderr)
        errs = [w for w in warns if re.search(r'\b(ERROR|CRITICAL|SEVERE)\b', w)]
        if errs: raise SystemExit(f'the docs build reported the {len(errs)} error(s) above')
        if strict and warns: raise SystemExit(f'--strict: the docs build gave the {len(warns)} warning(s) above; fix them in the notebooks named')
        for f in (html/'_static').rglob('*.html'): f.unlink()  # the themes' Jinja macro files: not pages
        if (html/'_sources').is_dir() and not any((html/'_sources').iterdir()): (html/'_sources').rmdir()
        (html/'.nojekyll').write_text('')
        (html/STAMP).write_text(json.dumps({'inputs': fp, 'pages': n, 'execute': execute}))
        new, old = out.with_name(out.name + '.new'), out.with_name(out.name + '.old')
        for d in (new, old): shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(html, new)
        if out.exists(): out.rename(old)   # swap, so a server never sees a half-written site
        new.rename(out); shutil.rmtree(old, ignore_errors=True)
    if not quiet: print(f'built {n} pages into {out}/ in {time.time()-t0:.1f} s'
                        + (f' ({len(warns)} warnings above)' if warns else ''))
    return out

def _sphinx(src: Path, html: Path, doctrees: Path, verbose: bool) -> list[str]:
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace, patch_docutils
    from sphinx.util.console import nocolor
    nocolor()
    warn = io.StringIO()
    status = sys.stdout if verbose else io.StringIO()
    with patch_docutils(src), docutils_namespace(), warnings.catch_warnings():
        for w in (DeprecationWarning, PendingDeprecationWarning, FutureWarning): warnings.simplefilter('ignore', w)
        app = Sphinx(str(src), str(src), str(html), str(doctrees), 'html', status=status, warning=warn,
                     freshenv=True, verbosity=0, keep_going=True)
        app.build(force_all=True)
        if app.statuscode: raise SystemExit(f'Sphinx failed:\n{warn.getvalue()}')
    return [l for l in warn.getvalue().splitlines() if l.strip()]

def _where(msg: str, src: Path, pages: dict) -> str:
    "Point a Sphinx message at the source notebook and cell instead of the temporary processed copy."
    def _sub(m):
        pg = pages.get(m.group(1))
        if pg is None: return m.group(0)
        return pg.where(int(m.group(2))) + ':' if m.group(2) else f'nbs/{pg.rel.as_posix()}:'
    return re.sub(re.escape(str(src) + os.sep) + r'(.+?)\.ipynb(?::(\d+))?:', _sub, msg)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, help='output folder (default: doc_path in settings.ini, `_docs`)')
    ap.add_argument('--execute', action='store_true', help='run each notebook before rendering it (slow)')
    ap.add_argument('--if-stale', action='store_true', help='skip the build when the output is up to date')
    ap.add_argument('--strict', action='store_true', help='fail on any Sphinx warning')
    ap.add_argument('-v', '--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args()
    build(a.out, execute=a.execute, if_stale=a.if_stale, strict=a.strict, verbose=a.verbose)

if __name__ == '__main__': main()
