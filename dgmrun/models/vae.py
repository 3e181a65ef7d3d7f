"""Variational autoencoder (Kingma & Welling 2014), with beta weighting and linear KL warm-up.

Encoder q(z|x) = N(mu(x), diag sigma(x)^2), prior p(z) = N(0, I), decoder p(x|z) from
``likelihoods`` (Bernoulli for binary data, discretized logistic for 8-bit-like data, Gaussian for
points). Training maximises  E_q[log p(x|z)] - beta_t KL(q(z|x) || p(z)),  beta_t rising linearly
from 0 to beta over ``kl_warmup_steps`` (KL annealing, Bowman et al. 2016, against posterior
collapse). Test NLL is the importance-sampling estimate of Burda et al. 2015 (eq. 8):
log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,  z_k ~ q(z|x).

``upper_layers`` stacks more stochastic layers above z = z_1 (Burda et al.'s two-layer models):
q(z_1..L | x) = q(z_1 | x) prod_l q(z_{l+1} | z_l) and p(x, z) = p(x | z_1) prod_l p(z_l | z_{l+1}) N(z_L; 0, I),
every factor a diagonal Gaussian from an MLP. The KL term is then the one-sample estimate
log q(z | x) - log p(z) (no closed form), and z in the importance weights is the whole path z_1..L.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from dgmrun.models.base import GenerativeModel, Progress, iterations, reconstruction_grid, self_normalised_mean
from dgmrun.models.likelihoods import make_likelihood
from dgmrun.nets.conv import conv_decoder, conv_encoder
from dgmrun.nets.mlp import mlp

LOG_2PI = math.log(2 * math.pi)
ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def gaussian_params(net: torch.nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and (clamped) log-variance of a diagonal Gaussian whose parameters ``net`` outputs."""
    mu, logvar = net(inputs).chunk(2, dim=-1)
    return mu, logvar.clamp(-12, 8)


def kl_to_prior(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), per example."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(-1)


def prior_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


