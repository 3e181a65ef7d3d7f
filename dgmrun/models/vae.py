"""Variational autoencoder (Kingma & Welling 2014), with beta weighting and linear KL warm-up.

Encoder q(z|x) = N(mu(x), diag sigma(x)^2), prior p(z) = N(0, I), decoder p(x|z) from
``likelihoods`` (Bernoulli for binary data, discretized logistic for 8-bit-like data, Gaussian for
points). Training maximises  E_q[log p(x|z)] - beta_t KL(q(z|x) || p(z)),  beta_t rising linearly
from 0 to beta over ``kl_warmup_steps`` (KL annealing, Bowman et al. 2016, against posterior
collapse). Test NLL is the importance-sampling estimate of Burda et al. 2015 (eq. 8):
log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,  z_k ~ q(z|x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dgmrun.models.base import GenerativeModel, reconstruction_grid
from dgmrun.models.likelihoods import make_likelihood
from dgmrun.nets.conv import conv_decoder, conv_encoder
from dgmrun.nets.mlp import mlp

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


class VAE(GenerativeModel):
    likelihood_kind = "estimate"
    imputation_methods = ("pseudo_gibbs",)

    def __init__(self, data_info: dict[str, Any], *, latent_dim: int, arch: str, hidden_dims: Sequence[int],
                 channels: Sequence[int], likelihood: str, learn_variance: bool, beta: float, kl_warmup_steps: int,
                 optimizer: dict[str, Any], scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.arch = arch
        self.likelihood = make_likelihood(likelihood, info.levels, learn_variance)
        self.latent_dim, self.beta, self.kl_warmup_steps = latent_dim, beta, kl_warmup_steps
        out_per_dim = self.likelihood.num_params
        if self.arch == "conv":
            self.encoder = conv_encoder(info.shape, channels, 2 * latent_dim)
            self.decoder = conv_decoder(latent_dim, info.shape, channels, out_per_dim * info.shape[0])
        else:
            self.encoder = torch.nn.Sequential(torch.nn.Flatten(), mlp(info.num_dims, hidden_dims, 2 * latent_dim))
            self.decoder = mlp(latent_dim, list(reversed(hidden_dims)), out_per_dim * info.num_dims)

    # ------------------------------------------------------------------ the model
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters, stacked along dim 1 in the data's own shape."""
        params = self.decoder(z)
        if self.arch == "mlp":
            shape = self.data_info.shape
            params = params.view(len(z), self.likelihood.num_params * shape[0], *shape[1:])
        return params

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example reconstruction term E_q[log p(x|z)] (one sample) and analytic KL(q || p)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        reconstruction = self.likelihood.log_prob(self.decode(z), x)
        kl = 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(-1)
        return reconstruction, kl

    def kl_weight(self, step: int) -> float:
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log p(x, z_k) - log q(z_k | x) for z_k ~ q(z|x): shape (num_samples, batch)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(num_samples, *mu.shape, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q = gaussian_log_density(z, mu, logvar)
        log_prior = -0.5 * (LOG_2PI + z**2).sum(-1)
        x_rep = x.expand(num_samples, *x.shape).reshape(-1, *x.shape[1:])
        log_px_z = self.likelihood.log_prob(self.decode(z.reshape(-1, self.latent_dim)), x_rep).view(num_samples, -1)
        return log_px_z + log_prior - log_q

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        reconstruction, kl = self.elbo_terms(x)
        beta = self.kl_weight(self.global_step)
        loss = -(reconstruction - beta * kl).mean()
        self.log_dict({"train/loss": loss, "train/elbo": (reconstruction - kl).mean(),
                       "train/reconstruction": reconstruction.mean(), "train/kl": kl.mean(), "train/beta": beta},
                      prog_bar=False, batch_size=len(x))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        reconstruction, kl = self.elbo_terms(x)
        elbo = reconstruction - kl
        # The validation loss is the negative ELBO with beta = 1: a bound on the NLL, comparable across runs.
        self.log_dict({"val/loss": -elbo.mean(), "val/elbo": elbo.mean(), "val/reconstruction": reconstruction.mean(),
                       "val/kl": kl.mean()}, batch_size=len(x), sync_dist=True, prog_bar=False)

    # ------------------------------------------------------------------ GenerativeModel
    @property
    def nll_estimator(self) -> str:
        return f"importance-k{self.eval_settings['num_importance_samples']}"

    @property
    def likelihood_is_discrete(self) -> bool:
        return self.likelihood.is_mass  # a Gaussian decoder on images gives a density: no bits/dim

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        k = int(self.eval_settings["num_importance_samples"])
        chunk = max(1, 20_000 // len(x))  # bounds the decoder batch to ~20k examples
        log_w = torch.cat([self.log_importance_weights(x, min(chunk, k - start)) for start in range(0, k, chunk)])
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    @torch.no_grad()
    def extra_test_metrics(self, x: Tensor) -> dict[str, Tensor]:
        reconstruction, kl = self.elbo_terms(x)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    def _to_data(self, params: Tensor, generator: torch.Generator | None) -> Tensor:
        # Images are shown as the decoder's mean (the usual VAE sample grid); points are drawn from p(x|z).
        if self.data_info.is_image:
            return self.likelihood.mean(params)
        return self.likelihood.sample(params, generator)

    def impute_missing(self, x: Tensor, missing: Tensor, method: str, iterations: int,
                       generator: torch.Generator | None) -> Tensor:
        """Pseudo-Gibbs (Rezende et al. 2014): z ~ q(z | x), the missing pixels set to the decoder's output for
        z (its mean for images), the observed ones kept; ``iterations`` times."""
        current = x
        for _ in range(iterations):
            mu, logvar = self.encode(current)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device)
            current = torch.where(missing, self._to_data(self.decode(z), generator), x)
        return current

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self._to_data(self.decode(z), generator)

    @torch.no_grad()
    def figures(self, x: Tensor) -> dict[str, Tensor]:
        if not self.data_info.is_image or len(x) < 16:
            return {}
        mu, _ = self.encode(x[:16])
        # Latent interpolations between consecutive pairs of posterior means, 8 steps each.
        steps = torch.linspace(0, 1, 8, device=mu.device).view(1, 8, 1)
        starts, ends = mu[0:16:2], mu[1:16:2]  # 8 rows
        z = (starts[:, None] * (1 - steps) + ends[:, None] * steps).reshape(-1, self.latent_dim)
        return {**reconstruction_grid(x, lambda images: self._to_data(self.decode(self.encode(images)[0]), None)),
                "interpolations": self._to_data(self.decode(z), None)}
