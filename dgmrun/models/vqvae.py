"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017) and a PixelCNN prior over its codes.

Encoder z_e(x): a grid of (H/4)×(W/4) vectors; each is replaced by its nearest codebook vector,
z_q = e_k, k = argmin_j |z_e - e_j| (eq. 1-2); the decoder gives p(x | z_q) (Bernoulli for binary
data, discretized logistic for grey levels). Gradients pass the quantisation straight through
(z_e + sg(z_q - z_e)). Loss (eq. 3, with the codebook term replaced by EMA updates, appendix A.1):

    L = -log p(x | z_q) + commitment * |z_e - sg(e)|^2,
    N_k <- g N_k + (1 - g) n_k,  m_k <- g m_k + (1 - g) sum_{z_e -> k} z_e,  e_k = m_k / N_k.

Codes whose usage N_k falls below ``dead_code_threshold`` are restarted at random encoder outputs of
the current batch (a common remedy for codebook collapse). Test NLL (section 4.1): with a uniform
prior over the K codes at each of the L positions and a deterministic (one-hot) q, the ELBO is
log p(x | z_q) - L log K, so test/nll = -log p(x | z_q) + L log K (a bound, ``nll_estimator = "elbo"``).
Samples use that uniform prior (poor by design); ``VQVAEPrior`` learns the prior with a gated PixelCNN
over the code grid (section 3.2): test/nll = -log p(x | z_q) - log p_prior(codes), samples are prior
draws decoded through the frozen VQ-VAE.

