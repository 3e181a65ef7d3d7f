"""Shared pieces of the typed configs: range checks, the optimizer, and keys every model has."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import MISSING

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError


def require(ok: bool, message: str) -> None:
    if not ok:
        raise DgmrunError(message)


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{key}={value!r} is not one of: {', '.join(choices)}")


def require_finite(config: Any, prefix: str) -> None:
    """Every float of a config dataclass (nested ones and lists too) is a number: nan and inf pass
    ``x > 0``-style range checks, then turn the first loss into nan; list elements are numbers."""
    for f in fields(config):
        value, key = getattr(config, f.name), f"{prefix}.{f.name}"
        if is_dataclass(value):
            require_finite(value, key)
        for v in _flatten(value) if isinstance(value, list) else [value]:
            # (OmegaConf lets a mapping through as an element of list[int] or list[float])
            require(not (isinstance(value, list) and isinstance(v, dict)), f"{key} must be a list of numbers, got {value}")
            require(not isinstance(v, float) or math.isfinite(v), f"{key} must be a finite number, got {value}")


def _flatten(values: list[Any]) -> list[Any]:
    """The elements of a list, and of the lists in it (``model.upper_layers`` is a list of lists of widths)."""
    return [v for value in values for v in (_flatten(value) if isinstance(value, list) else [value])]


# Widths, channels, dimensions: larger ones cannot be allocated (a layer of 2**20 x 2**20 weights is 4 TiB).
MAX_SIZE = 2**20


def require_sizes(key: str, sizes: int | list[int], count: Optional[int] = None) -> None:
    """Positive sizes (a width or a list of widths) of at most MAX_SIZE; ``count`` entries when given."""
    if isinstance(sizes, list):
        require(len(sizes) > 0 and all(v > 0 for v in sizes), f"{key} must be positive widths, got {sizes}")
        if count is not None:
            require(len(sizes) == count, f"{key} must have {count} entries, got {sizes}")
    else:
        require(sizes > 0, f"{key} must be > 0, got {sizes}")
    require(max(sizes if isinstance(sizes, list) else [sizes]) <= MAX_SIZE, f"{key} must be at most {MAX_SIZE}, got {sizes}")



OPTIMIZERS = ("adam", "rmsprop", "sgd")


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | rmsprop | sgd (plain, no momentum); betas and eps: Adam only
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8  # added to Adam's denominator (Burda et al. 2015 use 1e-4)
    weight_decay: float = 0.0

    def check(self, key: str = "model.optimizer") -> None:
        one_of(f"{key}.name", self.name, OPTIMIZERS)
        require(self.lr > 0, f"{key}.lr must be > 0, got {self.lr}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"{key}.betas must be two numbers in [0, 1), got {list(self.betas)}")
        require(self.eps > 0, f"{key}.eps must be > 0, got {self.eps}")
        require(self.weight_decay >= 0, f"{key}.weight_decay must be >= 0, got {self.weight_decay}")


SCHEDULERS = ("cosine", "step", "warmup", "burda")
# step: StepLR; warmup: linear warm-up over warmup_steps, then constant; burda: stage i of 3**i epochs at
# lr * 10**(-i/7), i = 0..stages-1 (Burda et al. 2015; see GenerativeModel.make_scheduler)
SCHEDULER_KEYS = {"cosine": ("name",), "step": ("name", "step_size", "gamma"), "warmup": ("name", "warmup_steps"),
                  "burda": ("name", "stages")}
SCHEDULER_DEFAULTS = {"step_size": 10, "gamma": 0.5, "warmup_steps": 5000, "stages": 8}


def check_scheduler(scheduler: Optional[dict[str, Any]]) -> None:
    if scheduler is None:
        return
    require("name" in scheduler, f"model.scheduler needs a name ({', '.join(SCHEDULERS)}), got {scheduler}")
    one_of("model.scheduler.name", scheduler["name"], SCHEDULERS)
    takes = SCHEDULER_KEYS[scheduler["name"]]
    for key in scheduler:
        require(key in takes, f"unknown key model.scheduler.{key}; the {scheduler['name']} scheduler takes: {', '.join(takes)}")
    step_size, gamma = (scheduler.get(key, SCHEDULER_DEFAULTS[key]) for key in ("step_size", "gamma"))
    require(type(step_size) is int and step_size >= 1, f"model.scheduler.step_size must be an integer >= 1, got {step_size!r}")
    require(type(gamma) in (int, float) and math.isfinite(gamma) and gamma > 0,
            f"model.scheduler.gamma must be a number > 0, got {gamma!r}")
    steps = scheduler.get("warmup_steps", SCHEDULER_DEFAULTS["warmup_steps"])
    require(type(steps) is int and steps >= 1, f"model.scheduler.warmup_steps must be an integer >= 1, got {steps!r}")
    stages = scheduler.get("stages", SCHEDULER_DEFAULTS["stages"])
    require(type(stages) is int and 1 <= stages <= 20, f"model.scheduler.stages must be an integer in [1, 20], got {stages!r}")


@dataclass
class ModelConfig:
    """Keys every model has."""

    # Class attributes, not keys:
    manual_optimization = False  # True where the model steps its optimizers itself
    binarize_auto = "dynamic"    # what data.binarize=auto means for this model (GANs: "none", the grey levels)

    _target_: str = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # null | {name: cosine} | {name: step, step_size: 10, gamma: 0.5} | {name: warmup, warmup_steps: 5000}
    # | {name: burda, stages: 8}
    scheduler: Optional[dict[str, Any]] = None

    def check(self) -> None:
        require_finite(self, "model")
        self.optimizer.check()
        check_scheduler(self.scheduler)

    def check_data(self, info: DataInfo) -> None:
        """Refuse data this model cannot take (raises DgmrunError), and resolve the keys that say ``auto``."""

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse training batches this model cannot learn from (raises DgmrunError)."""


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
