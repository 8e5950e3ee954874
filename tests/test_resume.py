"""Kill a real training process (SIGKILL) mid-run, restart it, and check the final params equal an
uninterrupted run's bit for bit; and check that a diverging run stops with an error naming the
step and the likely cause."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from metanb.runs import list_checkpoints, load_checkpoint, read_log
from metanb.train import TrainConfig, train

CFG = dict(dataset='sinusoid', shots=5, queries=5, meta_batch=8, inner_lr=0.01, inner_steps_train=2, inner_steps_test=2,
           outer_lr=1e-2, meta_iters=80, ckpt_every=10, ckpt_log=None, val_every=40, val_tasks=16, threads=1)
SCRIPT = ("import sys, json; from metanb.train import TrainConfig, train; "
          "train(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], progress=False)")

def launch(run_dir, cfg=CFG):
    "Start training `cfg` into `run_dir` in a fresh Python process."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    return subprocess.Popen([sys.executable, '-c', SCRIPT, json.dumps(cfg), str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"training process failed:\n{err[-3000:]}"

def test_sigkill_then_resume_is_bit_exact(tmp_path):
    killed, clean = tmp_path/'killed', tmp_path/'clean'
    ref = launch(clean)                       # the uninterrupted run, alongside
    p = launch(killed)
    deadline = time.monotonic() + 90
    while max(list_checkpoints(killed), default=0) < 20:   # a few checkpoints in: mid-run
        assert p.poll() is None, f"training ended before it could be killed: {p.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    at_kill = list_checkpoints(killed)
    assert p.returncode == -signal.SIGKILL, p.returncode
    assert at_kill[-1] < CFG['meta_iters'], f"the run had finished before the kill: {at_kill}"
    finish(launch(killed))                    # restart: resumes from the latest checkpoint
    finish(ref)
    a, b = load_checkpoint(killed), load_checkpoint(clean)
    assert a['step'] == b['step'] == CFG['meta_iters']
    for k in b['params']: assert torch.equal(a['params'][k], b['params'][k]), k
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        for k in sb: assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    la, lb = read_log(killed), read_log(clean)
    assert la.step.tolist() == list(range(CFG['meta_iters'] + 1)), f"resumed log rows: {la.step.tolist()}"
    assert lb.step.tolist() == list(range(CFG['meta_iters'] + 1)), f"uninterrupted log rows: {lb.step.tolist()}"
    assert la.loss.equals(lb.loss) and la.val_loss.equals(lb.val_loss)
    assert list_checkpoints(killed) == list_checkpoints(clean)
    assert not list((killed/'checkpoints').glob('.*.tmp')), "temporary files of the killed write were not cleaned up"

def test_nan_inner_lr_names_step_and_cause(tmp_path):
    cfg = TrainConfig(**{**CFG, 'inner_lr': 1e30, 'meta_iters': 20, 'val_every': 0})
    with pytest.raises(FloatingPointError, match=r'stopped at step 0: .*lower the inner learning rate \(inner_lr=1e\+30\)'):
        train(cfg, tmp_path, progress=False)
    assert list_checkpoints(tmp_path) == [0]   # the last good checkpoint is kept

def test_nan_outer_lr_names_step_and_cause(tmp_path):
    cfg = TrainConfig(**{**CFG, 'outer_lr': 1e30, 'meta_iters': 20, 'val_every': 0})
    with pytest.raises(FloatingPointError, match=r'stopped at step [1-9]\d*: .*lower the outer learning rate \(outer_lr=1e\+30\)') as e:
        train(cfg, tmp_path, progress=False)
    step = int(str(e.value).split('stopped at step ')[1].split(':')[0])
    assert max(list_checkpoints(tmp_path)) <= step   # nothing written for the broken step

def test_resume_a_run_whose_log_has_the_old_support_loss_column(tmp_path):
    "A run whose train_log.csv was written before `support_loss` became `support_loss_before` resumes with one column."
    cfg = {**CFG, 'meta_iters': 20, 'val_every': 0}
    train(TrainConfig(**cfg), tmp_path, progress=False)
    log = tmp_path/'train_log.csv'
    log.write_text(log.read_text().replace('support_loss_before', 'support_loss', 1))   # the header the old code wrote
    assert 'support_loss_before' in read_log(tmp_path)
    train(TrainConfig(**{**cfg, 'meta_iters': 30}), tmp_path, progress=False)
    df = read_log(tmp_path)
    assert 'support_loss' not in df and df.support_loss_before.notna().sum() == 30, df.columns.tolist()
