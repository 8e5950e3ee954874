#!/usr/bin/env python
"""Wall time of a whole `metanb study`: `--executor inline` (one run after another in one process) against
`--executor local` (a pool of worker processes, as many as the cores over the preset's threads per run).

Both studies run from scratch into their own folders under --out, one after the other, with the same
options; then every table (each run's analysis/summary.csv, the study's summary.csv and claims.csv) must
be equal, value for value. Not a timed test: the machine's load decides the numbers.

    python benchmarks/study.py                       # the default study (quick preset), seeds 0,1
    python benchmarks/study.py --preset tiny --seeds 0,1,2

Goal (2 cores, quick preset, one thread per run): local <= 0.6x inline's wall time.
"""
import argparse, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import pandas as pd


def tables(study: Path) -> dict:
    fs = sorted(study.glob('*/analysis/summary.csv')) + [study/'summary.csv', study/'claims.csv']
    return {str(f.relative_to(study)): pd.read_csv(f) for f in fs}


def run(executor: str, out: Path, args) -> float:
    cmd = [sys.executable, '-m', 'metanb.cli', 'study', '--preset', args.preset, '--seeds', args.seeds, '--executor', executor,
           '--out', str(out), '--quiet', *args.extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'})
    dt = time.perf_counter() - t0
    if r.returncode != 0: sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return dt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--preset', default='quick'); p.add_argument('--seeds', default='0,1')
    p.add_argument('--out', default=None, help='where both studies go (default: a temporary folder, removed)')
    p.add_argument('extra', nargs='*', help='more `metanb study` options (after --)')
    args = p.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix='metanb-bench-'))
    try:
        times = {ex: run(ex, root/ex, args) for ex in ('inline', 'local')}
        a, b = tables(root/'inline'/args.preset), tables(root/'local'/args.preset)
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        for k in a: pd.testing.assert_frame_equal(a[k], b[k], check_exact=True, obj=k)
        cores = len(os.sched_getaffinity(0))
        print(f"metanb study --preset {args.preset} --seeds {args.seeds} {' '.join(args.extra)} ({cores} cores, load {os.getloadavg()[0]:.1f})")
        print(f"| executor | wall time | vs inline |\n|---|---|---|")
        for ex, t in times.items(): print(f"| {ex} | {t:.0f} s | {t / times['inline']:.2f}x |")
        print(f"tables: {len(a)} equal (exact)")
    finally:
        if not args.out: shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__': main()
