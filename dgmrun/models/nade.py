"""Neural autoregressive distribution estimator (Larochelle & Murray 2011) for binary data.

Pixels in raster order x_1..x_D (channels, then rows, then columns, as ``x.flatten(1)``), with

    p(x) = prod_d p(x_d | x_<d),   p(x_d = 1 | x_<d) = sigmoid(b_d + V_d . h_d),
    h_d = sigmoid(a_d),            a_d = c + W[:, <d] x_<d                       (eqs. 2-3).

All hidden layers share W, so a_{d+1} = a_d + W[:, d] x_d: every a_d of a batch is one exclusive
cumulative sum over d of the outer products x_d W[:, d] (the O(HD) trick of section 3), and
``log p(x)`` is exact: ``nll_estimator = "exact"``. Sampling is ancestral, dimension by dimension,
for the whole batch at once, updating a_d with the same recurrence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.models.base import GenerativeModel, Progress, binary_gibbs, missing_last, require_missing_last


class NADE(GenerativeModel):
    imputation_methods = ("exact", "gibbs")

    def __init__(self, data_info: dict[str, Any], *, hidden_dim: int, optimizer: dict[str, Any],
                 scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        d = self.data_info.num_dims
        self.hidden_dim = hidden_dim
        self.W = nn.Parameter(torch.randn(d, hidden_dim) * 0.01)  # column d of the paper's W, stored as row d
        self.c = nn.Parameter(torch.zeros(hidden_dim))
        self.V = nn.Parameter(torch.randn(d, hidden_dim) * 0.01)
        self.b = nn.Parameter(torch.zeros(d))

    # ------------------------------------------------------------------ the model
    def logits(self, x: Tensor) -> Tensor:
        """Logits of p(x_d = 1 | x_<d) for every d, shape (N, D); x is N×... binary."""
        v = x.flatten(1)
        contributions = v.unsqueeze(-1) * self.W  # (N, D, H): x_d W[:, d]
        a = self.c + torch.cumsum(contributions, dim=1) - contributions  # exclusive cumulative sum: a_d
        h = torch.sigmoid(a)
        return self.b + (h * self.V).sum(-1)

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact log p(x) per example. Without gradients (evaluation), in chunks of 64 examples: the
        N×D×H hidden pre-activations of a 500-example test batch would take gigabytes."""
        if not torch.is_grad_enabled() and len(x) > 64:
            return torch.cat([self.log_likelihood(chunk) for chunk in x.split(64)])
        return self.log_conditionals(x).sum(1)

    def log_conditionals(self, x: Tensor) -> Tensor:
        """log p(x_d | x_<d) of every dimension, (N, D)."""
        return -F.binary_cross_entropy_with_logits(self.logits(x), x.flatten(1), reduction="none")

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        loss = -self.log_likelihood(x).mean()
        self.log("train/loss", loss, batch_size=len(x))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        self.log("val/loss", -self.log_likelihood(x).mean(), batch_size=len(x), sync_dist=True)

    # ------------------------------------------------------------------ GenerativeModel
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._ancestral(torch.zeros(n, self.data_info.num_dims, device=self.device),
                               torch.ones(n, self.data_info.num_dims, dtype=torch.bool, device=self.device), generator)

    def _ancestral(self, v: Tensor, drawn: Tensor, generator: torch.Generator | None) -> Tensor:
        """Dimension by dimension, in order: v_d ~ p(v_d | v_<d) where ``drawn``, else v_d kept."""
        v = v.clone()
        a = self.c.expand(len(v), -1).clone()
        for i in range(v.shape[1]):
            p = torch.sigmoid(self.b[i] + torch.sigmoid(a) @ self.V[i])
            v[:, i] = torch.where(drawn[:, i], torch.bernoulli(p, generator=generator), v[:, i])
            a += v[:, i : i + 1] * self.W[i]
        return v.view(len(v), *self.data_info.shape)

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """``exact``: the missing dimensions drawn in order given the observed ones before them (the exact
        conditional for a ``bottom`` mask); ``gibbs``: each missing dimension redrawn from its full conditional,
        ``settings.iterations`` sweeps."""
        if settings.method == "exact":
            require_missing_last(missing)
            return self._ancestral(x.flatten(1), missing.flatten(1), generator)
        return binary_gibbs(self.log_likelihood, x, missing, settings.iterations, generator, progress)

    @torch.no_grad()
    def missing_log_likelihood(self, x: Tensor, missing: Tensor, completed: Tensor) -> tuple[Tensor, str] | None:
        """Exact when the missing dimensions come last: the sum of their log p(x_d | x_<d)."""
        if not missing_last(missing):
            return None
        per_dim = torch.cat([self.log_conditionals(chunk) for chunk in x.split(64)])
        return (per_dim * missing.flatten(1)).sum(1), "exact"
