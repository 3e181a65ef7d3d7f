"""Typed config of the diffusion model (DDPM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dgmrun.data.info import DataInfo
from dgmrun.schema.base import ModelConfig, OptimizerConfig, one_of, require


def auto_channel_mult(side: int) -> list[int]:
    """Multipliers for an image side: one level per halving that keeps an even side of >= 4 px, at most
    three halvings (8 px -> [1, 2]; 28 px -> [1, 2, 2]; 32 px -> [1, 2, 2, 2], the paper's CIFAR-10 layout)."""
    halvings = 0
    while halvings < 3 and side % 2 == 0 and side // 2 >= 4:
        side //= 2
        halvings += 1
    return [1] + [2] * halvings


@dataclass
class DDPMConfig(ModelConfig):
    binarize_auto = "none"  # the grey levels: the decoder of the bound is discretized over them

    num_timesteps: int = 1000  # T
    schedule: str = "linear"  # linear (1e-4 to 0.02, Ho et al.) | cosine (Nichol & Dhariwal 2021)
    prediction: str = "eps"  # eps (L_simple) | x0 | v (Salimans & Ho 2022)
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each timestep's squared error weighted as
    # min(SNR_t, gamma) ||x0 - x0_hat||^2, which caps the weight of the nearly clean steps; null: L_simple.
    min_snr_gamma: Optional[float] = None
    sigma: str = "posterior"  # reverse-step variance: posterior (beta~_t) | beta (beta_t)
    base_channels: int = 64  # U-Net width at full resolution
    # per resolution; null: from the image side (auto_channel_mult: 8 px [1, 2]; 28 [1, 2, 2]; 32 [1, 2, 2, 2])
    channel_mult: Optional[list[int]] = None
    num_res_blocks: int = 2  # residual blocks per resolution
    attention_resolutions: list[int] = field(default_factory=lambda: [16])  # self-attention at these sides (px)
    dropout: float = 0.1
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])  # points (toy2d): the MLP denoiser
    conditional: bool = False  # class-conditional, with classifier-free guidance (sample.guidance)
    p_uncond: float = 0.1  # conditional: share of training labels dropped to "no class"
    ema_decay: Optional[float] = 0.9999  # EMA of the weights for sampling and evaluation (null: none)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-4))

    def check(self) -> None:
        super().check()
        require(self.num_timesteps >= 2, f"model.num_timesteps must be >= 2, got {self.num_timesteps}")
        one_of("model.schedule", self.schedule, ("linear", "cosine"))
        one_of("model.prediction", self.prediction, ("eps", "x0", "v"))
        one_of("model.sigma", self.sigma, ("posterior", "beta"))
        require(self.min_snr_gamma is None or self.min_snr_gamma > 0,
                f"model.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}")
        require(self.base_channels > 0, f"model.base_channels must be > 0, got {self.base_channels}")
        require(self.channel_mult is None or (len(self.channel_mult) > 0 and all(m > 0 for m in self.channel_mult)),
                f"model.channel_mult must be positive multipliers or null (auto), got {self.channel_mult}")
        require(self.num_res_blocks >= 1, f"model.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        require(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        require(len(self.hidden_dims) > 0 and all(h > 0 for h in self.hidden_dims),
                f"model.hidden_dims must be positive widths, got {list(self.hidden_dims)}")
        require(0 <= self.p_uncond < 1, f"model.p_uncond must be in [0, 1), got {self.p_uncond}")
        require(self.ema_decay is None or 0 <= self.ema_decay < 1,
                f"model.ema_decay must be in [0, 1) or null, got {self.ema_decay}")

    def check_data(self, info: DataInfo) -> None:
        if self.conditional:
            require(info.num_classes > 0, f"model.conditional=true needs labelled data; {info.name} has no classes")
        if info.is_image and self.channel_mult is None:
            self.channel_mult = auto_channel_mult(info.shape[-1])
        if info.is_image:
            side, halvings = info.shape[-1], len(self.channel_mult) - 1
            require(side % (2 ** halvings) == 0,
                    f"model.channel_mult={list(self.channel_mult)} halves the image {halvings} times, but its side "
                    f"{side} px is not divisible by {2 ** halvings}; use fewer multipliers or channel_mult=null")


SCHEMAS: dict[str, type[ModelConfig]] = {"dgmrun.models.ddpm.DDPM": DDPMConfig}
