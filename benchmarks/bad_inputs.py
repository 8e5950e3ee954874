"""The bad-input sweep: bad options, broken data, faults and races against the `metanb` CLI and the library.

Each case runs in a fresh temp folder (CLI cases as `python -m metanb.cli ...` subprocesses) and its outcome is classified:

- `error`:     a clear one-line error (non-zero exit, no traceback; for library calls: an exception whose message names the problem)
- `traceback`: a traceback (or an unclear error) where the failure is expected
- `silent`:    exit 0 with a wrong or incomplete result, or an input silently ignored
- `corrupt`:   files written where they must not be, or a run left broken / different from an uninterrupted one
- `ok`:        the input is fine (or the fault recovered) and the result is right
- `skip`:      the case could not be set up here (e.g. no tmpfs mount)

Usage (from the repository root; `--tree` is the metanb source tree under test, default this one):

    OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py [--tree /path/to/metanb/tree] [-k SUBSTRING] [--list]

It prints a per-case list and a table of category counts; about 5-10 minutes on 2 CPU cores.
"""
from __future__ import annotations
import argparse, json, os, pickle, shutil, signal, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path

CASES = []  # (name, group, function)
CATS = ('error', 'traceback', 'silent', 'corrupt', 'ok', 'skip')


def case(name, group='cli'):
    def deco(f): CASES.append((name, group, f)); return f
    return deco


def _default_sigint():
    "Ctrl-C as in a terminal, even when the sweep runs in the background (where SIGINT is inherited as ignored)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _communicate(p, timeout=60):
    try: return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired: p.kill(); p.communicate(); raise


class Ctx:
    "One case's temp folder and the ways to run metanb from the tree under test."
    def __init__(self, tree:Path, tmp:Path, base:dict):
        self.tree, self.tmp, self.base = tree, tmp, base
        self.env = {**os.environ, 'PYTHONPATH': str(tree), 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg',
                    'METANB_DATA': str(tmp/'data'), 'PYTHONWARNINGS': 'ignore'}
        self.env.pop('METANB_DEBUG', None)

    def cli(self, *args, timeout=300, env=None):
        return subprocess.run([sys.executable, '-m', 'metanb.cli', *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp, env={**self.env, **(env or {})})

    def popen(self, *args, **kw):
        return subprocess.Popen([sys.executable, '-m', 'metanb.cli', *map(str, args)], cwd=self.tmp, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)

    def py(self, code:str, timeout=300):
        "Run library code; it prints 'RESULT <json>' or fails."
        return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout, cwd=self.tmp, env=self.env)

    def run_copy(self, key:str) -> Path:
        "A private copy of a prepared run (see `prepare`)."
        d = self.tmp/key; shutil.copytree(self.base[key], d); return d


def _err_lines(err:str) -> list[str]:
    return [l for l in err.strip().splitlines() if l.strip()]


def classify(r, expect_error=True, needle=None, check=None) -> tuple[str, str]:
    "The category of a finished CLI run; `check()` (only when exit 0) returns an extra (category, note) or None."
    err = r.stderr.strip(); lines = _err_lines(err)
    last = lines[-1] if lines else ''
    if 'Traceback' in err: return 'traceback', f"exit {r.returncode}, {len(lines)} lines: {last[:150]}"
    if r.returncode != 0:
        one = len(lines) == 1 and 'error' in last
        note = f"exit {r.returncode}: {last[:200]}"
        if not one: return 'traceback', f"{len(lines)} lines, " + note
        if needle and needle.lower() not in last.lower(): note += f"  [does not name {needle!r}]"
        return 'error', note + ('' if expect_error else '  [UNEXPECTED failure]')
    if check is not None:
        c = check()
        if c: return c
    return ('silent', 'exit 0: ' + (r.stdout.strip().splitlines() or [''])[-1][:150]) if expect_error else ('ok', 'exit 0')


def classify_lib(r, needle=None) -> tuple[str, str]:
    "Library call expected to raise: clear when the exception's message names `needle` (the file or the problem)."
    lines = _err_lines(r.stderr)
    if r.returncode == 0: return 'silent', 'no exception: ' + r.stdout.strip()[-150:]
    last = lines[-1] if lines else ''
    clear = needle is None or needle.lower() in last.lower()
    return ('error' if clear else 'traceback'), last[:220]


# ----------------------------------------------------------------------------------------------------------------------
# shared prepared runs (made once, copied by the cases that need them)
TINY = ['--preset', 'tiny', '--quiet', '--threads', '1']


