"""metanb.distributed on 2 CPU processes (gloo): a torchrun job equals one process (float64, relative
error <= 1e-10) and resumes after a SIGKILL of the whole job; the collectives, error propagation and
the distributed analysis (merged files equal one process's, byte for byte) through `launch`.
GPU checks (nccl) live in nbs/14_distributed.ipynb behind the `cuda` flag."""
import json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest, torch
from metanb.core import norm, sub, params_of
from metanb.distributed import (launch, train_distributed, torchrun_command, distributed_meta_grad, run_on_main, in_sync, broadcast_params,
                                all_reduce_metrics, world, shard_indices, check_sharding, analyse_run_distributed, rank_device)
from metanb.maml import meta_grad
from metanb.runs import list_checkpoints, load_checkpoint, read_log
from metanb.tasks import ImageClasses
from metanb.testutils import tiny_mlp, sinusoid_batch
from metanb.train import TrainConfig, train

CFG = dict(dataset='sinusoid', shots=5, queries=5, meta_batch=6, inner_lr=0.01, inner_steps_train=2, inner_steps_test=2,
           outer_lr=1e-2, meta_iters=120, ckpt_every=10, ckpt_log=None, val_every=40, val_tasks=8, threads=1)
SCRIPT = """import json, sys, torch
torch.set_default_dtype(torch.float64)
from metanb.distributed import train_distributed
train_distributed(json.loads(sys.argv[1]), sys.argv[2], progress=False)
"""

def rel(a, b) -> float: return (norm(sub(a, b)) / norm(b)).item()

class float64:
    "Torch's default dtype float64 and one thread inside the block (restored after)."
    def __enter__(self):
        self.dt, self.th = torch.get_default_dtype(), torch.get_num_threads()
        torch.set_default_dtype(torch.float64); torch.set_num_threads(1)
    def __exit__(self, *a): torch.set_default_dtype(self.dt); torch.set_num_threads(self.th)

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "The uninterrupted one-process float64 run of CFG."
    d = tmp_path_factory.mktemp('one')/'run'
    with float64(): train(TrainConfig(**CFG), d, progress=False)
    return d

def test_shares_and_refusals():
    for B, W in [(6, 2), (5, 2), (7, 3), (4, 4)]:
        step = 3
        parts = [shard_indices(range(step * B, (step + 1) * B), r, W) for r in range(W)]
        assert sum(parts, []) == list(range(step * B, (step + 1) * B))
    with pytest.raises(ValueError, match='set group_size=3 or a divisor of it'): check_sharding(6, 2, None, coupled=True)
    with pytest.raises(ValueError, match='start at most 6 processes'): check_sharding(6, 8)

# ---- torchrun: equal to one process, and resumable after SIGKILL ---------------------------------

def start_job(tmp_path, run_dir, name):
    "torchrun with 2 CPU ranks training CFG in float64 into `run_dir` (its own session, output to a file)."
    script = tmp_path/'train64.py'; script.write_text(SCRIPT)
    out = open(tmp_path/f'{name}.log', 'w')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(torchrun_command(2, [script, json.dumps(CFG), run_dir]), stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)

def children(pid) -> list[int]:
    "Direct child processes of `pid` (torchrun's workers run in sessions of their own)."
    out = []
    for p in Path('/proc').iterdir():
        try:
            if p.name.isdigit() and int((p/'stat').read_text().rsplit(')', 1)[1].split()[1]) == pid: out.append(int(p.name))
        except (OSError, ValueError, IndexError): pass
    return out

