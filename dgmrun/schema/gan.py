"""Typed configs of the adversarial and moment-matching models (``conf/model/{gan,...}.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from dgmrun.data.info import DataInfo
from dgmrun.schema.base import (
    MAX_SIZE,
    ModelConfig,
    OptimizerConfig,
    check_scheduler,
    one_of,
    require,
    require_finite,
    require_sizes,
    resolve_conv_arch,
)

GAN_ARCHS = ("auto", "mlp", "dcgan")
GAN_LOSSES = ("minimax", "ns", "wgan", "wgan_gp", "lsgan", "hinge")
GAN_NOISES = ("normal", "uniform")
GAN_INITS = ("default", "dcgan")


def _adam(lr: float) -> OptimizerConfig:
    return OptimizerConfig(lr=lr, betas=[0.5, 0.999])


@dataclass
class GANConfig(ModelConfig):
    manual_optimization = True
    binarize_auto = "none"

    optimizer: Optional[OptimizerConfig] = None  # unused: a GAN has one optimizer per player
    loss: str = "ns"  # minimax | ns (non-saturating) | wgan (weight clipping) | wgan_gp | lsgan | hinge
    latent_dim: int = 16
    noise: str = "normal"  # z ~ N(0, I) | uniform: z ~ U(-1, 1) per coordinate (the DCGAN and InfoGAN papers)
    arch: str = "auto"  # auto (dcgan for images >= 16 px, else mlp) | mlp | dcgan
    g_hidden_dims: list[int] = field(default_factory=lambda: [64, 64, 64])  # mlp generator widths
    # mlp discriminator widths (3x128 found 20/25 grid modes for seed 2, 3x256 all 25)
    d_hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])
    g_channels: list[int] = field(default_factory=lambda: [64, 128])  # dcgan generator: the two stride-2 stages
    d_channels: list[int] = field(default_factory=lambda: [64, 128])  # dcgan discriminator: the two stride-2 stages
    # dcgan players only: width of a fully connected layer after G's input and before D's output (InfoGAN's: 1024)
    fc_dim: Optional[int] = None
    d_batch_norm: bool = False  # dcgan players only: batch norm in D's second stage and FC layer (not with wgan_gp)
    # every network's weights: default (PyTorch's) | dcgan (Radford et al.: N(0, 0.02); batch-norm scales N(1, 0.02))
    init: str = "default"
    n_critic: int = 1  # D updates per G update
    clip: float = 0.01  # wgan: D weights clipped to [-clip, clip]
    gp_weight: float = 10.0  # wgan_gp: weight of the gradient penalty
    spectral_norm: bool = False  # spectral normalisation of every D layer
    minibatch_std: bool = True  # minibatch-stddev feature before D's last layer
    pack: int = 2  # PacGAN: D judges this many samples at once (1: plain GAN)
    ema_decay: Optional[float] = 0.99  # EMA of G's weights used for sampling/evaluation (null: off)
    optimizer_g: OptimizerConfig = field(default_factory=lambda: _adam(1e-3))
    optimizer_d: OptimizerConfig = field(default_factory=lambda: _adam(1e-3))
    # both players: decayed to 0 over the run
    scheduler: Optional[dict[str, Any]] = field(default_factory=lambda: {"name": "cosine"})

    def check(self) -> None:
        require_finite(self, "model")
        require(self.optimizer is None, "model.optimizer is not a key of the GANs: each player has its own, "
                "model.optimizer_g and model.optimizer_d")
        self.optimizer_g.check("model.optimizer_g")
        self.optimizer_d.check("model.optimizer_d")
        check_scheduler(self.scheduler)
        one_of("model.loss", self.loss, GAN_LOSSES)
        one_of("model.arch", self.arch, GAN_ARCHS)
        one_of("model.noise", self.noise, GAN_NOISES)
        one_of("model.init", self.init, GAN_INITS)
        require_sizes("model.latent_dim", self.latent_dim)
        require_sizes("model.g_hidden_dims", self.g_hidden_dims)
        require_sizes("model.d_hidden_dims", self.d_hidden_dims)
        require_sizes("model.g_channels", self.g_channels, 2)
        require_sizes("model.d_channels", self.d_channels, 2)
        if self.fc_dim is not None:
            require_sizes("model.fc_dim", self.fc_dim)
        require(not (self.d_batch_norm and self.loss == "wgan_gp"),
                 "model.d_batch_norm=true does not go with model.loss=wgan_gp: batch norm mixes the samples "
                 "whose gradients the penalty takes one by one")
        require(self.n_critic >= 1, f"model.n_critic must be >= 1, got {self.n_critic}")
        require(self.clip > 0, f"model.clip must be > 0, got {self.clip}")
        require(self.gp_weight >= 0, f"model.gp_weight must be >= 0, got {self.gp_weight}")
        require(1 <= self.pack <= MAX_SIZE, f"model.pack must be in [1, {MAX_SIZE}], got {self.pack}")
        require(self.ema_decay is None or 0 <= self.ema_decay < 1,
                 f"model.ema_decay must be in [0, 1) or null, got {self.ema_decay}")

    def check_data(self, info: DataInfo) -> None:
        self.arch = resolve_conv_arch(self.arch, "dcgan", info)  # auto: DCGAN for images of >= 16 px, else MLP

    def check_batch_size(self, batch_size: int) -> None:
        # (a training step uses whole packs only: batches of fewer samples than a pack would train nothing)
        require(batch_size >= 2, f"data.batch_size={batch_size}: a GAN needs at least 2 samples per batch "
                "(batch norm and the minibatch-stddev feature compare the samples of a batch)")
        require(batch_size % self.pack == 0, f"data.batch_size={batch_size} is not a multiple of model.pack={self.pack} "
                f"(D judges packs of {self.pack} samples)")


SCHEMAS: dict[str, type[ModelConfig]] = {"dgmrun.models.gan.GAN": GANConfig}


CONDITIONINGS = ("projection", "concat")


def _needs_classes(name: str, info: DataInfo) -> None:
    require(info.num_classes > 0, f"model {name} needs labelled data; data {info.name} has no classes")


@dataclass
class CGANConfig(GANConfig):
    conditioning: str = "projection"  # projection (Miyato & Koyama 2018) | concat (one-hot appended to D's input)

    def check(self) -> None:
        super().check()
        one_of("model.conditioning", self.conditioning, CONDITIONINGS)

    def check_data(self, info: DataInfo) -> None:
        super().check_data(info)
        _needs_classes("cgan", info)


@dataclass
class ACGANConfig(GANConfig):
    aux_weight: float = 1.0  # weight of the auxiliary classification loss for both players

    def check(self) -> None:
        super().check()
        require(self.aux_weight >= 0, f"model.aux_weight must be >= 0, got {self.aux_weight}")

    def check_data(self, info: DataInfo) -> None:
        super().check_data(info)
        _needs_classes("acgan", info)


SCHEMAS.update({"dgmrun.models.cgan.CGAN": CGANConfig, "dgmrun.models.cgan.ACGAN": ACGANConfig})


GMMN_SPACES = ("pixels", "code")


@dataclass
class GMMNConfig(ModelConfig):
    binarize_auto = "none"

    latent_dim: int = 16
    hidden_dims: list[int] = field(default_factory=lambda: [128, 128, 128])  # generator widths (MLP)
    space: str = "pixels"  # pixels: match the data's moments | code: match an autoencoder's codes (GMMN+AE)
    code_dim: int = 8  # space=code: autoencoder code size
    ae_hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # space=code: autoencoder widths
    # RBF bandwidths; null: median pairwise distance of the batch x [1/4, 1/2, 1, 2, 4]
    bandwidths: Optional[list[float]] = None

    def check(self) -> None:
        super().check()
        require_sizes("model.latent_dim", self.latent_dim)
        require_sizes("model.hidden_dims", self.hidden_dims)
        require_sizes("model.ae_hidden_dims", self.ae_hidden_dims)
        one_of("model.space", self.space, GMMN_SPACES)
        require_sizes("model.code_dim", self.code_dim)
        require(self.bandwidths is None or (len(self.bandwidths) > 0 and all(b > 0 for b in self.bandwidths)),
                 f"model.bandwidths must be positive numbers or null, got {self.bandwidths}")


SCHEMAS["dgmrun.models.gmmn.GMMN"] = GMMNConfig


@dataclass
class InfoGANConfig(GANConfig):
    """The paper's MNIST recipe (appendix C.1): 62 noise dimensions ~ U(-1, 1), FC-1024 layers in G and D,
    batch norm in D and Q, D at 2e-4 and G at 1e-3, constant rates, no packing, no minibatch stddev."""

    num_categorical: int = 1  # categorical codes
    categorical_dim: int = 10  # values of each categorical code
    continuous_dim: int = 2  # continuous codes ~ U(-1, 1)
    info_weight: float = 1.0  # weight of the mutual-information lower bound (lambda)
    latent_dim: int = 62
    noise: str = "uniform"
    fc_dim: Optional[int] = 1024
    d_batch_norm: bool = True
    pack: int = 1
    minibatch_std: bool = False
    scheduler: Optional[dict[str, Any]] = None
    optimizer_d: OptimizerConfig = field(default_factory=lambda: _adam(2e-4))

    def check(self) -> None:
        super().check()
        for key in ("num_categorical", "continuous_dim"):
            value = getattr(self, key)
            require(0 <= value <= MAX_SIZE, f"model.{key} must be in [0, {MAX_SIZE}], got {value}")
        require(self.num_categorical == 0 or 2 <= self.categorical_dim <= MAX_SIZE,
                 f"model.categorical_dim must be in [2, {MAX_SIZE}], got {self.categorical_dim}")
        require(self.num_categorical + self.continuous_dim > 0, "InfoGAN needs at least one code")
        require(self.info_weight >= 0, f"model.info_weight must be >= 0, got {self.info_weight}")


@dataclass
class EBGANConfig(GANConfig):
    pack: int = 1  # EBGAN's discriminator reconstructs single samples
    # m: D pushes the energy (MSE per pixel in [-1, 1]) of generated samples up to m; at 1.0 the fakes sat
    # above it from the start on mnist-small, D stopped judging them, G collapsed
    margin: float = 0.3
    pt_weight: float = 0.1  # pull-away term weight on G's codes (0: off)
    code_dim: int = 32  # the autoencoder's code size

    def check(self) -> None:
        super().check()
        require(self.pack == 1, f"model.pack must be 1 for EBGAN, got {self.pack}")
        require(not self.d_batch_norm, "model.d_batch_norm is not an option of EBGAN's autoencoder discriminator")
        require(self.margin > 0, f"model.margin must be > 0, got {self.margin}")
        require(self.pt_weight >= 0, f"model.pt_weight must be >= 0, got {self.pt_weight}")
        require_sizes("model.code_dim", self.code_dim)


@dataclass
class BiGANConfig(GANConfig):
    e_hidden_dims: list[int] = field(default_factory=lambda: [64, 64, 64])  # mlp encoder (dcgan: strided convs)

    def check(self) -> None:
        super().check()
        require_sizes("model.e_hidden_dims", self.e_hidden_dims)


SCHEMAS.update({"dgmrun.models.infogan.InfoGAN": InfoGANConfig, "dgmrun.models.ebgan.EBGAN": EBGANConfig,
                "dgmrun.models.bigan.BiGAN": BiGANConfig})
