"""Denoising diffusion probabilistic models (Ho et al. 2020), sampled with DDPM or DDIM (Song et al. 2021).

Forward chain: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), so that in closed form
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with abar_t = prod_{s<=t} (1 - beta_s).
The network predicts eps (the paper's L_simple), x_0, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(Salimans & Ho 2022); each converts into the others exactly given x_t. Reverse step (DDPM):
p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), sigma_t^2 I), mu~ the mean of the posterior q(x_{t-1} | x_t, x_0),
sigma_t^2 = beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (default) or beta_t. DDIM (eq. 12 of Song
et al.) jumps along a subsequence of timesteps; with eta = 1 and every step it is the DDPM sampler with
beta~_t, with eta = 0 it is deterministic given x_T.

Images are scaled to [-1, 1]. The test NLL is the variational bound (Ho et al. eq. 5)
L = L_T + sum_{t>1} L_{t-1} + L_0, with L_0 the discretized Gaussian decoder over the data's grey
levels (so it is a probability mass, and bits/dim mean what they should); for points (toy2d) L_0 is a
Gaussian density. Timesteps are 0-based here: index t is the paper's t + 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgmrun.errors import DgmrunError
from dgmrun.models.base import GenerativeModel, Progress, iterations, sample_labels
from dgmrun.models.ema import EMA
from dgmrun.nets.unet import MLPDenoiser, UNet

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
SAMPLERS = ("ddpm", "ddim")


def make_betas(schedule: str, num_timesteps: int) -> Tensor:
    """beta_1..beta_T in float64: ``linear`` from 1e-4 to 0.02 at T = 1000 (Ho et al.; scaled by 1000 / T
    for other T, as Nichol & Dhariwal do), or ``cosine`` (Nichol & Dhariwal 2021, eq. 17, s = 0.008).
    Both are capped at 0.999, so that abar_T > 0 even for a short chain."""
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64).clamp(max=0.999)
    s = 0.008
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def log_sub_exp(a: Tensor, b: Tensor) -> Tensor:
    """log(exp(a) - exp(b)) for a >= b."""
    return a + torch.log1p(-torch.exp(b - a).clamp(max=1 - 1e-12))


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """log P(x) of N(mean, exp(log_scale)^2) integrated over the bin of x, for x on the grid of ``levels``
    values in [-1, 1]; the first and last bins reach to -inf and +inf (Ho et al., section 3.3)."""
    half_bin = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + half_bin) * inv_scale
    lower = (x - mean - half_bin) * inv_scale
    # Phi(upper) - Phi(lower), computed on the side of the distribution where both tails are small.
    flip = (upper + lower) > 0
    hi, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_cdf_hi, log_cdf_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    middle = log_sub_exp(log_cdf_hi, log_cdf_lo)
    first = torch.special.log_ndtr(upper)
    last = torch.special.log_ndtr(-lower)
    return torch.where(x < -1 + half_bin, first, torch.where(x > 1 - half_bin, last, middle))


class GaussianDiffusion(nn.Module):
    """The fixed forward chain and its posteriors, as float32 buffers computed in float64."""

    def __init__(self, schedule: str, num_timesteps: int):
        super().__init__()
        betas = make_betas(schedule, num_timesteps)
        alpha_bar = torch.cumprod(1 - betas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        tables = {
            "betas": betas, "alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev,
            "posterior_variance": posterior_variance,
            # beta~_0 = 0: its log is clipped to beta~_1's, as in the paper's code.
            "posterior_log_variance": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_coef_xt": (1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.float(), persistent=False)
        self.num_timesteps = num_timesteps

    @staticmethod
    def _at(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return table[t].view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), given the noise."""
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)."""
        mean = self._at(self.posterior_coef_x0, t, xt) * x0 + self._at(self.posterior_coef_xt, t, xt) * xt
        return mean, self._at(self.posterior_log_variance, t, xt)

    def reverse_log_variance(self, t: Tensor, like: Tensor, sigma: str) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t): beta~_t (``posterior``) or beta_t (``beta``; beta~_1 at t = 0)."""
        if sigma == "posterior":
            return self._at(self.posterior_log_variance, t, like)
        large = torch.cat([self.posterior_variance[1:2], self.betas[1:]]).log()
        return self._at(large, t, like)

    def to_x0_and_eps(self, output: Tensor, xt: Tensor, t: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
        """The network's output (eps, x0 or v) as the pair (x0, eps) it implies for this x_t."""
        ab = self._at(self.alpha_bar, t, xt)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if prediction == "eps":
            return (xt - s * output) / a, output
        if prediction == "x0":
            return output, (xt - a * output) / s
        return a * xt - s * output, s * xt + a * output  # v

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction: str) -> Tensor:
        """What the network is trained to output: eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def min_snr_weight(self, t: Tensor, prediction: str, gamma: float) -> Tensor:
        """Min-SNR-gamma (Hang et al. 2023) as a weight on the squared error of the target: min(SNR, gamma)
        ||x0 - x0_hat||^2 with SNR_t = abar_t / (1 - abar_t), where ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2
        and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2."""
        snr = self.alpha_bar[t] / (1 - self.alpha_bar[t])
        capped = snr.clamp(max=gamma)
        return {"eps": capped / snr, "x0": capped, "v": capped / (snr + 1)}[prediction]


class DDPM(GenerativeModel):
    sampler_options = ("sampler", "steps", "eta", "guidance")

    likelihood_kind = "bound"

    def __init__(self, data_info: dict[str, Any], *, num_timesteps: int, schedule: str, prediction: str,
                 min_snr_gamma: float | None, sigma: str,
                 base_channels: int, channel_mult: Sequence[int] | None, num_res_blocks: int,
                 attention_resolutions: Sequence[int], dropout: float, hidden_dims: Sequence[int], conditional: bool,
                 p_uncond: float, ema_decay: float | None, optimizer: dict[str, Any], scheduler: dict[str, Any] | None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        info = self.data_info
        self.prediction, self.sigma, self.p_uncond = prediction, sigma, p_uncond
        self.min_snr_gamma = min_snr_gamma
        self.num_classes = info.num_classes if conditional else 0
        self.diffusion = GaussianDiffusion(schedule, num_timesteps)
        if info.is_image:
            self.net: nn.Module = UNet(info.shape[0], info.shape[-1], base_channels, channel_mult, num_res_blocks,
                                       attention_resolutions, dropout, self.num_classes)
        else:
            self.net = MLPDenoiser(info.num_dims, hidden_dims, self.num_classes)
        self.ema = EMA(self.net, ema_decay) if ema_decay is not None else None

    # ------------------------------------------------------------------ data space <-> model space
    def to_model_space(self, x: Tensor) -> Tensor:
        return 2 * x - 1 if self.data_info.is_image else x

    def to_data_space(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.data_info.is_image else x

    # ------------------------------------------------------------------ the network's prediction
    def denoise(self, xt: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 1.0) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) at x_t. With classes y and guidance w, classifier-free guidance (Ho & Salimans
        2022) on eps: eps_uncond + w (eps_cond - eps_uncond); w = 0 is the unconditional model, w = 1 the
        conditional one. x0_hat of images is clipped to [-1, 1], and eps_hat made consistent with it."""
        if y is not None and guidance != 1.0:
            null = torch.full_like(y, self.num_classes)
            output = self.net(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([y, null]))
            x0_c, eps_c = self.diffusion.to_x0_and_eps(output[: len(xt)], xt, t, self.prediction)
            _, eps_u = self.diffusion.to_x0_and_eps(output[len(xt):], xt, t, self.prediction)
            eps = eps_u + guidance * (eps_c - eps_u)
            x0 = self.diffusion.to_x0_and_eps(eps, xt, t, "eps")[0]
        else:
            x0, eps = self.diffusion.to_x0_and_eps(self.net(xt, t, y), xt, t, self.prediction)
        if self.data_info.is_image:
            x0 = x0.clamp(-1, 1)
            eps = self.diffusion.to_x0_and_eps(x0, xt, t, "x0")[1]
        return x0, eps

    # ------------------------------------------------------------------ training (L_simple)
    def simple_loss(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                    weighted: bool = False) -> Tensor:
        """Per-example mean squared error of the network's target at a uniform timestep (Ho et al. eq. 14);
        ``weighted``: times the Min-SNR weight of its timestep, where ``model.min_snr_gamma`` is set."""
        x0 = self.to_model_space(x)
        t = torch.randint(self.diffusion.num_timesteps, (len(x0),), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        labels = None
        if self.num_classes:
            drop = torch.rand(len(y), device=y.device, generator=generator) < self.p_uncond
            labels = torch.where(drop, torch.full_like(y, self.num_classes), y)
        output = self.net(self.diffusion.q_sample(x0, t, noise), t, labels)
        target = self.diffusion.target(x0, noise, t, self.prediction)
        loss = (output.float() - target).pow(2).flatten(1).mean(1)
        if weighted and self.min_snr_gamma is not None:
            loss = loss * self.diffusion.min_snr_weight(t, self.prediction, self.min_snr_gamma)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.simple_loss(x, y, weighted=True).mean()
        self.log_training(batch_idx, {"train/loss": loss}, {"loss": loss}, len(x))
        return loss

    def after_update(self) -> None:
        if self.ema is not None:
            self.ema.update(self.net)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        # The same timesteps and noise for a batch in every epoch, so that val/loss is comparable across epochs.
        generator = torch.Generator(x.device).manual_seed(batch_idx)
        with self.averaged_weights():
            loss = self.simple_loss(x, y, generator).mean()
        self.log("val/loss", loss, batch_size=len(x), sync_dist=True)

    @contextmanager
    def averaged_weights(self) -> Iterator[nn.Module]:
        """The EMA weights, where kept, for sampling and evaluation; the trained ones are put back after."""
        if self.ema is None:
            yield self.net
        else:
            with self.ema.swapped(self.net) as net:
                yield net

    # ------------------------------------------------------------------ sampling
    def timesteps(self, sampler: str, steps: int | None) -> list[int]:
        """The timesteps visited, from T-1 down to 0: all of them for DDPM, ``steps`` evenly spaced for DDIM."""
        T = self.diffusion.num_timesteps
        if sampler == "ddpm" or steps is None or steps >= T:
            return list(range(T - 1, -1, -1))
        return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique().flip(0).tolist()

    def sampler_description(self, settings: Any) -> str:
        options = {key: settings[key] for key in self.sampler_options} if settings is not None else {}
        sampler, steps = options.get("sampler", "ddpm"), options.get("steps")
        visited = len(self.timesteps(sampler, steps))
        text = f"{sampler} sampler, {visited} steps" + (f", eta {options.get('eta', 0.0)}" if sampler == "ddim" else
                                                        f", sigma^2 {'beta~' if self.sigma == 'posterior' else 'beta'}")
        if self.num_classes:
            text += f", guidance {options.get('guidance', 1.0)}"
        return text + (", EMA weights" if self.ema is not None else "")

    @property
    def class_conditional(self) -> bool:
        return self.num_classes > 0

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, classes: Sequence[int] | None = None,
               sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0, guidance: float = 1.0) -> Tensor:
        """n samples in data space. ``ddpm``: T ancestral steps with sigma_t^2 of ``model.sigma``; ``ddim``:
        ``steps`` steps with noise scale ``eta`` (0: deterministic given x_T)."""
        y = sample_labels(n, self.num_classes, classes, self.data_info.is_image, generator, self.device) \
            if self.num_classes else None
        x = torch.randn(n, *self.data_info.shape, device=self.device, generator=generator)
        with self.averaged_weights():
            x = self.reverse_chain(x, self.timesteps(sampler, steps), generator, y, sampler, eta, guidance)
        return self.to_data_space(x)

    def reverse_chain(self, x: Tensor, timesteps: list[int], generator: torch.Generator | None, y: Tensor | None,
                      sampler: str, eta: float, guidance: float) -> Tensor:
        """From x at timesteps[0] down to x_0. One fresh N(0, I) draw per step into a step t > 0, for both
        samplers, so that they can be compared under one noise sequence."""
        # Long chains (the 1,000 DDPM steps) get a progress bar on a terminal.
        steps = tqdm(timesteps, desc=f"{sampler} sampling", leave=False, disable=len(timesteps) < 100 or None)
        for i, t in enumerate(steps):
            s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            noise = torch.randn(x.shape, device=x.device, generator=generator) if s >= 0 else torch.zeros_like(x)
            x = self.reverse_step(x, t, s, y, sampler, eta, guidance, noise)
        return x

    def reverse_step(self, x: Tensor, t: int, s: int, y: Tensor | None, sampler: str, eta: float, guidance: float,
                     noise: Tensor) -> Tensor:
        """x at timestep s < t (-1: the data) from x at t: DDPM's p(x_{t-1} | x_t) (s = t - 1), or DDIM's step."""
        d = self.diffusion
        tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        x0, eps = self.denoise(x, tt, y, guidance)
        if sampler == "ddpm":
            mean, _ = d.q_posterior(x0, x, tt)
            return mean + (0.5 * d.reverse_log_variance(tt, x, self.sigma)).exp() * noise if t > 0 else mean
        # DDIM, eq. 12 of Song et al.: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z
        ab_t = d.alpha_bar[t]
        ab_s = d.alpha_bar[s] if s >= 0 else torch.ones_like(ab_t)
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).clamp(min=0).sqrt()
        return ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise

    # ------------------------------------------------------------------ inpainting
    imputation_methods = ("repaint",)

    @staticmethod
    def repaint_path(n: int, jump: int, resamplings: int) -> list[int]:
        """The positions RePaint visits along a reverse chain of n steps (position p: before step p; n: the
        data), as Lugmayr et al.'s ``get_schedule_jump``: down one at a time, and at every ``jump``-th position
        (counted from the data's end, more than ``jump`` from the start) back up ``jump`` positions,
        ``resamplings`` - 1 times."""
        jumps_left = {n - m * jump: resamplings - 1 for m in range(n // jump + 1) if n - m * jump > jump}
        path, p = [0], 0
        while p < n:
            p += 1
            path.append(p)
            if jumps_left.get(p, 0) > 0:
                jumps_left[p] -= 1
                path.extend(range(p - 1, p - jump - 1, -1))
                p -= jump
        return path

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """RePaint (Lugmayr et al. 2022): the reverse chain from noise, where after every step the known pixels
        are replaced by a draw of q(x_s | x_0) at the step's timestep, and which goes back by the forward chain
        q(x_t | x_s) to resample (``settings.resamplings``, ``settings.jump``), so that the drawn pixels come to
        agree with the known ones. Over all T timesteps (DDPM's ancestral steps), or ``settings.steps`` of them
        (DDIM with eta = 1: the ancestral sampler of the respaced chain)."""
        y = None
        if self.num_classes:
            if self.p_uncond <= 0:
                raise DgmrunError("task=impute: this class-conditional DDPM was trained without a null label "
                                  "(model.p_uncond=0), and imputation has no labels to give it")
            y = torch.full((len(x),), self.num_classes, device=x.device, dtype=torch.long)
        sampler, eta = ("ddpm", 0.0) if settings.steps is None else ("ddim", 1.0)
        timesteps = self.timesteps(sampler, settings.steps) + [-1]  # the timestep at each position; -1: the data
        d = self.diffusion
        x0 = self.to_model_space(x)
        randn = lambda: torch.randn(x.shape, device=x.device, generator=generator)  # noqa: E731
        current = randn()
        path = self.repaint_path(len(timesteps) - 1, settings.jump, settings.resamplings)
        with self.averaged_weights():
            for i in iterations(len(path) - 1, progress):
                t, s = timesteps[path[i]], timesteps[path[i + 1]]
                if path[i + 1] > path[i]:  # a reverse step, then the known pixels from q(x_s | x_0)
                    noise = randn() if s >= 0 else torch.zeros_like(x)
                    drawn = self.reverse_step(current, t, s, y, sampler, eta, 1.0, noise)
                    known = d.q_sample(x0, torch.full((len(x),), s, device=x.device), randn()) if s >= 0 else x0
                    current = torch.where(missing, drawn, known)
                else:  # back up by the forward chain: q(x_s | x_t) = N(sqrt(abar_s / abar_t) x_t, (1 - abar_s / abar_t) I)
                    ratio = d.alpha_bar[s] / (d.alpha_bar[t] if t >= 0 else 1.0)
                    current = ratio.sqrt() * current + (1 - ratio).sqrt() * randn()
        return self.to_data_space(current)

    def imputation_protocol(self, settings: Any) -> str:
        steps = len(self.timesteps("ddpm" if settings.steps is None else "ddim", settings.steps))
        return (f"repaint over {steps} timesteps, jump {settings.jump}, {settings.resamplings} resamplings"
                + (", EMA weights" if self.ema is not None else ""))

    # ------------------------------------------------------------------ the variational bound
    @property
    def bound_timesteps(self) -> int:
        """``eval.bound_timesteps``: 0 sums all T terms of the bound; K > 0 estimates the sum over t >= 1 from
        K timesteps drawn uniformly per example (unbiased; L_T and L_0 always exactly)."""
        k = int(self.eval_settings["bound_timesteps"])
        return 0 if k >= self.diffusion.num_timesteps - 1 else k

    @property
    def nll_estimator(self) -> str:
        T, k = self.diffusion.num_timesteps, self.bound_timesteps
        return f"vlb-T{T}" if k == 0 else f"vlb-T{T}-mc{k}"

    def bound_terms(self, x: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-example term L_{t-1} of the bound in nats (t >= 1: a KL between Gaussians; t = 0: the decoder's
        -log p(x_0 | x_1)), at x_t drawn from q(x_t | x_0)."""
        d = self.diffusion
        x0 = self.to_model_space(x)
        xt = d.q_sample(x0, t, torch.randn(x0.shape, device=x0.device, generator=generator))
        x0_hat, _ = self.denoise(xt, t)
        model_mean, _ = d.q_posterior(x0_hat, xt, t)
        model_logvar = d.reverse_log_variance(t, xt, self.sigma)
        true_mean, true_logvar = d.q_posterior(x0, xt, t)
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).sum(1)
        if self.data_info.levels is not None:
            decoder = -discretized_gaussian_log_prob(x0, model_mean, 0.5 * model_logvar, self.data_info.levels)
        else:
            decoder = 0.5 * (math.log(2 * math.pi) + model_logvar + (x0 - model_mean) ** 2 / model_logvar.exp())
        return torch.where(t == 0, decoder.flatten(1).sum(1), kl)

    def prior_term(self, x: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in closed form."""
        x0 = self.to_model_space(x)
        ab = self.diffusion.alpha_bar[-1]
        kl = normal_kl(ab.sqrt() * x0, (1 - ab).log().expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
        return kl.flatten(1).sum(1)

    @torch.no_grad()
    def negative_bound(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The bound L = L_T + sum_t L_{t-1} per example (nats): every term, or the Monte Carlo estimate
        L_T + L_0 + (T - 1) mean_k L_{t_k - 1} over ``bound_timesteps`` uniform t_k in 1..T-1."""
        T, k = self.diffusion.num_timesteps, self.bound_timesteps
        total = self.prior_term(x)
        with self.averaged_weights():
            if k == 0:
                for t in range(T):
                    total = total + self.bound_terms(x, torch.full((len(x),), t, device=x.device), generator)
                return total
            total = total + self.bound_terms(x, torch.zeros(len(x), dtype=torch.long, device=x.device), generator)
            for _ in range(k):
                t = torch.randint(1, T, (len(x),), device=x.device, generator=generator)
                total = total + (T - 1) / k * self.bound_terms(x, t, generator)
        return total

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        # An upper bound on the NLL, so this is a lower bound on log p(x).
        return -self.negative_bound(x)
