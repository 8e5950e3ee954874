"""Run-directory integrity: one process per run directory (a real second process holds the lock), no
non-finite checkpoint ever written, resume after divergence with a smaller outer lr, checked
loading of broken checkpoints and configs, strict config types."""
import json, math, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest, torch
import metanb.train
from metanb.core import MetanbError, RunLocked, CheckpointError, ConfigError, DivergedError
from metanb.runs import (RunLock, ckpt_path, list_checkpoints, load_checkpoint, read_checkpoint_file, read_config,
                         save_checkpoint, write_config)
from metanb.train import TrainConfig, train
from metanb.analysis import coherence_ci, analyse_run
from metanb.runs import load_params

CFG = dict(dataset='sinusoid', shots=5, queries=5, meta_batch=4, inner_lr=0.01, inner_steps_train=1, inner_steps_test=1,
           outer_lr=1e-2, meta_iters=12, ckpt_every=4, ckpt_log=None, val_every=0, val_tasks=8, threads=1)

@pytest.fixture
def holder(tmp_path):
    "A second Python process holding the lock of `tmp_path/'run'` until the test ends."
    run = tmp_path/'run'
    code = ("import sys, time; from metanb.runs import RunLock; lk = RunLock(sys.argv[1]).acquire(); "
            "open(sys.argv[1] + '/.config.json.live.tmp', 'w').write('being written'); print('locked', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, '-c', code, str(run)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.stdout.readline().strip() == 'locked'
    yield run, p
    p.kill(); p.wait()

def test_second_process_is_refused(holder):
    run, p = holder
    with pytest.raises(RunLocked, match=rf'is in use by another metanb process \(pid {p.pid}:') as e:
        train(TrainConfig(**CFG), run, progress=False)
    assert len(str(e.value).splitlines()) == 1
    assert (run/'.config.json.live.tmp').exists(), "a live process's temp file was deleted"
    assert not (run/'config.json').exists() and list_checkpoints(run) == []
    write_config(run, {'model': 'mlp'}); (run/'checkpoints').mkdir(); torch.save({}, ckpt_path(run, 0))
    with pytest.raises(RunLocked, match=f'pid {p.pid}'): analyse_run(run, progress=False)
    p.kill(); p.wait()                      # the holder ends: the lock is free
    RunLock(run).acquire().release()

def test_train_holds_lock_and_releases_it(tmp_path):
    seen = []
    orig = metanb.train.Trainer.validate
    def spy(self):
        with pytest.raises(RunLocked): RunLock(tmp_path).acquire()   # held while training
        seen.append(1); return orig(self)
    metanb.train.Trainer.validate = spy
    try: train(TrainConfig(**{**CFG, 'meta_iters': 2}), tmp_path, progress=False)
    finally: metanb.train.Trainer.validate = orig
    assert seen
    RunLock(tmp_path).acquire().release()   # free after train returns

def test_save_checkpoint_refuses_non_finite(tmp_path):
    ok = {'w': torch.ones(2)}
    save_checkpoint(tmp_path, 4, ok)
    with pytest.raises(DivergedError, match=r"step 8: 'params/w' holds NaN or inf .*last good checkpoint is .*step_000004\.pt"):
        save_checkpoint(tmp_path, 8, {'w': torch.tensor([1., math.nan])})
    with pytest.raises(DivergedError, match=r"'optimizer/state/0/exp_avg_sq' holds NaN"):
        save_checkpoint(tmp_path, 8, ok, optimizer={'state': {0: {'exp_avg_sq': torch.tensor([math.inf])}}})
    assert list_checkpoints(tmp_path) == [4]
    assert not list((tmp_path/'checkpoints').glob('.*.tmp'))

def test_diverged_run_resumes_with_smaller_outer_lr(tmp_path):
    bad = TrainConfig(**{**CFG, 'outer_lr': 1e30})
    with pytest.raises(DivergedError, match=r'stopped at step \d+: .*last good checkpoint is step \d+'):
        train(bad, tmp_path, progress=False)
    kept = list_checkpoints(tmp_path)
    for s in kept:   # no non-finite checkpoint on disk
        ck = load_checkpoint(tmp_path, s)
        assert all(torch.isfinite(v).all() for v in ck['params'].values()), s
    good = TrainConfig(**{**CFG, 'outer_lr': 1e-3})
    with pytest.warns(UserWarning, match=rf'outer_lr changes from 1e\+30 to 0.001 at step {kept[-1]}'):
        out = train(good, tmp_path, progress=False)
    assert math.isfinite(out['val_loss'])
    c = read_config(tmp_path)
    assert c['outer_lr'] == 1e-3 and c['outer_lr_changes'] == [{'step': kept[-1], 'from': 1e30, 'to': 1e-3}]
    assert load_checkpoint(tmp_path)['optimizer']['param_groups'][0]['lr'] == 1e-3
    train(good, tmp_path, progress=False)   # the same lr again: no new change recorded
    assert len(read_config(tmp_path)['outer_lr_changes']) == 1

def test_nan_final_validation_fails(tmp_path):
    cfg = TrainConfig(**{**CFG, 'inner_steps_train': 0, 'inner_steps_test': 3, 'inner_lr': 1e30, 'meta_iters': 2})
    with pytest.raises(DivergedError, match='final validation .* is not finite'):
        train(cfg, tmp_path, progress=False)

def broken_run(tmp_path):
    train(TrainConfig(**{**CFG, 'meta_iters': 8}), tmp_path, progress=False)
    return ckpt_path(tmp_path, 8)

@pytest.mark.parametrize('kind', ['truncated', 'random', 'malicious', 'foreign'])
def test_broken_checkpoint_names_file(tmp_path, kind):
    p = broken_run(tmp_path)
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    if kind == 'truncated': p.write_bytes(p.read_bytes()[:200])
    elif kind == 'random': p.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == 'malicious': torch.save({'step': 8, 'params': {}, 'x': Evil()}, p)
    else: torch.save({'weights': {'w': torch.ones(2)}}, p)   # a valid torch file, not a metanb checkpoint
    with pytest.raises(CheckpointError) as e: load_checkpoint(tmp_path, 8)
    msg = str(e.value)
    assert str(p) in msg and 'weights_only' not in msg and e.value.__cause__ is None, msg
    assert ('lacks' if kind == 'foreign' else 'is unreadable') in msg
    with pytest.raises(CheckpointError): load_params(p)    # analysis goes through the same loader
    assert not marker.exists(), "loading a checkpoint executed code"
    if kind != 'foreign':
        with pytest.warns(UserWarning, match=r'step_000008\.pt is unreadable.*resuming from the previous checkpoint'):
            train(TrainConfig(**{**CFG, 'meta_iters': 8}), tmp_path, progress=False)
        assert load_checkpoint(tmp_path, 8)['step'] == 8   # rewritten by the resumed run

@pytest.mark.parametrize('text,msg', [('{"model": ', 'not valid JSON'), ('[1, 2]', 'holds a JSON list, not an object')])
def test_malformed_config(tmp_path, text, msg):
    (tmp_path/'config.json').write_text(text)
    with pytest.raises(ConfigError, match=msg) as e: read_config(tmp_path)
    assert str(tmp_path/'config.json') in str(e.value)

@pytest.mark.parametrize('bad,msg', [(dict(meta_iters=2.5), 'meta_iters must be an integer'), (dict(n_way='5'), 'n_way must be an integer'),
                                     (dict(meta_batch=True), 'meta_batch must be an integer'), (dict(outer_lr=math.inf), 'outer_lr must be a finite'),
                                     (dict(inner_lr=math.nan), 'inner_lr must be a finite'), (dict(reg_strength=-0.5), 'reg_strength must be >= 0')])
def test_config_types(bad, msg):
    with pytest.raises(ConfigError, match=msg): TrainConfig(**bad)

def test_stored_config_still_loads(tmp_path):
    train(TrainConfig(**{**CFG, 'meta_iters': 1}), tmp_path, progress=False)
    assert TrainConfig.from_dict(read_config(tmp_path)).meta_iters == 1

def test_module_functions_not_shadowed_by_methods():
    assert callable(metanb.train.validate) and metanb.train.validate.__module__ == 'metanb.train'
    assert metanb.train.validate is not metanb.train.Trainer.validate

def test_coherence_ci_of_nan_measurements():
    m = np.full((5, 5), np.nan)
    assert all(math.isnan(x) for x in coherence_ci(m, 50))
    m = np.eye(5); m[1, 2] = np.nan
    assert all(math.isnan(x) for x in coherence_ci(m, 50))

def test_errors_are_metanb_errors():
    for E in (RunLocked, CheckpointError, ConfigError, DivergedError): assert issubclass(E, MetanbError)

def test_analysis_of_a_diverged_checkpoint(tmp_path):
    from metanb.models import MLP
    from metanb.core import params_of
    from metanb.analysis import AnalysisConfig
    run = tmp_path/'nanrun'; (run/'checkpoints').mkdir(parents=True)
    (run/'config.json').write_text(json.dumps({'model': 'mlp', 'model_kwargs': {'sizes': [1, 8, 1]}, 'dataset': 'sinusoid',
                                               'shots': 5, 'queries': 5, 'inner_lr': 0.01, 'inner_steps_test': 2}))
    torch.manual_seed(0); p = params_of(MLP((1, 8, 1)), detach=True)
    torch.save(p, run/'checkpoints'/'step_000000.pt')
    torch.save({k: v * math.nan for k, v in p.items()}, run/'checkpoints'/'step_000010.pt')
    _, s = analyse_run(run, AnalysisConfig(n_tasks=4, n_boot=20, tol=1e-2), progress=False, log=None)
    nan = s[s.step == 10]
    assert len(nan) and nan[['value', 'ci_low', 'ci_high']].isna().all().all()
    assert s[s.step == 0].value.notna().all()
