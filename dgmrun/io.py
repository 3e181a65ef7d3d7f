"""Images and samples a run writes (atomically, through ``dgmrun.files.atomic_open``)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dgmrun.files import atomic_open


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [0, 1] (N×C×H×W) -> uint8 array of the same shape."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """N×C×H×W images in [0, 1] -> one H'×W'(×3) uint8 array, ``nrow`` images per row."""
    arr = to_uint8(images)
    n, c, h, w = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = arr[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def scatter_image(points: Tensor, size: int = 256, extent: float | None = None) -> np.ndarray:
    """N×2 points -> a size×size grayscale density picture (dark = many points), axes centred at 0."""
    xy = points.detach().float().cpu().numpy()
    extent = extent or max(1e-6, float(np.abs(xy).max()) * 1.05)
    counts, _, _ = np.histogram2d(-xy[:, 1], xy[:, 0], bins=size, range=[[-extent, extent], [-extent, extent]])
    shade = np.log1p(counts) / max(np.log1p(counts).max(), 1e-12)
    padded = np.pad(shade, 1)  # each point drawn 3x3 pixels wide, so that a few hundred points show
    shade = np.max([padded[i:i + size, j:j + size] for i in range(3) for j in range(3)], axis=0)
    return (255 * (1 - shade)).astype(np.uint8)


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


def picture(samples: Tensor, nrow: int | None = None) -> np.ndarray:
    """A grid for images (small ones enlarged to at least 32 px, pixels kept sharp), a density plot for points."""
    if samples.dim() != 4:
        return scatter_image(samples)
    scale = max(1, 32 // samples.shape[-1])
    if scale > 1:
        samples = samples.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    return image_grid(samples, nrow)


def save_samples_npz(path: str | os.PathLike, samples: Tensor) -> None:
    """Images as uint8 ``images`` (N×C×H×W); points as float32 ``x`` (N×D)."""
    if samples.dim() == 4:
        arrays = {"images": to_uint8(samples)}
    else:
        arrays = {"x": samples.detach().float().cpu().numpy().astype(np.float32)}
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def sample_in_batches(sample: Callable[[int, torch.Generator], Tensor], n: int, batch_size: int,
                      generator: torch.Generator) -> Tensor:
    """Draw n samples batch by batch (one generator, so the result depends only on its seed)."""
    return torch.cat([sample(min(batch_size, n - start), generator) for start in range(0, n, batch_size)])
