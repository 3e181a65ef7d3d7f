"""The lectures' imputation table on MNIST: classification error of dgmrun's evaluator on the clean test digits,
on digits with a centred k x k square replaced by uniform noise, and on the same digits after imputation, for
k = 6, 8, 10, 12, with the squared error on the missing pixels.

Per family it trains one checkpoint on the full MNIST training set (or takes the run dir given with
``--checkpoint family=DIR``), then runs ``dgmrun task=impute`` on the test digits for every size. Two
non-generative baselines are rows of the same table, on the same test digits and masks: the mean training
image, and the mean of the 10 training digits nearest on the observed pixels.

    python scripts/imputation_table.py --root ../shared/data/mnist-full                # VAE and RBM, 10,000 digits
    python scripts/imputation_table.py --families vae rbm nade --epochs 5 --num-examples 2000
    python scripts/imputation_table.py --checkpoint vae=outputs/2026-12-02/10-00-00 --families vae \
        --method vae=metropolis_within_gibbs --num-samples 10

Runs already finished (a metrics.json in their dir under --out) are read, not run again. The evaluator
classifier is trained first if there is none for these files (``dgmrun task=train_evaluator``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dgmrun.data.masks import pixel_mask
from dgmrun.metrics.features import data_checksum, evaluator_path, load_classifier

# How each family is trained for the table (its defaults on binarized MNIST; --epochs sets the budget).
TRAINING = {
    "vae": ["experiment=vae_mnist"],
    "iwae": ["experiment=vae_mnist", "model=iwae"],
    "rbm": ["model=rbm", "data=mnist"],
    "nade": ["model=nade", "data=mnist"],
    "pixelcnn": ["model=pixelcnn", "data=mnist"],
    "vqvae": ["experiment=vqvae_mnist"],
    "ddpm": ["experiment=ddpm_mnist"],
}
# The imputation method of each family for centred squares (NADE and PixelCNN: exact only for bottom halves;
# their Gibbs sampler costs two whole passes per missing pixel and sweep, days for the 10,000 digits here).
METHOD = {"vae": "pseudo_gibbs", "iwae": "pseudo_gibbs", "rbm": "gibbs", "nade": "importance", "pixelcnn": "importance",
          "vqvae": "metropolis_within_gibbs", "ddpm": "repaint"}
LECTURES = {  # error % for sizes 6 / 8 / 10 / 12 (the max-margin DGM slides)
    "CNN on corrupted digits": [7.5, 18.8, 30.3, 47.2],
    "CVA imputation": [2.5, 4.2, 8.4, 18.3],
    "CMMVA imputation": [1.9, 3.7, 7.7, 15.9],
}


def dgmrun(args: list[str], run_dir: Path, threads: int | None) -> dict:
    """Run ``dgmrun args`` into run_dir (unless it has finished there before) and return its metrics."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        cmd = [shutil.which("dgmrun") or "dgmrun", *args, "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        start = time.perf_counter()
        print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
        metrics = {**json.loads(metrics_file.read_text()), "wall_s": time.perf_counter() - start}
        metrics_file.write_text(json.dumps(metrics, indent=2))
    return json.loads(metrics_file.read_text())


