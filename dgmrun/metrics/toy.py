"""Mode metrics for toy mixtures of Gaussians (2-D rings and grids).

Following VEEGAN (Srivastava et al. 2017, arXiv:1705.07761) and PacGAN (Lin et al. 2018,
arXiv:1712.04086): a sample is *high quality* when it lies within 3 standard deviations
of its nearest mixture centre, and a mode counts as *recovered* when enough high-quality
samples are assigned to it.
"""

from __future__ import annotations

import torch

from dgmrun.metrics.quality import ArrayLike, _as_tensor


def mode_metrics(
    samples: ArrayLike, centers: ArrayLike, std: float, min_count: int = 20
) -> dict[str, float | int]:
    """High-quality fraction and number of recovered modes of samples from a Gaussian mixture.

    ``samples`` is N x 2 (any N x D works), ``centers`` K x D, ``std`` the mixture
    components' standard deviation.

    Returns ``{"hq": float, "modes": int}``: ``hq`` is the fraction of samples within
    ``3 * std`` of their nearest centre; ``modes`` is the number of centres that are the
    nearest centre of at least ``min_count`` high-quality samples.
    """
    x = _as_tensor(samples, torch.float64)
    c = _as_tensor(centers, torch.float64)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1] or x.shape[0] == 0 or c.shape[0] == 0:
        raise ValueError(f"need N x D samples and K x D centers, got {tuple(x.shape)} and {tuple(c.shape)}")
    # Direct differences, not the matmul shortcut, so points placed by hand near a 3-std
    # boundary are classified exactly.
    dist, nearest = torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    hq = dist <= 3.0 * std
    per_mode = torch.bincount(nearest[hq], minlength=c.shape[0])
    return {"hq": hq.double().mean().item(), "modes": int((per_mode >= min_count).sum().item())}
