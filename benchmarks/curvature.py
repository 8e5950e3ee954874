#!/usr/bin/env python
"""Time certified curvature of adapted Conv4 solutions: metanb against PyHessian and hessian-eigenthings.

Setting (issue 5): Conv4 (Omniglot variant, 64 filters, 28x28, 112,261 parameters), 5-way 1-shot.
theta_s is the random (seeded) initialization, NOT a trained checkpoint; each task's solution is
`metanb.maml.adapt` from theta_s (10 SGD steps, lr 0.4, Omniglot's test setting) on the task's
5 support images. The images are synthetic (`metanb.testutils.image_batch`: class-dependent means
plus noise). The Hessian is that of the support loss at the adapted solution, batchnorm with batch
statistics (PyHessian's `model.eval()` changes nothing for this net: it keeps no running stats).

Part `single`: one adapted task. The reference top eigenvalue comes from metanb's Lanczos in
float64 (certified residual bound <= 1e-9 relative). Each method runs from 3 seeds; reported: wall
time (graph building included), HVPs, the actual relative error against the reference and, for
metanb, the certified bound. PyHessian's power iteration stops on the change of its estimate
(`tol`); we sweep `tol` to find the setting that first reaches 1e-4 (a user cannot know which, it
reports no bound). hessian-eigenthings' `lanczos` runs a fixed number of steps (default 2 for
k=1): we sweep `max_iter`; its `power_iteration_one` stops on change and residual.
PyHessian accumulates `.grad` on the model each time it is constructed (doubling the Hessian
of a second instance); we give it a fresh model copy per run so its numbers are right.

Part `batch`: top eigenvalue with certified bound (and, with --trace, a Hutchinson trace) of
every task of a batch of adapted tasks (default 100), with metanb's batched estimators in several
configurations, a per-task loop of single-task calls, and PyHessian looped over tasks.

Measured (CPU, 2 cores shared with other jobs, load average 4-6, torch 2.14.1, --threads 1):
  one task, top eigenvalue 0.604249 (float64 reference):
    metanb top_eigenvalue rtol=1e-4        0.22 s   17 HVPs  error 1.4e-6, certified bound 5.6e-5
    pyhessian tol=1e-3 (its default)       0.37 s   20 HVPs  error 6.1e-3 (no bound)
    pyhessian tol=1e-4                     0.50 s   29 HVPs  error 5.5e-4
    pyhessian tol=1e-5 (first <= 1e-4)     0.47 s   39 HVPs  error 5.9e-5
    eigenthings lanczos default (2 steps)  0.08 s    2 HVPs  error 0.71
    eigenthings lanczos max_iter=15        0.54 s   15 HVPs  error 1.3e-6 (no stop rule: the user picks 15)
    eigenthings power_iteration_one 1e-4   1.77 s   70 HVPs  error 9.9e-7
  100 tasks, top eigenvalue certified to 1e-4 (17.9 HVPs per task): 26 s batched (double-backward,
  vmap, chunks of 16); 33 s as a loop of single-task calls; Hutchinson traces (10% target) +12 s;
  PyHessian at tol=1e-5, looped, no bound: 81 s (10 tasks timed, x10). With --threads 2 on the
  same loaded machine the batched run took 83 s (OpenMP threads wait on each other when the
  cores are oversubscribed).

Peers install into a separate venv (never into .venv); this one reuses .venv's torch and metanb:
    /work/main/.venv/bin/python -m venv /tmp/peers-hess-venv
    echo "import site; site.addsitedir('/work/main/.venv/lib/python3.11/site-packages')" \
        > /tmp/peers-hess-venv/lib/python3.11/site-packages/main_venv.pth
    /tmp/peers-hess-venv/bin/pip install pyhessian "hessian-eigenthings==1.0.0a5" torch==2.14.1
Run:
    /tmp/peers-hess-venv/bin/python benchmarks/curvature.py                 # both parts, peers if installed
    .venv/bin/python benchmarks/curvature.py --part batch --tasks 100       # metanb only
    python benchmarks/curvature.py --device cuda --threads 0
    .venv/bin/python benchmarks/curvature.py --quick                       # a smoke run on a tiny Conv4
"""
from __future__ import annotations
import argparse, copy, json, os, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # metanb from this checkout, also from the peers' venv

