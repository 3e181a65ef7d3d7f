"""What NADE and PixelCNN share: an exact log p(x) = sum_d log p(x_d | x_<d) in raster order, and imputation
from it. For a mask whose missing pixels all come last, drawing them in order given the pixels before them is
the exact conditional (``exact``). For any other mask, ``importance``: draw the missing pixels in order from the
model's own conditionals, the observed ones kept,

    q(x_missing) = prod_{d missing} p(x_d | x_<d),   w = p(x) / q(x_missing) = prod_{d observed} p(x_d | x_<d),

so that E_q[w] = sum_{x_missing} p(x_observed, x_missing) = p(x_observed). The imputation is the conditional
mean sum_k w_k x^(k) / sum_k w_k over k = eval.num_importance_samples completions x^(k), and
log p(x_missing | x_observed) = log p(x) - log p(x_observed) with log p(x_observed) ~ log mean_k w_k.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from dgmrun.models.base import GenerativeModel, Progress, iterations, missing_last, self_normalised_mean


class Autoregressive(GenerativeModel):
    """An autoregressive model: ``log_conditionals(x)`` (log p(x_d | x_<d) of every dimension, of x's shape
    or flattened) and ``completion_draws`` (the clamped ancestral draws with their log-weights)."""

    # Rows a batch of completion draws holds at once (the model's activations for each row must fit).
    completion_rows = 20_000

    def log_conditionals(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def completion_draws(self, x: Tensor, missing: Tensor, n: int, generator: torch.Generator | None
                         ) -> tuple[Tensor, Tensor]:
        """n completions of each image (the missing pixels drawn in raster order from p(x_d | x_<d), the observed
        ones kept), of shape (n, N, ...), and their log-weights sum over the observed d of log p(x_d | x_<d),
        of shape (n, N)."""
        raise NotImplementedError

    def missing_in_order(self, missing: Tensor) -> Tensor:
        """The mask in the model's order of drawing, flattened by ``missing_last``: here x.flatten(1)'s."""
        return missing

    def completions(self, x: Tensor, missing: Tensor, generator: torch.Generator | None, progress: Progress
                    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The k = eval.num_importance_samples ``completion_draws`` of each image, as (log w, completions), in
        chunks of about ``completion_rows`` rows."""
        k = int(self.eval_settings["num_importance_samples"])
        chunk = max(1, self.completion_rows // len(x))
        for start in iterations(math.ceil(k / chunk), progress):
            n = min(chunk, k - start * chunk)
            completed, log_w = self.completion_draws(x, missing, n, generator)
            yield log_w, completed

    def conditional_mean(self, x: Tensor, missing: Tensor, generator: torch.Generator | None,
                         progress: Progress) -> tuple[Tensor, Tensor]:
        """E[x | x_observed] by self-normalised importance sampling over the ``completions``, and the estimate of
        log p(x_observed), log(mean_k w_k)."""
        mean, log_total = self_normalised_mean(self.completions(x, missing, generator, progress))
        return mean, log_total - math.log(int(self.eval_settings["num_importance_samples"]))

    def importance_imputation(self, x: Tensor, missing: Tensor, generator: torch.Generator | None,
                              progress: Progress) -> Tensor:
        """The ``conditional_mean``; its estimate of log p(x_observed) is kept for ``missing_log_likelihood``."""
        mean, log_observed = self.conditional_mean(x, missing, generator, progress)
        self.remember(x, missing, log_observed)
        return mean

    def imputation_protocol(self, settings: Any) -> str:
        if settings.method == "importance":
            return (f"importance (the conditional mean, k={self.eval_settings['num_importance_samples']} draws of the "
                    "missing pixels from the model's own conditionals given the pixels before them)")
        return super().imputation_protocol(settings)

    @torch.no_grad()
    def missing_log_likelihood(self, x: Tensor, missing: Tensor, completed: Tensor) -> tuple[Tensor, str] | None:
        """Exact when the missing pixels come last: the sum of their log p(x_d | x_<d). Otherwise log p(x)
        (exact) - log p(x_observed), the latter the log of the unbiased importance estimate, low on average
        (Jensen), so that the NLL of the missing pixels is low on average too: a stochastic lower bound. The
        estimate of the last ``importance`` imputation of the same observed pixels is used, not drawn again."""
        conditionals = self.log_conditionals(x).reshape(missing.shape)
        if missing_last(self.missing_in_order(missing)):
            return (conditionals * missing).flatten(1).sum(1), "exact"
        k = int(self.eval_settings["num_importance_samples"])
        log_observed = self.recall(x, missing)
        if log_observed is None:
            log_observed = self.conditional_mean(x, missing, None, lambda done, total: None)[1]
        return conditionals.flatten(1).sum(1) - log_observed, (
            f"estimate (log p(x) exact - log p(x_observed) by importance sampling, k={k}: a stochastic lower bound "
            "on the NLL)")
