"""The `metanb` command line as a user runs it: in subprocesses, with exit codes, files and logs checked.

- every option that can be wrong fails before any work, with one line naming it and exit status 2;
- a tiny end-to-end `metanb study` (sinusoid preset `tiny`) trains, analyses and reports;
- `metanb analyze` killed with SIGKILL mid-analysis and re-run recomputes no finished checkpoint;
- a run directory written by hand (torch.save of a params dict + a minimal config.json) is analysed and reported.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def metanb(*args, tmp_path=None, timeout=900, **kw):
    "Run `python -m metanb.cli ARGS...` and return the CompletedProcess."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    if tmp_path is not None: env['METANB_DATA'] = str(tmp_path/'data')
    return subprocess.run([sys.executable, '-m', 'metanb.cli', *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path or ROOT, env=env, **kw)


BAD = [  # (arguments, the option the one-line error must name)
    (['study', '--preset', 'huge'], '--preset'),
    (['study', '--iters', '0'], '--iters'),
    (['study', '--ways', 'two'], '--ways'),
    (['study', '--shots', '19'], '--shots'),
    (['study', '--device', 'cuda:9'], '--device'),
    (['study', '--seeds', '1,1'], '--seeds'),
    (['study', '--variants', 'maml+magic'], '--variants'),
    (['study', '--regularizer', 'magic'], '--regularizer'),
    (['study', '--strength', '-1'], '--strength'),
    (['study', '--preset', 'miniimagenet-5w1s'], '--data'),
    (['study', '--preset', 'omniglot-20w1s', '--data', '/no/such/folder'], '--data'),
    (['train', '--algorithm', 'sgd'], '--algorithm'),
    (['train', '--seed', '-1'], '--seed'),
    (['train', '--workers', '0'], '--workers'),
    (['analyze', '/no/such/run'], 'RUN'),
    (['report', '/no/such/run'], 'RUN'),
]
SUBPROCESS = {0, 4, 9, 13}  # these also run as real processes (each costs an interpreter start)


def _args(args, tmp_path):
    return [*args, '--out', str(tmp_path/'runs')] if args[0] in ('study', 'train') else list(args)


def _check(code, err, option, tmp_path):
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and option in lines[0] and 'Traceback' not in err, err
    assert not (tmp_path/'runs').exists() and not (tmp_path/'data').exists()  # nothing was started


@pytest.mark.parametrize('i', range(len(BAD)), ids=[' '.join(a) for a, _ in BAD])
def test_bad_option_fails_first(i, tmp_path, monkeypatch, capsys):
    "In-process (fast): `run_command` returns 2 and prints one line naming the option."
    from metanb.cli import run_command
    monkeypatch.setenv('METANB_DATA', str(tmp_path/'data'))
    args, option = BAD[i]
    code = run_command(_args(args, tmp_path))
    _check(code, capsys.readouterr().err, option, tmp_path)


@pytest.mark.parametrize('i', sorted(SUBPROCESS), ids=[' '.join(BAD[i][0]) for i in sorted(SUBPROCESS)])
def test_bad_option_fails_first_subprocess(i, tmp_path):
    "As a user runs it: `python -m metanb.cli ...` exits with status 2 and one line on stderr."
    args, option = BAD[i]
    r = metanb(*_args(args, tmp_path), tmp_path=tmp_path)
    _check(r.returncode, r.stderr, option, tmp_path)


def test_console_script(tmp_path):
    "The `metanb` console script (settings.ini) dispatches subcommands."
    exe = Path(sys.executable).parent/'metanb'
    if not exe.exists(): pytest.skip(f'{exe} is not installed (pip install -e .)')
    r = subprocess.run([str(exe), 'study', '--preset', 'huge'], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    _check(r.returncode, r.stderr, '--preset', tmp_path)


def test_unknown_command_and_usage(tmp_path):
    r = metanb('fly', tmp_path=tmp_path)
    assert r.returncode == 2 and "unknown command 'fly'" in r.stderr
    r = metanb('--help', tmp_path=tmp_path)
    assert r.returncode == 0 and 'study' in r.stdout and 'report' in r.stdout


def test_overfit_preset_end_to_end(tmp_path):
    "The paper's-regime preset at a tiny size: it validates during training, and the report has its learning curves."
    r = metanb('study', '--help', tmp_path=tmp_path)
    assert r.returncode == 0 and 'glyphs-overfit' in r.stdout
    r = metanb('study', '--preset', 'glyphs-overfit', '--iters', '30', '--checkpoints', '3', '--tasks', '2', '--variants', 'maml',
               '--out', tmp_path/'runs', '--quiet', tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    study = tmp_path/'runs'/'glyphs-overfit'
    cfg = json.loads((study/'maml-s0'/'config.json').read_text())
    assert (cfg['val_every'], cfg['data_kwargs']['fracs']) == (100, [0.15, 0.15, 0.7])
    import pandas as pd
    assert pd.read_csv(study/'maml-s0'/'train_log.csv')['val_acc'].notna().sum() == 2   # step 0 and the last
    md = (study/'report.md').read_text()
    assert '## Meta-overfitting' in md and '![learning_curves](figures/learning_curves.png)' in md
    ov = pd.read_csv(study/'overfitting.csv')
    assert list(ov['variant']) == ['maml'] and not ov['overfits'].any()   # two validations cannot show a peak and a fall


def test_study_end_to_end(tmp_path):
    r = metanb('study', '--preset', 'tiny', '--out', tmp_path/'runs', '--quiet', tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    study = tmp_path/'runs'/'tiny'
    assert f"report: {study/'report.md'}" in r.stdout
    assert 'variant' in r.stdout and 'maml+coherence_step' in r.stdout  # the printed summary table
    for v in ('maml-s0', 'finetune-s0', 'maml+coherence_step-s0'):
        assert (study/v/'analysis'/'summary.csv').is_file() and (study/v/'checkpoints'/'step_000040.pt').is_file()
    md = (study/'report.md').read_text()
    assert '## Claims of the paper' in md and '![measures_vs_step](figures/measures_vs_step.png)' in md
    import pandas as pd
    claims = pd.read_csv(study/'claims.csv')
    assert set(claims['claim']) == {'1a', '1b', '1c', '2', '3', '4', '5', '6', 'ref'}
    assert not claims['verdict'].isin(['supports', 'contradicts']).any()  # one seed decides nothing
    assert claims.query("role == 'claim'")['to_decide'].notna().all()  # and says what would
    # a second study finds every run finished (its job.json) and starts nothing
    r2 = metanb('study', '--preset', 'tiny', '--out', tmp_path/'runs', '--quiet', tmp_path=tmp_path)
    assert r2.returncode == 0 and 'analysed in' not in r2.stdout and '3 of 3 runs already finished: skipped' in r2.stdout, r2.stdout[-2000:]
    # with the job markers gone, the runs are found trained and every checkpoint cached
    for v in ('maml-s0', 'finetune-s0', 'maml+coherence_step-s0'): (study/v/'job.json').unlink()
    r3 = metanb('study', '--preset', 'tiny', '--out', tmp_path/'runs', '--quiet', '--executor', 'inline', tmp_path=tmp_path)
    assert r3.returncode == 0 and 'analysed in' not in r3.stdout and r3.stdout.count(': cached') == 18, r3.stdout[-2000:]


def test_train_with_task_threads(tmp_path):
    "`--workers 2` trains with two task threads; the run's config records it and the run resumes at its end."
    args = ('train', '--preset', 'tiny', '--iters', '6', '--checkpoints', '3', '--workers', '2', '--out', tmp_path/'runs', '--quiet')
    r = metanb(*args, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/'runs'/'maml-s0'
    assert json.loads((run/'config.json').read_text())['workers'] == 2
    assert (run/'checkpoints'/'step_000006.pt').is_file()
    assert metanb(*args, tmp_path=tmp_path).returncode == 0


def _files(d:Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def test_analyze_killed_then_resumed(tmp_path):
    r = metanb('train', '--preset', 'tiny', '--checkpoints', 11, '--out', tmp_path, '--name', 'run', '--quiet', tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path/'run'
    args = ['analyze', run, '--tasks', 16, '--tol', 1e-3, '--quiet']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'METANB_DATA': str(tmp_path/'data')}
    p = subprocess.Popen([sys.executable, '-m', 'metanb.cli', *map(str, args)], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, t0 = run/'analysis'/'step_000000'/'meta.json', time.monotonic()
    while not first.exists() and p.poll() is None and time.monotonic() - t0 < 240: time.sleep(0.01)
    p.send_signal(signal.SIGKILL); p.wait()
    assert first.exists(), 'the analysis never finished its first checkpoint'
    done = {d.name: _files(d) for d in (run/'analysis').glob('step_*') if (d/'meta.json').exists()}
    assert len(done) < 11, 'the analysis finished before it was killed: nothing to resume'
    r = metanb(*args, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for name, files in done.items():  # finished checkpoints: not recomputed, not rewritten
        assert _files(run/'analysis'/name) == files, name
        assert f'run step {int(name[5:])}: cached' in r.stdout
    assert r.stdout.count('analysed in') == 11 - len(done)
    assert len(list((run/'analysis').glob('step_*/meta.json'))) == 11 and (run/'analysis'/'summary.csv').is_file()


def test_analyze_nproc(tmp_path):
    "`--nproc 2` re-launches the analysis under torchrun: two ranks share the checkpoints, the tables are the usual ones."
    r = metanb('train', '--preset', 'tiny', '--checkpoints', 4, '--out', tmp_path, '--name', 'run', '--quiet', tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = metanb('analyze', tmp_path/'run', '--tasks', 4, '--tol', 1e-2, '--quiet', '--nproc', 2, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import pandas as pd
    s = pd.read_csv(tmp_path/'run'/'analysis'/'summary.csv')
    steps = sorted(int(p.stem[5:]) for p in (tmp_path/'run'/'checkpoints').glob('step_*.pt'))
    assert sorted(s['step'].unique()) == steps and len(steps) == 5  # 0, 13, 26, 39, 40


def test_hand_written_run(tmp_path):
    "A run directory written by a user's own code: torch.save of params dicts and a minimal config.json."
    import torch
    from metanb.models import MLP
    run = tmp_path/'mine'; (run/'checkpoints').mkdir(parents=True)
    (run/'config.json').write_text(json.dumps({'model': 'mlp', 'model_kwargs': {'sizes': [1, 16, 1]}, 'dataset': 'sinusoid',
                                               'shots': 5, 'queries': 10, 'inner_lr': 0.02, 'inner_steps_test': 3, 'seed': 3}))
    torch.manual_seed(0); net = MLP((1, 16, 1))
    for step in (0, 5, 10):
        torch.save({k: v.detach() * (1 + step / 10) for k, v in net.named_parameters()}, run/'checkpoints'/f'step_{step:06d}.pt')
    r = metanb('analyze', run, '--tasks', 4, '--tol', 1e-2, '--quiet', tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    s = pd.read_csv(run/'analysis'/'summary.csv')
    assert sorted(s['step'].unique()) == [0, 5, 10] and set(s['variant']) == {'maml'} and set(s['seed']) == {3}
    assert {'top_eig', 'distance', 'traj_coherence', 'grad_coherence'} <= set(s['measure'])
    r = metanb('report', run, tmp_path=tmp_path)
    assert r.returncode == 0 and f"report: {run/'report.md'}" in r.stdout, r.stderr[-2000:]
