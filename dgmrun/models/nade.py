"""Neural autoregressive distribution estimator (Larochelle & Murray 2011) for binary data.

Pixels in raster order x_1..x_D (channels, then rows, then columns, as ``x.flatten(1)``), with

    p(x) = prod_d p(x_d | x_<d),   p(x_d = 1 | x_<d) = sigmoid(b_d + V_d . h_d),
    h_d = sigmoid(a_d),            a_d = c + W[:, <d] x_<d                       (eqs. 2-3).

All hidden layers share W, so a_{d+1} = a_d + W[:, d] x_d: every a_d of a batch is one exclusive
cumulative sum over d of the outer products x_d W[:, d] (the O(HD) trick of section 3), computed
a block of dimensions at a time (``BlockedLogits``), and
``log p(x)`` is exact: ``nll_estimator = "exact"``. Sampling is ancestral, dimension by dimension,
for the whole batch at once, updating a_d with the same recurrence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.models.autoregressive import Autoregressive
from dgmrun.models.base import Progress, binary_gibbs, require_missing_last


BLOCK = 8  # dimensions per block of BlockedLogits: 8 x N x H floats stay in the CPU's caches


class BlockedLogits(torch.autograd.Function):
    """NADE's logits b_d + V_d . sigmoid(a_d), a_d = c + sum_{j<d} x_j W_j, a block of BLOCK dimensions at a time.

    Written out whole, the N×D×H hidden pre-activations are 200 MB for a batch of 128 digits and H = 500, and
    autograd keeps several of them: memory traffic, not arithmetic, set the pace (1.65 s a step). Here each
    block's (N, BLOCK, H) tensors are made, used and dropped while in cache; only the pre-activations at each
    block's start are kept, and the backward pass recomputes a block's hidden units from them and carries
    the sum of dL/da over the dimensions after it. Gradients are exact (tests/test_nade.py checks them
    against autograd through the whole tensors).
    """

    @staticmethod
    def forward(ctx: Any, v: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, keep: bool) -> Tensor:
        """``keep``: a backward pass will follow (the block starts are kept for it)."""
        n, d = v.shape
        starts = v.new_empty(math.ceil(d / BLOCK), n, W.shape[1]) if keep else None
        logits = v.new_empty(n, d)
        a = c.expand(n, -1)  # a_d at the block's first dimension
        for k, s in enumerate(range(0, d, BLOCK)):
            e = min(s + BLOCK, d)
            if keep:
                starts[k] = a
            contributions = v[:, s:e, None] * W[s:e]
            h = contributions.cumsum(1).sub_(contributions).add_(a.unsqueeze(1)).sigmoid_()
            logits[:, s:e] = torch.einsum("nbh,bh->nb", h, V[s:e])
            a = a + v[:, s:e] @ W[s:e]
        ctx.save_for_backward(v, W, V, starts)
        return logits + b

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        v, W, V, starts = ctx.saved_tensors
        n, d = v.shape
        dv = torch.empty_like(v) if ctx.needs_input_grad[0] else None
        dW, dV, dc = torch.empty_like(W), torch.empty_like(V), W.new_zeros(W.shape[1])
        later = v.new_zeros(n, W.shape[1])  # sum of dL/da_d over the dimensions after the block
        for k in reversed(range(len(starts))):
            s, e = k * BLOCK, min(k * BLOCK + BLOCK, d)
            contributions = v[:, s:e, None] * W[s:e]
            h = contributions.cumsum(1).sub_(contributions).add_(starts[k].unsqueeze(1)).sigmoid_()
            g = grad[:, s:e]
            dV[s:e] = torch.einsum("nb,nbh->bh", g, h)
            da = h.mul_(1 - h).mul_(g.unsqueeze(-1) * V[s:e])  # dL/da_d = g_d V_d sigmoid'(a_d)
            block_total = da.sum(1)
            later = later + block_total
            after = da.cumsum(1).neg_().add_(later.unsqueeze(1))  # dL/da summed over d' > d: x_d's reach
            dW[s:e] = torch.einsum("nb,nbh->bh", v[:, s:e], after)
            if dv is not None:
                dv[:, s:e] = torch.einsum("nbh,bh->nb", after, W[s:e])
            dc += block_total.sum(0)
        return dv, dW, dc, dV, grad.sum(0), None


class NADE(Autoregressive):
    imputation_methods = ("exact", "gibbs", "importance")

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
        differentiated = torch.is_grad_enabled() and (v.requires_grad or self.W.requires_grad)
        return BlockedLogits.apply(v, self.W, self.c, self.V, self.b, differentiated)

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact log p(x) per example."""
        return self.log_conditionals(x).sum(1)

    def log_conditionals(self, x: Tensor) -> Tensor:
        """log p(x_d | x_<d) of every dimension, (N, D)."""
        return -F.binary_cross_entropy_with_logits(self.logits(x), x.flatten(1), reduction="none")

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        loss = -self.log_likelihood(x).mean()
        self.log_training(batch_idx, {"train/loss": loss}, {"loss": loss}, len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        self.log("val/loss", -self.log_likelihood(x).mean(), batch_size=len(x), sync_dist=True)

    # ------------------------------------------------------------------ GenerativeModel
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        d = self.data_info.num_dims
        v = torch.zeros(n, d, device=self.device)
        return self._ancestral(v, torch.ones_like(v, dtype=torch.bool), generator)[0].view(n, *self.data_info.shape)

    def _ancestral(self, v: Tensor, drawn: Tensor, generator: torch.Generator | None, repeats: int = 1
                   ) -> tuple[Tensor, Tensor]:
        """Dimension by dimension, in order: v_d ~ p(v_d | v_<d) where ``drawn``, else v_d kept; ``repeats`` draws
        of each row of v (N, D), as (repeats * N, D) rows, and the sum of log p(v_d | v_<d) over each row's kept
        dimensions. The dimensions before the first drawn one are the same in every draw: done once, not repeated."""
        first = int(drawn.any(0).int().argmax())
        log_kept = (self.log_conditionals(v)[:, :first].sum(1) if first else v.new_zeros(len(v))).repeat(repeats)
        a = (self.c + v[:, :first] @ self.W[:first]).repeat(repeats, 1)
        v, drawn = v.repeat(repeats, 1), drawn.repeat(repeats, 1)
        h = torch.empty_like(a)
        for i in range(first, v.shape[1]):
            logit = self.b[i] + torch.sigmoid(a, out=h) @ self.V[i]
            v[:, i] = torch.where(drawn[:, i], torch.bernoulli(torch.sigmoid(logit), generator=generator), v[:, i])
            log_kept -= F.binary_cross_entropy_with_logits(logit, v[:, i], reduction="none").masked_fill_(drawn[:, i], 0)
            a.addr_(v[:, i], self.W[i])
        return v, log_kept

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """``exact``: the missing dimensions drawn in order given the observed ones before them (the exact
        conditional for a ``bottom`` mask); ``gibbs``: each missing dimension redrawn from its full conditional,
        ``settings.iterations`` sweeps; ``importance``: the ``conditional_mean`` (``dgmrun.models.autoregressive``)."""
        if settings.method == "exact":
            require_missing_last(missing)
            return self._ancestral(x.flatten(1), missing.flatten(1), generator)[0].view_as(x)
        if settings.method == "importance":
            return self.importance_imputation(x, missing, generator, progress)
        return binary_gibbs(self.log_likelihood, x, missing, settings.iterations, generator, progress)

    def completion_draws(self, x: Tensor, missing: Tensor, n: int, generator: torch.Generator | None
                         ) -> tuple[Tensor, Tensor]:
        v, log_w = self._ancestral(x.flatten(1), missing.flatten(1), generator, n)
        return v.view(n, *x.shape), log_w.view(n, len(x))
