"""Mode coverage of every GAN loss on the toy2d mixtures, as a markdown table (PacGAN / VEEGAN style).

Runs ``dgmrun model=gan model.loss=<loss> data=toy2d data.shape=<shape> seed=<seed>`` with every
other setting at its default, for every loss, shape and seed (one process at a time; ``--jobs 2`` runs
two at once with one thread each), reads each run's metrics.json and prints modes recovered and the
fraction of high-quality samples (test/hq), mean ± std over seeds, and the longest wall time.

    python scripts/toy2d_gan_table.py                                   # everything (long)
    python scripts/toy2d_gan_table.py --losses ns --shapes 8gaussians   # one row
    python scripts/toy2d_gan_table.py --losses ns --extra model.pack=1 model.minibatch_std=false   # remedies off

Runs already finished (a metrics.json in their dir) are read, not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOSSES = ["minimax", "ns", "wgan", "wgan_gp", "lsgan", "hinge"]
SHAPES = ["8gaussians", "25gaussians"]


def run_one(out: Path, loss: str, shape: str, seed: int, extra: list[str], threads: int | None) -> dict:
    run_dir = out / f"{shape}-{loss}-s{seed}"
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        exe = shutil.which("dgmrun") or "dgmrun"
        cmd = [exe, "model=gan", f"model.loss={loss}", "data=toy2d", f"data.shape={shape}", f"seed={seed}",
               "trainer.enable_progress_bar=false", *extra, f"hydra.run.dir={run_dir}"]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"FAILED ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}", file=sys.stderr)
            return {}
        metrics = json.loads(metrics_file.read_text())
        metrics["wall_s"] = wall
        metrics_file.write_text(json.dumps(metrics, indent=2))
    metrics = json.loads(metrics_file.read_text())
    print(f"  {shape} {loss} seed={seed}: modes={metrics.get('test/modes')} hq={metrics.get('test/hq'):.3f} "
          f"wall={metrics.get('wall_s', float('nan')):.0f}s", file=sys.stderr)
    return metrics


def mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(std, fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, choices=SHAPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. model.pack=1")
    parser.add_argument("--out", type=Path, default=Path("outputs/toy2d_gan_table"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for each run (1 on a busy CPU)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with one thread when > 1)")
    args = parser.parse_args()

    tag = "-".join(e.replace("=", "").replace(".", "_") for e in args.extra) or "default"
    out = args.out / tag
    threads = 1 if args.jobs > 1 and args.threads is None else args.threads
    runs = [(loss, shape, seed) for shape in args.shapes for loss in args.losses for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on the dgmrun processes
        done = dict(zip(runs, pool.map(lambda r: run_one(out, *r, args.extra, threads), runs)))
    rows = []
    for shape in args.shapes:
        for loss in args.losses:
            results = [done[(loss, shape, seed)] for seed in args.seeds]
            results = [r for r in results if r]
            modes = [float(r["test/modes"]) for r in results]
            hq = [float(r["test/hq"]) for r in results]
            walls = [float(r["wall_s"]) for r in results if "wall_s" in r]
            total = int(results[0]["test/modes_total"]) if results else "?"
            rows.append(f"| {shape} | {loss} | {mean_std(modes, '.1f')} / {total} | {mean_std(hq, '.3f')} | "
                        f"{len(results)} | {max(walls) if walls else float('nan'):.0f} |")
    extra = " ".join(args.extra) or "(defaults)"
    print(f"\ndgmrun model=gan data=toy2d {extra}; seeds {args.seeds}; {args.jobs} run(s) at a time\n")
    print("| data | loss | modes | high-quality samples | runs | max wall (s) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