def kill_job(p) -> list[int]:
    "Freeze then SIGKILL the launcher and all its workers at once (as a crashed node would stop)."
    pids = [p.pid, *children(p.pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try: os.kill(pid, sig)
            except ProcessLookupError: pass
    p.wait()
    return pids

def log_of(tmp_path, name) -> str: return (tmp_path/f'{name}.log').read_text()[-3000:]

def test_torchrun_equals_one_process_and_resumes_after_sigkill(tmp_path, reference):
    run = tmp_path/'two'
    p = start_job(tmp_path, run, 'killed')
    deadline = time.monotonic() + 240
    while max(list_checkpoints(run), default=0) < 10:
        assert p.poll() is None, f"the job ended before it could be killed:\n{log_of(tmp_path, 'killed')}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    pids = kill_job(p)
    assert len(pids) == 3, f"expected torchrun and 2 workers, found {pids}"
    time.sleep(0.2)
    alive = [q for q in pids if Path(f'/proc/{q}').exists() and (Path(f'/proc/{q}')/'stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z']
    assert not alive, f"processes survived SIGKILL: {alive}"
    at_kill = list_checkpoints(run)
    assert 10 <= at_kill[-1] < CFG['meta_iters'], at_kill
    for s in at_kill:   # the distributed run so far equals one process, step by step
        assert rel(load_checkpoint(run, s)['params'], load_checkpoint(reference, s)['params']) <= 1e-10, s

    q = start_job(tmp_path, run, 'resumed')   # relaunch: resumes from the latest checkpoint
    assert q.wait(timeout=240) == 0, log_of(tmp_path, 'resumed')
    assert list_checkpoints(run) == list_checkpoints(reference)
    a, b = load_checkpoint(run), load_checkpoint(reference)
    assert a['step'] == b['step'] == CFG['meta_iters']
    err = rel(a['params'], b['params'])
    assert err <= 1e-10, err
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        for k in ('exp_avg', 'exp_avg_sq'): assert torch.allclose(sa[k], sb[k], rtol=1e-9, atol=1e-14), k
    la, lb = read_log(run), read_log(reference)
    assert la.step.tolist() == lb.step.tolist() == list(range(CFG['meta_iters'] + 1))
    np.testing.assert_allclose(la.loss, lb.loss, rtol=1e-9)
    np.testing.assert_allclose(la.val_loss.dropna(), lb.val_loss.dropna(), rtol=1e-9)
    assert not list(run.rglob('.*.tmp'))

# ---- launch: collectives, errors, and the distributed analysis --------------------------------

def image_data() -> ImageClasses:
    "12 classes x 6 random 12x12 images: enough for 3-way episodes and a Conv4 with 4 filters."
    g = torch.Generator().manual_seed(0)
    return ImageClasses((torch.rand(12, 6, 1, 12, 12, generator=g) * 255).to(torch.uint8), [f'c{i}' for i in range(12)],
                        {'train': list(range(6)), 'val': [6, 7, 8], 'test': [9, 10, 11]})

IMG = dict(dataset='glyphs', n_way=3, shots=1, queries=2, meta_batch=4, inner_lr=0.1, inner_steps_train=1, inner_steps_test=1,
           meta_iters=4, ckpt_every=2, ckpt_log=None, val_every=2, val_tasks=4, threads=1, model_kwargs={'hidden': 4})
IMG_VARIANTS = {'coherence': dict(regularizer='coherence_step', reg_strength=0.1, group_size=2),  # a group per rank
                'finetune': dict(algorithm='finetune')}                                          # rank 0 computes, broadcasts

def _rank_checks(model, params, tasks, kw, runs, img_dir):
    "Run on each of 2 ranks: meta-gradient over uneven shares, error propagation, sync checks, analysis."
    rank, n = world()
    out = {'world': (rank, n)}
    out['grads'], out['metrics'] = distributed_meta_grad(model, params, tasks, **kw)
    try: run_on_main(lambda: int('not a number'))
    except ValueError as e: out['error'] = str(e)
    p = {k: v + rank for k, v in params.items()}
    out['in_sync'] = (in_sync(p), in_sync(broadcast_params(p)))
    out['p'] = p
    out['reduced'] = all_reduce_metrics({'rank': float(rank)}, 1.)
    for k, v in IMG_VARIANTS.items(): train_distributed({**IMG, **v}, f'{img_dir}/{k}-two', progress=False, data=image_data())
    if runs is not None:
        from metanb.analysis import AnalysisConfig
        with float64():
            out['analysis'] = analyse_run_distributed(runs['two'], AnalysisConfig(**runs['cfg']), steps_only=runs['steps'], progress=False, log=None)
    return out

def _analysis_setup(tmp_path):
    "A short float64 run in two copies (same folder name, so the same tables), and small analysis settings."
    try: import metanb.analysis  # noqa: F401
    except ImportError as e: return None, f"metanb.analysis is not importable yet ({e})"
    with float64(): train(TrainConfig(**{**CFG, 'meta_iters': 4, 'ckpt_every': 2, 'val_every': 0}), tmp_path/'one'/'run', progress=False)
    shutil.copytree(tmp_path/'one'/'run', tmp_path/'two'/'run')
    return {'one': str(tmp_path/'one'/'run'), 'two': str(tmp_path/'two'/'run'), 'steps': [0, 2, 4],
            'cfg': dict(n_tasks=4, max_iter=20, tol=1e-2, n_boot=50, device='cpu', batching='loop')}, None

def test_launch_collectives_errors_and_analysis(tmp_path):
    model, tasks = tiny_mlp(dtype=torch.float64), sinusoid_batch(5, dtype=torch.float64)   # shares of 3 and 2 tasks
    params, kw = params_of(model, detach=True), dict(steps=2, lr=0.05)
    runs, why = _analysis_setup(tmp_path)
    res = launch(2, _rank_checks, model, params, tasks, kw, runs, str(tmp_path), timeout=300)
    ref, ref_m = meta_grad(model, params, tasks, **kw)
    assert [r['world'] for r in res] == [(0, 2), (1, 2)]
    for r in res:
        assert rel(r['grads'], ref) <= 1e-12
        assert abs(r['metrics']['loss'] - ref_m['loss']) <= 1e-12 * abs(ref_m['loss'])
        assert 'not a number' in r['error']              # rank 0's exception, raised on both ranks
        assert r['in_sync'] == (False, True)
        assert r['reduced'] == {'rank': 1.0}
    for k in ref:
        assert torch.equal(res[0]['grads'][k], res[1]['grads'][k])   # every rank holds the same bits
        assert torch.equal(res[1]['p'][k], params[k])                 # broadcast from rank 0
    for k, v in IMG_VARIANTS.items():   # Conv4 on episodic image tasks (float32): a regularizer, finetuning
        train(TrainConfig(**{**IMG, **v}), tmp_path/f'{k}-one', progress=False, data=image_data())
        a, b = load_checkpoint(tmp_path/f'{k}-two'), load_checkpoint(tmp_path/f'{k}-one')
        assert a['step'] == b['step'] == IMG['meta_iters']
        for n in b['params']:   # conv biases before batchnorm have a zero gradient up to rounding, which Adam scales to +-lr steps
            if not re.fullmatch(r'features\.\d\.0\.bias', n): assert torch.allclose(a['params'][n], b['params'][n], rtol=1e-5, atol=1e-6), (k, n)
        ca, cb = (json.loads((tmp_path/f'{k}-{w}'/'config.json').read_text()) for w in ('two', 'one'))
        assert {**ca, 'created': None} == {**cb, 'created': None}
    with pytest.raises(RuntimeError, match=r"rank \d of 2 failed:(.|\n)*invalid literal for int"):
        launch(2, int, 'x', timeout=120)
    if runs is None: pytest.skip(why)
    from metanb.analysis import AnalysisConfig, analyse_run
    with float64(): analyse_run(runs['one'], AnalysisConfig(**runs['cfg']), steps_only=runs['steps'], progress=False, log=None)
    one, two = Path(runs['one'])/'analysis', Path(runs['two'])/'analysis'
    csvs = sorted(p.relative_to(one) for p in one.rglob('*.csv'))
    assert len(csvs) == 2 + 2 * len(runs['steps']) and csvs == sorted(p.relative_to(two) for p in two.rglob('*.csv'))
    for f in csvs: assert (one/f).read_bytes() == (two/f).read_bytes(), f   # byte for byte
    for s in runs['steps']:
        a, b = np.load(one/f'step_{s:06d}'/'pairwise.npz'), np.load(two/f'step_{s:06d}'/'pairwise.npz')
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert res[0]['analysis'][1].equals(res[1]['analysis'][1])

# ---- GPU (skipped without CUDA; run on a GPU machine) -------------------------------------------

def meta_grad_on(device, model, params, tasks, kw):
    "Run on each nccl rank: `distributed_meta_grad` with model, params and tasks on this rank's `device`; the gradient back on CPU."
    d = rank_device(device)
    g, m = distributed_meta_grad(model.to(d), {k: v.to(d) for k, v in params.items()}, tasks.to(d), **kw)
    return {k: v.cpu() for k, v in g.items()}, m

@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 CUDA devices (nccl ranks)')
def test_nccl_two_gpus_equal_one_process(tmp_path):
    model, tasks = tiny_mlp(dtype=torch.float64), sinusoid_batch(5, dtype=torch.float64)
    params, kw = params_of(model, detach=True), dict(steps=2, lr=0.05, batching='vmap')
    ref, _ = meta_grad(model, params, tasks, **kw)
    for g, _ in launch(2, meta_grad_on, 'cuda', model, params, tasks, kw, backend='nccl'): assert rel(g, ref) <= 1e-10
    cfg = {**CFG, 'meta_iters': 20}
    launch(2, train_distributed, {**cfg, 'device': 'cuda'}, str(tmp_path/'two'), kwargs={'progress': False}, backend='nccl', dtype=torch.float64)
    with float64(): train(TrainConfig(**cfg), tmp_path/'one', progress=False)
    assert rel(load_checkpoint(tmp_path/'two')['params'], load_checkpoint(tmp_path/'one')['params']) <= 1e-10
