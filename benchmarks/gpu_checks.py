#!/usr/bin/env python
"""The CUDA checks and GPU benchmarks of metanb, as one script for a lent GPU machine.

The test suite runs on the CPU; what needs a GPU is here, in sections that each have a time budget
and record their outcome (ok / fail / error, with numbers) in one JSON file, so that one short lease
answers all of it:

1. `parity`: float64 second-order and first-order meta-gradients on CUDA equal a naive per-task autograd
   loop (CPU, float64), for metanb's Conv4 under every batching mode, and for the same net built from
   `torch.nn` layers only (native `nn.BatchNorm2d`), whose `batching='auto'` must resolve to an exact path
   on CUDA (native batchnorm is wrong under `vmap` for second order).
2. `distributed`: the `#| cuda` cells of `nbs/14_distributed.ipynb` (GPU training equals CPU training in
   float64, and repeats bit for bit under deterministic settings), run as a script.
3. `study`: `metanb study --preset tiny --device cuda` end to end (train, analyse, report).
4. `maml_step`: `benchmarks/maml_step.py --device cuda` (metanb loop and vmap, and peers whose wheels travel).
5. `curvature`: `benchmarks/curvature.py --device cuda --part batch` (batched certified top eigenvalues).
6. `fresh` (with `--fresh-runs DIR`): score the final checkpoint of every run under DIR on 600 fresh meta-test
   tasks on the GPU (`metanb.analysis.fresh_tasks`) and bring the tables back as `fresh.tar` (carry the runs'
   config.json and last checkpoint, and `--data` the dataset cache, so that the tasks are the ones here).

Run on the GPU machine (Python packages metanb needs beyond that image's travel as wheels in `.whl/`):
    python3 benchmarks/gpu_checks.py --out $OUT
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def naive_meta_grad(model, params, tasks, steps, lr, first_order):
    "The MAML meta-gradient by a plain per-task autograd loop (the obviously-correct twin)."
    import torch
    from torch.func import functional_call
    from metanb.maml import task_loss
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    total = 0.
    for i in range(len(tasks)):
        p = leaves
        for _ in range(steps):
            l = task_loss(functional_call(model, p, (tasks.xs[i],)), tasks.ys[i])
            g = torch.autograd.grad(l, list(p.values()), create_graph=not first_order)
            p = {k: v - lr * (gi.detach() if first_order else gi) for (k, v), gi in zip(p.items(), g)}
        total = total + task_loss(functional_call(model, p, (tasks.xq[i],)), tasks.yq[i])
    g = torch.autograd.grad(total / len(tasks), list(leaves.values()))
    return dict(zip(leaves, g))


def rel_err(a, b):
    import torch
    num = sum(((a[k].double().cpu() - b[k].double().cpu()) ** 2).sum() for k in b) ** 0.5
    den = sum((b[k].double().cpu() ** 2).sum() for k in b) ** 0.5
    return float(num / den)


def section_parity(out):
    import torch
    from metanb.core import params_of
    from metanb.maml import meta_grad
    from metanb.testutils import tiny_conv4, image_batch, with_native_bn
    res = {}
    cpu_model = tiny_conv4(dtype=torch.float64)
    tasks = image_batch(n_tasks=4, dtype=torch.float64)
    for name, model in [('metanb_bn', cpu_model), ('native_bn', with_native_bn(cpu_model))]:
        for steps in (1, 3):
            for fo in (False, True):
                ref = naive_meta_grad(model, params_of(model), tasks, steps, 0.1, fo)
                gm = model.to('cuda'); gt = tasks.to('cuda')
                for batching in ('loop', 'vmap', 'auto'):
                    key = f"{name}/steps{steps}/{'fo' if fo else 'so'}/{batching}"
                    try:
                        g, _ = meta_grad(gm, params_of(gm), gt, steps=steps, lr=0.1, first_order=fo, batching=batching)
                        res[key] = {'rel_err': rel_err(g, ref)}
                    except Exception as e:  # a refusal (native BN under vmap) is a valid outcome
                        res[key] = {'raised': f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                model.to('cpu')
    try:
        from metanb.maml import resolve_batching
        import inspect
        sig = inspect.signature(resolve_batching)
        if 'model' in sig.parameters:
            res['auto_native_on_cuda'] = resolve_batching('auto', 'cuda', model=with_native_bn(cpu_model))
            res['auto_metanb_on_cuda'] = resolve_batching('auto', 'cuda', model=cpu_model)
    except Exception as e: res['resolver_error'] = repr(e)
    bad = {k: v for k, v in res.items() if isinstance(v, dict) and v.get('rel_err', 0) > 1e-9}
    out['parity'] = {'results': res, 'wrong': bad, 'status': 'ok' if not bad else 'fail'}


def section_batching(out, device='cuda'):
    "One task-mapping switch on the GPU: regularized meta-gradients follow the caller's mode, and the analysis (through maml.evaluate) equals the CPU's."
    import torch
    from metanb.core import params_of
    from metanb.maml import meta_grad, resolve_batching
    from metanb.regularizers import make_regularizer
    from metanb.analysis import AnalysisConfig, measure_checkpoint
    from metanb.testutils import tiny_conv4, image_batch
    res, model, tasks = {}, tiny_conv4(dtype=torch.float64), image_batch(n_tasks=4, dtype=torch.float64)
    for reg in ('coherence_step', 'traj_coherence', 'grad_coherence', 'grad_norm'):
        r = make_regularizer(reg, 0.1)
        ref, _ = meta_grad(model, params_of(model), tasks, steps=2, lr=0.1, batching='loop', regularizer=r)
        gm, gt = model.to(device), tasks.to(device)
        for b in ('loop', 'vmap', 'auto'):
            g, _ = meta_grad(gm, params_of(gm), gt, steps=2, lr=0.1, batching=b, regularizer=r)
            res[f'{reg}/{b}'] = {'rel_err': rel_err(g, ref)}
        model.to('cpu')
    res['auto_resolves_to'] = resolve_batching('auto', device, model=model)
    cfg = dict(n_tasks=4, tol=1e-8, max_iter=200, trace=False)
    cpu = measure_checkpoint(model, params_of(model), tasks, AnalysisConfig(**cfg, device='cpu', batching='loop'), steps=3, lr=0.1)
    gm, gt = model.to(device), tasks.to(device)
    gpu = measure_checkpoint(gm, params_of(gm), gt, AnalysisConfig(**cfg, device=device, batching='auto'), steps=3, lr=0.1)
    for k, v in cpu['task'].items():
        a, b = v.double().cpu(), gpu['task'][k].double().cpu()
        res[f'analysis/{k}'] = {'rel_err': float((a - b).norm() / a.norm().clamp_min(1e-300))}
    bad = {k: v for k, v in res.items() if isinstance(v, dict) and not k.endswith('_err') and not v.get('rel_err', 1) <= 1e-7}  # error bounds may differ
    out['batching'] = {'results': res, 'wrong': bad, 'status': 'ok' if not bad else 'fail'}


def notebook_script(nb:Path, flags=('cuda',)) -> str:
    "The code cells of `nb` as one script: cells flagged `flags` included, `#| eval: false` and other flagged cells left out."
    cells, skip = json.loads(nb.read_text())['cells'], {'slow', 'cuda'} - set(flags)
    src = []
    for c in cells:
        if c['cell_type'] != 'code': continue
        s = ''.join(c['source'])
        dirs = [l.strip() for l in s.splitlines() if l.startswith('#|')]
        if any('eval: false' in d for d in dirs) or any(d[2:].strip() in skip for d in dirs): continue
        if any(l.lstrip().startswith(('%', '!')) for l in s.splitlines()) or 'nbdev' in s: continue
        src.append(s)
    body = '\n\n'.join(src)   # guarded: spawned ranks re-import the main script
    return f"if __name__ == '__main__':\n    exec(compile({body!r}, {str(nb)!r}, 'exec'))\n"


def run(cmd, timeout, env=None, log=None):
    t = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if log: Path(log).write_text(p.stdout + '\n--- stderr ---\n' + p.stderr)
    return p.returncode, time.time() - t, (p.stdout + p.stderr)[-3000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', type=Path, default=Path(os.environ.get('OUT', 'gpu_out')))
    ap.add_argument('--sections', nargs='+', default=['parity', 'batching', 'distributed', 'study', 'maml_step', 'curvature'])
    ap.add_argument('--budget', type=int, default=150, help='seconds for each subprocess section')
    ap.add_argument('--fresh-runs', type=Path, default=None, help='folder of run directories for the fresh section')
    ap.add_argument('--data', type=Path, default=None, help="METANB_DATA for the fresh section (the dataset cache)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    import torch
    out = {'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
           'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'python': sys.version.split()[0]}
    save = lambda: (a.out/'gpu_checks.json').write_text(json.dumps(out, indent=1, default=str))
    py = sys.executable
    for s in a.sections:
        t = time.time(); print(f'== {s}', flush=True)
        try:
            if s == 'parity': section_parity(out)
            elif s == 'batching': section_batching(out)
            elif s == 'distributed':
                script = Path(tempfile.mkdtemp())/'dist.py'
                script.write_text(notebook_script(ROOT/'nbs/14_distributed.ipynb'))
                rc, secs, tail = run([py, str(script)], a.budget, log=a.out/'distributed.log')
                out[s] = {'status': 'ok' if rc == 0 else 'fail', 'rc': rc, 'tail': tail[-800:]}
            elif s == 'study':
                d = tempfile.mkdtemp()
                rc, secs, tail = run([py, '-m', 'metanb.cli', 'study', '--preset', 'tiny', '--device', 'cuda', '--out', d],
                                     a.budget, log=a.out/'study.log')
                out[s] = {'status': 'ok' if rc == 0 else 'fail', 'rc': rc, 'tail': tail[-1500:]}
            elif s == 'maml_step':
                rc, secs, tail = run([py, 'benchmarks/maml_step.py', '--device', 'cuda', '--impls', 'metanb-loop', 'metanb-vmap',
                                      'higher', 'torchopt', '--reps', '5', '--rounds', '1', '--json', str(a.out/'maml_step.json')],
                                     a.budget + 100, log=a.out/'maml_step.log')
                out[s] = {'status': 'ok' if rc == 0 else 'fail', 'rc': rc, 'tail': tail[-2500:]}
            elif s == 'curvature':
                rc, secs, tail = run([py, 'benchmarks/curvature.py', '--device', 'cuda', '--part', 'batch',
                                      '--out', str(a.out/'curvature.json')], a.budget, log=a.out/'curvature.log')
                out[s] = {'status': 'ok' if rc == 0 else 'fail', 'rc': rc, 'tail': tail[-1500:]}
            elif s == 'fresh':
                import tarfile
                if a.data: os.environ['METANB_DATA'] = str(a.data.resolve())
                from metanb.analysis import fresh_tasks
                res = {}
                for d in sorted(p.parent for p in a.fresh_runs.glob('*/config.json')):
                    t0 = time.time(); df = fresh_tasks(d, device='cuda')
                    res[d.name] = {'acc': float(df['acc'].mean()) if 'acc' in df else None, 'seconds': round(time.time() - t0, 1)}
                with tarfile.open(a.out/'fresh.tar', 'w') as tf:
                    for f in a.fresh_runs.glob('*/analysis/fresh_tasks.*'): tf.add(f, arcname=str(f.relative_to(a.fresh_runs)))
                out[s] = {'status': 'ok', 'runs': res}
        except subprocess.TimeoutExpired: out[s] = {'status': 'timeout'}
        except Exception: out[s] = {'status': 'error', 'traceback': traceback.format_exc()[-2000:]}
        out.setdefault(s, {})['seconds'] = round(time.time() - t, 1)
        print(json.dumps({s: out[s]}, default=str)[:3000], flush=True); save()
    save()


if __name__ == '__main__': main()
