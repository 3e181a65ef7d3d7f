"""The lectures' likelihood table on the full MNIST training set: each paper preset trained and evaluated by
the ``dgmrun`` command, beside the paper's and the lectures' numbers.

    python scripts/reproduce_likelihoods.py --models vae iwae5 --stages 5 --threads 1 --parallel 2
    python scripts/reproduce_likelihoods.py --models rbm nade pixelcnn --epochs-scale 0.1 --hours 1

The presets of Burda et al. 2015 (vae, iwae*, their two-layer variants) train through the first ``--stages``
of their schedule (stage i: 3**i epochs at lr 1e-3 * 10**(-i/7); the paper's 8 stages are 3,280 epochs),
and are evaluated on the 10,000 test digits after every stage with ``--eval-k`` importance samples, then
once more at the end with the protocol's k = 5,000 (``--final-k``). Each stage is a resumed run of the same
run dir (``ckpt_path=<run>/checkpoints/last.ckpt trainer.max_epochs=<stage end>``), so an interrupted table
continues where it stopped: stages already evaluated are read from ``<out>/<model>/curve.jsonl``.
The other presets train for their own epochs times ``--epochs-scale``. ``--hours`` caps the training time
of each model (trainer.max_time); a model that runs out is evaluated where it stopped, and the table says
how far it got. The table of every model evaluated in ``<out>`` so far goes to ``<out>/table.md``, the
curve of test NLL against epochs to ``<out>/nll_curve.png`` (with matplotlib).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dgmrun.models.base import burda_stage_end

@dataclass
class Preset:
    overrides: list[str]
    paper: float  # test NLL in nats the paper reports
    source: str
    lectures: float | None = None  # the lectures' table, where it lists the model
    burda: bool = False  # trained in Burda et al.'s stages and evaluated after each
    # The hand-written PyTorch reference of the issue (this machine, one thread): NLL (k = 1,000) after stage i.
    reference: dict[int, float] = field(default_factory=dict)


PRESETS = {
    "vae": Preset(["experiment=vae_mnist"], 86.76, "Burda et al. 2015, 1 layer", 85.69, True,
                  {0: 127.88, 1: 107.48, 2: 98.30, 3: 93.16, 4: 90.73, 5: 89.34}),
    "iwae5": Preset(["experiment=iwae_mnist", "model.k=5"], 85.54, "Burda et al. 2015, 1 layer", 84.43, True,
                    {0: 123.05, 1: 103.20, 2: 95.13, 3: 91.07, 4: 89.02}),
    "iwae50": Preset(["experiment=iwae_mnist"], 84.78, "Burda et al. 2015, 1 layer", 83.58, True),
    "vae2": Preset(["experiment=vae2_mnist"], 85.33, "Burda et al. 2015, 2 layers", burda=True),
    "iwae5_2": Preset(["experiment=iwae2_mnist", "model.k=5"], 83.89, "Burda et al. 2015, 2 layers", burda=True),
    "iwae50_2": Preset(["experiment=iwae2_mnist"], 82.90, "Burda et al. 2015, 2 layers", burda=True),
    "rbm": Preset(["experiment=rbm_mnist"], 86.34, "Salakhutdinov & Murray 2008, CD-25"),
    "nade": Preset(["experiment=nade_mnist"], 88.33, "Larochelle & Murray 2011"),
    "pixelcnn": Preset(["experiment=pixelcnn_mnist"], 81.30, "van den Oord et al. 2016"),
}


def run_dgmrun(args: list[str], log: Path, threads: int) -> float:
    """``dgmrun args`` (its output into ``log``); the seconds it took. Exits on failure."""
    cmd = [shutil.which("dgmrun") or "dgmrun", *args, "trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}), see {log}: {' '.join(cmd)}")
    return time.perf_counter() - start


def training_set_size(root: Path) -> int:
    """The number of images in the IDX header of root's training images."""
    plain = root / "train-images-idx3-ubyte"
    with (gzip.open(f"{plain}.gz") if not plain.exists() else plain.open("rb")) as f:
        return int.from_bytes(f.read(8)[4:], "big")