def prepare(tree:Path, root:Path) -> dict:
    "Train and analyse the small runs the cases copy."
    root.mkdir(parents=True, exist_ok=True); ctx = Ctx(tree, root, {})
    base = {}
    r = ctx.cli('train', *TINY, '--iters', 8, '--checkpoints', 3, '--out', root, '--name', 'trained')
    assert r.returncode == 0, r.stderr[-2000:]
    base['trained'] = root/'trained'
    shutil.copytree(root/'trained', root/'analysed')
    r = ctx.cli('analyze', root/'analysed', '--tasks', 3, '--tol', 1e-2, '--quiet', '--threads', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    base['analysed'] = root/'analysed'
    return base


# ----------------------------------------------------------------------------------------------------------------------
# 1. bad options (each command)
OPTS = [
    ('study unknown preset', ['study', '--preset', 'huge'], '--preset'),
    ('study --iters 0', ['study', *TINY, '--iters', '0'], '--iters'),
    ('study --ways two', ['study', '--ways', 'two'], '--ways'),
    ('study --shots 19 (glyphs)', ['study', '--shots', '19'], '--shots'),
    ('study --device cuda:9', ['study', *TINY, '--device', 'cuda:9'], '--device'),
    ('study --device tpu', ['study', *TINY, '--device', 'tpu'], '--device'),
    ('study --seeds 1,1', ['study', *TINY, '--seeds', '1,1'], '--seeds'),
    ('study --seeds x', ['study', *TINY, '--seeds', 'x'], '--seeds'),
    ('study --variants maml+magic', ['study', *TINY, '--variants', 'maml+magic'], '--variants'),
    ('study --variants finetune+coherence_step', ['study', *TINY, '--variants', 'finetune+coherence_step'], '--variants'),
    ('study --regularizer magic', ['study', *TINY, '--regularizer', 'magic'], '--regularizer'),
    ('study --strength -1', ['study', *TINY, '--strength', '-1'], '--strength'),
    ('study --strength nan', ['study', *TINY, '--strength', 'nan'], '--strength'),
    ('study --checkpoints 100 > iters', ['study', *TINY, '--checkpoints', '100'], '--checkpoints'),
    ('study --threads 0', ['study', *TINY, '--threads', '0'], '--threads'),
    ('study --meta_batch -1', ['study', *TINY, '--meta_batch', '-1'], '--meta_batch'),
    ('study --queries 0', ['study', *TINY, '--queries', '0'], '--queries'),
    ('study --tasks 1', ['study', *TINY, '--tasks', '1'], '--tasks'),
    ('study unknown option --foo', ['study', *TINY, '--foo', '1'], '--foo'),
    ('study omniglot without --data', ['study', '--preset', 'omniglot-5w1s'], '--data'),
    ('study --data /no/such', ['study', '--preset', 'omniglot-5w1s', '--data', '/no/such/folder'], '--data'),
    ('study --nproc 0', ['study', *TINY, '--nproc', '0'], '--nproc'),
    ('study --nproc 2 with a regularized variant', ['study', *TINY, '--nproc', '2'], '--nproc'),
    ('train --algorithm sgd', ['train', *TINY, '--algorithm', 'sgd'], '--algorithm'),
    ('train --seed -1', ['train', *TINY, '--seed', '-1'], '--seed'),
    ('train --workers 0', ['train', *TINY, '--workers', '0'], '--workers'),
    ('train --regularizer magic', ['train', *TINY, '--regularizer', 'magic'], '--regularizer'),
    ('train finetune+coherence_step', ['train', *TINY, '--algorithm', 'finetune', '--regularizer', 'coherence_step'], '--regularizer'),
    ('analyze /no/such/run', ['analyze', '/no/such/run'], 'RUN'),
    ('analyze (no run)', ['analyze'], 'RUN'),
    ('report /no/such/run', ['report', '/no/such/run'], 'RUN'),
    ('unknown command', ['fly'], 'fly'),
]


def _opt_case(args, option):
    def f(ctx:Ctx):
        a = [*args, '--out', ctx.tmp/'runs'] if args[0] in ('study', 'train') else list(args)
        r = ctx.cli(*a)
        cat, note = classify(r, needle=option)
        if (ctx.tmp/'runs').exists() and cat != 'traceback': return 'corrupt', 'work started before the error: ' + note
        return cat, note
    return f


for _n, _a, _o in OPTS: case(_n, 'options')(_opt_case(_a, _o))


@case('analyze --tol 2, --bn_mode x, --tasks 1', 'options')
def _(ctx):
    run = ctx.run_copy('trained'); cats = []
    for extra, opt in ((['--tol', 2], '--tol'), (['--bn_mode', 'x'], '--bn_mode'), (['--tasks', 1], '--tasks')):
        cats.append(classify(ctx.cli('analyze', run, *extra, '--quiet'), needle=opt))
    worst = next((c for c in cats if c[0] != 'error'), cats[0])
    return worst[0], ' | '.join(n for _, n in cats)[:300]


@case('report on a run not analysed', 'options')
def _(ctx): return classify(ctx.cli('report', ctx.run_copy('trained')), needle='analy')


@case('report --out is a file', 'options')
def _(ctx):
    (ctx.tmp/'f').write_text('x')
    return classify(ctx.cli('report', ctx.run_copy('analysed'), '--out', ctx.tmp/'f'), needle='--out')


@case('study --out is a file', 'options')
def _(ctx):
    (ctx.tmp/'f').write_text('x')
    return classify(ctx.cli('study', *TINY, '--out', ctx.tmp/'f'), needle='--out')


@case('train --strength without --regularizer (dropped?)', 'options')
def _(ctx):
    r = ctx.cli('train', *TINY, '--iters', 2, '--checkpoints', 2, '--strength', 0.5, '--out', ctx.tmp/'runs')
    return classify(r, needle='--strength')


@case('study --regularizer none --strength 0.5 (dropped?)', 'options')
def _(ctx):
    r = ctx.cli('study', *TINY, '--iters', 2, '--checkpoints', 2, '--tasks', 2, '--variants', 'maml', '--regularizer', 'none',
                '--strength', 0.5, '--out', ctx.tmp/'runs')
    return classify(r, needle='--strength')


@case('train --ways 5 on the sinusoid preset (ignored but stored?)', 'options')
def _(ctx):
    r = ctx.cli('train', *TINY, '--iters', 2, '--checkpoints', 2, '--ways', 5, '--out', ctx.tmp/'runs')
    return classify(r, needle='--ways')


@case('train --name ../../x writes outside --out?', 'options')
def _(ctx):
    out = ctx.tmp/'a'/'b'/'out'; out.mkdir(parents=True)
    r = ctx.cli('train', *TINY, '--iters', 2, '--checkpoints', 2, '--name', '../../x', '--out', out)
    if (ctx.tmp/'a'/'x').exists(): return 'corrupt', f'exit {r.returncode}: the run was written to {ctx.tmp/"a"/"x"}, outside --out'
    return classify(r, needle='--name')


@case('train --name a/b (a path)', 'options')
def _(ctx):
    r = ctx.cli('train', *TINY, '--iters', 2, '--checkpoints', 2, '--name', 'a/b', '--out', ctx.tmp/'runs')
    return classify(r, needle='--name')


@case('study --data is a file', 'options')
def _(ctx):
    (ctx.tmp/'f').write_text('x')
    return classify(ctx.cli('study', '--preset', 'omniglot-5w1s', '--data', ctx.tmp/'f', '--out', ctx.tmp/'runs'), needle='--data')


# ----------------------------------------------------------------------------------------------------------------------
# 2. data on disk: omniglot (torchvision, resized) and miniimagenet (csv, pickle) as tiny fixtures
OMNI = ['--preset', 'omniglot-5w1s', '--iters', 2, '--checkpoints', 2, '--meta_batch', 1, '--queries', 1, '--quiet', '--threads', 1]
MINI = ['--preset', 'miniimagenet-5w1s', '--iters', 1, '--checkpoints', 2, '--meta_batch', 1, '--ways', 2, '--queries', 1,
        '--quiet', '--threads', 1]


def _fixture(ctx, kind, layout, **kw) -> Path:
    sys.path.insert(0, str(ctx.tree))
    if kind == 'omniglot':
        from metanb.data.omniglot import omniglot_fixture
        return Path(omniglot_fixture(ctx.tmp/'omni', layout, **kw))
    from metanb.data.miniimagenet import miniimagenet_fixture
    return Path(miniimagenet_fixture(ctx.tmp/'mini', layout, **kw))


def _train_on(ctx, preset_args, data, needle=None, expect_error=True, **kw):
    r = ctx.cli('train', *preset_args, '--data', data, '--out', ctx.tmp/'runs', **kw)
    return classify(r, expect_error=expect_error, needle=needle)


@case('omniglot torchvision layout (fine)', 'data')
def _(ctx): return _train_on(ctx, OMNI, _fixture(ctx, 'omniglot', 'torchvision', alphabets=(2, 2), characters=3), expect_error=False)


@case('omniglot resized layout, too few characters for the cbfinn split', 'data')
def _(ctx): return _train_on(ctx, OMNI, _fixture(ctx, 'omniglot', 'resized', alphabets=(2, 2), characters=4), needle='characters')


@case('library: omniglot resized layout with a small cbfinn split (fine)', 'library')
def _(ctx):
    d = _fixture(ctx, 'omniglot', 'resized', alphabets=(2, 2), characters=4)
    r = ctx.py(f"from metanb.data.registry import load_dataset; d = load_dataset('omniglot', {str(d)!r}, n_train=10, n_val=2); print(d)")
    return ('ok', 'loaded') if r.returncode == 0 else classify_lib(r)


@case('omniglot: empty folder', 'data')
def _(ctx):
    (ctx.tmp/'empty').mkdir(); return _train_on(ctx, OMNI, ctx.tmp/'empty', needle='omniglot')


@case('omniglot: pngs at the top level (wrong layout)', 'data')
def _(ctx):
    src = _fixture(ctx, 'omniglot', 'resized', alphabets=(1,), characters=2)
    flat = ctx.tmp/'flat'; flat.mkdir()
    for i, p in enumerate(src.rglob('*.png')): shutil.copy(p, flat/f'{i}.png')
    return _train_on(ctx, OMNI, flat, needle='omniglot')


@case('omniglot: too few classes for 5 ways', 'data')
def _(ctx): return _train_on(ctx, OMNI, _fixture(ctx, 'omniglot', 'torchvision', alphabets=(1, 1), characters=1), needle='class')


@case('omniglot: a corrupt png', 'data')
def _(ctx):
    d = _fixture(ctx, 'omniglot', 'torchvision', alphabets=(2, 2), characters=3)
    next(iter(sorted(d.rglob('*.png')))).write_bytes(b'\x89PNG\r\n\x1a\nbroken')
    return _train_on(ctx, OMNI, d, needle='.png')


@case('omniglot: only images_background (no evaluation set)', 'data')
def _(ctx):
    d = _fixture(ctx, 'omniglot', 'torchvision', alphabets=(2, 2), characters=3)
    for p in d.rglob('images_evaluation'): shutil.rmtree(p)
    return _train_on(ctx, OMNI, d, needle='images_evaluation')


@case('miniimagenet csv layout (fine)', 'data')
def _(ctx): return _train_on(ctx, MINI, _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3, size=84), expect_error=False)


