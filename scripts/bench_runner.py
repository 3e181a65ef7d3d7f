"""dgmrun's training loop against a hand-written PyTorch loop of the same network on the same data.

    python scripts/bench_runner.py [--cases mlp_vae conv_vae dcgan nade pixelcnn ddpm] [--repeats 2] [--threads 2]
                                   [--root ../shared/data/mnist-small] [--device cpu|cuda] [--precision 32-true]

For each case, alternating, each measurement in a fresh process (so peak memory is its own):

- **hand-written**: the model's network and loss (``Model.build`` from the same composed config, the
  same optimizer settings), the data tensors on the device, a loop of randperm, slicing, dynamic
  binarization, forward, backward, optimizer step (and the EMA update where the model keeps one), the
  loss read back every ``log_every_n_steps`` steps, and one validation pass per epoch. Timed per epoch, the
  first epoch left out (warm-up).
- **dgmrun**: ``task=train`` run in process as the command line runs it (its trainer, progress bar, CSV
  logger, checkpoints every epoch, sample grids, validation), for ``short`` and ``long`` epochs; its cost
  per epoch is the difference of the two wall times over the difference of epochs, so start-up, the
  final grids and checkpoints cancel. Its own ``perf/train_samples_per_s`` is printed beside it.

Both figures are training images per second of wall clock, validation included for both. Printed: one
row per case and repeat, then the medians; no assertion (timings are noisy; the README's table is
this script's output).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MNIST_SMALL = REPO / ".." / "shared" / "data" / "mnist-small"

# Each case: dgmrun overrides (on data=mnist), the epochs of the short and long dgmrun runs and of the hand
# loop, and trainer limits (the slow models train a fixed number of batches per epoch, in both loops).
CASES: dict[str, dict[str, Any]] = {
    "mlp_vae": {"overrides": ["model=vae", "model.arch=mlp", "model.hidden_dims=[512,512]", "model.latent_dim=32"],
                "epochs": (2, 8)},
    "conv_vae": {"overrides": ["model=vae"], "epochs": (2, 6)},
    # experiment=vae_mnist (Burda et al.'s 784-200-200-50 tanh at batches of 20): the per-step cost of the runner.
    "burda_vae": {"overrides": ["experiment=vae_mnist"], "epochs": (1, 3)},
    "dcgan": {"overrides": ["model=dcgan", "data.binarize=none"], "epochs": (2, 4), "limit_train": 20},
    "nade": {"overrides": ["model=nade"], "epochs": (2, 4), "limit_train": 8, "limit_val": 2},
    "pixelcnn": {"overrides": ["model=pixelcnn"], "epochs": (2, 4), "limit_train": 8, "limit_val": 2},
    # A U-Net of experiment=ddpm_mnist's widths (base 16, multipliers 1,2,2, no attention; two blocks per
    # resolution), sized for a CPU: the default one takes ~15 s a batch here.
    "ddpm": {"overrides": ["model=ddpm", "data.binarize=none", "model.base_channels=16", "model.channel_mult=[1,2,2]",
                           "model.attention_resolutions=[]", "data.batch_size=64", "sample.sampler=ddim", "sample.steps=20"],
             "epochs": (2, 4), "limit_train": 20, "limit_val": 2},
}


def compose(overrides: list[str], out: Path) -> Any:
    """The config ``dgmrun <overrides>`` runs with (Hydra's compose API), writing into ``out``."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from dgmrun.schema import validate

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dgmrun.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    validate(cfg)
    return cfg


def case_overrides(case: dict[str, Any], args: argparse.Namespace) -> list[str]:
    limits = [f"trainer.limit_train_batches={case['limit_train']}"] if "limit_train" in case else []
    limits += [f"trainer.limit_val_batches={case['limit_val']}"] if "limit_val" in case else []
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    return [*case["overrides"], "data=mnist", f"data.root={Path(args.root).resolve()}", *limits,
            f"trainer.accelerator={accelerator}", f"trainer.precision={args.precision}", "task.test=false",
            "eval.feature_network=none", *args.overrides]


def start_process(threads: int) -> None:
    import ctypes
    import signal

    import torch

    try:  # Linux: end with the benchmark (a killed benchmark would leave its measurement running)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (SIGTERM would be Lightning's graceful stop)
    except (AttributeError, OSError):
        pass

    torch.set_num_threads(threads)


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure_dgmrun(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from hydra.utils import instantiate

    from dgmrun.tasks.train import train

    case = CASES[name]
    short, long = case["epochs"]
    walls, metrics = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in (short, long):
            cfg = compose([*case_overrides(case, args), f"trainer.max_epochs={epochs}"], Path(tmp) / str(epochs))
            start = time.perf_counter()
            train(cfg)
            walls.append(time.perf_counter() - start)
        metrics = json.loads((Path(tmp) / str(long) / "metrics.json").read_text())
        images = images_per_epoch(cfg, len(instantiate(cfg.data, _convert_="all").split_tensors("train")[0]))
    seconds = (walls[1] - walls[0]) / (long - short)
    return {"images_per_s": images / seconds, "reported": metrics.get("perf/train_samples_per_s"),
            "epoch_s": seconds, "peak_mb": peak_memory_mb(args.device)}


def images_per_epoch(cfg: Any, num_train: int) -> int:
    """Training images per epoch of ``num_train`` examples: whole batches, as both loops take them."""
    batch = cfg.data.batch_size
    batches = num_train // batch
    limit = cfg.trainer.limit_train_batches
    return batch * (batches if limit is None else min(batches, int(limit)))


def measure_hand(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from hydra.utils import instantiate

    from dgmrun.callbacks import NetworkSpeedups
    from dgmrun.models.base import build_model

    case = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(case_overrides(case, args), Path(tmp))
    device = torch.device(args.device)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg.model, datamodule.info).to(device)
    if cfg.trainer.compile or cfg.trainer.channels_last:  # the same networks as dgmrun's (trainer.compile=true ...)
        NetworkSpeedups(cfg.trainer.compile, cfg.trainer.channels_last).setup(None, model, "fit")
    x_train, y_train = (t.to(device) for t in datamodule.split_tensors("train"))
    x_val, y_val = (t.to(device) for t in datamodule.split_tensors("val"))
    dynamic = cfg.data.get("binarize") == "dynamic"
    batch, eval_batch = cfg.data.batch_size, cfg.data.eval_batch_size
    num_batches = images_per_epoch(cfg, len(x_train)) // batch
    val_batches = len(x_val.split(eval_batch))
    if case.get("limit_val"):
        val_batches = min(val_batches, case["limit_val"])
    step, validate = hand_step(model, cfg, args.hand_adam)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16"))
    generator = torch.Generator(device).manual_seed(0)
    epoch_seconds = []
    for epoch in range(CASES[name]["epochs"][1] - CASES[name]["epochs"][0] + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), device=device, generator=generator)
        for i in range(num_batches):
            idx = order[i * batch:(i + 1) * batch]
            x = x_train[idx]
            if dynamic:
                x = torch.bernoulli(x, generator=generator)
            with autocast:
                loss = step(x, y_train[idx], i)
            if i % cfg.trainer.log_every_n_steps == 0:
                loss.item()
        model.eval()
        with torch.no_grad(), autocast:
            total = sum(validate(x, y) for x, y in list(zip(x_val.split(eval_batch), y_val.split(eval_batch)))[:val_batches])
        float(total)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - start)
    seconds = statistics.mean(epoch_seconds[1:])
    return {"images_per_s": num_batches * batch / seconds, "reported": None, "epoch_s": seconds,
            "peak_mb": peak_memory_mb(args.device)}