def baselines(run_dir: Path, sizes: list[int], num_examples: int) -> dict[str, dict[int, tuple[float, float]]]:
    """{baseline: {size: (error, mse)}} on the test digits of a trained family's run (its data, binarized as
    the model saw them), with the training digits as the baselines' data."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = instantiate(cfg.data, _convert_="all")
    x, y = datamodule.split_tensors("test")
    x, y = (x[:num_examples], y[:num_examples]) if num_examples else (x, y)
    train, _ = datamodule.split_tensors("train")
    path = evaluator_path(os.path.expanduser(cfg.paths.evaluators_dir), cfg.data.name, data_checksum(datamodule))
    classifier = load_classifier(path)
    flat_train = train.flatten(1)
    results: dict[str, dict[int, tuple[float, float]]] = {"mean training image": {}, "10 nearest neighbours": {}}
    for size in sizes:
        missing = pixel_mask("center", tuple(x.shape[1:]), size, n=len(x))
        seen = ~missing[0].flatten()
        mean_image = train.mean(0, keepdim=True).expand_as(x)
        neighbours = []
        for chunk in x.flatten(1).split(500):  # squared distances on the observed pixels only
            d = torch.cdist(chunk[:, seen], flat_train[:, seen])
            neighbours.append(flat_train[d.topk(10, largest=False).indices].mean(1))
        nearest = torch.cat(neighbours).view_as(x)
        for name, fill in (("mean training image", mean_image), ("10 nearest neighbours", nearest)):
            imputed = torch.where(missing, fill, x)
            predicted = torch.cat([classifier(part)[1].argmax(1) for part in imputed.split(1000)])
            error = (predicted != y).float().mean().item()
            results[name][size] = (error, ((imputed - x)[missing] ** 2).mean().item())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--root", default=str(here.parent / "shared" / "data" / "mnist-full"),
                        help="the official MNIST files (default: ../shared/data/mnist-full)")
    parser.add_argument("--families", nargs="+", default=["vae", "rbm"], choices=sorted(TRAINING))
    parser.add_argument("--sizes", nargs="+", type=int, default=[6, 8, 10, 12])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of each family")
    parser.add_argument("--num-examples", type=int, default=0, help="test digits imputed (0: all 10,000)")
    parser.add_argument("--iterations", type=int, default=100, help="of each conditional sampler (lectures: 100)")
    parser.add_argument("--checkpoint", nargs="*", default=[], metavar="FAMILY=RUN_DIR",
                        help="a trained run to impute with instead of training one")
    parser.add_argument("--method", nargs="*", default=[], metavar="FAMILY=METHOD",
                        help=f"an imputation method other than the family's default ({METHOD})")
    parser.add_argument("--num-samples", type=int, default=1, help="imputations per digit, averaged (impute.num_samples)")
    parser.add_argument("--impute-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more overrides of every task=impute run (eval.num_importance_samples=1000, say)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each dgmrun run")
    parser.add_argument("--out", default="outputs/imputation_table")
    args = parser.parse_args()
    if not Path(args.root).is_dir():
        sys.exit(f"--root {args.root}: no such directory (it holds the MNIST IDX files)")
    out, data = Path(args.out).resolve(), [f"data.root={Path(args.root).resolve()}"]
    given = dict(item.split("=", 1) for item in args.checkpoint)
    methods = {**METHOD, **dict(item.split("=", 1) for item in args.method)}
    samples = f"-x{args.num_samples}" if args.num_samples > 1 else ""
    dgmrun(["task=train_evaluator", "data=mnist", *data], out / "evaluator", args.threads)
    rows: list[tuple[str, dict[int, dict]]] = []
    wall: dict[str, float] = {}
    for family in args.families:
        run = Path(given[family]) if family in given else out / f"train-{family}"
        if family not in given:
            wall[family] = dgmrun([*TRAINING[family], *data, f"trainer.max_epochs={args.epochs}"], run,
                                  args.threads).get("wall_s", float("nan"))
        results = {}
        for size in args.sizes:
            results[size] = dgmrun(["task=impute", f"ckpt_path={run}", f"impute.size={size}",
                                    f"impute.method={methods[family]}", f"impute.iterations={args.iterations}",
                                    f"impute.num_samples={args.num_samples}", f"impute.num_examples={args.num_examples}",
                                    *args.impute_overrides],
                                   out / f"impute-{family}-{methods[family]}{samples}-{size}", args.threads)
        rows.append((family, results))
    first_family, first = rows[0]
    first_run = Path(given.get(first_family, out / f"train-{first_family}"))
    reference = baselines(first_run, args.sizes, args.num_examples)
    protocol = first[args.sizes[0]]

    def row(name: str, cells: list[str]) -> None:
        print(f"| {name} | {' | '.join(cells)} |")

    def scored(error: float, mse: float) -> str:
        return f"{100 * error:.1f} ({mse:.3f})"

    row("error % (MSE on the missing pixels)", [f"{k}x{k}" for k in args.sizes])
    row("---", ["---"] * len(args.sizes))
    for family, results in rows:  # the clean and corrupted digits of each distinct data (binarized, grey)
        if family == first_family or results[args.sizes[0]]["impute/error_clean"] != protocol["impute/error_clean"]:
            row(f"evaluator on clean digits ({family}'s data)",
                [f"{100 * results[k]['impute/error_clean']:.2f}" for k in args.sizes])
            row(f"evaluator on corrupted digits ({family}'s data)",
                [scored(results[k]["impute/error_corrupted"], results[k]["impute/mse_corrupted"]) for k in args.sizes])
    for name, by_size in reference.items():
        row(f"{name} ({first_family}'s data)", [scored(*by_size[k]) for k in args.sizes])
    for family, results in rows:
        row(f"dgmrun {family} ({methods[family]}{f', mean of {args.num_samples}' if samples else ''})",
            [scored(results[k]["impute/error_imputed"], results[k]["impute/mse"]) for k in args.sizes])
    if args.sizes == [6, 8, 10, 12]:
        for name, values in LECTURES.items():
            row(f"lectures: {name}", [f"{v:.1f}" for v in values])
    print(f"\nevaluator: {protocol['impute/evaluator']}; {int(protocol['impute/num_examples'])} test digits; "
          f"protocol ({first_family}): {protocol['impute/protocol']}")
    for family, seconds in wall.items():
        print(f"{family}: trained {args.epochs} epochs in {seconds:.0f} s")
    for family, results in rows:
        times = ", ".join(f"{results[k].get('wall_s', float('nan')):.0f} s" for k in args.sizes)
        print(f"{family}: imputation wall time per size {times}")


if __name__ == "__main__":
    main()