@case('miniimagenet pickle layout (fine)', 'data')
def _(ctx): return _train_on(ctx, MINI, _fixture(ctx, 'mini', 'pickle', classes=(3, 2, 2), per_class=3, size=84), expect_error=False)


@case('miniimagenet csv: test.csv missing', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3); (d/'test.csv').unlink()
    return _train_on(ctx, MINI, d, needle='test.csv')


@case('miniimagenet csv: bad header', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3)
    (d/'train.csv').write_text('file;label\nx;y\n')
    return _train_on(ctx, MINI, d, needle='train.csv')


@case('miniimagenet csv: a row with one column', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3)
    with open(d/'train.csv', 'a') as f: f.write('lonely.jpg\n')
    return _train_on(ctx, MINI, d, needle='train.csv')


@case('miniimagenet csv: listed image missing', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3)
    next(iter(sorted((d/'images').glob('*.jpg')))).unlink()
    return _train_on(ctx, MINI, d, needle='.jpg')


@case('miniimagenet csv: corrupt jpg', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3)
    next(iter(sorted((d/'images').glob('*.jpg')))).write_bytes(b'\xff\xd8\xffnot a jpeg')
    return _train_on(ctx, MINI, d, needle='.jpg')


@case('miniimagenet pickle: truncated', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'pickle', classes=(3, 2, 2), per_class=3)
    f = next(iter(sorted(d.glob('*.pkl')))); f.write_bytes(f.read_bytes()[:1000])
    return _train_on(ctx, MINI, d, needle=f.name)


