"""PixelCNN (van den Oord et al. 2016a) and gated / class-conditional PixelCNN (2016b).

p(x) = prod_{i=1}^{HW} p(x_i | x_<i), pixels in raster order, each conditional computed by a causal
network (``dgmrun.nets.masked``): masked convolutions, type A then B, or with ``gated=true`` the
gated vertical + horizontal stacks (no blind spot, eq. 4: y = tanh(W_f * x) . sigmoid(W_g * x)).
``conditional=true`` adds a learned label embedding as a bias to every layer (eq. 5, p(x | y)).

Outputs per pixel and channel: one logit of a Bernoulli for binary data, or a ``levels``-way softmax
for discrete grey levels (256 for 8-bit images, section 2.3 of 2016a). The channels of a pixel are
predicted together from the earlier pixels (independent given them), so log p(x) is an exact sum of
per-pixel terms: ``nll_estimator = "exact"``, and test/bpd is comparable to the papers'.
Sampling draws the whole batch at once, pixel by pixel (HW network passes, each on the rows filled so
far: rows below the current one cannot influence it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dgmrun.errors import DgmrunError
from dgmrun.models.autoregressive import Autoregressive
from dgmrun.models.base import Progress, binary_gibbs, iterations, require_missing_last
from dgmrun.nets.masked import PixelCNNNet


class PixelCNN(Autoregressive):
    imputation_methods = ("exact", "gibbs", "importance")
    completion_rows = 256  # each row's activations are channels x H x W per layer

    def __init__(self, data_info: dict[str, Any], *, channels: int, num_layers: int, kernel_size: int, gated: bool,
                 conditional: bool, optimizer: dict[str, Any], scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.levels = int(info.levels)
        self.conditional = conditional
        c = info.shape[0]
        out_per_channel = 1 if self.levels == 2 else self.levels
        self.net = PixelCNNNet(c, c * out_per_channel, channels, num_layers, kernel_size, gated,
                               info.num_classes if conditional else 0)

    # ------------------------------------------------------------------ the model
    def logits(self, x: Tensor, labels: Tensor | None = None, last_row: bool = False) -> Tensor:
        """Bernoulli logits (N, C, H, W), or softmax logits (N, C, levels, H, W) for more levels; with
        ``last_row``, those of x's last row only (H = 1), computed on the rows it depends on."""
        run = self.net.last_row if last_row else self.net
        out = run(2 * x - 1, labels if self.conditional else None)
        if self.levels == 2:
            return out
        n, _, h, w = out.shape
        return out.view(n, -1, self.levels, h, w)

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.log_conditionals(x, labels).flatten(1).sum(1)

    def log_conditionals(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x_cij | the pixels before ij) of every pixel and channel, (N, C, H, W)."""
        logits = self.logits(x, labels)
        if self.levels == 2:
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        target = torch.round(x * (self.levels - 1)).long()
        return -F.cross_entropy(logits.transpose(1, 2), target, reduction="none")

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = -self.log_prob(x, y).mean()
        self.log_training(batch_idx, {"train/loss": loss, "train/bpd": self.bits_per_dim(loss)}, {"loss": loss}, len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = -self.log_prob(x, y).mean()
        self.log_dict({"val/loss": loss, "val/bpd": self.bits_per_dim(loss)}, batch_size=len(x), sync_dist=True)

    # ------------------------------------------------------------------ GenerativeModel
    @property
    def class_conditional(self) -> bool:
        return self.conditional

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.conditional and labels is None:
            raise ValueError("the conditional PixelCNN's likelihood is log p(x | labels): give the labels")
        return self.log_prob(x, labels if self.conditional else None)

    def grid_labels(self, n: int, classes: Sequence[int] | None = None) -> Tensor:
        """Labels of n samples in rows of 8: row r has class classes[r % len(classes)] (default: all classes)."""
        classes = list(classes) if classes else list(range(self.data_info.num_classes))
        rows = torch.arange(n, device=self.device) // 8
        return torch.tensor(classes, device=self.device)[rows % len(classes)]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, classes: Sequence[int] | None = None,
               labels: Tensor | None = None) -> Tensor:
        c, h, w = self.data_info.shape
        if self.conditional and labels is None:
            labels = self.grid_labels(n, classes)
        everything = torch.ones(n, c, h, w, dtype=torch.bool, device=self.device)
        return self._ancestral(torch.zeros(n, c, h, w, device=self.device), everything, labels, generator)

    def _ancestral(self, x: Tensor, drawn: Tensor, labels: Tensor | None, generator: torch.Generator | None,
                   progress: Progress = lambda done, total: None) -> Tensor:
        """Pixel by pixel in raster order: x_ij ~ p(x_ij | the pixels before it) where ``drawn``, else kept
        (``progress`` told of each row)."""
        x = x.clone()
        n, c, h, w = x.shape
        for i in iterations(h, progress):
            for j in range(w):
                if not drawn[:, :, i, j].any():
                    continue
                logits = self.logits(x[:, :, : i + 1], labels, last_row=True)[..., 0, j]
                if self.levels == 2:
                    value = torch.bernoulli(torch.sigmoid(logits), generator=generator)
                else:
                    probs = torch.softmax(logits, dim=-1).reshape(-1, self.levels)
                    value = torch.multinomial(probs, 1, generator=generator).view(n, c).float() / (self.levels - 1)
                x[:, :, i, j] = torch.where(drawn[:, :, i, j], value, x[:, :, i, j])
        return x

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """``exact``: the missing pixels drawn in raster order given the pixels before them (the exact
        conditional for a ``bottom`` mask); ``gibbs`` (binary images): each missing pixel redrawn from its
        full conditional, ``settings.iterations`` sweeps. The class-conditional model is refused: imputation has
        no labels to give it."""
        if self.conditional:
            raise DgmrunError("task=impute: the class-conditional PixelCNN needs the images' labels, which "
                              "imputation does not use; impute with an unconditional PixelCNN")
        if settings.method == "exact":
            require_missing_last(self.missing_in_order(missing))
            return self._ancestral(x, missing, None, generator, progress)
        if settings.method == "importance":
            return self.importance_imputation(x, missing, generator, progress)
        if self.levels != 2:
            raise DgmrunError(f"impute.method=gibbs: for {self.levels} grey levels each pixel's full conditional "
                              f"costs {self.levels} passes of the network; binarize the data (or use impute.mask=bottom "
                              "with impute.method=exact)")
        return binary_gibbs(self.log_prob, x, missing, settings.iterations, generator, progress)

    def missing_in_order(self, missing: Tensor) -> Tensor:
        return missing.any(1)  # all channels of a pixel are drawn at once

    def completion_draws(self, x: Tensor, missing: Tensor, n: int, generator: torch.Generator | None
                         ) -> tuple[Tensor, Tensor]:
        completed = self._ancestral(x.repeat(n, 1, 1, 1), missing.repeat(n, 1, 1, 1), None, generator)
        log_w = (self.log_conditionals(completed) * ~missing.repeat(n, 1, 1, 1)).flatten(1).sum(1)
        return completed.view(n, *x.shape), log_w.view(n, len(x))
