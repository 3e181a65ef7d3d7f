"""Sampling and evaluation speed: PixelCNN's row-cropped sampler against the whole-network one, NADE,
DDIM against DDPM steps, and test NLL at the papers' protocol (importance sampling, k = 5,000).

    python scripts/bench_sampling.py [--threads 2] [--root ../shared/data/mnist-small] [--nll-digits 1000]

Untrained networks of the default sizes on 28 px digits (speed does not depend on the weights):

- PixelCNN: 64 samples by ``model.sample`` (each layer on the rows the next pixel depends on) and by the
  sampler it replaced (the whole network on the whole image for each pixel), under the same random
  draws; the samples must be equal, and the speed-up is printed.
- NADE: a training step on a batch of 128 (forward and backward) by its blocked logits and by the whole
  N×D×H tensors, and 64 samples (ancestral, the whole batch at once).
- DDPM, the U-Net of ``experiment=ddpm_mnist``: 16 samples by 1,000 ancestral steps and by 50 DDIM steps.
- VAE test NLL by importance sampling with k = 5,000 (Burda et al.'s protocol) on ``--nll-digits`` test
  digits, for the 784-200-200-50 MLP and the default conv VAE; the time for all 10,000 test digits is
  that figure scaled (the cost is linear in the digits).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DIGITS = {"name": "mnist", "shape": [1, 28, 28], "num_classes": 10, "levels": 2}
DDPM_MNIST = {"base_channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [],
              "dropout": 0.0}  # conf/experiment/ddpm_mnist.yaml


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def whole_image_sampler(model, n: int, generator: torch.Generator) -> torch.Tensor:
    """PixelCNN's former sampler: for every pixel, the whole network on the rows drawn so far."""
    x = torch.zeros(n, *model.data_info.shape)
    for i, j in itertools.product(range(x.shape[2]), range(x.shape[3])):
        logits = model.logits(x[:, :, : i + 1])[..., i, j]
        x[:, :, i, j] = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    return x


def nade_step(model, x: torch.Tensor, whole_tensors: bool) -> None:
    """One forward and backward pass of NADE's loss; ``whole_tensors``: a_d as one cumulative sum over all D."""
    v = x.flatten(1)
    if whole_tensors:
        contributions = v.unsqueeze(-1) * model.W
        hidden = torch.sigmoid(model.c + torch.cumsum(contributions, dim=1) - contributions)
        logits = model.b + (hidden * model.V).sum(-1)
    else:
        logits = model.logits(x)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, v).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default=str(REPO / ".." / "shared" / "data" / "mnist-small"))
    parser.add_argument("--nll-digits", type=int, default=1000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["pixelcnn", "nade", "ddpm", "nll"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dgmrun.data.datamodule import MNISTLike
    from dgmrun.models.ddpm import DDPM
    from dgmrun.models.nade import NADE
    from dgmrun.models.pixelcnn import PixelCNN
    from dgmrun.models.vae import VAE

    print(f"# CPU, {args.threads} threads, torch {torch.__version__}")
    nade = NADE.build(DIGITS)
    if "nade" not in args.skip:
        x = torch.bernoulli(torch.full((128, 1, 28, 28), 0.13), generator=torch.Generator().manual_seed(0))
        steps = {whole: min(timed(nade_step, nade, x, whole)[1] for _ in range(3)) for whole in (False, True)}
        print(f"nade      training step, batch 128: {steps[False]:.2f} s blocked, {steps[True]:.2f} s with the whole "
              f"N×D×H tensors: {steps[True] / steps[False]:.1f}x")
    with torch.inference_mode():
        if "pixelcnn" not in args.skip:
            torch.manual_seed(0)
            model = PixelCNN.build(DIGITS).eval()
            fast, fast_s = timed(model.sample, 64, torch.Generator().manual_seed(0))
            slow, slow_s = timed(whole_image_sampler, model, 64, torch.Generator().manual_seed(0))
            print(f"pixelcnn  64 samples: {fast_s:.1f} s ({64 / fast_s:.2f}/s) by cropped rows, {slow_s:.1f} s by the "
                  f"whole image: {slow_s / fast_s:.2f}x; samples equal: {torch.equal(fast, slow)}")
        if "nade" not in args.skip:
            _, seconds = timed(nade.sample, 64, torch.Generator().manual_seed(0))
            print(f"nade      64 samples: {seconds:.2f} s ({64 / seconds:.0f}/s)")
        if "ddpm" not in args.skip:
            model = DDPM.build(DIGITS, **DDPM_MNIST).eval()
            _, ddim_s = timed(model.sample, 16, torch.Generator().manual_seed(0), sampler="ddim", steps=50)
            _, ddpm_s = timed(model.sample, 16, torch.Generator().manual_seed(0), sampler="ddpm")
            print(f"ddpm      16 samples: {ddpm_s:.1f} s by 1,000 DDPM steps, {ddim_s:.1f} s by 50 DDIM steps: "
                  f"{ddpm_s / ddim_s:.1f}x")
        if "nll" not in args.skip:
            test = MNISTLike.build(name="mnist", root=str(Path(args.root).resolve()), binarize="static")
            x = test.split_tensors("test")[0][: args.nll_digits]
            for name, settings in [("mlp 784-200-200-50", {"arch": "mlp", "hidden_dims": [200, 200], "latent_dim": 50}),
                                   ("conv (default)", {})]:
                model = VAE.build(test.info, **settings).eval()
                model.eval_settings = {"num_importance_samples": 5000}
                _, seconds = timed(lambda: torch.cat([model.log_likelihood(b) for b in x.split(500)]))
                print(f"vae {name}: IS k=5000 on {len(x)} test digits {seconds:.0f} s; on 10,000: "
                      f"{seconds * 10_000 / len(x) / 60:.1f} min")


if __name__ == "__main__":
    main()
