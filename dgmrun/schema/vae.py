"""Typed config of the VAE (``conf/model/vae.yaml``) and its choices that depend on the data."""

from __future__ import annotations

from dataclasses import dataclass, field

from dgmrun.data.info import DataInfo
from dgmrun.schema.base import ModelConfig, one_of, require, require_sizes, resolve_conv_arch

VAE_ARCHS = ("auto", "mlp", "conv")
VAE_LIKELIHOODS = ("auto", "bernoulli", "discretized_logistic", "gaussian")
VAE_ACTIVATIONS = ("relu", "tanh")


def resolve_vae_choices(arch: str, likelihood: str, info: DataInfo) -> tuple[str, str]:
    """Turn ``auto`` into a concrete network and likelihood for this data; refuse impossible pairs."""
    arch = resolve_conv_arch(arch, "conv", info)
    if likelihood == "auto":
        likelihood = "bernoulli" if info.is_binary else "gaussian" if info.levels is None else "discretized_logistic"
    if likelihood == "bernoulli":
        require(info.is_binary, f"model.likelihood=bernoulli needs binary data; data {info.name} has "
                 f"{info.levels or 'continuous'} levels (set data.binarize=dynamic or static)")
    if likelihood == "discretized_logistic":
        require(info.levels is not None and info.levels > 1,
                 f"model.likelihood=discretized_logistic needs discrete data; data {info.name} is continuous")
    return arch, likelihood


@dataclass
class VAEConfig(ModelConfig):
    latent_dim: int = 16
    arch: str = "auto"  # auto (conv for images >= 16 px, else mlp) | mlp | conv
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])  # mlp: widths of the hidden layers
    activation: str = "relu"  # mlp: relu | tanh (Burda et al. 2015's)
    # mlp: more stochastic layers above the latent_dim one, each its hidden widths then its latent width
    # (Burda et al.'s two-layer models: hidden_dims [100, 100], latent_dim 100, upper_layers [[50, 50, 50]])
    upper_layers: list[list[int]] = field(default_factory=list)
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv: channels of the two stride-2 stages
    # auto: bernoulli for binary data, discretized_logistic for 8-bit-like, gaussian for points
    likelihood: str = "auto"
    learn_variance: bool = True  # gaussian likelihood: learned per-dimension variance (false: fixed at 1)
    beta: float = 1.0  # weight of the KL term (beta-VAE for beta > 1)
    kl_warmup_steps: int = 0  # linear KL annealing from 0 to beta over this many steps (posterior-collapse remedy)

    def check(self) -> None:
        super().check()
        require_sizes("model.latent_dim", self.latent_dim)
        one_of("model.arch", self.arch, VAE_ARCHS)
        one_of("model.likelihood", self.likelihood, VAE_LIKELIHOODS)
        one_of("model.activation", self.activation, VAE_ACTIVATIONS)
        require_sizes("model.hidden_dims", self.hidden_dims)
        for layer in self.upper_layers:
            require_sizes("model.upper_layers", list(layer))
        require_sizes("model.channels", self.channels, 2)
        require(self.beta >= 0, f"model.beta must be >= 0, got {self.beta}")
        require(self.kl_warmup_steps >= 0, f"model.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")

    def check_data(self, info: DataInfo) -> None:
        self.arch, self.likelihood = resolve_vae_choices(self.arch, self.likelihood, info)
        require(self.arch == "mlp" or not self.upper_layers,
                f"model.upper_layers needs model.arch=mlp (the stochastic layers above z are MLPs), got arch={self.arch}")


SCHEMAS: dict[str, type[ModelConfig]] = {"dgmrun.models.vae.VAE": VAEConfig}
