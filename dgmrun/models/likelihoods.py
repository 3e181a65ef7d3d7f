"""Observation models p(x | params) for decoders: one per kind of data.

A decoder emits ``num_params`` numbers per data dimension, stacked along dim 1 (channels for images,
features for points). ``log_prob`` returns the per-example log-likelihood in nats, summed over all
dimensions (or over those of a mask: the observed pixels of an image, for imputation). ``is_mass`` says whether that is the log of a probability mass (Bernoulli, discretized
logistic: NLL and bits/dim are the numbers papers report) or of a density (Gaussian: NLL only, as
bits/dim of a density mean nothing and can be negative).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _sum_per_example(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


class Likelihood:
    num_params = 1
    is_mass = False  # whether log_prob is a log probability mass (True) or a log density

    def log_prob(self, params: Tensor, x: Tensor, where: Tensor | None = None) -> Tensor:
        """Per-example log p(x | params), summed over the dimensions (those where ``where`` is True)."""
        elements = self.log_prob_elements(params, x)
        return _sum_per_example(elements if where is None else torch.where(where, elements, 0.0))

    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x_d | params) of every dimension d, in x's shape (the dimensions are independent given params)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Binary data; params are logits."""

    is_mass = True

    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none")

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class DiscretizedLogistic(Likelihood):
    """Data on the grid k / (levels - 1) of [0, 1], e.g. 8-bit pixels (levels = 256).

    The probability of a value is the mass of a logistic distribution over its bin, with the edge
    bins extended to infinity (Salimans et al. 2017, PixelCNN++, eq. 2, one mixture component), so
    the masses of all levels sum to one. Params: location and log-scale, in the [-1, 1] space.
    """

    num_params = 2
    is_mass = True

    def __init__(self, levels: int):
        self.levels = levels
        self.half_bin = 1.0 / (levels - 1)  # half the bin width in [-1, 1] units

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        loc, log_scale = params.chunk(2, dim=1)
        return loc, log_scale.clamp(min=-7.0)

    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        loc, log_scale = self._split(params)
        y = 2 * x - 1
        centered = y - loc
        inv_scale = torch.exp(-log_scale)
        upper = inv_scale * (centered + self.half_bin)
        lower = inv_scale * (centered - self.half_bin)
        log_cdf_upper = -F.softplus(-upper)  # log sigmoid(upper): mass of the lowest bin
        log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)): mass of the highest bin
        mass = torch.sigmoid(upper) - torch.sigmoid(lower)
        # Where the bin mass underflows, use the density at the bin centre times the bin width.
        mid = inv_scale * centered
        log_density_mid = mid - log_scale - 2 * F.softplus(mid)
        log_mass = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)),
                               log_density_mid + math.log(2 * self.half_bin))
        edge = 0.5 * self.half_bin
        return torch.where(y < -1 + edge, log_cdf_upper, torch.where(y > 1 - edge, log_survival_lower, log_mass))

    def mean(self, params: Tensor) -> Tensor:
        loc, _ = self._split(params)
        return ((loc + 1) / 2).clamp(0, 1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        loc, log_scale = self._split(params)
        u = torch.rand(loc.shape, generator=generator, device=loc.device).clamp(1e-5, 1 - 1e-5)
        y = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        x = ((y + 1) / 2).clamp(0, 1)
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class Gaussian(Likelihood):
    """Continuous data (points); params are the mean and, if learned, the log standard deviation."""

    def __init__(self, learn_variance: bool = True):
        self.num_params = 2 if learn_variance else 1

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        if self.num_params == 1:
            return params, torch.zeros_like(params)
        loc, log_std = params.chunk(2, dim=1)
        return loc, log_std.clamp(min=-9.0, max=5.0)

    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        loc, log_std = self._split(params)
        z = (x - loc) * torch.exp(-log_std)
        return -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)

    def mean(self, params: Tensor) -> Tensor:
        return self._split(params)[0]

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        loc, log_std = self._split(params)
        return loc + torch.exp(log_std) * torch.randn(loc.shape, generator=generator, device=loc.device)


def make_likelihood(name: str, levels: int | None, learn_variance: bool = True) -> Likelihood:
    if name == "bernoulli":
        return Bernoulli()
    if name == "discretized_logistic":
        assert levels is not None
        return DiscretizedLogistic(levels)
    if name == "gaussian":
        return Gaussian(learn_variance)
    raise ValueError(f"unknown likelihood {name!r}")
