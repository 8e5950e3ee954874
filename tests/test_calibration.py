"The claims table holds its stated error rate: simulated studies where each claim is false (or planted), statistics only."
import numpy as np, pandas as pd, pytest
from metanb.stats import synthetic_study, ALPHA
from metanb.claims import calibration, claims_table, CALIBRATION

N = 200  # simulated studies per (study, number of seeds)
SLACK = 2 * np.sqrt(ALPHA * (1 - ALPHA) / N)  # two Monte Carlo standard errors at the nominal rate


@pytest.fixture(scope='module')
def cal():
    return calibration(N, seeds=(1, 3, 5), seed=2026)


def test_false_decisions_hold_the_level(cal):
    bad = cal[cal['false_decision'] > ALPHA + SLACK]
    assert bad.empty, f"false-decision rate above {ALPHA} + {SLACK:.3f}:\n{bad.to_string()}"


def test_few_seeds_decide_nothing(cal):
    assert (cal.query('n_seeds < 3')[['supports', 'contradicts']] == 0).all().all()


def test_planted_effects_are_found_with_five_seeds(cal):
    p = cal.query('claim_true and n_seeds == 5').set_index('study')['power']
    assert p['coherence tracks accuracy (3)'] >= 0.9 and p['flatter with training (1a)'] >= 0.9, p
    assert p['regularizer gains +0.03 (6)'] >= 0.7, p
    assert set(cal['study']) == set(CALIBRATION)


def test_five_seeds_from_the_table_alone():
    "A clear planted effect (coherence follows accuracy's rise, fluctuations and decline) is supported from the per-checkpoint table alone."
    wins = 0
    for s in range(10):
        _, ck = synthetic_study(seeds=range(5), fluct=0.03, n_checkpoints=12, n_tasks=20, seed=s)
        wins += claims_table(ck).set_index('row').loc['3', 'verdict'] == 'supports'
    assert wins >= 8, wins


def test_unrelated_trends_from_the_table_alone():
    "Coherence that only shares accuracy's trend (no fluctuation in common) is not supported, though the trend correlation is ~1."
    hits = 0
    for s in range(10):
        _, ck = synthetic_study(seeds=range(5), fluct=0.0, n_checkpoints=12, n_tasks=20, seed=s)
        c = claims_table(ck).set_index('row')
        assert c.loc['3 trend', 'estimate'] > 0.8
        hits += c.loc['3', 'verdict'] in ('supports', 'contradicts')
    assert hits <= 2, hits


def test_one_seed_decides_nothing():
    _, ck = synthetic_study(seeds=(0,), variants=('maml', 'finetune', 'maml+coherence_step'))
    c = claims_table(ck)
    assert not c['verdict'].isin(['supports', 'contradicts']).any()
    assert (c.query("role == 'claim'")['to_decide'].str.len() > 0).all()
    w = c['ci_high'] - c['ci_low']
    assert not (w == 0).any()  # never a zero-width interval
