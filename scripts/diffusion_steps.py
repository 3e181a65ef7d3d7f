"""FID and wall time of a trained DDPM against the number of sampling steps, for DDIM (eta = 0 and 1) and DDPM.

    python scripts/diffusion_steps.py --ckpt outputs/train/DATE/TIME [--steps 10 20 50 100 1000] [--num 2000] [data.root=PATH]
                                      [--batch-size 500] [--plot docs/ddpm_steps.png]

The same starting noise (one seed) for every setting. FID is dgmrun's, with the data's cached evaluator
(`dgmrun task=train_evaluator data=... data.root=...` first); the wall time is the sampling alone, on the
device the checkpoint is loaded on (the GPU when there is one). The DDPM sampler always takes all T steps,
so it is one row. Prints a table and, where matplotlib is installed, draws the plot.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import open_dict

from dgmrun.checkpoint import load_model
from dgmrun.cli import onto_checkpoint, user_error
from dgmrun.errors import DgmrunError
from dgmrun.io import sample_in_batches
from dgmrun.metrics.samples import SampleScorer
from dgmrun.schema import validate
from dgmrun.tasks.common import config_from_checkpoint


def run_config(ckpt: str, overrides: list[str]):
    """The run config of ``task=eval ckpt_path=ckpt`` with ``overrides``, as the command line makes it."""
    overrides = onto_checkpoint(["task=eval", f"ckpt_path={ckpt}", *overrides])
    try:
        with initialize_config_module(config_module="dgmrun.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = "."
        validate(cfg)
        return config_from_checkpoint(cfg, overrides)[0]
    except (HydraException, DgmrunError) as error:
        raise SystemExit(f"diffusion_steps.py: error: {user_error(error)}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a DDPM run dir or .ckpt file")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    parser.add_argument("--num", type=int, default=2000, help="samples per setting")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="PNG path of the plot (needs matplotlib)")
    parser.add_argument("overrides", nargs="*", help="dgmrun overrides, e.g. data.root=PATH")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.ckpt, map_location=device)
    cfg = run_config(args.ckpt, args.overrides)
    scorer = SampleScorer(cfg, instantiate(cfg.data, _convert_="all"), device)
    if scorer.network is None:
        raise SystemExit(f"no evaluator for data={cfg.data.name}: run dgmrun task=train_evaluator with the same data first")

    T = model.diffusion.num_timesteps
    settings = [("ddim", eta, steps) for eta in (0.0, 1.0) for steps in args.steps if steps <= T] + [("ddpm", 1.0, T)]
    rows = []
    for sampler, eta, steps in settings:
        draw = model.sampler(None, {"sampler": sampler, "steps": steps, "eta": eta, "guidance": 1.0})
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        samples = sample_in_batches(draw, args.num, args.batch_size, torch.Generator(device).manual_seed(args.seed))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        batches = ((samples[i:i + args.batch_size], None, None) for i in range(0, len(samples), args.batch_size))
        fid = scorer.score(batches, args.seed)["test/fid"]
        label = "ddpm" if sampler == "ddpm" else f"ddim eta={eta:g}"
        rows.append((label, steps, fid, seconds))
        print(f"{label:<12} {steps:>5} steps  FID {fid:8.2f}  {seconds:8.1f} s for {args.num} samples", flush=True)

    print(f"\n| sampler | steps | FID | seconds for {args.num} samples | speed-up over DDPM |\n|---|---|---|---|---|")
    ddpm_seconds = rows[-1][3]
    for label, steps, fid, seconds in rows:
        print(f"| {label} | {steps} | {fid:.2f} | {seconds:.1f} | {ddpm_seconds / seconds:.1f}x |")
    if args.plot:
        draw_plot(rows, args.plot, str(device))


def draw_plot(rows: list[tuple[str, int, float, float]], path: str, device: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for label in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == label]
        marker = "o-" if len(mine) > 1 else "s"
        left.plot([r[1] for r in mine], [r[2] for r in mine], marker, label=label)
        right.plot([r[1] for r in mine], [r[3] for r in mine], marker, label=label)
    for axis, name in ((left, "FID (dgmrun evaluator)"), (right, f"sampling seconds ({device})")):
        axis.set_xscale("log")
        axis.set_xlabel("sampling steps")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
