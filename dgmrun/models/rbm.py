"""Restricted Boltzmann machine (Smolensky 1986; Hinton 2002) trained by CD-k or persistent CD.

Energy (Bernoulli visibles v in {0,1}^D, Bernoulli hiddens h in {0,1}^H, W: D×H):
    E(v, h) = -b.v - c.h - v.W.h,     p(h_j = 1 | v) = sigmoid(c_j + v.W_j),  p(v_i = 1 | h) = sigmoid(b_i + W_i.h);
free energy  F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + v.W_j),  p(v) = exp(-F(v)) / Z.
Gaussian-Bernoulli (``visible=gaussian``, unit variance, for real-valued data):
    E(v, h) = |v - b|^2 / 2 - c.h - v.W.h,   v | h ~ N(b + W h, I),   F(v) = |v - b|^2 / 2 - sum_j softplus(c_j + v.W_j).

Learning (lecture 000): d log p(v) / d theta = -dF(v)/d theta + E_model[dF/d theta]. CD-k estimates the
model expectation with k Gibbs steps started at the data; persistent CD (Tieleman 2008) continues
``num_chains`` chains from one update to the next (their hidden states kept in ``chain_hidden``). The
update descends

    loss = mean_data F(v) - mean_chains F(v~),   v~ held fixed (no gradient through the sampler),

whose gradient is written out in ``cd_gradients`` (no autograd: the closed form costs the same three
matrix products as scikit-learn's update, with none of the graph's overhead):

    dloss/dW = -(<v p(h|v)>_data - <v~ p(h|v~)>_chains),  dloss/db = -(<v> - <v~>),  dloss/dc = -(<p(h|v)> - <p(h|v~)>)

(the same for Gaussian visibles). The optimizer is plain SGD (``model.optimizer.name=sgd``) with ``model.optimizer.lr`` (and
weight_decay): W <- W + lr (<v h>_data - <v h>_chains), batch means. Under DDP the gradients are
averaged over the processes before the step, as DDP's backward would.

Evaluation: test NLL = F(v) + log Z with log Z from forward AIS (``dgmrun.metrics.likelihood``, Salakhutdinov
& Murray 2008): ``eval.ais_runs`` independent runs of ``eval.ais_chains`` chains through ``eval.ais_betas``
distributions, computed once per test run. test/log_z is the log-mean-exp over all chains; test/nll_std is
the spread (std) of the NLL over the runs (the same for every example, as log Z is shared). AIS errs low on
log Z (NLL optimistic). The conservative side of the bracket is RAISE (Burda et al. 2015) on the first
``eval.raise_examples`` test examples (0: skipped), one reverse chain each through the same distributions:
each gives log Z ~ -F(x) - log p_raise(x), their mean is test/log_z_raise (high in expectation), and
test/nll_raise = mean F(v) + test/log_z_raise over the whole test set, comparable with test/nll.
Gaussian visibles: the NLL is of a density, not a probability mass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.metrics.likelihood import ais_log_partition, bernoulli, raise_log_likelihood
from dgmrun.models.base import GenerativeModel, Progress, iterations, reconstruction_grid

AIS_SEED = 1234  # fixed, so task=eval gives the same log Z (and RAISE) for the same checkpoint and settings


class RBM(GenerativeModel):
    likelihood_kind = "estimate"  # AIS's log Z: unbiased for Z, so log Z is low and the NLL high on average (Jensen)
    imputation_methods = ("gibbs",)

    def __init__(self, data_info: dict[str, Any], *, hidden_dim: int, visible: str, cd_k: int, persistent: bool,
                 num_chains: int, sample_gibbs_steps: int, optimizer: dict[str, Any], scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.gaussian = visible == "gaussian"
        self.cd_k, self.persistent, self.sample_gibbs_steps = cd_k, persistent, sample_gibbs_steps
        d = info.num_dims
        self.W = nn.Parameter(torch.randn(d, hidden_dim) * 0.01)
        self.b = nn.Parameter(torch.zeros(d))
        self.c = nn.Parameter(torch.zeros(hidden_dim))
        # Persistent CD's fantasy particles, stored as their hidden states (as scikit-learn does): each update
        # draws v~ | h, then h | v~ from the same pre-activations that the loss needs anyway.
        self.register_buffer("chain_hidden", torch.zeros(num_chains, hidden_dim))
        # Running mean of the training data: the base-rate model of AIS.
        self.register_buffer("data_mean", torch.full((d,), 0.5 if not self.gaussian else 0.0))
        self.register_buffer("data_seen", torch.zeros(()))
        self._ais: tuple[Tensor, Tensor] | None = None
        self._raise_sums: dict[str, float] = {}  # sums over the test run, for test/nll_raise
        self._world_size = 1

    # ------------------------------------------------------------------ the model
    def free_energy(self, v: Tensor, pre: Tensor | None = None) -> Tensor:
        """F(v); ``pre`` = c + v W when already computed."""
        hidden = F.softplus(v @ self.W + self.c if pre is None else pre).sum(-1)
        if self.gaussian:
            return 0.5 * ((v - self.b) ** 2).sum(-1) - hidden
        return -(v @ self.b) - hidden

    def hidden_probs(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v @ self.W + self.c)

    @property
    def likelihood_is_discrete(self) -> bool:
        return not self.gaussian  # Gaussian visibles give a density: no bits/dim

    def visible_mean(self, h: Tensor) -> Tensor:
        pre = h @ self.W.T + self.b
        return pre if self.gaussian else torch.sigmoid(pre)

    def sample_visible(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean = self.visible_mean(h)
        if self.gaussian:
            return mean + torch.randn(mean.shape, generator=generator, device=mean.device)
        return bernoulli(mean, generator)

    @torch.no_grad()
    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        for _ in range(steps):
            v = self.sample_visible(bernoulli(self.hidden_probs(v), generator), generator)
        return v

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """Gibbs sampling with the observed visibles clamped: h ~ p(h | v), then the missing v ~ p(v | h);
        ``settings.iterations`` steps."""
        v, clamped, free = x.flatten(1), x.flatten(1), missing.flatten(1)
        for _ in iterations(settings.iterations, progress):
            v = torch.where(free, self.sample_visible(bernoulli(self.hidden_probs(v), generator), generator), clamped)
        return v.view_as(x)

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Per-example mean squared error of the mean-field reconstruction E[v | E[h | v]]."""
        return ((v - self.visible_mean(self.hidden_probs(v))) ** 2).mean(-1)

    def pseudo_log_likelihood(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """scikit-learn's ``BernoulliRBM.score_samples``: flip one random bit i per example,
        D log sigmoid(F(v with bit i flipped) - F(v)) (a stochastic estimate of D log p(v_i | v_-i))."""
        idx = torch.randint(0, v.shape[1], (len(v),), generator=generator, device=v.device)
        flipped = v.clone()
        rows = torch.arange(len(v), device=v.device)
        flipped[rows, idx] = 1 - flipped[rows, idx]
        return v.shape[1] * F.logsigmoid(self.free_energy(flipped) - self.free_energy(v))

    # ------------------------------------------------------------------ Lightning steps
    @torch.no_grad()
    def cd_gradients(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Set the parameters' .grad to the CD-k / PCD gradient of mean F(v) - mean F(v~) for data ``v``
        (N x D), move the persistent chains on, and return (the loss, the negative particles v~)."""
        # Matrix products as in scikit-learn's PCD: c + v W (shared by F(v) and, for CD, the first Gibbs step),
        # v~ | h, c + v~ W (shared by F(v~) and the chains' next state), and v^T p(h|v) - v~^T p(h|v~).
        pre = v @ self.W + self.c
        positive_h = torch.sigmoid(pre)
        h = self.chain_hidden if self.persistent else bernoulli(positive_h, None)
        negative = self.gibbs(self.sample_visible(h), self.cd_k - 1)
        pre_negative = negative @ self.W + self.c
        negative_h = torch.sigmoid(pre_negative)
        if self.persistent:
            self.chain_hidden.copy_(bernoulli(negative_h, None))
        n, m = len(v), len(negative)
        grads = (torch.addmm(v.T @ positive_h, negative.T, negative_h, beta=-1 / n, alpha=1 / m),
                 negative.mean(0) - v.mean(0), negative_h.mean(0) - positive_h.mean(0))
        if self._world_size > 1:
            grads = tuple(self.trainer.strategy.reduce(g, reduce_op="mean") for g in grads)
        for param, grad in zip((self.W, self.b, self.c), grads):
            param.grad = grad.to(param.dtype)
        loss = self.free_energy(v, pre).mean() - self.free_energy(negative, pre_negative).mean()
        return loss, negative

    def on_fit_start(self) -> None:
        self._world_size = self.trainer.world_size

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        v = x.flatten(1)
        self._ais = None  # the weights change: any cached log Z is stale
        with torch.no_grad():
            n = self.data_seen + len(v)
            self.data_mean += (v.sum(0) - len(v) * self.data_mean) / n
            self.data_seen.copy_(n)
        loss, _ = self.cd_gradients(v)
        self.check_finite("train/loss", loss)
        self.optimizers().step()
        self.step_schedulers("step")
        if self.logging_now(batch_idx):  # the reconstruction error costs one more matrix product
            with torch.no_grad():
                recon = self.reconstruction_error(v).mean()
            self.log_training(batch_idx, {"train/recon_error": recon, "train/loss": loss}, {"recon": recon}, len(x))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        v = x.flatten(1)
        metrics = {"val/recon_error": self.reconstruction_error(v).mean()}
        if not self.gaussian:
            # val/loss (best checkpoint): the negative pseudo-log-likelihood, cheap and free of log Z.
            g = torch.Generator(v.device).manual_seed(batch_idx)
            metrics["val/loss"] = -self.pseudo_log_likelihood(v, g).mean()
        else:
            metrics["val/loss"] = metrics["val/recon_error"]
        self.log_dict(metrics, batch_size=len(x), sync_dist=True)

    # ------------------------------------------------------------------ GenerativeModel
    def ais_settings(self) -> dict[str, int]:
        """AIS chains, betas and runs and the RAISE examples (``eval.ais_*``, ``eval.raise_examples``)."""
        return {key: int(self.eval_settings[key]) for key in ("ais_chains", "ais_betas", "ais_runs", "raise_examples")}

    @property
    def nll_estimator(self) -> str:
        s = self.ais_settings()
        name = f"ais-c{s['ais_chains']}-b{s['ais_betas']}-r{s['ais_runs']}"
        if s["raise_examples"] > 0:
            name += f"; nll_raise: raise-c1-b{s['ais_betas']}-n{s['raise_examples']}"
        return name

    def base_rate_bias(self) -> Tensor:
        if self.gaussian:
            return self.data_mean
        mean = self.data_mean.clamp(1e-3, 1 - 1e-3) if self.data_seen > 0 else torch.full_like(self.data_mean, 0.5)
        return torch.log(mean) - torch.log1p(-mean)

    @torch.no_grad()
    def log_partition(self) -> tuple[Tensor, Tensor]:
        """(log Z from all chains, the estimates of the independent runs) by AIS, cached until the next
        training step."""
        if self._ais is None:
            s = self.ais_settings()
            generator = torch.Generator(self.device).manual_seed(AIS_SEED)
            self._ais = ais_log_partition(self.W, self.b, self.c, self.base_rate_bias(), s["ais_chains"],
                                          s["ais_betas"], generator, self.gaussian, s["ais_runs"])
        return self._ais

    def on_test_start(self) -> None:
        self._ais = None  # eval settings may have changed
        self._raise_sums = {"log_z": 0.0, "raised": 0, "free_energy": 0.0, "examples": 0}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        log_z, _ = self.log_partition()
        return -self.free_energy(x.flatten(1)) - log_z

    @torch.no_grad()
    def extra_test_metrics(self, x: Tensor) -> dict[str, Tensor]:
        v = x.flatten(1)
        log_z, runs = self.log_partition()
        ones = torch.ones(len(v), device=v.device)
        metrics = {"log_z": log_z * ones, "recon_error": self.reconstruction_error(v)}
        if len(runs) > 1:
            metrics["nll_std"] = runs.std() * ones
        if not self.gaussian:
            metrics["pseudo_nll"] = -self.pseudo_log_likelihood(v, torch.Generator(v.device).manual_seed(0))
        self._accumulate_raise(v)
        return metrics

    def _accumulate_raise(self, v: Tensor) -> None:
        """RAISE's log Z on the test examples until ``raise_examples`` are done, and F(v) on all of them;
        test/log_z_raise and test/nll_raise are logged at the epoch's end."""
        sums, settings = self._raise_sums, self.ais_settings()
        free_energy = self.free_energy(v)
        sums["free_energy"] += free_energy.sum().item()
        sums["examples"] += len(v)
        todo = max(0, settings["raise_examples"] - sums["raised"])
        if todo == 0:
            return
        v, free_energy = v[:todo], free_energy[:todo]
        generator = torch.Generator(self.device).manual_seed(AIS_SEED + sums["raised"])
        log_p = raise_log_likelihood(self.W, self.b, self.c, v, self.base_rate_bias(), 1, settings["ais_betas"],
                                     generator, self.gaussian)
        sums["log_z"] += (-free_energy - log_p).sum().item()
        sums["raised"] += len(v)

    def on_test_epoch_end(self) -> None:
        sums = self._raise_sums
        if sums.get("raised", 0) > 0:
            log_z = sums["log_z"] / sums["raised"]
            self.log_dict({"test/log_z_raise": log_z, "test/nll_raise": sums["free_energy"] / sums["examples"] + log_z},
                          sync_dist=True)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``sample_gibbs_steps`` of Gibbs sampling from random visibles; images show the last E[v | h]."""
        d = self.data_info.num_dims
        if self.gaussian:
            v = self.data_mean + torch.randn(n, d, generator=generator, device=self.device)
        else:
            v = bernoulli(torch.full((n, d), 0.5, device=self.device), generator)
        v = self.gibbs(v, self.sample_gibbs_steps - 1, generator)
        h = bernoulli(self.hidden_probs(v), generator)
        out = self.visible_mean(h) if self.data_info.is_image else self.sample_visible(h, generator)
        if self.data_info.is_image:
            out = out.clamp(0, 1)
        return out.view(n, *self.data_info.shape)

    @torch.no_grad()
    def figures(self, x: Tensor) -> dict[str, Tensor]:
        if not self.data_info.is_image or len(x) < 8:
            return {}
        grid = reconstruction_grid(x, lambda v: self.visible_mean(self.hidden_probs(v.flatten(1))).clamp(0, 1).view_as(v))
        # Receptive fields of the first 64 hidden units, each scaled to [0, 1].
        w = self.W[:, :64].T
        lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
        filters = ((w - lo) / (hi - lo + 1e-8)).reshape(-1, *self.data_info.shape)
        return {**grid, "filters": filters}
