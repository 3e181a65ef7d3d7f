"""Importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2015).

The VAE's network and likelihoods, trained on the k-sample importance-weighted bound (eq. 8):

    L_k(x) = E_{z_1..z_k ~ q(z|x)} [ log (1/k) sum_i w_i ],   w_i = p(x, z_i) / q(z_i | x),

computed in log space as  logsumexp_i log w_i - log k  (stable for any size of the weights).
L_1 is the ELBO, L_k <= L_{k+1} <= log p(x) (Theorem 1), and L_k -> log p(x) as k grows.
With reparameterised z_i = mu + sigma * eps_i, autograd through the logsumexp gives exactly the
gradient of eq. 14:  sum_i w~_i  grad log w_i,  with normalised weights w~_i = w_i / sum_j w_j
(the softmax of the log-weights is the derivative of logsumexp). The KL term is not used in closed
form (it does not appear in L_k for k > 1), so ``beta``/``kl_warmup_steps`` do not apply.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dgmrun.models.vae import VAE


class IWAE(VAE):
    def __init__(self, data_info: dict[str, Any], *, k: int, **vae_kwargs: Any):
        super().__init__(data_info, **vae_kwargs)
        self.save_hyperparameters()
        self.k = k

    def iwae_bound(self, x: Tensor, k: int) -> Tensor:
        """Per-example L_k(x) in nats, one draw of the k samples (differentiable)."""
        return torch.logsumexp(self.log_importance_weights(x, k), dim=0) - math.log(k)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        bound = self.iwae_bound(x, self.k)
        loss = -bound.mean()
        self.log_training(batch_idx, {"train/loss": loss, f"train/iwae_k{self.k}": bound.mean()}, {"loss": loss}, len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        bound = self.iwae_bound(x, self.k)
        reconstruction, kl = self.elbo_terms(x)
        # val/loss is -L_k for the training k: a bound on the NLL, tighter than the VAE's -ELBO.
        self.log_dict({"val/loss": -bound.mean(), "val/elbo": (reconstruction - kl).mean(),
                       f"val/iwae_k{self.k}": bound.mean()}, batch_size=len(x), sync_dist=True)