def hand_step(model: Any, cfg: Any, adam: str) -> tuple[Any, Any]:
    """(step(x, y, i) -> loss, validation loss(x, y)) of a plain PyTorch loop for ``model``; ``adam``: "same"
    (dgmrun's optimizer) or "default" (torch.optim.Adam with torch's defaults, as most loops are written)."""
    import torch

    from dgmrun.models.base import make_optimizer as dgmrun_optimizer
    from dgmrun.models.gan import GAN

    def make_optimizer(params: Any, settings: dict[str, Any]) -> Any:
        if adam == "default" and settings["name"] == "adam":
            return torch.optim.Adam(params, lr=settings["lr"], betas=tuple(settings["betas"]))
        return dgmrun_optimizer(params, settings)

    if isinstance(model, GAN):
        model._single_process = True
        opt_d = make_optimizer(model.d_parameters(), model.optimizer_d_settings)
        opt_g = make_optimizer(model.g_parameters(), model.optimizer_g_settings)
        schedulers = [model.make_scheduler(opt, updates=10**6) for opt in (opt_d, opt_g)]
        k = model.n_critic
        updates = 0  # D and G updates so far, as Lightning's global_step counts them

        def gan_step(x: Any, y: Any, i: int) -> Any:
            nonlocal updates
            g_turn = (updates + 1) % (k + 1) == k  # the model's own rule
            x = model.to_model_space(x)
            d_loss, _ = model.d_loss(x, y)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            updates += 1
            if schedulers[0] is not None:
                schedulers[0]["scheduler"].step()
            if g_turn:
                for p in model.d_parameters():
                    p.requires_grad_(False)
                g_loss, _ = model.g_loss(x, y)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                for p in model.d_parameters():
                    p.requires_grad_(True)
                updates += 1
                if schedulers[1] is not None:
                    schedulers[1]["scheduler"].step()
                if model.ema is not None:
                    model.ema.update(model.generator)
            return d_loss

        return gan_step, lambda x, y: torch.zeros(())

    loss_of = hand_losses(model)
    optimizer = make_optimizer(model.parameters(), model.optimizer_settings)
    scheduler = model.make_scheduler(optimizer, updates=10**6)

    def step(x: Any, y: Any, i: int) -> Any:
        loss = loss_of(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None and scheduler["interval"] == "step":  # per-epoch ones would not change the timing
            scheduler["scheduler"].step()
        if getattr(model, "ema", None) is not None:
            model.ema.update(model.net)
        return loss.detach()

    return step, lambda x, y: loss_of(x, y) * len(x)


def hand_losses(model: Any) -> Any:
    """The training loss of each model family, written as a user would call the network."""
    from dgmrun.models.ddpm import DDPM
    from dgmrun.models.nade import NADE
    from dgmrun.models.pixelcnn import PixelCNN
    from dgmrun.models.vae import VAE

    if isinstance(model, VAE):
        def vae_loss(x: Any, y: Any) -> Any:
            reconstruction, kl = model.elbo_terms(x)
            return -(reconstruction - kl).mean()
        return vae_loss
    if isinstance(model, NADE):
        return lambda x, y: -model.log_likelihood(x).mean()
    if isinstance(model, PixelCNN):
        return lambda x, y: -model.log_prob(x, y if model.conditional else None).mean()
    if isinstance(model, DDPM):
        return lambda x, y: model.simple_loss(x, y).mean()
    raise SystemExit(f"no hand-written loop for {type(model).__name__}")


def run_in_fresh_process(function: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=start_process, initargs=(args.threads,)) as pool:
        return pool.submit(function, name, args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default=str(MNIST_SMALL), help="MNIST IDX files (default: ../shared/data/mnist-small)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", help="trainer.precision of both loops (bf16-mixed on a GPU)")
    parser.add_argument("--hand-adam", default="same", choices=["same", "default"],
                        help="the hand-written loop's Adam: dgmrun's (fused) or torch's default (per-tensor on a CPU)")
    parser.add_argument("overrides", nargs="*", help="more dgmrun overrides, for both loops (model settings, say)")
    args = parser.parse_args()
    if not (Path(args.root) / "train-images-idx3-ubyte").exists() and not (Path(args.root) / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"bench_runner: no MNIST IDX files in {args.root} (give --root)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# {machine}, torch {torch.__version__}, precision {args.precision}, hand-written loop's Adam: {args.hand_adam}")
    print(f"{'case':<10} {'repeat':>6} {'hand img/s':>11} {'dgmrun img/s':>13} {'ratio':>6} {'dgmrun says':>12} "
          f"{'hand MB':>8} {'dgmrun MB':>10}")
    ratios: dict[str, list[float]] = {}
    for name in args.cases:
        for repeat in range(args.repeats):
            hand = run_in_fresh_process(measure_hand, name, args)
            ours = run_in_fresh_process(measure_dgmrun, name, args)
            ratio = ours["images_per_s"] / hand["images_per_s"]
            ratios.setdefault(name, []).append(ratio)
            said = f"{ours['reported']:.0f}" if ours["reported"] else "-"
            print(f"{name:<10} {repeat:>6} {hand['images_per_s']:>11.0f} {ours['images_per_s']:>13.0f} {ratio:>6.3f} "
                  f"{said:>12} {hand['peak_mb']:>8.0f} {ours['peak_mb']:>10.0f}", flush=True)
    print("# median ratio dgmrun / hand-written: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
