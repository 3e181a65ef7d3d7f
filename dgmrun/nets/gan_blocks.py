"""Networks shared by the adversarial models: MLP and DCGAN players, packing, minibatch stddev,
spectral norm.

- DCGAN (Radford et al. 2016, arXiv:1511.06434): the generator upsamples with 4x4 stride-2
  transposed convolutions, batch norm and ReLU, tanh output; the discriminator downsamples with
  4x4 stride-2 convolutions and LeakyReLU(0.2). Here: two stages, so image sides must be divisible by 4.
  InfoGAN's MNIST networks (Chen et al. 2016, appendix C.1) add a fully connected layer of 1024 units
  after G's input and before D's output, and batch norm in D (``fc_dim``, ``batch_norm``).
- Spectral normalisation (Miyato et al. 2018, arXiv:1802.05957): every weight divided by its largest
  singular value (one power iteration per forward), making D roughly 1-Lipschitz.
- Minibatch standard deviation (Karras et al. 2018, arXiv:1710.10196, sec. 3): the mean over features
  of the per-feature std across the batch, appended as one more feature before D's last layer,
  lets D see the diversity of a batch.
- Packing (PacGAN, Lin et al. 2018, arXiv:1712.04086): D judges ``pack`` samples at once,
  concatenated (along features for points, along channels for images); all real or all fake.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def maybe_sn(layer: nn.Module, spectral_norm: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer


def maybe_bn(features: int, batch_norm: bool, dims: int = 1) -> list[nn.Module]:
    """[BatchNorm1d/2d(features)] when ``batch_norm``, else []: to splice into a layer list."""
    if not batch_norm:
        return []
    return [nn.BatchNorm2d(features) if dims == 2 else nn.BatchNorm1d(features)]


def raw_weight(layer: nn.Module) -> Tensor:
    """A layer's weight parameter itself: under spectral norm, the one it normalises."""
    if nn.utils.parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def dcgan_init_(net: nn.Module) -> None:
    """Radford et al. 2016's initialisation, in place: every convolution and linear weight ~ N(0, 0.02), every
    batch-norm scale ~ N(1, 0.02), biases 0. PyTorch's default draws the last transposed convolution of a
    one-channel G from U(-1/4, 1/4) (its fan-in is 1 x 4 x 4), so that G starts from a large fixed pattern, a
    tenth of its pixels saturated before the first step; from there, plain DCGAN on MNIST drew one saturated
    checkerboard for every z within its first epoch and never left it."""
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(raw_weight(layer), 0.0, 0.02)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(layer.weight, 1.0, 0.02)
        else:
            continue
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def pack_samples(x: Tensor, pack: int) -> Tensor:
    """N×D -> (N/pack)×(pack·D) for points, N×C×H×W -> (N/pack)×(pack·C)×H×W for images.

    Consecutive samples form a pack; N must be a multiple of ``pack``.
    """
    if pack == 1:
        return x
    n = x.shape[0]
    if n % pack:
        raise ValueError(f"packing needs a batch size divisible by pack={pack}, got {n}")
    return x.reshape(n // pack, pack * x.shape[1], *x.shape[2:])


class MinibatchStd(nn.Module):
    """Appends one feature: the average over features of the across-batch std (Karras et al. 2018).

    Works on N×F vectors (one extra column) and N×C×H×W maps (one extra constant channel).
    """

    def forward(self, h: Tensor) -> Tensor:
        std = torch.sqrt(h.float().var(dim=0, unbiased=False) + 1e-8).mean().to(h.dtype)
        extra = std.expand(h.shape[0], 1, *h.shape[2:])
        return torch.cat([h, extra], dim=1)


def mlp_generator(latent_dim: int, hidden_dims: Sequence[int], out_dim: int) -> nn.Sequential:
    """z -> hidden (Linear, ReLU)... -> out_dim (no output activation; ``tanh`` added by the caller for images)."""
    layers: list[nn.Module] = []
    d = latent_dim
    for width in hidden_dims:
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class MLPCritic(nn.Module):
    """Discriminator body and head on flat inputs: (Linear, LeakyReLU(0.2))... -> [minibatch std] -> Linear.

    ``body(x)`` gives the last hidden features (shared by InfoGAN's Q head and the projection
    discriminator), ``head`` maps them to ``out_dim`` logits.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int = 1, spectral_norm: bool = False,
                 minibatch_std: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        for width in hidden_dims:
            layers += [maybe_sn(nn.Linear(d, width), spectral_norm), nn.LeakyReLU(0.2)]
            d = width
        if minibatch_std:
            layers.append(MinibatchStd())
            d += 1
        self.body = nn.Sequential(*layers)
        self.features = d
        self.head = maybe_sn(nn.Linear(d, out_dim), spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def dcgan_generator(latent_dim: int, shape: Sequence[int], channels: Sequence[int],
                    fc_dim: int | None = None) -> nn.Sequential:
    """z -> (C, H, W) in (-1, 1): Linear to (c2, H/4, W/4) with BN+ReLU, two ConvTranspose 4x4/2 stages
    with BN+ReLU, tanh. With ``fc_dim`` (InfoGAN's G): Linear to ``fc_dim`` first, and both linear layers
    batch-normalise every feature, not every channel. That matters: with per-channel batch norm after
    the projection, G on MNIST drew one fixed high-frequency pattern for every z and code within 5 epochs."""
    c, h, w = shape
    c1, c2 = channels
    projected = c2 * (h // 4) * (w // 4)
    if fc_dim:
        head: list[nn.Module] = [
            nn.Linear(latent_dim, fc_dim, bias=False), nn.BatchNorm1d(fc_dim), nn.ReLU(),
            nn.Linear(fc_dim, projected, bias=False), nn.BatchNorm1d(projected), nn.ReLU(),
            nn.Unflatten(1, (c2, h // 4, w // 4))]
    else:
        head = [nn.Linear(latent_dim, projected, bias=False), nn.Unflatten(1, (c2, h // 4, w // 4)),
                nn.BatchNorm2d(c2), nn.ReLU()]
    return nn.Sequential(
        *head,
        nn.ConvTranspose2d(c2, c1, 4, 2, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.ConvTranspose2d(c1, c, 4, 2, 1), nn.Tanh(),
    )


class DCGANCritic(nn.Module):
    """(C_in, H, W) -> out_dim: two Conv 4x4/2 stages with LeakyReLU(0.2), [minibatch std channel], flatten,
    [Linear to ``fc_dim`` + LeakyReLU], Linear. ``batch_norm`` normalises the second stage and the FC layer
    (InfoGAN's D); off by default, which keeps D safe with the gradient penalty."""

    def __init__(self, shape: Sequence[int], channels: Sequence[int], out_dim: int = 1, in_channels: int | None = None,
                 spectral_norm: bool = False, minibatch_std: bool = False, fc_dim: int | None = None,
                 batch_norm: bool = False):
        super().__init__()
        c, h, w = shape
        c1, c2 = channels
        layers: list[nn.Module] = [
            maybe_sn(nn.Conv2d(in_channels or c, c1, 4, 2, 1), spectral_norm), nn.LeakyReLU(0.2),
            maybe_sn(nn.Conv2d(c1, c2, 4, 2, 1), spectral_norm), *maybe_bn(c2, batch_norm, 2), nn.LeakyReLU(0.2),
        ]
        if minibatch_std:
            layers.append(MinibatchStd())
            c2 += 1
        layers.append(nn.Flatten())
        self.features = c2 * (h // 4) * (w // 4)
        if fc_dim:
            layers += [maybe_sn(nn.Linear(self.features, fc_dim), spectral_norm), *maybe_bn(fc_dim, batch_norm),
                       nn.LeakyReLU(0.2)]
            self.features = fc_dim
        self.body = nn.Sequential(*layers)
        self.head = maybe_sn(nn.Linear(self.features, out_dim), spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
