"""Typed configs of the likelihood models: IWAE, NADE, PixelCNN, RBM, VQ-VAE and its PixelCNN prior."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from dgmrun.data.info import DataInfo
from dgmrun.schema.base import MAX_SIZE, ModelConfig, OptimizerConfig, one_of, require, require_sizes
from dgmrun.schema.vae import VAEConfig


def require_binary(model: str, info: DataInfo) -> None:
    require(info.is_binary, f"model {model} needs binary data; data {info.name} has "
             f"{info.levels or 'continuous'} levels (set data.binarize=dynamic or static)")


@dataclass
class IWAEConfig(VAEConfig):
    k: int = 5  # importance samples per example in the training bound (cost grows ~linearly)

    def check(self) -> None:
        super().check()
        require(self.k >= 1, f"model.k must be >= 1, got {self.k}")
        require(self.k <= MAX_SIZE, f"model.k must be at most {MAX_SIZE}, got {self.k}")


@dataclass
class NADEConfig(ModelConfig):
    hidden_dim: int = 500  # H; cost O(H D) per example

    def check(self) -> None:
        super().check()
        require_sizes("model.hidden_dim", self.hidden_dim)

    def check_data(self, info: DataInfo) -> None:
        require_binary("nade", info)


@dataclass
class MaskedStackConfig(ModelConfig):
    """The masked-convolution stack (``nets/masked.py``) shared by PixelCNN and the VQ-VAE prior."""

    channels: int = 64  # feature maps per layer
    # plain PixelCNN: one 7x7 type-A conv then num_layers-1 residual type-B convs; gated: gated layers
    num_layers: int = 6
    kernel_size: int = 5  # odd; the plain first layer uses max(7, kernel_size)

    def check(self) -> None:
        super().check()
        require_sizes("model.channels", self.channels)
        require(self.num_layers >= 1, f"model.num_layers must be >= 1, got {self.num_layers}")
        require(self.kernel_size >= 3 and self.kernel_size % 2 == 1,
                 f"model.kernel_size must be odd and >= 3, got {self.kernel_size}")


@dataclass
class PixelCNNConfig(MaskedStackConfig):
    gated: bool = False  # gated vertical + horizontal stacks, without the blind spot
    conditional: bool = False  # p(x | class): a label-embedding bias in every layer; needs labelled data

    def check_data(self, info: DataInfo) -> None:
        require(info.is_image, f"model pixelcnn needs images, but data {info.name} gives points")
        require(info.levels is not None and info.levels >= 2,
                 f"model pixelcnn needs discrete pixels (binary or 8-bit); data {info.name} is continuous")
        # Wider kernels see nothing more (their centre is the pixel, the image fits within 2 sides - 1)
        # and cost channels^2 x kernel^2 weights per layer: 8 GiB at kernel_size=301.
        widest = 2 * max(info.shape[1:]) - 1
        require(self.kernel_size <= widest, f"model.kernel_size must be at most {widest} for images of "
                f"{info.shape[1]}x{info.shape[2]} px (2 x side - 1), got {self.kernel_size}")
        if self.conditional:
            require(info.num_classes > 0, f"model.conditional=true needs labelled data; {info.name} has no classes")


@dataclass
class RBMConfig(ModelConfig):
    manual_optimization = True  # the CD gradient is set in closed form (``RBM.cd_gradients``)

    hidden_dim: int = 500
    visible: str = "auto"  # auto (bernoulli for binary data, else gaussian) | bernoulli | gaussian
    cd_k: int = 1  # Gibbs steps per update
    persistent: bool = False  # true: persistent CD (chains continue across updates)
    num_chains: int = 100  # persistent chains (the negative phase's sample size)
    sample_gibbs_steps: int = 1000  # Gibbs steps from noise for task=sample and the sample grids
    # plain SGD (momentum-free), as in the lectures' CD update; optimizer.name=adam also works
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", lr=0.05))

    def check(self) -> None:
        super().check()
        require_sizes("model.hidden_dim", self.hidden_dim)
        one_of("model.visible", self.visible, ("auto", "bernoulli", "gaussian"))
        require(self.cd_k >= 1, f"model.cd_k must be >= 1, got {self.cd_k}")
        require(1 <= self.num_chains <= MAX_SIZE, f"model.num_chains must be in [1, {MAX_SIZE}], got {self.num_chains}")
        require(self.sample_gibbs_steps >= 1, f"model.sample_gibbs_steps must be >= 1, got {self.sample_gibbs_steps}")

    def check_data(self, info: DataInfo) -> None:
        if self.visible == "auto":  # Bernoulli visibles for binary data, Gaussian ones otherwise
            self.visible = "bernoulli" if info.is_binary else "gaussian"
        if self.visible == "bernoulli":
            require_binary("rbm (model.visible=bernoulli)", info)


@dataclass
class VQVAEConfig(ModelConfig):
    num_codes: int = 64  # K
    code_dim: int = 16  # D of each code vector
    channels: list[int] = field(default_factory=lambda: [32, 64])  # the two stride-2 stages of encoder and decoder
    commitment: float = 0.25  # beta of the commitment term
    ema_decay: float = 0.99  # gamma of the EMA codebook updates
    restart_dead_codes: bool = True

    def check(self) -> None:
        super().check()
        require(2 <= self.num_codes <= MAX_SIZE, f"model.num_codes must be in [2, {MAX_SIZE}], got {self.num_codes}")
        require_sizes("model.code_dim", self.code_dim)
        require_sizes("model.channels", self.channels, 2)
        require(self.commitment >= 0, f"model.commitment must be >= 0, got {self.commitment}")
        require(0 < self.ema_decay < 1, f"model.ema_decay must be in (0, 1), got {self.ema_decay}")

    def check_data(self, info: DataInfo) -> None:
        require(info.is_image, f"model vqvae needs images, but data {info.name} gives points")
        require(info.levels is not None, f"model vqvae needs discrete pixels; data {info.name} is continuous")
        require(info.shape[1] % 4 == 0 and info.shape[2] % 4 == 0,
                 f"model vqvae needs image sides divisible by 4, got {tuple(info.shape)}")


@dataclass
class VQVAEPriorConfig(MaskedStackConfig):
    vqvae_ckpt: str = MISSING  # the VQ-VAE's .ckpt or run dir
    kernel_size: int = 3

    def check(self) -> None:
        super().check()
        from dgmrun.schema import resolve_ckpt_path  # here: dgmrun.schema imports this module

        resolve_ckpt_path(self.vqvae_ckpt, key="model.vqvae_ckpt")  # a file or run dir, before torch is imported


SCHEMAS: dict[str, type[ModelConfig]] = {
    "dgmrun.models.iwae.IWAE": IWAEConfig,
    "dgmrun.models.nade.NADE": NADEConfig,
    "dgmrun.models.pixelcnn.PixelCNN": PixelCNNConfig,
    "dgmrun.models.rbm.RBM": RBMConfig,
    "dgmrun.models.vqvae.VQVAE": VQVAEConfig,
    "dgmrun.models.vqvae.VQVAEPrior": VQVAEPriorConfig,
}