Imputation (both, ``metropolis_within_gibbs``): a Markov chain over the code grid whose stationary law is
p(codes | x_observed) ∝ p_prior(codes) p(x_observed | codes); the missing pixels are then the decoder's mean at
the chain's last codes. Each code in raster order gets a Metropolis-Hastings proposal c' from the prior's
conditional given the codes before it (uniform for the VQ-VAE alone), accepted with probability
min(1, p_prior(c') p(x_o | c') q(c) / (p_prior(c) p(x_o | c) q(c'))): that proposal does not depend on the code
it replaces, so q(c' | c) = q(c') and the chain is exact (``VQVAE.code_chain``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.checkpoint import load_model
from dgmrun.errors import DgmrunError
from dgmrun.models.base import GenerativeModel, Progress, iterations, reconstruction_grid
from dgmrun.models.likelihoods import make_likelihood
from dgmrun.nets.masked import PixelCNNNet
from dgmrun.schema import resolve_ckpt_path


class VQVAE(GenerativeModel):
    likelihood_kind = "bound"
    imputation_methods = ("metropolis_within_gibbs",)

    def __init__(self, data_info: dict[str, Any], *, num_codes: int, code_dim: int, channels: Sequence[int],
                 commitment: float, ema_decay: float, restart_dead_codes: bool, optimizer: dict[str, Any],
                 scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.likelihood = make_likelihood("bernoulli" if info.is_binary else "discretized_logistic", info.levels)
        self.num_codes, self.code_dim, self.commitment = num_codes, code_dim, commitment
        self.ema_decay, self.restart_dead_codes = ema_decay, restart_dead_codes
        c = info.shape[0]
        c1, c2 = channels
        self.encoder = nn.Sequential(nn.Conv2d(c, c1, 4, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(),
                                     nn.Conv2d(c2, c2, 3, 1, 1), nn.ReLU(), nn.Conv2d(c2, code_dim, 1))
        self.decoder = nn.Sequential(nn.Conv2d(code_dim, c2, 3, 1, 1), nn.ReLU(), nn.Conv2d(c2, c2, 3, 1, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(c1, c * self.likelihood.num_params, 4, 2, 1))
        codebook = torch.randn(num_codes, code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", codebook.clone())

    @property
    def latent_shape(self) -> tuple[int, int]:
        _, h, w = self.data_info.shape
        return h // 4, w // 4

    # ------------------------------------------------------------------ the model
    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """(codes N×h×w, z_q N×D×h×w) for encoder outputs N×D×h×w."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        distances = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + (self.codebook**2).sum(1)
        codes = distances.argmin(1).view(z_e.shape[0], *z_e.shape[2:])
        return codes, self.embed(codes)

    def embed(self, codes: Tensor) -> Tensor:
        return self.codebook[codes].permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode_codes(self, x: Tensor) -> Tensor:
        return self.quantize(self.encoder(x))[0]

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Images shown as the decoder's mean, like the VAE's sample grids."""
        return self.likelihood.mean(self.decode(self.embed(codes)))

    @torch.no_grad()
    def update_codebook(self, z_e: Tensor, codes: Tensor) -> None:
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        onehot = F.one_hot(codes.flatten(), self.num_codes).type_as(flat)
        g = self.ema_decay
        self.ema_count.mul_(g).add_(onehot.sum(0), alpha=1 - g)
        self.ema_sum.mul_(g).add_(onehot.T @ flat, alpha=1 - g)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        if self.restart_dead_codes:
            dead = self.ema_count < 1e-2 * len(flat) / self.num_codes
            if dead.any():
                picks = flat[torch.randint(0, len(flat), (int(dead.sum()),), device=flat.device)]
                self.codebook[dead] = picks
                self.ema_sum[dead] = picks
                self.ema_count[dead] = 1.0

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(per-example log p(x | z_q), commitment term, z_e, codes)."""
        z_e = self.encoder(x)
        codes, z_q = self.quantize(z_e)
        z_st = z_e + (z_q - z_e).detach()  # straight-through estimator
        log_px = self.likelihood.log_prob(self.decode(z_st), x)
        commit = ((z_e - z_q.detach()) ** 2).flatten(1).sum(1)
        return log_px, commit, z_e, codes

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        log_px, commit, z_e, codes = self.losses(x)
        loss = (-log_px + self.commitment * commit).mean()
        self.update_codebook(z_e.detach(), codes)
        usage = torch.bincount(codes.flatten(), minlength=self.num_codes).float()
        p = usage / usage.sum()
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        self.log_training(batch_idx, {"train/loss": loss, "train/reconstruction": -log_px.mean(),
                                      "train/commitment": commit.mean(), "train/perplexity": perplexity}, {"loss": loss},
                          len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        # val/loss: the uniform-prior bound (= -reconstruction + constant), comparable across runs.
        self.log("val/loss", -self.log_likelihood(x).mean(), batch_size=len(x), sync_dist=True)

    # ------------------------------------------------------------------ GenerativeModel
    @property
    def nll_estimator(self) -> str:
        return "elbo-uniform-prior"

    @property
    def likelihood_is_discrete(self) -> bool:
        return self.likelihood.is_mass  # the bound is a mass when p(x | z_q) is (the code prior is one)

    def prior_log_prob(self, codes: Tensor) -> Tensor:
        h, w = self.latent_shape
        return torch.full((len(codes),), -h * w * math.log(self.num_codes), device=codes.device)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        log_px, _, _, codes = self.losses(x)
        return log_px + self.prior_log_prob(codes)

    @torch.no_grad()
    def extra_test_metrics(self, x: Tensor) -> dict[str, Tensor]:
        log_px, _, _, _ = self.losses(x)
        return {"reconstruction": -log_px}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        codes = torch.randint(0, self.num_codes, (n, *self.latent_shape), generator=generator, device=self.device)
        return self.decode_codes(codes)

    def proposal_logits(self, codes: Tensor, row: int) -> Tensor:
        """N×K×w logits of the imputation chain's proposals for the codes of ``row``: uniform."""
        return torch.zeros(len(codes), self.num_codes, codes.shape[2], device=codes.device)

    @torch.no_grad()
    def code_chain(self, x: Tensor, missing: Tensor, sweeps: int, prior: "VQVAE | VQVAEPrior",
                   generator: torch.Generator | None, progress: Progress) -> Tensor:
        """Codes N×h×w after ``sweeps`` raster sweeps of Metropolis-within-Gibbs for p(codes | the pixels of x
        not ``missing``) under ``prior`` (its ``prior_log_prob`` and ``proposal_logits``), started at x's codes."""
        observed = ~missing

        def log_target(codes: Tensor) -> Tensor:
            return prior.prior_log_prob(codes) + self.likelihood.log_prob(self.decode(self.embed(codes)), x, observed)

        codes = self.encode_codes(x)
        current = log_target(codes)
        h, w = self.latent_shape
        for _ in iterations(sweeps, progress):
            for i in range(h):
                for j in range(w):
                    log_q = torch.log_softmax(prior.proposal_logits(codes, i)[:, :, j].double(), dim=1)
                    proposal = codes.clone()
                    proposal[:, i, j] = torch.multinomial(log_q.exp(), 1, generator=generator).squeeze(1)
                    proposed = log_target(proposal)
                    log_ratio = (proposed - current + log_q.gather(1, codes[:, i, j, None]).squeeze(1)
                                 - log_q.gather(1, proposal[:, i, j, None]).squeeze(1))
                    u = torch.rand(len(x), generator=generator, device=x.device, dtype=torch.float64)
                    accept = torch.log(u) < log_ratio
                    codes = torch.where(accept[:, None, None], proposal, codes)
                    current = torch.where(accept, proposed, current)
        return codes

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """``metropolis_within_gibbs`` over the codes under the uniform prior (module docstring)."""
        return self.decode_codes(self.code_chain(x, missing, settings.iterations, self, generator, progress))

    @torch.no_grad()
    def figures(self, x: Tensor) -> dict[str, Tensor]:
        return reconstruction_grid(x, lambda images: self.decode_codes(self.encode_codes(images)))


class VQVAEPrior(GenerativeModel):
    """A gated PixelCNN over the code grid of a trained, frozen VQ-VAE (``model.vqvae_ckpt``)."""

    likelihood_kind = "bound"
    imputation_methods = ("metropolis_within_gibbs",)

    def __init__(self, data_info: dict[str, Any], *, vqvae_ckpt: str, channels: int, num_layers: int,
                 kernel_size: int, optimizer: dict[str, Any], scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        key = f"model.vqvae_ckpt={vqvae_ckpt}"
        path = resolve_ckpt_path(vqvae_ckpt, key="model.vqvae_ckpt")
        try:
            vqvae = load_model(path)
        except DgmrunError as e:  # unreadable, not a dgmrun checkpoint, weights that do not fit its config
            raise DgmrunError(f"{key}: {e}") from None
        if not isinstance(vqvae, VQVAE):
            raise DgmrunError(f"{key} is a {type(vqvae).__name__}, not a VQ-VAE")
        if tuple(vqvae.data_info.shape) != tuple(self.data_info.shape) or vqvae.data_info.levels != self.data_info.levels:
            raise DgmrunError(f"{key}: its VQ-VAE was trained on {vqvae.data_info.name} "
                              f"{tuple(vqvae.data_info.shape)} with {vqvae.data_info.levels} levels; this run's data is "
                              f"{self.data_info.name} {tuple(self.data_info.shape)} with {self.data_info.levels} levels")
        vqvae.requires_grad_(False)
        self.vqvae = vqvae.eval()  # its weights are saved with the prior's checkpoint
        k = vqvae.num_codes
        self.embedding = nn.Embedding(k, channels)
        self.net = PixelCNNNet(channels, k, channels, num_layers, kernel_size, gated=True)

    def train(self, mode: bool = True) -> "VQVAEPrior":
        super().train(mode)
        self.vqvae.eval()  # frozen
        return self

    def code_logits(self, codes: Tensor, last_row: bool = False) -> Tensor:
        """N×K×h×w; with ``last_row``, of the codes' last row only (h = 1), computed on the rows it depends on."""
        run = self.net.last_row if last_row else self.net
        return run(self.embedding(codes).permute(0, 3, 1, 2))

    def prior_log_prob(self, codes: Tensor) -> Tensor:
        return -F.cross_entropy(self.code_logits(codes), codes, reduction="none").flatten(1).sum(1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        loss = -self.prior_log_prob(self.vqvae.encode_codes(x)).mean()
        self.log_training(batch_idx, {"train/loss": loss}, {"loss": loss}, len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        self.log("val/loss", -self.prior_log_prob(self.vqvae.encode_codes(x)).mean(), batch_size=len(x), sync_dist=True)

    @property
    def nll_estimator(self) -> str:
        return "elbo-pixelcnn-prior"

    @property
    def likelihood_is_discrete(self) -> bool:
        return self.vqvae.likelihood_is_discrete

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        log_px, _, _, codes = self.vqvae.losses(x)
        return log_px + self.prior_log_prob(codes)

    @torch.no_grad()
    def extra_test_metrics(self, x: Tensor) -> dict[str, Tensor]:
        log_px, _, _, codes = self.vqvae.losses(x)
        return {"reconstruction": -log_px, "prior_nll": -self.prior_log_prob(codes)}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        h, w = self.vqvae.latent_shape
        codes = torch.zeros(n, h, w, dtype=torch.long, device=self.device)
        for i in range(h):
            for j in range(w):
                probs = torch.softmax(self.code_logits(codes[:, : i + 1], last_row=True)[:, :, 0, j], dim=1)
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return self.vqvae.decode_codes(codes)

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """``metropolis_within_gibbs`` over the codes, proposals from this prior's conditionals (module docstring)."""
        codes = self.vqvae.code_chain(x, missing, settings.iterations, self, generator, progress)
        return self.vqvae.decode_codes(codes)

    def proposal_logits(self, codes: Tensor, row: int) -> Tensor:
        """N×K×w: the prior's conditionals of the codes of ``row`` given the codes before each (the gated
        PixelCNN's masks keep each position's logits from the codes at and after it)."""
        return self.code_logits(codes[:, : row + 1], last_row=True)[:, :, 0]

    @torch.no_grad()
    def figures(self, x: Tensor) -> dict[str, Tensor]:
        return self.vqvae.figures(x)
