"""Generative adversarial networks (Goodfellow et al. 2014) with the usual losses and remedies.

A generator G maps noise z ~ N(0, I) (or U(-1, 1), ``noise=uniform``) to data; a discriminator
(critic) D scores data. The players alternate: ``n_critic`` updates of D, then one of G. The losses,
written on D's raw outputs (logits) r = D(x) for real data and f = D(G(z)) for generated data, sigma
the logistic function:

=========  ============================================  ====================  ===================
loss       d_loss(r, f)                                  g_loss(f)             g_real_loss(r)
=========  ============================================  ====================  ===================
minimax    -log sigma(r) - log(1 - sigma(f))              log(1 - sigma(f))     log sigma(r)
ns         same as minimax                               -log sigma(f)         -log(1 - sigma(r))
wgan       f - r  (D weights clipped to [-clip, clip])    -f                    r
wgan_gp    f - r + gp_weight * (||grad D(x^)|| - 1)^2     -f                    r
lsgan      ((r - 1)^2 + f^2) / 2                          (f - 1)^2 / 2         r^2 / 2
hinge      relu(1 - r) + relu(1 + f)                      -f                    r
=========  ============================================  ====================  ===================

each averaged over the batch: minimax is the game of eq. 1, ns its non-saturating G loss (sec. 3),
wgan Arjovsky et al. 2017, wgan_gp Gulrajani et al. 2017 (eq. 3), lsgan Mao et al. 2017 (eq. 9,
a=0 b=c=1), hinge Lim & Ye 2017 and Miyato et al. 2018. ``g_real_loss`` is the generator side's loss
on real data, for models whose generator side also moves D's inputs for real data (BiGAN's encoder
makes the pairs (x, E(x))): G's loss with the roles of real and fake swapped, so G and E minimise
g_loss(f) + g_real_loss(r): the negated D loss for minimax and wgan*, the negated critic -f + r for
hinge, and D's loss with the pairs swapped for ns (the non-saturating form) and lsgan. For the
minimax loss the optimal D is D*(x) = p(x) / (p(x) + p_G(x)), and G then minimises
2 JSD(p || p_G) - log 4; the non-saturating G loss has the same fixed point but strong gradients
when D rejects G's samples early in training.
x^ = e x + (1 - e) G(z), e ~ U(0, 1), are the interpolates of the gradient penalty (for a D of
several inputs, every input is interpolated with the same e, and the norm is over all of them).

Remedies, all off or on from the config: spectral norm in D (``spectral_norm``), a minibatch-stddev
feature in D (``minibatch_std``), packing (PacGAN: D judges ``pack`` samples at once, which makes
mode collapse visible to it; Lin et al. 2018), and an exponential moving average of G's weights
(``ema_decay``) used whenever the model samples (the trained weights are put back afterwards).

Defaults (``conf/model/gan.yaml``) were tuned on toy2d on a CPU: MLP G 3x64 and D 3x256, Adam(1e-3,
betas 0.5/0.999) for both, cosine decay of both learning rates to 0 over the run, pack 2 plus a
minibatch-stddev feature against mode collapse, EMA 0.99 for sampling. The cosine decay matters: at
a constant 1e-4 or 3e-4 the 5x5 grid was not found at all in the same number of steps. The same
training settings carry over to DCGAN players on MNIST (``dcgan``, ``cgan``), where they beat the
DCGAN paper's constant Adam(2e-4). Measured figures are in the README.

One training step
-----------------
Training uses Lightning's manual optimization with two optimizers. Each batch does one D update,
and every ``n_critic``-th batch also one G update (on a fresh z). Lightning's ``global_step`` -- and
so ``trainer.max_steps`` -- counts *every optimizer update, D's and G's*: with ``n_critic = k`` a
cycle of k batches is k + 1 steps (n_critic = 1: two steps per batch, so ``trainer.max_steps=2000``
means 1000 batches, 1000 D and 1000 G updates). The run stops at the end of the first batch where
global_step >= max_steps. ``max_epochs`` and ``max_time`` work as for any model.

Under DDP every backward pass must reach every parameter (Lightning's DDP does not look for unused
ones), so there the D step back-propagates through G too (its gradients are discarded) and D is not
frozen during the G step; in a single process G's samples are detached for the D step and D's
weights frozen for the G step, which saves that work. The results are the same.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.models.base import GenerativeModel, make_optimizer
from dgmrun.models.ema import EMA
from dgmrun.nets.gan_blocks import (
    DCGANCritic,
    MLPCritic,
    dcgan_generator,
    dcgan_init_,
    mlp_generator,
    pack_samples,
)


# ---------------------------------------------------------------------------------- the losses
# Named functions, not lambdas: the model keeps them, and ddp_spawn pickles the model.
def _bce_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()  # -log sigma(r) - log(1 - sigma(f))


def _minimax_g(fake: Tensor) -> Tensor:
    return -F.softplus(fake).mean()  # log(1 - sigma(f)) = -softplus(f)


def _minimax_g_real(real: Tensor) -> Tensor:
    return -F.softplus(-real).mean()  # log sigma(r)


def _ns_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()  # -log sigma(f) = softplus(-f)


def _ns_g_real(real: Tensor) -> Tensor:
    return F.softplus(real).mean()  # -log(1 - sigma(r))


def _wasserstein_d(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def _wasserstein_g(fake: Tensor) -> Tensor:  # also the hinge loss's G loss
    return -fake.mean()


def _wasserstein_g_real(real: Tensor) -> Tensor:
    return real.mean()


def _lsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def _lsgan_g(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1) ** 2).mean()


def _lsgan_g_real(real: Tensor) -> Tensor:
    return 0.5 * (real**2).mean()


def _hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    # name: (d_loss(real_logits, fake_logits), g_loss(fake_logits)), both to be minimised
    "minimax": (_bce_d, _minimax_g),
    "ns": (_bce_d, _ns_g),
    "wgan": (_wasserstein_d, _wasserstein_g),
    "wgan_gp": (_wasserstein_d, _wasserstein_g),
    "lsgan": (_lsgan_d, _lsgan_g),
    "hinge": (_hinge_d, _wasserstein_g),
}

# name: g_real_loss(real_logits), the generator side's loss on real data (see the table), to be minimised
G_REAL_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "minimax": _minimax_g_real,
    "ns": _ns_g_real,
    "wgan": _wasserstein_g_real,
    "wgan_gp": _wasserstein_g_real,
    "lsgan": _lsgan_g_real,
    "hinge": _wasserstein_g_real,
}


def gradient_penalty(critic: Callable[..., Tensor], real: Tensor | Sequence[Tensor], fake: Tensor | Sequence[Tensor],
                     pack: int = 1, eps: Tensor | None = None) -> Tensor:
    """WGAN-GP penalty E[(||grad_x^ D(x^)||_2 - 1)^2] at x^ = e real + (1 - e) fake (Gulrajani et al. 2017).

    ``critic`` takes unpacked samples (it packs them itself); the norm is taken over each packed
    input of D, i.e. over the ``pack`` samples that D judges together. For a critic of several
    inputs (BiGAN's D(x, z)), ``real`` and ``fake`` are sequences of them: each is interpolated with
    the same e, and the norm is that of the gradient w.r.t. all of them together (the joint input).
    ``eps`` (one per sample) is drawn uniformly when not given.
    """
    reals, fakes = ((real,), (fake,)) if isinstance(real, Tensor) else (tuple(real), tuple(fake))
    if eps is None:
        eps = torch.rand(reals[0].shape[0], device=reals[0].device, dtype=reals[0].dtype)
    mixed = []
    for r, f in zip(reals, fakes):
        e = eps.view(-1, *[1] * (r.dim() - 1))
        mixed.append((e * r.detach() + (1 - e) * f.detach()).requires_grad_(True))
    grads = torch.autograd.grad(critic(*mixed).float().sum(), mixed, create_graph=True)
    norms = torch.cat([pack_samples(g, pack).flatten(1) for g in grads], dim=1).norm(dim=1)
    return ((norms - 1) ** 2).mean()


def grad_norm(params: Iterator[nn.Parameter] | Sequence[nn.Parameter]) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class GAN(GenerativeModel):
    divergence_hint = "lower the learning rates (model.optimizer_d.lr, model.optimizer_g.lr) or change model.loss"

    likelihood_kind = "none"

    def __init__(self, data_info: dict[str, Any], *, loss: str, latent_dim: int, noise: str, arch: str,
                 g_hidden_dims: Sequence[int], d_hidden_dims: Sequence[int], g_channels: Sequence[int],
                 d_channels: Sequence[int], fc_dim: int | None, d_batch_norm: bool, init: str, n_critic: int, clip: float,
                 gp_weight: float, spectral_norm: bool, minibatch_std: bool, pack: int, ema_decay: float | None,
                 optimizer_g: dict[str, Any], optimizer_d: dict[str, Any], scheduler: dict[str, Any] | None,
                 optimizer: None):
        super().__init__(data_info, optimizer, scheduler)
        self.save_hyperparameters()
        self.loss_name, self.d_loss_fn, self.g_loss_fn = loss, *LOSSES[loss]
        self.latent_dim, self.noise, self.n_critic, self.pack = latent_dim, noise, n_critic, pack
        self.clip, self.gp_weight = clip, gp_weight
        self.g_hidden_dims, self.d_hidden_dims = list(g_hidden_dims), list(d_hidden_dims)
        self.g_channels, self.d_channels = list(g_channels), list(d_channels)
        self.spectral_norm, self.minibatch_std = spectral_norm, minibatch_std
        self.optimizer_g_settings, self.optimizer_d_settings = dict(optimizer_g), dict(optimizer_d)
        self.arch = arch
        self.fc_dim, self.d_batch_norm = fc_dim, d_batch_norm and self.arch == "dcgan"  # DCGAN players only
        self.generator = self.build_generator(self.generator_input_dim())
        self.discriminator = self.build_discriminator(self.critic_extra_channels(), self.critic_out_dim())
        self.weight_init = init
        self.initialise(self.generator, self.discriminator)
        self.ema = EMA(self.generator, ema_decay) if ema_decay is not None else None
        self._single_process = True

    # ------------------------------------------------------------------ networks (subclasses extend these)
    def initialise(self, *nets: nn.Module) -> None:
        """``model.init`` for freshly built networks: subclasses call it on the ones they add (Q head, encoder)."""
        if self.weight_init == "dcgan":
            for net in nets:
                dcgan_init_(net)

    def generator_input_dim(self) -> int:
        return self.latent_dim

    def critic_extra_channels(self) -> int:
        """Extra input channels/features per sample that the critic sees (conditioning), before packing."""
        return 0

    def critic_out_dim(self) -> int:
        return 1

    def build_generator(self, in_dim: int) -> nn.Module:
        info = self.data_info
        if self.arch == "dcgan":
            return dcgan_generator(in_dim, info.shape, self.g_channels, self.fc_dim)
        net = mlp_generator(in_dim, self.g_hidden_dims, info.num_dims)
        if info.is_image:
            return nn.Sequential(net, nn.Tanh(), nn.Unflatten(1, tuple(info.shape)))
        return net

    def build_discriminator(self, extra: int = 0, out_dim: int = 1) -> nn.Module:
        info = self.data_info
        if self.arch == "dcgan":
            c = info.shape[0]
            return DCGANCritic(info.shape, self.d_channels, out_dim, in_channels=self.pack * (c + extra),
                               spectral_norm=self.spectral_norm, minibatch_std=self.minibatch_std,
                               fc_dim=self.fc_dim, batch_norm=self.d_batch_norm)
        return MLPCritic(self.pack * (info.num_dims + extra), self.d_hidden_dims, out_dim,
                         spectral_norm=self.spectral_norm, minibatch_std=self.minibatch_std)

    # ------------------------------------------------------------------ the model
    def to_model_space(self, x: Tensor) -> Tensor:
        """Images [0, 1] -> [-1, 1] (the range of G's tanh); points unchanged."""
        return x * 2 - 1 if self.data_info.is_image else x

    def to_data_space(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.data_info.is_image else x

    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n × latent_dim noise: N(0, I), or U(-1, 1) per coordinate for ``noise=uniform``."""
        if self.noise == "uniform":
            return torch.rand(n, self.latent_dim, generator=generator, device=self.device) * 2 - 1
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.draw_noise(n, generator)

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """G(z) in model space."""
        return self.generator(z)

    def critic(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """D's logits for packs of ``pack`` consecutive samples in model space: (N / pack) × out_dim."""
        return self.discriminator(pack_samples(x, self.pack))

    def d_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss on a real batch (model space) and a fresh generated batch of the same size."""
        fake = self.generate(self.sample_latent(len(x)), y)
        if self._single_process:
            fake = fake.detach()
        real_logits, fake_logits = self.critic(x, y).float(), self.critic(fake, y).float()
        loss = self.d_loss_fn(real_logits, fake_logits)
        logs = {"d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach()}
        return self.with_gradient_penalty(loss, logs, lambda v: self.critic(v, y), x, fake), logs

    def with_gradient_penalty(self, loss: Tensor, logs: dict[str, Tensor], critic: Callable[..., Tensor],
                              real: Tensor | Sequence[Tensor], fake: Tensor | Sequence[Tensor]) -> Tensor:
        """D's loss plus gp_weight x the gradient penalty for ``loss=wgan_gp`` (logged as ``gp``); else unchanged.
        ``real`` and ``fake`` are D's input(s), as for ``gradient_penalty``."""
        if self.loss_name != "wgan_gp":
            return loss
        gp = gradient_penalty(critic, real, fake, self.pack)
        logs["gp"] = gp.detach()
        return loss + self.gp_weight * gp

    def g_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake = self.generate(self.sample_latent(len(x)), y)
        return self.g_loss_fn(self.critic(fake, y).float()), {}

    # ------------------------------------------------------------------ which parameters each player owns
    def d_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def g_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    # ------------------------------------------------------------------ Lightning
    def configure_optimizers(self) -> Any:
        opt_d = make_optimizer(self.d_parameters(), self.optimizer_d_settings)
        opt_g = make_optimizer(self.g_parameters(), self.optimizer_g_settings)
        schedulers = self._make_schedulers(opt_d, opt_g)
        return ([opt_d, opt_g], schedulers) if schedulers else [opt_d, opt_g]

    def on_fit_start(self) -> None:
        self._single_process = self.trainer.world_size == 1

    def _make_schedulers(self, opt_d: torch.optim.Optimizer, opt_g: torch.optim.Optimizer) -> list[dict[str, Any]]:
        """``model.scheduler`` for both players (cosine: over each player's own number of updates).

        Manual optimization does not step schedulers: ``training_step`` and ``on_train_epoch_end`` do.
        Returned to Lightning so that their state is saved in checkpoints.
        """
        if self.scheduler_settings is None:
            return []
        k = self.n_critic
        batches = float(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps and self.trainer.max_steps > 0:  # max_steps counts D and G updates
            batches = min(batches, math.ceil(self.trainer.max_steps * k / (k + 1)))
        return [self.make_scheduler(opt_d, batches), self.make_scheduler(opt_g, batches // k)]

    @contextlib.contextmanager
    def _frozen(self, params: list[nn.Parameter]) -> Iterator[None]:
        if not self._single_process:  # DDP: every backward must reach every parameter
            yield
            return
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        keep = len(x) - len(x) % self.pack  # whole packs only
        if keep == 0:
            return
        x, y = self.to_model_space(x[:keep]), y[:keep]
        opt_d, opt_g = self.optimizers()
        k = self.n_critic
        g_turn = (self.global_step + 1) % (k + 1) == k  # after this D update, G's turn (see the module docstring)

        d_loss, logs = self.d_loss(x, y)
        self.check_finite("train/d_loss", d_loss)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        log_now = self.logging_now(batch_idx)
        if log_now:
            logs["d_grad_norm"] = grad_norm(self.d_parameters())
        opt_d.step()
        if self.loss_name == "wgan":  # weight clipping keeps the critic K-Lipschitz (Arjovsky et al. 2017)
            with torch.no_grad():
                for p in self.discriminator.parameters():
                    p.clamp_(-self.clip, self.clip)
        logs["d_loss"] = d_loss.detach()

        if g_turn:
            with self._frozen(self.d_parameters()):
                g_loss, g_logs = self.g_loss(x, y)
                self.check_finite("train/g_loss", g_loss)
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
            logs.update(g_logs)
            if log_now:
                logs["g_grad_norm"] = grad_norm(self.g_parameters())
            opt_g.step()
            logs["g_loss"] = g_loss.detach()
            if self.ema is not None:
                self.ema.update(self.generator)
        self.step_schedulers("step", (0, 1) if g_turn else (0,))  # D's after each of its updates, G's after its own
        self.log_training(batch_idx, {f"train/{name}": value for name, value in logs.items()},
                          {k: v for k, v in (("d", logs["d_loss"]), ("g", logs.get("g_loss"))) if v is not None}, len(x))

    # ------------------------------------------------------------------ GenerativeModel
    def ema_generator(self) -> contextlib.AbstractContextManager[Any]:
        """The generator with its EMA weights swapped in (restored on exit); the plain one without EMA."""
        return self.ema.swapped(self.generator) if self.ema is not None else contextlib.nullcontext(self.generator)

    def sample_labels(self, n: int, generator: torch.Generator | None, classes: Sequence[int] | None) -> Tensor | None:
        """The labels G is conditioned on when sampling (None: G is unconditional)."""
        return None

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._sample(n, generator, None)

    def _sample(self, n: int, generator: torch.Generator | None, classes: Sequence[int] | None) -> Tensor:
        return self.samples_from_latent(self.sample_latent(n, generator), self.sample_labels(n, generator, classes))

    def samples_from_latent(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Data-space samples of the EMA generator for latents ``z`` (and labels ``y``)."""
        with self.ema_generator():
            return self.to_data_space(self.generate(z, y).float())
