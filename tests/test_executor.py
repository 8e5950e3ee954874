"""Studies as jobs: `metanb study --executor local|slurm|inline` gives the same tables, on a real SLURM cluster too.

- a tiny study through `--executor slurm` equals the same study run inline, table for table;
- the local executor with 2 workers gives identical tables;
- a SLURM job cancelled (`scancel`) mid-run is reported as failed in one line, and the next `metanb study` finishes it;
- a job that raises shows its error and its log's path; the report covers the runs that finished.
The SLURM tests use the session fixture `slurm` (tests/slurm.py): they skip without SLURM, and fail instead in CI.
"""
import os, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--preset', 'tiny', '--variants', 'maml,finetune', '--iters', '8', '--checkpoints', '3', '--tasks', '2', '--quiet']


def metanb(*args, cwd, timeout=300):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'METANB_DATA': str(Path(cwd)/'data')}
    return subprocess.run([sys.executable, '-m', 'metanb.cli', *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def tables(study: Path) -> dict:
    "Every table of a study: each run's analysis/summary.csv, and the study's summary.csv and claims.csv."
    fs = sorted(study.glob('*/analysis/summary.csv')) + [study/'summary.csv', study/'claims.csv']
    return {str(f.relative_to(study)): pd.read_csv(f) for f in fs}


def assert_same(a: Path, b: Path):
    ta, tb = tables(a), tables(b)
    assert sorted(ta) == sorted(tb) and len(ta) == 4, (sorted(ta), sorted(tb))
    for k in ta: pd.testing.assert_frame_equal(ta[k], tb[k], check_exact=True, obj=k)


@pytest.fixture(scope='module')
def inline_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('inline')
    r = metanb('study', *TINY, '--executor', 'inline', '--out', tmp/'runs', cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp/'runs'/'tiny'


def test_local_two_workers_same_tables(inline_study, tmp_path):
    r = metanb('study', *TINY, '--executor', 'local', '--parallel', '2', '--out', tmp_path/'runs', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = tmp_path/'runs'/'tiny'
    assert_same(inline_study, study)
    assert (study/'logs'/'maml-s0.log').read_text().startswith('job maml-s0')
    r = metanb('study', *TINY, '--executor', 'local', '--out', tmp_path/'runs', cwd=tmp_path)  # all finished: nothing runs
    assert r.returncode == 0 and '2 of 2 runs already finished: skipped' in r.stdout, r.stdout + r.stderr


def test_slurm_same_tables(slurm, inline_study, tmp_path):
    r = metanb('study', *TINY, '--executor', 'slurm', '--time_min', '5', '--out', tmp_path/'runs', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'submitted 2 runs to SLURM' in r.stdout, r.stdout
    assert_same(inline_study, tmp_path/'runs'/'tiny')
    assert (tmp_path/'runs'/'tiny'/'submitit').is_dir()


def _squeue(state: str) -> list[str]:
    r = subprocess.run(['squeue', '--array', '--noheader', '--states', state, '--format', '%i'], capture_output=True, text=True)
    return r.stdout.split()


def test_slurm_cancelled_job_fails_then_resumes(slurm, tmp_path):
    args = ['study', '--preset', 'tiny', '--variants', 'maml', '--iters', '40', '--checkpoints', '3', '--tasks', '2', '--quiet',
            '--executor', 'slurm', '--time_min', '5', '--out', tmp_path/'runs']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    p = subprocess.Popen([sys.executable, '-m', 'metanb.cli', *map(str, args)], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log, t0 = tmp_path/'runs'/'tiny'/'logs'/'maml-s0.log', time.time()
    while not (running := _squeue('RUNNING')) and time.time() - t0 < 60: time.sleep(0.1)
    assert running, 'the job never ran'
    subprocess.run(['scancel', *running], check=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, out + err
    fails = [l for l in out.splitlines() if l.startswith('failed: maml-s0')]
    assert len(fails) == 1 and 'CANCELLED' in fails[0] and str(log) in fails[0], out
    assert len(err.strip().splitlines()) == 1 and 'run the same command again' in err, err
    r = metanb(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path/'runs'/'tiny'/'maml-s0'/'job.json').exists() and (tmp_path/'runs'/'tiny'/'report.md').exists()


def test_slurm_job_error_and_log(slurm, tmp_path):
    study = tmp_path/'runs'/'tiny'
    study.mkdir(parents=True); (study/'finetune-s0').write_text('not a run directory')  # this run cannot be written
    r = metanb('study', *TINY, '--executor', 'slurm', '--time_min', '5', '--out', tmp_path/'runs', cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [l for l in r.stdout.splitlines() if l.startswith('failed: finetune-s0')]
    log = study/'logs'/'finetune-s0.log'
    assert len(fails) == 1 and 'Error' in fails[0] and str(log) in fails[0], r.stdout
    assert 'Traceback' in log.read_text() and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    rep = (study/'report.md').read_text()
    assert '## Missing runs' in rep and '`finetune-s0`' in rep and 'maml-s0' in rep


def test_regression_job_that_validates_skips_the_peak(tmp_path, monkeypatch):
    "A sinusoid (regression) run validated during training has no val_acc peak: its job scores fresh tasks at the final checkpoint only."
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    from metanb.presets import resolve_settings, analysis_config
    from metanb.executor import Job, run_job
    s = {**resolve_settings('tiny', iters=8, checkpoints=3, tasks=2), 'val_every': 4, 'val_tasks': 4}
    job = Job(str(tmp_path/'maml-s0'), analysis_config(s), s, 'maml', 0, 'cpu', 1, fresh=20)
    assert job.validates
    run_job(job, redirect=False, progress=False)
    assert (tmp_path/'maml-s0'/'analysis'/'fresh_tasks.csv').is_file() and not (tmp_path/'maml-s0'/'analysis'/'fresh_tasks_peak.csv').exists()
    assert job.done()