import torch, torch.nn.functional as F
from torch.func import vmap
from metanb.core import params_of, flatten, get_device
from metanb.models import Conv4
from metanb.testutils import image_batch
from metanb.maml import adapt
from metanb.hessian import (make_loss_fn, make_batch_loss_fn, top_eigenvalue, batch_top_eigenvalue, hutchinson_trace,
                            batch_hutchinson_trace, HessianOperator)

try: import pyhessian
except ImportError: pyhessian = None
try: import hessian_eigenthings as eigenthings
except ImportError: eigenthings = None

# ----------------------------------------------------------------------------- setting

def setting(args, n_tasks:int, dtype=torch.float32):
    "Model, theta_s, tasks and adapted solutions (tensors lead with the task dim), on the device."
    dev = get_device(args.device)
    torch.manual_seed(0)
    model = (Conv4(5, hidden=4, img=12) if args.quick else Conv4(5)).to(dev, dtype)
    tb = image_batch(n_tasks=n_tasks, n_way=5, shots=1, queries=15, img=12 if args.quick else 28, dtype=dtype, seed=args.seed).to(dev)
    theta = params_of(model, detach=True)
    ad = vmap(lambda xs, ys: adapt(model, theta, xs, ys, steps=args.steps, lr=args.lr))(tb.xs, tb.ys)
    return model, theta, tb, {k: v.detach() for k, v in ad.items()}

def sync(dev):
    if torch.device(dev).type == 'cuda': torch.cuda.synchronize()

def timed(f, dev):
    sync(dev); t = time.perf_counter(); r = f(); sync(dev)
    return r, time.perf_counter() - t

def model_at(model, params):
    "A fresh copy of `model` holding `params` (what PyHessian / hessian-eigenthings need)."
    m = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in m.named_parameters(): p.copy_(params[k])
    return m

# ----------------------------------------------------------------------------- part 1: one task

def reference(args, model, p, x, y):
    "Top eigenvalue (largest algebraic and largest magnitude) in float64, certified to 1e-9."
    m64 = model_at(model, p).double()
    lf = make_loss_fn(m64, x.double(), y)
    p64 = {k: v.double() for k, v in p.items()}
    la = top_eigenvalue(lf, p64, rtol=1e-9, max_iter=300)
    lm = top_eigenvalue(lf, p64, which='LM', rtol=1e-9, max_iter=300)
    assert la.converged and lm.converged, (la, lm)
    return la, lm

def run_metanb(args, model, p, x, y, ref, method='double_backward', rtol=1e-4):
    lf = make_loss_fn(model, x, y)
    rows = []
    for s in range(3):
        r, dt = timed(lambda: top_eigenvalue(lf, p, rtol=rtol, method=method, seed=s, max_iter=300), args.device)
        rows.append(dict(time=dt, n_hvp=r.n_hvp, rel_err=abs(r.value - ref) / abs(ref), rel_bound=r.rel_error_bound, converged=r.converged))
    return rows

def run_pyhessian(args, model, p, x, y, ref, tol):
    ph = sys.modules['pyhessian.hessian']  # the module (the package attribute `hessian` is the class)
    count = [0]; orig = ph.hessian_vector_product
    def counted(*a, **k): count[0] += 1; return orig(*a, **k)
    ph.hessian_vector_product = counted
    rows = []
    try:
        for s in range(3):
            m = model_at(model, p); torch.manual_seed(s); count[0] = 0
            def go():
                h = ph.hessian(m, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=torch.device(args.device).type == 'cuda')
                return h.eigenvalues(maxIter=1000, tol=tol)[0][0]
            val, dt = timed(go, args.device)
            rows.append(dict(time=dt, n_hvp=count[0], rel_err=abs(val - ref) / abs(ref)))
    finally: ph.hessian_vector_product = orig
    return rows

def run_eigenthings(args, model, p, x, y, ref, max_iter=None, power=False):
    rows = []
    for s in range(3):
        m = model_at(model, p)
        op = eigenthings.HessianOperator(m, [(x, y)], eigenthings.supervised_loss(F.cross_entropy))
        count = [0]; mv = op.matvec
        def counted(v): count[0] += 1; return mv(v)
        op.matvec = counted
        if power: go = lambda: eigenthings.power_iteration_one(op, max_iter=1000, tol=1e-4, seed=s)[0]
        else: go = lambda: eigenthings.lanczos(op, k=1, which='LA', max_iter=max_iter, seed=s).eigenvalues[0].item()
        val, dt = timed(go, args.device)
        rows.append(dict(time=dt, n_hvp=count[0], rel_err=abs(val - ref) / abs(ref)))
    return rows

