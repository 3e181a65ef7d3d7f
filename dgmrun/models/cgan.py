"""Class-conditional GANs: CGAN (Mirza & Osindero 2014) and AC-GAN (Odena et al. 2017).

Both generators take [z, onehot(y)] and are trained on the labels of the real batch (so the class
frequencies of the data). For toy2d the "class" is the mixture component.

CGAN: D also sees y, and both players play the chosen ``loss`` of ``gan.py`` on D(x, y):

- ``conditioning=concat``: onehot(y) appended to each sample (as K constant channels for images);
- ``conditioning=projection`` (Miyato & Koyama 2018, eq. 3): D(x, y) = psi(phi(x)) + <E y, phi(x)>,
  phi D's body, psi its head and E a learned class embedding. With packing, phi sees the whole
  pack and the projection term sums <E y_j, phi> over the pack's labels.

AC-GAN: D sees x only and has, besides its real/fake logit, a class head (one K-way prediction per
sample of a pack). Both players add ``aux_weight`` times the cross-entropy of the class head on
their samples (Odena et al. 2017, eq. 2-3: D maximises L_S + L_C, G maximises L_C - L_S; here
L_S is the chosen adversarial ``loss``, and D's class loss is on real and generated samples).

Sampling: ``sample(n, generator, classes=[...])`` cycles through the given classes; without
``classes``, images come in rows of 8 per class (class 0 in the first row, ...), and points draw
their class uniformly from ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmrun.models.base import sample_labels
from dgmrun.models.gan import GAN
from dgmrun.nets.gan_blocks import pack_samples


class _Conditional(GAN):
    """What CGAN and AC-GAN share: G conditioned on onehot(y), sampling given classes."""

    @property
    def num_classes(self) -> int:
        return self.data_info.num_classes

    def generator_input_dim(self) -> int:
        return self.latent_dim + self.num_classes

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1))

    @property
    def class_conditional(self) -> bool:
        return True

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, classes: Sequence[int] | None = None) -> Tensor:
        """n samples of the given classes (cycled), or of one row of 8 per class / random classes (see above)."""
        return self._sample(n, generator, classes)

    def sample_labels(self, n: int, generator: torch.Generator | None, classes: Sequence[int] | None) -> Tensor:
        return sample_labels(n, self.num_classes, classes, self.data_info.is_image, generator, self.device)


class CGAN(_Conditional):
    def __init__(self, data_info: dict[str, Any], *, conditioning: str, **gan_args: Any):
        self.conditioning = conditioning
        super().__init__(data_info, **gan_args)
        self.save_hyperparameters()
        if conditioning == "projection":
            self.class_embedding = nn.Embedding(self.num_classes, self.discriminator.features)
            nn.init.normal_(self.class_embedding.weight, std=0.02)

    def critic_extra_channels(self) -> int:
        return self.num_classes if self.conditioning == "concat" else 0

    def critic(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if self.conditioning == "concat":
            onehot = F.one_hot(y, self.num_classes).to(x.dtype)
            if x.dim() == 4:
                onehot = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])
            return self.discriminator(pack_samples(torch.cat([x, onehot], dim=1), self.pack))
        h = self.discriminator.body(pack_samples(x, self.pack))
        projection = self.class_embedding(y).view(len(h), self.pack, -1).sum(1)  # sum over each pack's labels
        return self.discriminator.head(h) + (projection * h).sum(1, keepdim=True)

    def d_parameters(self) -> list[nn.Parameter]:
        extra = list(self.class_embedding.parameters()) if self.conditioning == "projection" else []
        return super().d_parameters() + extra


class ACGAN(_Conditional):
    def __init__(self, data_info: dict[str, Any], *, aux_weight: float, **gan_args: Any):
        super().__init__(data_info, **gan_args)
        self.save_hyperparameters()
        self.aux_weight = aux_weight

    def critic_out_dim(self) -> int:
        return 1 + self.pack * self.num_classes  # real/fake logit per pack, class logits per sample

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.discriminator(pack_samples(x, self.pack)).float()
        return out[:, :1], out[:, 1:].reshape(len(x), self.num_classes)

    def critic(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self._heads(x)[0]

    def d_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake = self.generate(self.sample_latent(len(x)), y)
        if self._single_process:
            fake = fake.detach()
        (real_logits, real_classes), (fake_logits, fake_classes) = self._heads(x), self._heads(fake)
        adversarial = self.d_loss_fn(real_logits, fake_logits)
        aux = F.cross_entropy(real_classes, y) + F.cross_entropy(fake_classes, y)
        loss = adversarial + self.aux_weight * aux
        logs = {"d_adversarial": adversarial.detach(), "d_aux": aux.detach(),
                "d_real_accuracy": (real_classes.argmax(1) == y).float().mean()}
        return self.with_gradient_penalty(loss, logs, self.critic, x, fake), logs

    def g_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake_logits, fake_classes = self._heads(self.generate(self.sample_latent(len(x)), y))
        aux = F.cross_entropy(fake_classes, y)
        return self.g_loss_fn(fake_logits) + self.aux_weight * aux, {"g_aux": aux.detach()}
