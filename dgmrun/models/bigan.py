"""BiGAN / ALI (Donahue et al. 2017; Dumoulin et al. 2017): a GAN that also learns an encoder.

An encoder E maps x to z (deterministically, as in BiGAN) and the discriminator judges *pairs*:
real pairs (x, E(x)) with x from the data against generated pairs (G(z), z) with z ~ N(0, I) (``noise``). The
game (ALI eq. 3) is  min_{G,E} max_D  E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))]; at its optimum
the two joint distributions match, so E inverts G. D minimises the chosen ``loss`` on
(real pairs, generated pairs); G and E together minimise the generator side of that loss on both
kinds of pairs, g_loss(f) + g_real_loss(r) of the table in ``gan`` with f = D(G(z), z), r = D(x, E(x)):
for ``hinge`` and ``wgan*`` the negated critic, -f + r; for ``ns`` and ``lsgan`` the D loss with the
pairs swapped (for ``ns`` the non-saturating form of the game that both papers train); for ``minimax``
the negated D loss, the game itself. The WGAN-GP penalty is on D's gradient w.r.t. the joint input at the interpolates
(x^, z^) = e (x, E(x)) + (1 - e) (G(z), z), its norm over x and z together.

D = a joint head on [features of x (D's usual body), features of z (an MLP)]. With packing, D
judges ``pack`` pairs at once. ``figures`` shows reconstructions x -> E -> G (input rows
interleaved with reconstruction rows) for images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dgmrun.models.base import reconstruction_grid
from dgmrun.models.gan import G_REAL_LOSSES, GAN
from dgmrun.nets.conv import conv_encoder
from dgmrun.nets.gan_blocks import MinibatchStd, maybe_sn, pack_samples
from dgmrun.nets.mlp import mlp


class JointCritic(nn.Module):
    """D(x, z): x through ``x_body``, z through an MLP, then an MLP on both features.

    With ``minibatch_std`` the z branch gets the minibatch-stddev feature too, as x's body does: an
    encoder that maps every image into a small ball of z-space (the z-side mode collapse) is then
    visible to D in one batch.
    """

    def __init__(self, x_body: nn.Module, x_features: int, z_dim: int, hidden: int = 256, spectral_norm: bool = False,
                 minibatch_std: bool = False):
        super().__init__()
        self.x_body = x_body
        z_layers = [maybe_sn(nn.Linear(z_dim, hidden), spectral_norm), nn.LeakyReLU(0.2),
                    maybe_sn(nn.Linear(hidden, hidden), spectral_norm), nn.LeakyReLU(0.2)]
        self.z_body = nn.Sequential(*z_layers, *([MinibatchStd()] if minibatch_std else []))
        z_features = hidden + int(minibatch_std)
        self.head = nn.Sequential(maybe_sn(nn.Linear(x_features + z_features, hidden), spectral_norm),
                                  nn.LeakyReLU(0.2), maybe_sn(nn.Linear(hidden, 1), spectral_norm))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.head(torch.cat([self.x_body(x), self.z_body(z)], dim=1))


class BiGAN(GAN):
    def __init__(self, data_info: dict[str, Any], *, e_hidden_dims: list[int] | tuple[int, ...], **gan_args: Any):
        self.e_hidden_dims = list(e_hidden_dims)
        super().__init__(data_info, **gan_args)
        self.save_hyperparameters()
        info = self.data_info
        if self.arch == "dcgan":
            self.encoder = conv_encoder(info.shape, self.d_channels, self.latent_dim)
        else:
            self.encoder = nn.Sequential(nn.Flatten(), mlp(info.num_dims, self.e_hidden_dims, self.latent_dim,
                                                           nn.LeakyReLU))
        self.initialise(self.encoder)

    def build_discriminator(self, extra: int = 0, out_dim: int = 1) -> nn.Module:
        x_critic = super().build_discriminator(extra, out_dim)  # MLP or DCGAN critic on packed x: reuse its body
        return JointCritic(x_critic.body, x_critic.features, self.pack * self.latent_dim,
                           hidden=max(self.d_hidden_dims), spectral_norm=self.spectral_norm,
                           minibatch_std=self.minibatch_std)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def joint_critic(self, x: Tensor, z: Tensor) -> Tensor:
        return self.discriminator(pack_samples(x, self.pack), pack_samples(z, self.pack))

    def _pairs_logits(self, x: Tensor, detach: bool
                      ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """D's logits on the real pairs (x, E(x)) and the generated pairs (G(z), z), and those pairs."""
        z = self.sample_latent(len(x))
        fake, code = self.generate(z), self.encode(x)
        if detach:
            fake, code = fake.detach(), code.detach()
        return self.joint_critic(x, code).float(), self.joint_critic(fake, z).float(), (x, code), (fake, z)

    def d_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_logits, fake_logits, real_pairs, fake_pairs = self._pairs_logits(x, detach=self._single_process)
        loss = self.d_loss_fn(real_logits, fake_logits)
        logs = {"d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach()}
        return self.with_gradient_penalty(loss, logs, self.joint_critic, real_pairs, fake_pairs), logs

    def g_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_logits, fake_logits, _, _ = self._pairs_logits(x, detach=False)
        return self.g_loss_fn(fake_logits) + G_REAL_LOSSES[self.loss_name](real_logits), {}

    def g_parameters(self) -> list[nn.Parameter]:
        return super().g_parameters() + list(self.encoder.parameters())

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """x (data space) -> E -> G (with the EMA generator), in data space."""
        return self.samples_from_latent(self.encode(self.to_model_space(x)))

    @torch.no_grad()
    def figures(self, x: Tensor) -> dict[str, Tensor]:
        return reconstruction_grid(x, self.reconstruct) if self.data_info.is_image else {}