class _Evil:
    "A pickle whose load would run a command (touch a marker file)."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


@case('miniimagenet pickle: malicious reduce (must not run)', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'pickle', classes=(3, 2, 2), per_class=3)
    marker = ctx.tmp/'PWNED'
    f = next(iter(sorted(d.glob('*.pkl'))))
    with open(f, 'wb') as fh: pickle.dump({'image_data': _Evil(marker), 'class_dict': {}}, fh)
    cat, note = _train_on(ctx, MINI, d, needle=f.name)
    if marker.exists(): return 'corrupt', 'THE PICKLE RAN CODE: ' + note
    return cat, note


@case('miniimagenet pickle: wrong structure (a list)', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'pickle', classes=(3, 2, 2), per_class=3)
    f = next(iter(sorted(d.glob('*.pkl'))))
    with open(f, 'wb') as fh: pickle.dump([1, 2, 3], fh)
    return _train_on(ctx, MINI, d, needle=f.name)


@case('miniimagenet: --ways 5 > the classes of the fixture', 'data')
def _(ctx):
    d = _fixture(ctx, 'mini', 'csv', classes=(3, 2, 2), per_class=3)
    args = [*MINI, '--ways', 5]  # the last --ways wins
    return _train_on(ctx, args, d, needle='class')


@case('library: load_dataset omniglot without a path', 'library')
def _(ctx):
    r = ctx.py("import os; os.environ.pop('METANB_OMNIGLOT', None)\nfrom metanb.data.registry import load_dataset; load_dataset('omniglot')")
    return classify_lib(r, 'METANB_OMNIGLOT')


