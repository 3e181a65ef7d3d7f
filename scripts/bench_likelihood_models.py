"""Test NLL of the likelihood models on mnist-small (dynamically binarized) after the same training time.

Each model is trained from the command line as a user would (``dgmrun model=X data=mnist ...``) with
``trainer.max_time`` as the budget (wall clock of the fit loop, validation included; the test pass
afterwards is not counted), then the run's metrics.json is read. Runs go ``--parallel`` at a time,
each with one intra-op thread (OMP_NUM_THREADS=1), so on a shared 2-core machine the budget is
roughly one core each. Settings that suit a CPU budget are chosen per model and printed with the table.

The numbers are of different kinds (``test/nll_estimator``): exact for NADE and PixelCNN, an
importance-sampled estimate (k=100, a stochastic lower bound on log p, so NLL an upper bound in
expectation) for VAE and IWAE, an AIS estimate of log Z for the RBM (an unbiased Z estimate: log Z
tends to be low, NLL optimistic; ± is the spread over independent AIS runs, and the RAISE NLL beside it
is the conservative side), and the uniform-prior bound for the VQ-VAE.

``--max-steps N`` trains for N updates instead of the time budget: a row's step count reproduced on a
machine slower or busier than the one that measured it.

Run: python scripts/bench_likelihood_models.py [--minutes 3] [--parallel 2] [--models rbm,vae] [--max-steps N]
     [--out /tmp/bench_likelihood]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-small").resolve()

MODELS: dict[str, list[str]] = {
    "vae": ["model=vae"],
    "iwae": ["model=iwae", "model.k=5"],
    "nade": ["model=nade", "model.hidden_dim=200"],
    "pixelcnn": ["model=pixelcnn", "model.gated=true", "model.channels=16", "model.num_layers=4", "model.kernel_size=3",
                 "data.batch_size=16"],
    "rbm": ["model=rbm", "model.persistent=true", "model.hidden_dim=500", "model.optimizer.lr=0.05",
            "data.batch_size=64"],
    "vqvae": ["model=vqvae"],
}


def run(name: str, args: list[str], minutes: float, out: Path, max_steps: int | None = None) -> dict:
    seconds = int(minutes * 60)
    budget = f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"
    length = [f"trainer.max_time={budget}"] if max_steps is None else [f"trainer.max_steps={max_steps}"]
    command = ["dgmrun", *args, "data=mnist", f"data.root={ROOT}", *length,
               "trainer.max_epochs=-1", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
               "sample.num=16", "sample.every_n_epochs=0", "eval.feature_network=none",  # NLL only: no FID sampling
               f"hydra.run.dir={out / name}"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    metrics_file = out / name / "metrics.json"
    if proc.returncode != 0 or not metrics_file.exists():
        return {"name": name, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "wall": wall}
    metrics = json.loads(metrics_file.read_text())
    steps = None
    csv = out / name / "csv" / "metrics.csv"
    if csv.exists():
        lines = csv.read_text().splitlines()
        header = lines[0].split(",")
        if "step" in header:
            col = header.index("step")
            steps = max(int(float(line.split(",")[col])) for line in lines[1:] if line.split(",")[col])
    return {"name": name, "metrics": metrics, "wall": wall, "steps": steps, "args": " ".join(args)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="/tmp/bench_likelihood")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()
    out = Path(args.out)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda n: run(n, MODELS[n], args.minutes, out, args.max_steps), names))
    budget = f"trainer.max_time={args.minutes:g} min" if args.max_steps is None else f"trainer.max_steps={args.max_steps}"
    print(f"mnist-small (8000 train / 2000 test real digits), dynamic binarization; training budget "
          f"{budget} per model, {args.parallel} runs at a time, 1 thread each\n")
    print("| model    | test NLL (nats) | test bpd | estimator            | steps | run wall s | settings |")
    print("|----------|-----------------|----------|----------------------|-------|------------|----------|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']:<8} | failed: {r['error']} |")
            continue
        m = r["metrics"]
        nll = m.get("test/nll", float("nan"))
        spread = f" +- {m['test/nll_std']:.2f}" if "test/nll_std" in m else ""
        if "test/nll_raise" in m:
            spread += f" (RAISE {m['test/nll_raise']:.2f})"
        print(f"| {r['name']:<8} | {nll:8.2f}{spread:<7} | {m.get('test/bpd', float('nan')):8.4f} | "
              f"{m.get('test/nll_estimator', ''):<20} | {r['steps'] or '':>5} | {r['wall']:10.0f} | {r['args']} |")


if __name__ == "__main__":
    main()