def summary(rows):
    "Median time and HVPs, worst error (and bound) over seeds."
    out = dict(time=statistics.median(r['time'] for r in rows), n_hvp=statistics.median(r['n_hvp'] for r in rows),
               max_rel_err=max(r['rel_err'] for r in rows))
    if 'rel_bound' in rows[0]: out.update(max_rel_bound=max(r['rel_bound'] for r in rows), all_converged=all(r['converged'] for r in rows))
    return out

def part_single(args, report):
    model, theta, tb, ad = setting(args, 1)
    p, x, y = {k: v[0] for k, v in ad.items()}, tb.xs[0], tb.ys[0]
    (la, lm), dt = timed(lambda: reference(args, model, p, x, y), args.device)
    ref = la.value
    res = dict(reference=dict(top_LA=la.value, LA_rel_bound=la.rel_error_bound, top_LM=lm.value, time_float64=dt))
    print(f"reference (float64 Lanczos): largest {la.value:.6f} (bound {la.rel_error_bound:.1e}), largest magnitude {lm.value:.6f}", flush=True)
    def show(name, rows):
        s = summary(rows); res[name] = s
        extra = f" bound {s['max_rel_bound']:.1e}" if 'max_rel_bound' in s else ''
        print(f"  {name:44s} {s['time']:7.3f} s  {s['n_hvp']:5.0f} HVPs  max rel err {s['max_rel_err']:.1e}{extra}", flush=True)
    for method in ('double_backward', 'fwd_rev'):
        for rtol in (1e-4, 1e-3):
            show(f'metanb top_eigenvalue {method} rtol={rtol:g}', run_metanb(args, model, p, x, y, ref, method, rtol))
    if pyhessian is not None:
        for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
            show(f'pyhessian eigenvalues tol={tol:g}', run_pyhessian(args, model, p, x, y, ref, tol))
    else: print("  (pyhessian not installed: skipped)")
    if eigenthings is not None:
        for mi in (None, 5, 10, 15, 20, 30, 40):
            show(f'eigenthings lanczos max_iter={mi or "default"}', run_eigenthings(args, model, p, x, y, ref, mi))
        show('eigenthings power_iteration_one tol=1e-4', run_eigenthings(args, model, p, x, y, ref, power=True))
    else: print("  (hessian-eigenthings not installed: skipped)")
    report['single'] = res

# ----------------------------------------------------------------------------- part 2: many tasks