@case('library: load_dataset unknown name', 'library')
def _(ctx): return classify_lib(ctx.py("from metanb.data.registry import load_dataset; load_dataset('imagenet', '/x')"), 'imagenet')


@case('library: safe_load_pickle of a malicious pickle', 'library')
def _(ctx):
    marker, f = ctx.tmp/'PWNED', ctx.tmp/'evil.pkl'
    with open(f, 'wb') as fh: pickle.dump(_Evil(marker), fh)
    r = ctx.py(f"from metanb.data.miniimagenet import safe_load_pickle; safe_load_pickle({str(f)!r})")
    if marker.exists(): return 'corrupt', 'THE PICKLE RAN CODE'
    return classify_lib(r, 'refusing')


# ----------------------------------------------------------------------------------------------------------------------
# 3. run directories: checkpoints, configs, resume
@case('analyze: truncated checkpoint', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); f = run/'checkpoints'/'step_000004.pt'; f.write_bytes(f.read_bytes()[:100])
    return classify(ctx.cli('analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet'), needle='step_000004')


@case('analyze: foreign checkpoint (a plain tensor)', 'runs')
def _(ctx):
    run = ctx.run_copy('trained')
    r = ctx.py(f"import torch; torch.save(torch.zeros(3), {str(run/'checkpoints'/'step_000004.pt')!r})"); assert r.returncode == 0, r.stderr
    return classify(ctx.cli('analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet'), needle='step_000004')


@case('analyze: checkpoint with other parameter names', 'runs')
def _(ctx):
    run = ctx.run_copy('trained')
    r = ctx.py(f"import torch; torch.save({{'params': {{'w': torch.zeros(3)}}, 'step': 4}}, {str(run/'checkpoints'/'step_000004.pt')!r})")
    assert r.returncode == 0, r.stderr
    return classify(ctx.cli('analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet'), needle='step_000004')


@case('train resume: truncated last checkpoint', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); f = run/'checkpoints'/'step_000008.pt'; f.write_bytes(f.read_bytes()[:100])
    r = ctx.cli('train', *TINY, '--iters', 8, '--checkpoints', 3, '--out', ctx.tmp, '--name', 'trained', env={'PYTHONWARNINGS': 'default'})
    said = lambda: None if 'resuming from the previous checkpoint' in r.stderr and 'step_000008' in r.stderr else ('silent', 'resumed without naming the unreadable checkpoint')
    return classify(r, expect_error=False, check=said)   # falling back to the previous intact checkpoint, saying so, is the fix


@case('analyze: config.json not json', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'config.json').write_text('{"model": "mlp",')
    return classify(ctx.cli('analyze', run, '--quiet'), needle='config.json')


@case('analyze: config.json a list', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'config.json').write_text('[1, 2]')
    return classify(ctx.cli('analyze', run, '--quiet'), needle='config.json')


@case('analyze: config.json lacks keys', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'config.json').write_text('{"model": "mlp"}')
    return classify(ctx.cli('analyze', run, '--quiet'), needle='config')


@case('analyze: config.json unknown model', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); c = json.loads((run/'config.json').read_text()); c['model'] = 'resnet900'
    (run/'config.json').write_text(json.dumps(c))
    return classify(ctx.cli('analyze', run, '--quiet'), needle='resnet900')


@case('analyze: no checkpoints', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); shutil.rmtree(run/'checkpoints')
    return classify(ctx.cli('analyze', run, '--quiet'), needle='checkpoint')


@case('train resume: config.json not json', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'config.json').write_text('{')
    return classify(ctx.cli('train', *TINY, '--iters', 8, '--checkpoints', 3, '--out', ctx.tmp, '--name', 'trained'), needle='config.json')


@case('train resume with a different config (--meta_batch 2)', 'runs')
def _(ctx):
    ctx.run_copy('trained')
    return classify(ctx.cli('train', *TINY, '--iters', 8, '--checkpoints', 3, '--meta_batch', 2, '--out', ctx.tmp, '--name', 'trained'),
                    needle='meta_batch')


@case('train resume with fewer iterations than done', 'runs')
def _(ctx):
    ctx.run_copy('trained')
    return classify(ctx.cli('train', *TINY, '--iters', 4, '--checkpoints', 3, '--out', ctx.tmp, '--name', 'trained'), needle='iter')


@case('train --no_resume on an existing run', 'runs')
def _(ctx):
    ctx.run_copy('trained')
    return classify(ctx.cli('train', *TINY, '--iters', 8, '--checkpoints', 3, '--no_resume', '--out', ctx.tmp, '--name', 'trained'),
                    needle='--no_resume')


