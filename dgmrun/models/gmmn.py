"""Generative moment matching networks (Li, Swersky & Zemel 2015; Dziugaite et al. 2015).

A generator G maps z ~ N(0, I) to data and is trained to minimise the squared maximum mean
discrepancy between a data batch X = {x_i} (n points) and a generated batch Y = {y_j} (m points):

    MMD^2(X, Y) = 1/n^2 sum_ii' k(x_i, x_i') - 2/(nm) sum_ij k(x_i, y_j) + 1/m^2 sum_jj' k(y_j, y_j')

(the biased V-statistic of Gretton et al. 2012, eq. 5, always >= 0), with a sum of RBF kernels
k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2)) over several bandwidths s, so that both close and far
structure is matched. ``bandwidths: null`` picks them per batch by the median heuristic: the median
pairwise distance of the data batch times 1/4, 1/2, 1, 2, 4.

``space: pixels`` matches moments of the data themselves. ``space: code`` (GMMN+AE, Li et al.
sec. 3.2) trains an autoencoder on the data and G to match the moments of its codes (taken as
fixed targets, no gradient into the encoder); samples are decoded G(z). Both are trained jointly,
one optimizer step per batch (automatic optimization: ``trainer.max_steps`` counts batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.models.base import GenerativeModel, reconstruction_grid
from dgmrun.nets.mlp import mlp

MEDIAN_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def median_bandwidths(x: Tensor, scales: Sequence[float] = MEDIAN_SCALES) -> list[float]:
    """The median pairwise distance of x (flattened) times each scale."""
    d = torch.cdist(x.flatten(1).float(), x.flatten(1).float())
    off = d[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    median = off.median().clamp_min(1e-6).item() if off.numel() else 1.0
    return [median * s for s in scales]


def mixed_rbf_kernel(a: Tensor, b: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """sum_s exp(-||a_i - b_j||^2 / (2 s^2)) for every pair: len(a) × len(b)."""
    sq = torch.cdist(a.flatten(1).float(), b.flatten(1).float()).pow(2)
    return sum(torch.exp(-sq / (2 * s * s)) for s in bandwidths)


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Biased estimate of MMD^2 between samples x and y under ``mixed_rbf_kernel`` (see the module docstring)."""
    kxx = mixed_rbf_kernel(x, x, bandwidths).mean()
    kyy = mixed_rbf_kernel(y, y, bandwidths).mean()
    kxy = mixed_rbf_kernel(x, y, bandwidths).mean()
    return kxx - 2 * kxy + kyy


class GMMN(GenerativeModel):
    likelihood_kind = "none"

    def __init__(self, data_info: dict[str, Any], *, latent_dim: int, hidden_dims: Sequence[int], space: str,
                 code_dim: int, ae_hidden_dims: Sequence[int], bandwidths: Sequence[float] | None,
                 optimizer: dict[str, Any], scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.latent_dim, self.space = latent_dim, space
        self.bandwidths = list(bandwidths) if bandwidths else None
        target_dim = code_dim if space == "code" else info.num_dims
        self.generator = mlp(latent_dim, hidden_dims, target_dim)
        if space == "code":
            # Unbounded codes: sigmoid codes (Li et al.) saturated at 1 on MNIST within the first epochs,
            # which left every image with the same code and G matching a single point.
            self.encoder = nn.Sequential(nn.Flatten(), mlp(info.num_dims, ae_hidden_dims, code_dim))
            self.decoder = mlp(code_dim, list(reversed(list(ae_hidden_dims))), info.num_dims)

    # ------------------------------------------------------------------ the model
    def _generated_targets(self, z: Tensor) -> Tensor:
        out = self.generator(z)
        if self.space == "code":
            return out
        return torch.sigmoid(out) if self.data_info.is_image else out

    def _decode(self, code: Tensor) -> Tensor:
        """Code -> data space (images: sigmoid of the decoder's logits, in [0, 1])."""
        out = self.decoder(code)
        if self.data_info.is_image:
            return torch.sigmoid(out).view(len(code), *self.data_info.shape)
        return out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        logs: dict[str, Tensor] = {}
        if self.space == "code":
            code = self.encoder(x)
            recon = self.decoder(code)
            target = x.flatten(1)
            if self.data_info.is_image:
                reconstruction = F.binary_cross_entropy_with_logits(recon, target, reduction="none").sum(1).mean()
            else:
                reconstruction = ((recon - target) ** 2).sum(1).mean()
            real = code.detach()
            logs["train/reconstruction"] = reconstruction.detach()
        else:
            reconstruction, real = x.new_zeros(()), x.flatten(1)
        fake = self._generated_targets(torch.randn(len(x), self.latent_dim, device=x.device))
        bandwidths = self.bandwidths or median_bandwidths(real)
        loss_mmd = mmd2(real, fake, bandwidths)
        loss = loss_mmd + reconstruction
        logs.update({"train/mmd2": loss_mmd.detach(), "train/loss": loss.detach()})
        self.log_training(batch_idx, logs, {"loss": loss}, len(x))
        return loss

    # ------------------------------------------------------------------ GenerativeModel
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        out = self._generated_targets(z)
        if self.space == "code":
            return self._decode(out)
        return out.view(n, *self.data_info.shape)

    @torch.no_grad()
    def figures(self, x: Tensor) -> dict[str, Tensor]:
        if self.space != "code" or not self.data_info.is_image:
            return {}
        return reconstruction_grid(x, lambda images: self._decode(self.encoder(images)))
