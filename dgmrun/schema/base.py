"""Shared pieces of the typed configs: range checks, the optimizer, and keys every model has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError


def require(ok: bool, message: str) -> None:
    if not ok:
        raise DgmrunError(message)


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{key}={value!r} is not one of: {', '.join(choices)}")


OPTIMIZERS = ("adam", "rmsprop", "sgd")


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | rmsprop | sgd (plain, no momentum); betas: Adam only
    lr: float = MISSING
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0

    def check(self, key: str = "model.optimizer") -> None:
        one_of(f"{key}.name", self.name, OPTIMIZERS)
        require(self.lr > 0, f"{key}.lr must be > 0, got {self.lr}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"{key}.betas must be two numbers in [0, 1), got {list(self.betas)}")
        require(self.weight_decay >= 0, f"{key}.weight_decay must be >= 0, got {self.weight_decay}")


SCHEDULERS = ("cosine", "step", "warmup")


def check_scheduler(scheduler: Optional[dict[str, Any]]) -> None:
    if scheduler is None:
        return
    require("name" in scheduler, f"model.scheduler needs a name ({', '.join(SCHEDULERS)}), got {scheduler}")
    one_of("model.scheduler.name", scheduler["name"], SCHEDULERS)
    if scheduler["name"] == "warmup":
        steps = scheduler.get("warmup_steps", 5000)
        require(isinstance(steps, int) and steps >= 1, f"model.scheduler.warmup_steps must be an integer >= 1, got {steps!r}")


@dataclass
class ModelConfig:
    """Keys every model has."""

    # Class attributes, not keys:
    manual_optimization = False  # True where the model steps its optimizers itself
    binarize_auto = "dynamic"    # what data.binarize=auto means for this model (GANs: "none", the grey levels)

    _target_: str = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[dict[str, Any]] = None

    def check(self) -> None:
        self.optimizer.check()
        check_scheduler(self.scheduler)

    def check_data(self, info: DataInfo) -> None:
        """Refuse data this model cannot take (raises DgmrunError)."""


def resolve_conv_arch(arch: str, conv_name: str, info: DataInfo) -> str:
    """``auto``: the convolutional network ``conv_name`` for images with sides >= 16 px, else ``mlp``;
    refuse the convolutional one for points, or for sides it cannot halve twice."""
    if arch == "auto":
        arch = conv_name if info.is_image and min(info.shape[1:]) >= 16 else "mlp"
    if arch == conv_name:
        require(info.is_image, f"model.arch={conv_name} needs images, but data {info.name} gives points of shape "
                f"{tuple(info.shape)}; use model.arch=mlp")
        require(info.shape[1] % 4 == 0 and info.shape[2] % 4 == 0,
                f"model.arch={conv_name} needs image sides divisible by 4, got {tuple(info.shape)}")
    return arch