@case('train: the run folder is a file', 'runs')
def _(ctx):
    (ctx.tmp/'runs').mkdir(); (ctx.tmp/'runs'/'maml-s0').write_text('x')
    return classify(ctx.cli('train', *TINY, '--iters', 2, '--checkpoints', 2, '--out', ctx.tmp/'runs'), needle='maml-s0')


@case('analyze: run folder read-only (chmod; root may ignore it)', 'runs')
def _(ctx):
    run = ctx.run_copy('trained'); os.chmod(run, 0o555)
    try:
        r = ctx.cli('analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet')
        return classify(r, expect_error=os.geteuid() != 0, needle=str(run))
    finally: os.chmod(run, 0o755)


# ----------------------------------------------------------------------------------------------------------------------
# 4. report: summary and analysis cross-check
def _report(ctx, run):
    r = ctx.cli('report', run)
    return r


@case('report: fine', 'report')
def _(ctx):
    run = ctx.run_copy('analysed'); r = _report(ctx, run)
    def check():
        md = (run/'report.md').read_text()
        return None if '| 8 |' in md else ('silent', 'report.md lacks final step 8')
    return classify(r, expect_error=False, check=check)


@case('report: summary.csv truncated to its header', 'report')
def _(ctx):
    run = ctx.run_copy('analysed'); f = run/'analysis'/'summary.csv'; f.write_text(f.read_text().splitlines()[0] + '\n')
    r = _report(ctx, run)
    def check():
        md = (run/'report.md').read_text()
        if 'missing' in md.lower() and 'summary.csv' in r.stdout: return 'error', 'exit 0, the report uses the step folders and says summary.csv is incomplete'
        return 'silent', 'exit 0, the report shows an empty summary'
    return classify(r, needle='summary', check=check)


@case('report: summary.csv cut mid-file', 'report')
def _(ctx):
    run = ctx.run_copy('analysed'); f = run/'analysis'/'summary.csv'; t = f.read_text(); f.write_text(t[:len(t) // 3])
    r = _report(ctx, run)
    def check():
        md = (run/'report.md').read_text()
        if 'missing' in md.lower() or 'incomplete' in md.lower(): return 'error', 'exit 0 but the report says what is missing'
        return 'silent', 'exit 0, the report shows an incomplete summary as final'
    return classify(r, check=check)


@case('report: summary.csv garbage', 'report')
def _(ctx):
    run = ctx.run_copy('analysed'); (run/'analysis'/'summary.csv').write_bytes(b'\x00\x01garbage,,,\n"unterminated')
    r = _report(ctx, run)
    def check():
        md = (run/'report.md').read_text()
        if 'missing' in md.lower() and 'summary.csv' in r.stdout: return 'error', 'exit 0, the report uses the step folders and says summary.csv is unreadable'
        return 'silent', 'exit 0, a garbage summary.csv reported as it is'
    return classify(r, needle='summary.csv', check=check)


@case('report: last checkpoint deleted before the analysis', 'report')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'checkpoints'/'step_000008.pt').unlink()
    r = ctx.cli('analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet')
    if r.returncode != 0: return classify(r, needle='step')
    r = _report(ctx, run)
    def check():
        md = (run/'report.md').read_text()
        if 'missing' in md.lower() and ('8' in r.stdout + r.stderr): return 'error', 'exit 0 but report and stdout name the missing step 8'
        return 'silent', 'exit 0: the report calls step 4 final for an 8-iteration run'
    return classify(r, check=check)


@case('report: an analysis step folder deleted', 'report')
def _(ctx):
    run = ctx.run_copy('analysed'); shutil.rmtree(run/'analysis'/'step_000004')
    r = _report(ctx, run)
    def check():
        md = (run/'report.md').read_text()
        return ('error', 'exit 0, the report names what is missing') if 'missing' in md.lower() else \
               ('silent', 'exit 0: summary.csv still lists a step whose analysis is gone')
    return classify(r, check=check)


@case('report: nothing analysed (empty analysis folder)', 'report')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'analysis').mkdir()
    return classify(_report(ctx, run), needle='analy')


@case('report --out inside an unwritable path (/proc)', 'report')
def _(ctx): return classify(ctx.cli('report', ctx.run_copy('analysed'), '--out', '/proc/metanb_report'), needle='/proc')


# ----------------------------------------------------------------------------------------------------------------------
# 5. faults and races
def _params(ctx, ckpt:Path) -> str:
    r = ctx.py(f"import torch, hashlib; ck = torch.load({str(ckpt)!r}, weights_only=False); "
               f"print('RESULT', hashlib.sha256(b''.join(v.numpy().tobytes() for v in ck['params'].values())).hexdigest())")
    return r.stdout.split('RESULT')[-1].strip() if r.returncode == 0 else 'unreadable: ' + r.stderr[-200:]