def part_batch(args, report):
    model, theta, tb, ad = setting(args, args.tasks)
    T, res = args.tasks, {}
    print(f"{T} adapted tasks; top eigenvalue of each support-loss Hessian, certified rtol={args.rtol:g}", flush=True)
    def rec(name, r, dt, extra=''):
        res[name] = dict(time=dt, converged=int(r.converged.sum()), mean_hvp=float(r.n_hvp.double().mean()),
                         max_rel_bound=float(r.rel_error_bound.max()))
        print(f"  {name:52s} {dt:7.2f} s  converged {int(r.converged.sum())}/{T}  mean HVPs {r.n_hvp.double().mean():5.1f}  "
              f"max rel bound {r.rel_error_bound.max():.1e}{extra}", flush=True)
        return r
    configs = [(m, v, c) for m, v, c in args.configs]
    vals = {}
    for method, vectorize, chunk in configs:
        lf = make_batch_loss_fn(model, tb.xs, tb.ys, batching='vmap' if vectorize else 'loop')
        r, dt = timed(lambda: batch_top_eigenvalue(lf, ad, rtol=args.rtol, method=method, chunk_size=chunk, max_iter=300), args.device)
        vals[(method, vectorize, chunk)] = rec(f"batch {method} {'vmap' if vectorize else 'loop'} chunk={chunk}", r, dt).value
    if args.loop:
        def loop():
            return [top_eigenvalue(make_loss_fn(model, tb.xs[t], tb.ys[t]), {k: v[t] for k, v in ad.items()}, rtol=args.rtol, seed=t, max_iter=300) for t in range(T)]
        rs, dt = timed(loop, args.device)
        res['loop of top_eigenvalue'] = dict(time=dt, converged=sum(r.converged for r in rs), mean_hvp=statistics.mean(r.n_hvp for r in rs))
        print(f"  {'loop of single-task top_eigenvalue':52s} {dt:7.2f} s  converged {sum(r.converged for r in rs)}/{T}  mean HVPs {statistics.mean(r.n_hvp for r in rs):5.1f}", flush=True)
        v = torch.tensor([r.value for r in rs])
        for k, bv in vals.items(): assert torch.allclose(bv, v.to(bv), rtol=3 * args.rtol), (k, (bv - v).abs().max())
    if args.trace:
        lf = make_batch_loss_fn(model, tb.xs, tb.ys)
        tr, dt = timed(lambda: batch_hutchinson_trace(lf, ad, rtol=args.trace_rtol, max_samples=args.trace_max), args.device)
        res['trace'] = dict(time=dt, converged=int(tr.converged.sum()), mean_samples=float(tr.n_samples.double().mean()),
                            median_rel_se=float((tr.std_error / tr.value.abs()).median()))
        print(f"  {'batch_hutchinson_trace rtol=%g max=%d' % (args.trace_rtol, args.trace_max):52s} {dt:7.2f} s  converged {int(tr.converged.sum())}/{T}  "
              f"mean samples {tr.n_samples.double().mean():.0f}  median rel se {res['trace']['median_rel_se']:.2f}", flush=True)
    if pyhessian is not None and args.peer_tasks:
        ph = sys.modules['pyhessian.hessian']
        n = min(args.peer_tasks, T)
        def go():
            out = []
            for t in range(n):
                m = model_at(model, {k: v[t] for k, v in ad.items()}); torch.manual_seed(t)
                h = ph.hessian(m, torch.nn.CrossEntropyLoss(), data=(tb.xs[t], tb.ys[t]), cuda=torch.device(args.device).type == 'cuda')
                out.append(h.eigenvalues(maxIter=1000, tol=args.pyhessian_tol)[0][0])
            return out
        _, dt = timed(go, args.device)
        res['pyhessian loop'] = dict(tasks=n, time=dt, time_per_100=dt * 100 / n, tol=args.pyhessian_tol)
        print(f"  {'pyhessian per task, tol=%g (no bound), %d tasks' % (args.pyhessian_tol, n):52s} {dt:7.2f} s  (x{100 / n:g} for 100 tasks: {dt * 100 / n:.1f} s)", flush=True)
    report['batch'] = res

# ----------------------------------------------------------------------------- main

def parse_config(s:str):
    m, v, c = s.split(':')
    return m, v == 'vmap', None if c == 'all' else int(c)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--part', choices=('single', 'batch', 'all'), default='all')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: leave as is); 1 was 3x faster than 2 on the shared 2-core box')
    ap.add_argument('--tasks', type=int, default=100)
    ap.add_argument('--steps', type=int, default=10); ap.add_argument('--lr', type=float, default=0.4)
    ap.add_argument('--rtol', type=float, default=1e-4, help='certified relative bound for the batch part')
    ap.add_argument('--configs', type=parse_config, nargs='+', metavar='METHOD:vmap|loop:CHUNK',
                    default=[parse_config(s) for s in ('double_backward:vmap:16', 'double_backward:vmap:all', 'fwd_rev:vmap:16', 'double_backward:loop:16')])
    ap.add_argument('--loop', action='store_true', help='also time a loop of single-task calls (and check equal values)')
    ap.add_argument('--trace', action='store_true'); ap.add_argument('--trace-rtol', type=float, default=0.1); ap.add_argument('--trace-max', type=int, default=100)
    ap.add_argument('--peer-tasks', type=int, default=10, help='tasks for the looped PyHessian timing (extrapolated to 100)')
    ap.add_argument('--pyhessian-tol', type=float, default=1e-5)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--quick', action='store_true', help='tiny Conv4 (4 filters, 12x12): a smoke run')
    ap.add_argument('--out', type=Path, default=None, help='write the numbers as JSON here')
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    report = dict(device=str(get_device(args.device)), threads=torch.get_num_threads(), torch=torch.__version__,
                  loadavg=os.getloadavg() if hasattr(os, 'getloadavg') else None, args={k: str(v) for k, v in vars(args).items()})
    print(f"device {report['device']}, {report['threads']} threads, load average {report['loadavg']}", flush=True)
    if args.part in ('single', 'all'): part_single(args, report)
    if args.part in ('batch', 'all'): part_batch(args, report)
    report['loadavg_end'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    if args.out:
        from metanb.core import write_json
        write_json(args.out, report)
    return report

if __name__ == '__main__': main()