class VAE(GenerativeModel):
    likelihood_kind = "estimate"
    imputation_methods = ("pseudo_gibbs", "metropolis_within_gibbs", "importance")

    def __init__(self, data_info: dict[str, Any], *, latent_dim: int, arch: str, hidden_dims: Sequence[int],
                 activation: str, upper_layers: Sequence[Sequence[int]], channels: Sequence[int], likelihood: str,
                 learn_variance: bool, beta: float, kl_warmup_steps: int, optimizer: dict[str, Any],
                 scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.arch = arch
        self.likelihood = make_likelihood(likelihood, info.levels, learn_variance)
        self.latent_dim, self.beta, self.kl_warmup_steps = latent_dim, beta, kl_warmup_steps
        out_per_dim = self.likelihood.num_params
        act = ACTIVATIONS[activation]
        if self.arch == "conv":
            self.encoder = conv_encoder(info.shape, channels, 2 * latent_dim)
            self.decoder = conv_decoder(latent_dim, info.shape, channels, out_per_dim * info.shape[0])
        else:
            self.encoder = torch.nn.Sequential(torch.nn.Flatten(), mlp(info.num_dims, hidden_dims, 2 * latent_dim, act))
            self.decoder = mlp(latent_dim, list(reversed(hidden_dims)), out_per_dim * info.num_dims, act)
        # q(z_{l+1} | z_l) and p(z_l | z_{l+1}) of each stochastic layer above z_1, from z_1 up.
        self.upper_encoders, self.upper_decoders = torch.nn.ModuleList(), torch.nn.ModuleList()
        below = latent_dim
        for *hidden, width in upper_layers:
            self.upper_encoders.append(mlp(below, hidden, 2 * width, act))
            self.upper_decoders.append(mlp(width, list(reversed(hidden)), 2 * below, act))
            below = width
        self.top_dim = below
        if upper_layers:  # its chain would have to carry the whole path z_1..L
            self.imputation_methods = ("pseudo_gibbs",)

    # ------------------------------------------------------------------ the model
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and log-variance of q(z_1 | x)."""
        return gaussian_params(self.encoder, x)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters, stacked along dim 1 in the data's own shape."""
        params = self.decoder(z)
        if self.arch == "mlp":
            shape = self.data_info.shape
            params = params.view(len(z), self.likelihood.num_params * shape[0], *shape[1:])
        return params

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example reconstruction term E_q[log p(x|z)] (one sample) and KL(q || p): analytic for one
        stochastic layer, the one-sample estimate log q(z|x) - log p(z) for more."""
        if self.upper_encoders:
            z, log_ratio = self.latent_draws(x, 1)
            return self.likelihood.log_prob(self.decode(z[0]), x), -log_ratio[0]
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        reconstruction = self.likelihood.log_prob(self.decode(z), x)
        return reconstruction, kl_to_prior(mu, logvar)

    def latent_draws(self, x: Tensor, num_samples: int, posterior: tuple[Tensor, Tensor] | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z_1..L ~ q(z | x), ``num_samples`` paths per example: (z_1, of shape (num_samples, batch, latent_dim);
        log p(z_1..L) - log q(z_1..L | x), of shape (num_samples, batch)). ``posterior``: q(z_1 | x)'s
        (mu, logvar), when already computed."""
        mu, logvar = self.encode(x) if posterior is None else posterior
        z = mu + torch.exp(0.5 * logvar) * torch.randn(num_samples, *mu.shape, generator=generator, device=mu.device)
        log_ratio, below = -gaussian_log_density(z, mu, logvar), z
        for encoder, decoder in zip(self.upper_encoders, self.upper_decoders):
            mu, logvar = gaussian_params(encoder, below)
            above = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            log_ratio = (log_ratio - gaussian_log_density(above, mu, logvar)
                         + gaussian_log_density(below, *gaussian_params(decoder, above)))
            below = above
        return z, log_ratio + prior_log_density(below)

    def kl_weight(self, step: int) -> float:
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    def log_importance_weights(self, x: Tensor, num_samples: int, posterior: tuple[Tensor, Tensor] | None = None
                               ) -> Tensor:
        """log p(x, z_k) - log q(z_k | x) for z_k ~ q(z|x): shape (num_samples, batch). ``posterior``: q's
        (mu, logvar) for x, when already computed."""
        z, log_ratio = self.latent_draws(x, num_samples, posterior)
        x_rep = x.expand(num_samples, *x.shape).reshape(-1, *x.shape[1:])
        log_px_z = self.likelihood.log_prob(self.decode(z.reshape(-1, self.latent_dim)), x_rep).view(num_samples, -1)
        return log_px_z + log_ratio

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        reconstruction, kl = self.elbo_terms(x)
        beta = self.kl_weight(self.global_step)
        loss = -(reconstruction - beta * kl).mean()
        self.log_training(batch_idx, {"train/loss": loss, "train/elbo": (reconstruction - kl).mean(),
                                      "train/reconstruction": reconstruction.mean(), "train/kl": kl.mean(),
                                      "train/beta": beta}, {"loss": loss}, len(x))
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
        posterior = self.encode(x)  # once: each chunk of samples draws from the same q(z|x)
        log_w = torch.cat([self.log_importance_weights(x, min(chunk, k - start), posterior)
                           for start in range(0, k, chunk)])
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

    def posterior_draw(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """z ~ q(z | x), with the mean and log-variance of q."""
        mu, logvar = self.encode(x)
        return mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device), mu, logvar

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """``pseudo_gibbs`` (Rezende et al. 2014): z ~ q(z | x), the missing pixels set to the decoder's output
        for z (its mean for images, as in the lectures' protocol), the observed ones kept.
        ``metropolis_within_gibbs`` (Mattei & Frellsen 2018): a Markov chain whose stationary distribution is
        exactly p(z, x_missing | x_observed): z' ~ q(z | x) is proposed for the current completion x and
        accepted with probability min(1, p(x, z') q(z | x) / (p(x, z) q(z' | x))), then x_missing ~ p(x_missing | z);
        the imputation is the decoder's output at the chain's last z (its mean for images, as for pseudo-Gibbs:
        pixels drawn from it are draws of the exact conditional). ``settings.iterations`` steps of either.
        ``importance``: the ``conditional_mean``, its proposal fitted in ``settings.iterations`` steps."""
        if settings.method == "importance":
            posterior = self.recall(x, missing)  # fitted for an earlier draw of impute.num_samples
            if posterior is None:
                posterior = self.fitted_posterior(x, ~missing, settings.iterations, generator, progress)
                self.remember(x, missing, posterior)
            else:
                progress(settings.iterations, settings.iterations)
            return self.conditional_mean(x, ~missing, posterior, generator)
        current = x
        if settings.method == "pseudo_gibbs":
            for _ in iterations(settings.iterations, progress):
                z, _, _ = self.posterior_draw(current, generator)
                current = torch.where(missing, self._to_data(self.decode(z), generator), x)
            return current
        z = params = None
        for _ in iterations(settings.iterations, progress):
            proposal, mu, logvar = self.posterior_draw(current, generator)
            proposal_params = self.decode(proposal)
            log_w = self.likelihood.log_prob(proposal_params, current) + prior_log_density(proposal) \
                - gaussian_log_density(proposal, mu, logvar)
            if z is None:  # the chain starts at its first proposal
                z, params, accept = proposal, proposal_params, torch.ones_like(log_w, dtype=torch.bool)
            else:
                log_w_now = self.likelihood.log_prob(params, current) + prior_log_density(z) \
                    - gaussian_log_density(z, mu, logvar)
                u = torch.rand(log_w.shape, generator=generator, device=log_w.device)
                accept = torch.log(u) < log_w - log_w_now
            z = torch.where(accept[:, None], proposal, z)
            params = torch.where(accept.view(-1, *[1] * (params.dim() - 1)), proposal_params, params)
            current = torch.where(missing, self.likelihood.sample(params, generator), x)
        return self._to_data(params, generator) if params is not None else x

    def imputation_protocol(self, settings: Any) -> str:
        if settings.method == "importance":
            return (f"importance (the conditional mean, k={self.eval_settings['num_importance_samples']}, q fitted "
                    f"to p(z | x_observed) by {settings.iterations} Adam steps)")
        return super().imputation_protocol(settings)

    def fitted_posterior(self, x: Tensor, observed: Tensor, steps: int, generator: torch.Generator | None,
                         progress: Progress, draws: int = 8) -> tuple[Tensor, Tensor]:
        """A Gaussian q(z) = N(mu, diag exp(logvar)) fitted to p(z | x_observed): from the encoder's q(z | x), then
        ``steps`` Adam steps (lr 0.05, ``draws`` reparameterised draws a step) on the observed pixels' ELBO
        E_q[log p(x_observed | z)] - KL(q || p(z)); the network's weights stay as they are."""
        mu, logvar = (t.detach().requires_grad_() for t in self.encode(x))
        optimizer = torch.optim.Adam([mu, logvar], lr=0.05)
        x_rep, observed_rep = (t.expand(draws, *t.shape).reshape(-1, *t.shape[1:]) for t in (x, observed))
        with torch.enable_grad():
            for _ in iterations(steps, progress):
                noise = torch.randn(draws, *mu.shape, generator=generator, device=mu.device)
                z = (mu + torch.exp(0.5 * logvar) * noise).reshape(-1, self.latent_dim)
                log_px = self.likelihood.log_prob(self.decode(z), x_rep, observed_rep).view(draws, -1).mean(0)
                mu.grad, logvar.grad = torch.autograd.grad((kl_to_prior(mu, logvar) - log_px).sum(), [mu, logvar])
                optimizer.step()
        return mu.detach(), logvar.detach()

    def conditional_mean(self, x: Tensor, observed: Tensor, posterior: tuple[Tensor, Tensor],
                         generator: torch.Generator | None) -> Tensor:
        """E[x | x_observed] (its missing pixels), by self-normalised importance sampling as in the single
        imputation of Mattei & Frellsen 2019 (MIWAE): sum_k w_k E[x | z_k] / sum_k w_k with z_k ~ q and
        w_k = p(x_observed | z_k) p(z_k) / q(z_k), k = eval.num_importance_samples, q the ``fitted_posterior``
        given as ``posterior`` (the encoder alone, shown the fill of the missing pixels, proposes from far off the
        posterior)."""
        chunks = self.observed_weights(x, observed, posterior, generator)
        return self_normalised_mean((log_w, self.likelihood.mean(params).view(len(log_w), *x.shape))
                                    for log_w, params, _ in chunks)[0]

    def observed_weights(self, x: Tensor, observed: Tensor, posterior: tuple[Tensor, Tensor],
                         generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """k = eval.num_importance_samples draws z_k ~ q (``posterior``: q(z_1)'s mean and log-variance), in decoder
        batches of ~20k examples (as in log_likelihood): per batch of n draws, (log p(x_observed | z_k) + log p(z_k)
        - log q(z_k), of shape (n, batch); the decoder's params; x repeated n times)."""
        k = int(self.eval_settings["num_importance_samples"])
        chunk = max(1, 20_000 // len(x))
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            z, log_ratio = self.latent_draws(x, n, posterior, generator)
            params = self.decode(z.reshape(-1, self.latent_dim))
            x_rep, observed_rep = (t.expand(n, *t.shape).reshape(-1, *t.shape[1:]) for t in (x, observed))
            yield self.likelihood.log_prob(params, x_rep, observed_rep).view(n, -1) + log_ratio, params, x_rep

    @torch.no_grad()
    def missing_log_likelihood(self, x: Tensor, missing: Tensor, completed: Tensor) -> tuple[Tensor, str]:
        """log p(x_m | x_o) by self-normalised importance sampling, with z_k ~ q(z | ``completed``) (an imputation),
        or from the ``fitted_posterior`` of an importance imputation of the same observed pixels:
        log sum_k w_k p(x_m | z_k) - log sum_k w_k, w_k = p(x_o | z_k) p(z_k) / q(z_k); a consistent estimate
        (exact as k grows), with k = eval.num_importance_samples."""
        k = int(self.eval_settings["num_importance_samples"])
        posterior = self.recall(x, missing) or self.encode(completed)
        log_w, log_missing = [], []
        for chunk_log_w, params, x_rep in self.observed_weights(x, ~missing, posterior):
            log_w.append(chunk_log_w)
            missing_rep = missing.expand(len(chunk_log_w), *missing.shape).reshape_as(x_rep)
            log_missing.append(self.likelihood.log_prob(params, x_rep, missing_rep).view(len(chunk_log_w), -1))
        log_w = torch.cat(log_w)
        estimate = torch.logsumexp(log_w + torch.cat(log_missing), 0) - torch.logsumexp(log_w, 0)
        return estimate, f"estimate (self-normalised importance sampling, k={k})"

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.top_dim, generator=generator, device=self.device)
        for decoder in reversed(self.upper_decoders):  # z_L ~ N(0, I), then z_l ~ p(z_l | z_{l+1}) down to z_1
            mu, logvar = gaussian_params(decoder, z)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device)
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