KILL = [*TINY, '--iters', 200, '--checkpoints', 11]


def _reference(ctx) -> str:
    r = ctx.cli('train', *KILL, '--out', ctx.tmp, '--name', 'ref'); assert r.returncode == 0, r.stderr[-1000:]
    return _params(ctx, ctx.tmp/'ref'/'checkpoints'/'step_000200.pt')


@case('kill -9 during training, then resume: bit-exact?', 'faults')
def _(ctx):
    ref = _reference(ctx)
    p = ctx.popen('train', *KILL, '--out', ctx.tmp, '--name', 'run')
    t0, first = time.monotonic(), ctx.tmp/'run'/'checkpoints'/'step_000060.pt'
    while not first.exists() and p.poll() is None and time.monotonic() - t0 < 120: time.sleep(0.005)
    if p.poll() is not None: return 'skip', 'training finished before the kill'
    p.send_signal(signal.SIGKILL); p.wait()
    r = ctx.cli('train', *KILL, '--out', ctx.tmp, '--name', 'run')
    if r.returncode != 0: return classify(r)
    got = _params(ctx, ctx.tmp/'run'/'checkpoints'/'step_000200.pt')
    return ('ok', 'resumed run is bit-identical') if got == ref else ('corrupt', f'resumed run differs: {got[:12]} != {ref[:12]}')


@case('SIGINT (Ctrl-C) during training: one line, exit 130?', 'faults')
def _(ctx):
    p = ctx.popen('train', *TINY, '--iters', 100000, '--checkpoints', 2, '--out', ctx.tmp, '--name', 'run')
    t0 = time.monotonic()
    while not (ctx.tmp/'run'/'checkpoints'/'step_000000.pt').exists() and p.poll() is None and time.monotonic() - t0 < 120: time.sleep(0.01)
    time.sleep(0.5); p.send_signal(signal.SIGINT)
    out, err = _communicate(p)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    cat, note = classify(r)
    if cat == 'error' and p.returncode != 130: note += '  [exit is not 130]'
    return cat, note


@case('SIGINT during analyze', 'faults')
def _(ctx):
    run = ctx.run_copy('trained')
    p = ctx.popen('analyze', run, '--tasks', 200, '--tol', 1e-4, '--quiet')  # slow enough to be interrupted mid-analysis
    t0 = time.monotonic()
    while not (run/'analysis').exists() and p.poll() is None and time.monotonic() - t0 < 120: time.sleep(0.01)
    time.sleep(1.0); p.send_signal(signal.SIGINT)
    out, err = _communicate(p)
    if p.returncode == 0: return 'skip', 'the analysis finished before the signal'
    return classify(subprocess.CompletedProcess(p.args, p.returncode, out, err))


def _tmpfs(ctx, size='2m') -> Path|None:
    d = ctx.tmp/'small'; d.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(d)], capture_output=True, text=True)
    return d if r.returncode == 0 else None


def _umount(d): subprocess.run(['umount', str(d)], capture_output=True)


def _fill(d:Path, leave:int):
    "Fill the tmpfs `d` up to `leave` free bytes."
    st = os.statvfs(d); free = st.f_bavail * st.f_frsize
    with open(d/'filler', 'wb') as f: f.write(b'\0' * max(0, free - leave))


@case('disk full during training (tmpfs), then free space and resume', 'faults')
def _(ctx):
    d = _tmpfs(ctx)
    if d is None: return 'skip', 'cannot mount a tmpfs here (not root?)'
    try:
        _fill(d, 24 * 1024)
        r = ctx.cli('train', *TINY, '--iters', 40, '--checkpoints', 41, '--out', d, '--name', 'run')
        cat, note = classify(r, needle=str(d))
        if r.returncode == 0: return 'silent', 'exit 0 on a full disk?'
        (d/'filler').unlink()
        r2 = ctx.cli('train', *TINY, '--iters', 40, '--checkpoints', 41, '--out', d, '--name', 'run')
        if r2.returncode != 0: return 'corrupt', f'{cat}; resume after freeing space fails: ' + (_err_lines(r2.stderr) or [''])[-1][:150]
        n = r.stderr.count('No space left') + r.stderr.count('disk full') + r.stderr.count('ENOSPC')
        return cat, note + f'  (resume ok; ENOSPC reported {n}x)'
    finally: _umount(d)


