"""Convolutional encoders and decoders that halve (double) the image side twice, DCGAN-style."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def conv_encoder(shape: Sequence[int], channels: Sequence[int], out_dim: int, hidden_dim: int = 256) -> nn.Sequential:
    """(C, H, W) image -> vector of out_dim; two 4x4 stride-2 convolutions then two linear layers."""
    c, h, w = shape
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(c, c1, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * (h // 4) * (w // 4), hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


def conv_decoder(in_dim: int, shape: Sequence[int], channels: Sequence[int], out_channels: int,
                 hidden_dim: int = 256) -> nn.Sequential:
    """Vector of in_dim -> (out_channels, H, W) map; mirror image of ``conv_encoder``."""
    _, h, w = shape
    c1, c2 = channels
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, c2 * (h // 4) * (w // 4)), nn.ReLU(),
        nn.Unflatten(1, (c2, h // 4, w // 4)),
        nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(c1, out_channels, 4, 2, 1),
    )
