"""Energy-based GAN (Zhao, Mathieu & LeCun 2017).

The discriminator is an autoencoder and its energy is the reconstruction error,
D(x) = ||Dec(Enc(x)) - x||^2 / dim(x) (the mean squared error per dimension, in model space).
With margin m (``margin``) and [u]^+ = max(0, u), eq. 1-2 of the paper:

    L_D = D(x) + [m - D(G(z))]^+          L_G = D(G(z)) + pt_weight * PT(Enc(G(z)))

so D gives real data low energy and generated data energy at least m, and G lowers the energy of
its samples. The pull-away term (eq. 3),  PT(S) = 1 / (N (N - 1)) sum_{i != j} (s_i^T s_j / (|s_i| |s_j|))^2,
on the encoder's codes of a generated batch pushes them apart (``pt_weight``: 0 turns it off).
The ``loss`` key of the GAN is not used; packing is not used (``pack`` must be 1).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.models.gan import GAN
from dgmrun.nets.conv import conv_decoder, conv_encoder
from dgmrun.nets.mlp import mlp


def pull_away_term(codes: Tensor) -> Tensor:
    """Mean squared cosine similarity over the ordered pairs i != j of a batch of codes (EBGAN eq. 3)."""
    s = F.normalize(codes.flatten(1).float(), dim=1)
    n = len(s)
    if n < 2:
        return s.new_zeros(())
    cos2 = (s @ s.T) ** 2
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


class AutoencoderCritic(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.encoder, self.decoder, self.shape = encoder, decoder, tuple(shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(per-example energy, code)."""
        code = self.encoder(x)
        recon = self.decoder(code).view(len(x), *self.shape)
        return ((recon.float() - x.float()) ** 2).flatten(1).mean(1), code


class EBGAN(GAN):
    def __init__(self, data_info: dict[str, Any], *, margin: float, pt_weight: float, code_dim: int, **gan_args: Any):
        self.code_dim = code_dim
        super().__init__(data_info, **gan_args)
        self.save_hyperparameters()
        self.margin, self.pt_weight = margin, pt_weight

    def build_discriminator(self, extra: int = 0, out_dim: int = 1) -> nn.Module:
        info = self.data_info
        if self.arch == "dcgan":
            encoder = conv_encoder(info.shape, self.d_channels, self.code_dim)
            decoder = conv_decoder(self.code_dim, info.shape, self.d_channels, info.shape[0])
        else:
            encoder = nn.Sequential(nn.Flatten(), mlp(info.num_dims, self.d_hidden_dims, self.code_dim, nn.LeakyReLU))
            decoder = mlp(self.code_dim, list(reversed(self.d_hidden_dims)), info.num_dims, nn.LeakyReLU)
        return AutoencoderCritic(encoder, decoder, info.shape)

    def critic(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The energy D(x) (lower: more like the data)."""
        return self.discriminator(x)[0]

    def d_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake = self.generate(self.sample_latent(len(x)))
        if self._single_process:
            fake = fake.detach()
        real_energy, fake_energy = self.critic(x), self.critic(fake)
        loss = real_energy.mean() + F.relu(self.margin - fake_energy).mean()
        return loss, {"energy_real": real_energy.mean().detach(), "energy_fake": fake_energy.mean().detach()}

    def g_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        energy, code = self.discriminator(self.generate(self.sample_latent(len(x))))
        loss = energy.mean()
        logs: dict[str, Tensor] = {}
        if self.pt_weight > 0:
            pt = pull_away_term(code)
            loss = loss + self.pt_weight * pt
            logs["pull_away"] = pt.detach()
        return loss, logs
