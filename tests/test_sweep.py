"""`metanb sweep` and `metanb matrix` end to end on tiny settings (sinusoid MLP, a few iterations, inline executor).

- the sweep writes runs.csv (one row per run, the measures at the final checkpoint), measures.csv and report.md
  (ranking, figure, what the grid can decide); a second identical command trains and analyses nothing;
- the matrix runs one family and one architecture x 2 algorithms (plus an inapplicable architecture, reported
  'not applicable' with its reason) and writes matrix.csv (one row per cell x claim row), heatmaps and report.md;
- a sweep's run is an ordinary run directory: the explorer opens it.
"""
import json
from pathlib import Path
import pandas as pd
import pytest
from metanb.cli import run_command
from metanb.sweep import DIRECTIONS

TINY = ['--iters', '6', '--checkpoints', '3', '--tasks', '4', '--executor', 'inline', '--quiet']


def _run(capsys, *args) -> str:
    "Run `metanb ARGS...` in this process; its output (the command must succeed)."
    rc = run_command([str(a) for a in args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out + out.err


def _stamps(root: Path) -> dict:
    "Modification times of every checkpoint, analysis table and job.json under `root`."
    return {p: p.stat().st_mtime_ns for p in root.rglob('*') if p.suffix in ('.pt', '.csv', '.json') and p.parent.name != 'figures'
            and p.name not in ('runs.csv', 'measures.csv', 'matrix.csv', 'claims.csv', 'summary.csv')}


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('sweep')
    rc = run_command(['sweep', '--preset', 'tiny', '--axes', 'inner_lr=0.01,0.1', '--seeds', '0,1', '--out', str(out), *TINY])
    assert rc == 0
    return out/'sweep-tiny'


def test_sweep_files(sweep_dir):
    runs = pd.read_csv(sweep_dir/'runs.csv')
    assert len(runs) == 4 and sorted(runs['inner_lr'].unique()) == [0.01, 0.1] and sorted(runs['seed'].unique()) == [0, 1]
    assert {'run', 'seed', 'inner_lr', 'generalization', 'final_step', 'peak_step', 'target', *DIRECTIONS} <= set(runs.columns)
    assert (runs['target'] == 'query_loss').all() and runs['generalization'].notna().all()  # regression: the query loss
    ms = pd.read_csv(sweep_dir/'measures.csv')
    assert set(ms['at']) == {'final'} and set(ms['measure']) == set(DIRECTIONS)
    assert {'tau', 'tau_low', 'tau_high', 'psi', 'sign_error', 'sign_error_worst', 'tau[inner_lr]'} <= set(ms.columns)
    rep = (sweep_dir/'report.md').read_text()
    for s in ('## Measures at the final checkpoint', '| measure | direction | tau | Psi |', '![sweep at final](figures/sweep_final.png)',
              '### What this grid can decide', 'their tau CI spans 0', '## Measures at the validation peak', 'Not measured'):
        assert s in rep, s
    assert (sweep_dir/'figures'/'sweep_final.png').is_file()
    assert all(json.loads((sweep_dir/r/'job.json').read_text())['variant'] == 'maml' for r in runs['run'])


def test_sweep_second_run_starts_nothing(sweep_dir, capsys):
    before = _stamps(sweep_dir)
    out = _run(capsys, 'sweep', '--preset', 'tiny', '--axes', 'inner_lr=0.01,0.1', '--seeds', '0,1', '--out', sweep_dir.parent, *TINY)
    assert '4 of 4 runs already finished: skipped' in out and 'training ' not in out
    assert _stamps(sweep_dir) == before


def test_sweep_bad_axis(tmp_path, capsys):
    rc = run_command(['sweep', '--preset', 'tiny', '--axes', 'algorithm=maml,fomaml', '--out', str(tmp_path), *TINY])
    assert rc == 2 and '--axes' in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_explorer_opens_a_sweep_run(sweep_dir):
    from metanb.explorer import Explorer
    ex = Explorer(sweep_dir/'inner_lr=0.1__seed=1')
    assert ex.step == 6 and not ex.errors


def test_matrix(tmp_path, capsys):
    args = ['matrix', '--archs', 'mlp,conv4', '--families', 'sinusoid', '--algorithms', 'maml,fomaml', '--seeds', '0,1',
            '--width', '8', '--out', tmp_path, *TINY]
    _run(capsys, *args)
    root = tmp_path/'matrix'
    m = pd.read_csv(root/'matrix.csv')
    assert list(m.columns) == ['cell', 'arch', 'family', 'algorithm', 'claim', 'row', 'effect', 'estimate', 'ci_low', 'ci_high', 'verdict', 'n_seeds', 'to_decide']
    assert set(m['cell']) == {'mlp-sinusoid-maml', 'mlp-sinusoid-fomaml', 'conv4-sinusoid-maml', 'conv4-sinusoid-fomaml'}
    assert len(m) == 4 * m.groupby('cell').size().iloc[0] and m.groupby('cell').size().nunique() == 1  # one row per cell x claim row
    na, ran = m[m['arch'] == 'conv4'], m[m['arch'] == 'mlp']
    assert (na['verdict'] == 'not applicable').all() and na['to_decide'].str.contains('image network').all()
    c34 = ran[ran['row'].isin(['3', '4'])]   # regression: the negated query loss stands for generalization
    assert set(c34['verdict']) <= {'supports', 'contradicts', 'cannot decide'}   # measured (2 seeds: cannot decide)
    assert (ran.loc[ran['row'] == '2', 'verdict'] == 'not measured').all()   # claim 2 needs validation accuracy curves
    assert ran.loc[ran['row'] == '1b', 'estimate'].notna().all() and (ran['n_seeds'].loc[ran['row'] == '1b'] == 2).all()
    assert set(ran.loc[ran['row'] == '1b', 'verdict']) <= {'supports', 'contradicts', 'cannot decide'}
    rep = (root/'report.md').read_text()
    for s in ('## Verdicts', '![claim 1b](figures/claim_1b.png)', '## Not applicable', 'claim 5: not measured in any cell'):
        assert s in rep, s
    assert (root/'figures'/'claim_1b.png').is_file() and (root/'mlp-sinusoid-maml'/'report.md').is_file()
    before = _stamps(root)
    out = _run(capsys, *args)
    assert '4 of 4 runs already finished: skipped' in out and 'training ' not in out and _stamps(root) == before