@case('disk full during analyze (tmpfs)', 'faults')
def _(ctx):
    d = _tmpfs(ctx)
    if d is None: return 'skip', 'cannot mount a tmpfs here'
    try:
        shutil.copytree(ctx.base['trained'], d/'run')
        _fill(d, 8 * 1024)
        r = ctx.cli('analyze', d/'run', '--tasks', 3, '--tol', 1e-2, '--quiet')
        cat, note = classify(r, needle=str(d))
        (d/'filler').unlink()
        r2 = ctx.cli('analyze', d/'run', '--tasks', 3, '--tol', 1e-2, '--quiet')
        if r2.returncode != 0: return 'corrupt', f'{cat}; re-run after freeing space fails: ' + (_err_lines(r2.stderr) or [''])[-1][:150]
        return cat, note + '  (re-run ok)'
    finally: _umount(d)


@case('two trainers on one run directory at once', 'faults')
def _(ctx):
    ref = _reference(ctx)
    ps = [ctx.popen('train', *KILL, '--out', ctx.tmp, '--name', 'run') for _ in range(2)]
    res = [_communicate(p, 300) for p in ps]
    codes = [p.returncode for p in ps]
    got = _params(ctx, ctx.tmp/'run'/'checkpoints'/'step_000200.pt')
    if got != ref: return 'corrupt', f'exits {codes}: the final checkpoint differs from an uninterrupted run'
    if all(c == 0 for c in codes): return 'ok', 'both exit 0 and the run is right (the trainers raced but agreed)'
    bad = [i for i, c in enumerate(codes) if c != 0][0]
    r = subprocess.CompletedProcess(ps[bad].args, codes[bad], *res[bad])
    return classify(r, needle='run')


@case('two analyzers on one run at once', 'faults')
def _(ctx):
    run = ctx.run_copy('trained')
    ps = [ctx.popen('analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet') for _ in range(2)]
    res = [_communicate(p, 300) for p in ps]; codes = [p.returncode for p in ps]
    r = ctx.cli('report', run)
    if r.returncode != 0: return 'corrupt', f'exits {codes}; the report afterwards fails: ' + (_err_lines(r.stderr) or [''])[-1][:150]
    if all(c == 0 for c in codes): return 'ok', 'both exit 0 and the run reports'
    bad = codes.index(next(c for c in codes if c != 0))
    return classify(subprocess.CompletedProcess(ps[bad].args, codes[bad], *res[bad]))


@case('analyze under torchrun (--nproc 2) with a broken config', 'faults')
def _(ctx):
    run = ctx.run_copy('trained'); (run/'config.json').write_text('{"model": "mlp"}')
    return classify(ctx.cli('analyze', run, '--nproc', 2, '--quiet', timeout=300), needle='config')


# ----------------------------------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tree', default=str(Path(__file__).resolve().parents[1]), help='the metanb source tree under test')
    ap.add_argument('-k', default=None, help='only the cases whose name contains this')
    ap.add_argument('--list', action='store_true', help='list the cases and exit')
    a = ap.parse_args()
    cases = [c for c in CASES if a.k is None or a.k.lower() in c[0].lower()]
    if a.list:
        for n, g, _ in cases: print(f'{g:8s} {n}')
        print(len(cases), 'cases'); return
    tree = Path(a.tree).resolve()
    t0 = time.perf_counter(); rows = []
    with tempfile.TemporaryDirectory(prefix='metanb_sweep_') as root:
        root = Path(root); base = prepare(tree, root/'base')
        print(f'tree {tree}: {len(cases)} cases (prepared in {time.perf_counter() - t0:.0f}s)', flush=True)
        for i, (name, group, f) in enumerate(cases):
            tmp = root/f'case{i:03d}'; tmp.mkdir()
            t1 = time.perf_counter()
            try: cat, note = f(Ctx(tree, tmp, base))
            except subprocess.TimeoutExpired as e: cat, note = 'traceback', f'timed out: {e}'
            except Exception as e: cat, note = 'skip', f'the case itself failed: {type(e).__name__}: {str(e)[:200]}'
            rows.append((group, name, cat, note))
            print(f'{cat:9s} {group:8s} {name:58s} {time.perf_counter() - t1:5.1f}s  {note}', flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
    n = Counter(c for _, _, c, _ in rows)
    print(f'\n{len(rows)} cases in {time.perf_counter() - t0:.0f}s against {tree}')
    print('| ' + ' | '.join(CATS) + ' | total |'); print('|' + '---|' * (len(CATS) + 1))
    print('| ' + ' | '.join(str(n[c]) for c in CATS) + f' | {len(rows)} |')
    groups = sorted({g for g, *_ in rows})
    print('\nper group:')
    for g in groups:
        m = Counter(c for gg, _, c, _ in rows if gg == g)
        print(f'  {g:8s} ' + ', '.join(f'{c} {m[c]}' for c in CATS if m[c]))


if __name__ == '__main__': main()