def progress(last_ckpt: Path) -> tuple[int, float]:
    """(optimizer steps, epochs) a run's last.ckpt reached."""
    import torch

    state = torch.load(last_ckpt, map_location="cpu", weights_only=True)
    data = state["dgmrun"]["config"]["data"]
    steps_per_epoch = math.ceil(training_set_size(Path(data["root"])) / data["batch_size"])
    return state["global_step"], state["global_step"] / steps_per_epoch


def evaluate(run: Path, steps: int, k: int | None, threads: int, seed: int = 0) -> dict:
    """Test metrics of the run's last.ckpt (after ``steps`` updates), with k importance samples where given (else
    the preset's protocol)."""
    name = f"eval_k{k}" if k else "eval"
    out = run / "eval" / f"{name}_step{steps}_seed{seed}"
    if not (out / "metrics.json").exists():
        extra = [f"eval.num_importance_samples={k}"] if k else []
        seconds = run_dgmrun(["task=eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *extra, f"seed={seed}",
                              f"hydra.run.dir={out}"], run / "log.txt", threads)
        metrics = json.loads((out / "metrics.json").read_text())
        (out / "metrics.json").write_text(json.dumps({**metrics, "eval_wall_s": seconds}, indent=2))
    return json.loads((out / "metrics.json").read_text())


def train_to(run: Path, preset: Preset, data: list[str], epochs: int, seconds_left: float, threads: int) -> float:
    """Train (or continue) the run up to ``epochs`` or ``seconds_left``; the seconds it took."""
    last = run / "checkpoints" / "last.ckpt"
    start = [f"ckpt_path={last}"] if last.exists() else [*preset.overrides, *data, f"hydra.run.dir={run}"]
    if math.isfinite(seconds_left):
        minutes, seconds = divmod(max(60, int(seconds_left)), 60)
        hours, minutes = divmod(minutes, 60)
        budget = f"{hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{seconds:02d}"
    else:
        budget = "null"
    return run_dgmrun(["task=train", *start, f"trainer.max_epochs={epochs}", f"trainer.max_time={budget}",
                       "task.test=false"], run / "log.txt", threads)


def curve_path(out: str | Path, name: str) -> Path:
    """Where a model's evaluations are kept, one JSON row each."""
    return Path(out).resolve() / name / "curve.jsonl"


def read_curve(curve_file: Path) -> list[dict]:
    """The rows of a model's evaluations so far (none before its first)."""
    return [json.loads(line) for line in curve_file.read_text().splitlines()] if curve_file.exists() else []


def reproduce(name: str, args: argparse.Namespace) -> None:
    """Train and evaluate one preset, one row per evaluation appended to <out>/<name>/curve.jsonl."""
    preset, curve_file = PRESETS[name], curve_path(args.out, name)
    run = curve_file.parent
    rows = read_curve(curve_file)
    data = [f"data.root={Path(args.data).resolve()}"]
    budget_s = args.hours * 3600 if args.hours else math.inf
    if preset.burda:
        targets = [(i, burda_stage_end(i)) for i in range(args.stages)]
    else:
        targets = [(None, max(1, round(args.epochs_scale * preset_epochs(preset))))]
    for stage, epochs in targets:
        if any(row["target_epochs"] == epochs for row in rows):
            continue
        spent = sum(row["train_s"] for row in rows)
        if spent >= budget_s:
            break
        train_s = train_to(run, preset, data, epochs, budget_s - spent, args.threads)
        steps, reached = progress(run / "checkpoints" / "last.ckpt")
        k = args.eval_k if preset.burda else None
        metrics = evaluate(run, steps, k, args.threads)
        rows.append({"model": name, "stage": stage, "target_epochs": epochs, "epochs": reached, "steps": steps,
                     "train_s": train_s, "nll": metrics["test/nll"], "sem": metrics.get("test/nll_sem"),
                     "spread": metrics.get("test/nll_std"), "estimator": metrics.get("test/nll_estimator"),
                     "eval_s": metrics["eval_wall_s"]})
        with curve_file.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(f"{name}: {reached:.1f} epochs, test NLL {metrics['test/nll']:.2f} ({rows[-1]['estimator']}), "
              f"train {sum(r['train_s'] for r in rows) / 60:.1f} min", flush=True)
    if preset.burda and args.final_k and rows and not any(r.get("final") for r in rows):
        metrics = evaluate(run, rows[-1]["steps"], args.final_k, args.threads)
        rows.append({**rows[-1], "final": True, "nll": metrics["test/nll"], "sem": metrics.get("test/nll_sem"),
                     "estimator": metrics.get("test/nll_estimator"), "eval_s": metrics["eval_wall_s"], "train_s": 0.0})
        with curve_file.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")


