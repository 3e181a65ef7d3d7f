"""Missing-pixel masks for ``task=impute``: boolean N×C×H×W tensors, True where a pixel is missing (every
channel of a missing pixel)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dgmrun.errors import DgmrunError


def pixel_mask(kind: str, shape: tuple[int, ...], size: int = 12, p: float = 0.5, file: str | None = None,
               generator: torch.Generator | None = None, n: int = 1) -> Tensor:
    """The missing pixels of ``n`` images of ``shape`` (C, H, W); see ``dgmrun.schema.ImputeConfig``."""
    c, h, w = shape
    if (kind == "center" and size > min(h, w)) or (kind == "columns" and size > w):
        raise DgmrunError(f"impute.size={size} does not fit images of {h}x{w} px")
    missing = torch.zeros(h, w, dtype=torch.bool)
    if kind == "center":
        top, left = (h - size) // 2, (w - size) // 2
        missing[top:top + size, left:left + size] = True
    elif kind == "columns":
        left = (w - size) // 2
        missing[:, left:left + size] = True
    elif kind in ("bottom", "top"):
        rows = slice(h // 2, h) if kind == "bottom" else slice(0, h // 2)
        missing[rows] = True
    elif kind in ("left", "right"):
        missing[:, slice(0, w // 2) if kind == "left" else slice(w // 2, w)] = True
    elif kind == "file":
        missing = _mask_file(str(file), (h, w))
    elif kind == "random":
        per_image = torch.rand(n, 1, h, w, generator=generator) < p
        return per_image.expand(n, c, h, w).clone()
    else:
        raise DgmrunError(f"impute.mask={kind!r} is not a mask")
    return missing.expand(n, c, h, w).clone()


def _mask_file(path: str, size: tuple[int, int]) -> Tensor:
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
    except (OSError, ValueError) as e:
        raise DgmrunError(f"impute.file={path}: not a readable image ({e})") from None
    if grey.shape != size:
        raise DgmrunError(f"impute.file={path} is {grey.shape[0]}x{grey.shape[1]} px; the images are {size[0]}x{size[1]}")
    return torch.from_numpy(grey < 128)


def fill_missing(x: Tensor, missing: Tensor, fill: str, generator: torch.Generator | None = None) -> Tensor:
    """x with its missing pixels replaced by uniform noise in [0, 1] (``noise``) or zeros."""
    stand_in = torch.rand(x.shape, generator=generator) if fill == "noise" else torch.zeros_like(x)
    return torch.where(missing, stand_in.to(x.device, x.dtype), x)