def preset_epochs(preset: Preset) -> int:
    """trainer.max_epochs of a preset, as ``dgmrun --cfg job`` composes it."""
    done = subprocess.run([shutil.which("dgmrun") or "dgmrun", *preset.overrides, "--cfg", "job", "--package", "trainer"],
                          capture_output=True, text=True, check=True)
    return next(int(line.split(":")[1]) for line in done.stdout.splitlines() if line.strip().startswith("max_epochs:"))


def against(nll: float, reference: float | None) -> str:
    """The reference's cells of a row: its NLL and dgmrun's difference from it (empty without a reference)."""
    return " | " if reference is None else f"{reference:.2f} | {nll - reference:+.2f}"


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| model | paper (nats) | lectures | dgmrun test NLL | estimator | epochs | training | gap to paper | "
             "hand-written reference (k = 1,000) | dgmrun - reference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        preset = PRESETS[name]
        for row in rows:
            sem = f" ± {row['sem']:.2f}" if row.get("sem") is not None else ""
            spread = f" (AIS runs ± {row['spread']:.2f})" if row.get("spread") else ""
            reference = None if row.get("final") or row["stage"] is None else preset.reference.get(row["stage"])
            train_min = sum(r["train_s"] for r in rows[: rows.index(row) + 1]) / 60
            lines.append(f"| {name} ({preset.source}) | {preset.paper:.2f} | "
                         f"{'' if preset.lectures is None else f'{preset.lectures:.2f}'} | {row['nll']:.2f}{sem}{spread} | "
                         f"{row['estimator']} | {row['epochs']:.0f} | {train_min:.0f} min | {row['nll'] - preset.paper:+.2f} | "
                         f"{against(row['nll'], reference)} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'dgmrun[plots]'): no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in results.items():
        points = [(r["epochs"], r["nll"]) for r in rows if not r.get("final") and r["stage"] is not None]
        if not points:
            continue
        color = ax.plot(*zip(*points), marker="o", label=f"{name} (dgmrun)")[0].get_color()
        reference = PRESETS[name].reference
        if reference:
            ax.plot([burda_stage_end(i) for i in reference], list(reference.values()), ls="--", marker="x", color=color,
                    alpha=0.6, label=f"{name} (hand-written reference)")
        ax.axhline(PRESETS[name].paper, ls=":", lw=0.8, color=color, label=f"{name} (paper, 3,280 epochs)")
    ax.set(xscale="log", xlabel="epochs", ylabel="test NLL (nats, k = 1,000)", title="MNIST, Burda et al.'s schedule")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "mnist-full"),
                        help="the official MNIST files, 60,000 + 10,000 digits (default: ../shared/data/mnist-full)")
    parser.add_argument("--models", nargs="+", default=["vae", "iwae5", "iwae50"], choices=list(PRESETS))
    parser.add_argument("--stages", type=int, default=8, help="Burda presets: stages of the schedule (8: 3,280 epochs)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="other presets: their epochs times this")
    parser.add_argument("--hours", type=float, default=None, help="training time of each model at most (default: none)")
    parser.add_argument("--eval-k", type=int, default=1000, help="importance samples after each stage")
    parser.add_argument("--final-k", type=int, default=5000, help="importance samples at the end (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--parallel", type=int, default=1, help="models trained side by side")
    parser.add_argument("--out", default="outputs/reproduce_likelihoods")
    args = parser.parse_args()
    if not any((Path(args.data) / f"train-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz")):
        sys.exit(f"--data {args.data}: no MNIST training images there (train-images-idx3-ubyte[.gz])")
    if not 1 <= args.stages <= 8:
        sys.exit(f"--stages must be in 1..8, got {args.stages}")
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(lambda name: reproduce(name, args), args.models))  # list(): a model's error is raised here
    # The table and plot of every model evaluated in --out, this invocation's and earlier ones'.
    out = Path(args.out)
    results = {name: rows for name in PRESETS if (rows := read_curve(curve_path(out, name)))}
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    plot(results, out / "nll_curve.png")
    print(text)


if __name__ == "__main__":
    main()
