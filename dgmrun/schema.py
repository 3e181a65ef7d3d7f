"""Typed configs: the types and sensible ranges of every key, checked before torch is imported.

The YAML files under ``conf/`` hold the values; the dataclasses here hold the types. ``validate``
merges each composed group into its dataclass (OmegaConf converts ``"3"`` to 3 and refuses ``"abc"``
for an int), then the dataclasses' ``__post_init__`` refuse values that make no sense. Models and
datasets are looked up by their ``_target_``; a user's own ``_target_`` is passed through unchecked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DgmrunError(message)


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{key}={value!r} is not one of: {', '.join(choices)}")


# ---------------------------------------------------------------------------------------- models
@dataclass
class OptimizerConfig:
    lr: float = MISSING
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0

    def check(self) -> None:
        _require(self.lr > 0, f"optimizer.lr must be > 0, got {self.lr}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        _require(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")


SCHEDULERS = ("cosine", "step")


def check_scheduler(scheduler: Optional[dict[str, Any]]) -> None:
    if scheduler is None:
        return
    _require("name" in scheduler, f"model.scheduler needs a name ({', '.join(SCHEDULERS)}), got {scheduler}")
    _one_of("model.scheduler.name", scheduler["name"], SCHEDULERS)


@dataclass
class ModelConfig:
    """Keys every model has."""

    _target_: str = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[dict[str, Any]] = None

    def check(self) -> None:
        self.optimizer.check()
        check_scheduler(self.scheduler)

    def check_data(self, info: DataInfo) -> None:
        """Refuse data this model cannot take (raises DgmrunError)."""


VAE_ARCHS = ("auto", "mlp", "conv")
VAE_LIKELIHOODS = ("auto", "bernoulli", "discretized_logistic", "gaussian")


def resolve_vae_choices(arch: str, likelihood: str, info: DataInfo) -> tuple[str, str]:
    """Turn ``auto`` into a concrete network and likelihood for this data; refuse impossible pairs.

    Shared by the config check (before torch is imported) and the VAE itself (``dgmrun.load``).
    """
    if arch == "auto":
        arch = "conv" if info.is_image and min(info.shape[1:]) >= 16 else "mlp"
    if arch == "conv":
        _require(info.is_image, f"model.arch=conv needs images, but data {info.name} gives points of shape "
                 f"{tuple(info.shape)}; use model.arch=mlp")
        _require(info.shape[1] % 4 == 0 and info.shape[2] % 4 == 0,
                 f"model.arch=conv needs image sides divisible by 4, got {tuple(info.shape)}")
    if likelihood == "auto":
        likelihood = "bernoulli" if info.is_binary else "gaussian" if info.levels is None else "discretized_logistic"
    if likelihood == "bernoulli":
        _require(info.is_binary, f"model.likelihood=bernoulli needs binary data; data {info.name} has "
                 f"{info.levels or 'continuous'} levels (set data.binarize=dynamic or static)")
    if likelihood == "discretized_logistic":
        _require(info.levels is not None and info.levels > 1,
                 f"model.likelihood=discretized_logistic needs discrete data; data {info.name} is continuous")
    return arch, likelihood


@dataclass
class VAEConfig(ModelConfig):
    latent_dim: int = MISSING
    arch: str = "auto"
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    channels: list[int] = field(default_factory=lambda: [32, 64])
    likelihood: str = "auto"
    learn_variance: bool = True
    beta: float = 1.0
    kl_warmup_steps: int = 0

    def check(self) -> None:
        super().check()
        _require(self.latent_dim > 0, f"model.latent_dim must be > 0, got {self.latent_dim}")
        _one_of("model.arch", self.arch, VAE_ARCHS)
        _one_of("model.likelihood", self.likelihood, VAE_LIKELIHOODS)
        _require(len(self.hidden_dims) > 0 and all(h > 0 for h in self.hidden_dims),
                 f"model.hidden_dims must be positive widths, got {list(self.hidden_dims)}")
        _require(len(self.channels) == 2 and all(c > 0 for c in self.channels),
                 f"model.channels must be two positive channel counts, got {list(self.channels)}")
        _require(self.beta >= 0, f"model.beta must be >= 0, got {self.beta}")
        _require(self.kl_warmup_steps >= 0, f"model.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")

    def check_data(self, info: DataInfo) -> None:
        resolve_vae_choices(self.arch, self.likelihood, info)


MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "dgmrun.models.vae.VAE": VAEConfig,
}


# ------------------------------------------------------------------------------------------ data
BINARIZE = ("none", "static", "dynamic")


@dataclass
class DataConfig:
    _target_: str = MISSING
    name: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = 500
    seed: int = 0
    val_fraction: float = 0.1

    def check(self) -> None:
        _require(self.batch_size > 0, f"data.batch_size must be > 0, got {self.batch_size}")
        _require(self.eval_batch_size > 0, f"data.eval_batch_size must be > 0, got {self.eval_batch_size}")
        _require(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")

    def info(self) -> DataInfo:
        """What the data will look like, known from the config alone (no files read)."""
        raise NotImplementedError


@dataclass
class ImageDataConfig(DataConfig):
    root: str = MISSING
    binarize: str = "none"

    def check(self) -> None:
        super().check()
        _one_of("data.binarize", self.binarize, BINARIZE)

    # (shape, num_classes, levels) of the raw images, per dataset name
    KNOWN = {
        "mnist": ((1, 28, 28), 10, 256), "fashion_mnist": ((1, 28, 28), 10, 256), "kmnist": ((1, 28, 28), 10, 256),
        "cifar10": ((3, 32, 32), 10, 256), "digits": ((1, 8, 8), 10, 17),
    }

    def info(self) -> DataInfo:
        shape, num_classes, levels = self.KNOWN[self.name]
        return DataInfo(self.name, shape, num_classes, 2 if self.binarize != "none" else levels)


@dataclass
class DigitsConfig(ImageDataConfig):
    root: str = ""
    test_fraction: float = 0.2

    def check(self) -> None:
        super().check()
        _require(0 < self.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class ImageFolderConfig(DigitsConfig):
    root: str = MISSING
    image_size: int = 64
    channels: int = 3
    num_workers: int = 2
    test_fraction: float = 0.1

    def check(self) -> None:
        super().check()
        _require(self.image_size > 0, f"data.image_size must be > 0, got {self.image_size}")
        _require(self.channels in (1, 3), f"data.channels must be 1 or 3, got {self.channels}")
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")

    def info(self) -> DataInfo:
        shape = (self.channels, self.image_size, self.image_size)
        return DataInfo(self.name, shape, 0, 2 if self.binarize != "none" else 256)


TOY2D_SHAPES = ("8gaussians", "25gaussians", "swissroll", "moons", "rings")


@dataclass
class Toy2DConfig(DataConfig):
    shape: str = "8gaussians"
    num_train: int = 100_000
    num_val: int = 2500
    num_test: int = 2500
    noise: Optional[float] = None

    def check(self) -> None:
        super().check()
        _one_of("data.shape", self.shape, TOY2D_SHAPES)
        for key in ("num_train", "num_val", "num_test"):
            _require(getattr(self, key) > 0, f"data.{key} must be > 0, got {getattr(self, key)}")
        _require(self.noise is None or self.noise >= 0, f"data.noise must be >= 0, got {self.noise}")

    def info(self) -> DataInfo:
        components = {"8gaussians": 8, "25gaussians": 25}.get(self.shape, 0)
        return DataInfo("toy2d", (2,), components, None)


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "dgmrun.data.datamodule.Digits": DigitsConfig,
    "dgmrun.data.datamodule.MNISTLike": ImageDataConfig,
    "dgmrun.data.datamodule.CIFAR10": ImageDataConfig,
    "dgmrun.data.datamodule.ImageFolder": ImageFolderConfig,
    "dgmrun.data.datamodule.Toy2D": Toy2DConfig,
}


# --------------------------------------------------------------------------------- run settings
@dataclass
class SampleConfig:
    num: int = 64
    seed: int = 0
    every_n_epochs: int = 5
    batch_size: int = 256

    def check(self) -> None:
        _require(self.num > 0, f"sample.num must be > 0, got {self.num}")
        _require(self.every_n_epochs >= 0, f"sample.every_n_epochs must be >= 0, got {self.every_n_epochs}")
        _require(self.batch_size > 0, f"sample.batch_size must be > 0, got {self.batch_size}")


@dataclass
class EvalConfig:
    num_importance_samples: int = 100
    batch_size: int = 100

    def check(self) -> None:
        _require(self.num_importance_samples > 0,
                 f"eval.num_importance_samples must be > 0, got {self.num_importance_samples}")
        _require(self.batch_size > 0, f"eval.batch_size must be > 0, got {self.batch_size}")


@dataclass
class TrainerConfig:
    """The Trainer keys dgmrun documents; other Lightning keys pass through to Lightning unchecked."""

    max_epochs: Optional[int] = None
    max_steps: int = -1
    max_time: Optional[str] = None
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "32-true"
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: Optional[int] = None
    gradient_clip_val: Optional[float] = None

    def check(self) -> None:
        _require(self.max_epochs is None or self.max_epochs >= -1, f"trainer.max_epochs must be >= -1, got {self.max_epochs}")
        _require(self.max_steps >= -1, f"trainer.max_steps must be >= -1, got {self.max_steps}")
        _require(self.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {self.num_nodes}")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            _require(value is None or value >= 0, f"trainer.{key} must be >= 0, got {value}")


# ----------------------------------------------------------------------------------- validation
def _check_node(node: Any, schema: type, prefix: str, allow_extra: bool = False) -> Any:
    """Merge a config node into its dataclass; re-word OmegaConf's errors with the full key."""
    if not isinstance(node, DictConfig):
        raise DgmrunError(f"{prefix} must be a mapping of keys, got {node!r}")
    # Resolve interpolations (``seed: ${seed}``) against the whole config before checking the part alone.
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    if allow_extra:
        names = {f.name for f in fields(schema)}
        node = OmegaConf.masked_copy(node, [k for k in node.keys() if k in names])
    try:
        checked = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        raise DgmrunError(_describe(e, node, schema, prefix)) from None
    checked.check()
    return checked


def _describe(e: OmegaConfBaseException, node: DictConfig, schema: type, prefix: str) -> str:
    """OmegaConf's error, re-worded with the full key and the expected type."""
    full_key = str(getattr(e, "full_key", "") or "")
    key = f"{prefix}.{full_key}" if full_key else prefix
    if isinstance(e, ConfigKeyError):
        names = sorted(f.name for f in fields(schema) if f.name != "_target_")
        return f"unknown key {key}; {prefix} takes: {', '.join(names)}"
    if isinstance(e, MissingMandatoryValue):
        return f"{key} must be set"
    got = OmegaConf.select(node, full_key, throw_on_missing=False) if full_key else node
    return f"{key}={got!r} has the wrong type: expected {_expected_type(schema, full_key)}"


def _expected_type(schema: type, dotted: str) -> str:
    """A readable name of the type of the field at ``dotted`` in ``schema``, e.g. ``int``, ``list[float]``."""
    annotation: Any = schema
    for part in dotted.split("."):
        hints = get_type_hints(annotation) if hasattr(annotation, "__dataclass_fields__") else {}
        annotation = hints.get(part.split("[")[0])
    if annotation is None:
        return "another type"
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is Union and len(args) == 1:  # Optional[X]
        return f"{_type_name(args[0])} or null"
    return _type_name(annotation)


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def resolve_path(path: str) -> str:
    """Relative paths on the command line mean: relative to the directory dgmrun was started in."""
    return os.path.abspath(os.path.expanduser(path))


def validate(cfg: DictConfig) -> None:
    """Check types and values of every group, and that the model can take the data."""
    model_schema = MODEL_SCHEMAS.get(cfg.model.get("_target_", ""))
    data_schema = DATA_SCHEMAS.get(cfg.data.get("_target_", ""))
    model = _check_node(cfg.model, model_schema, "model") if model_schema else None
    data = _check_node(cfg.data, data_schema, "data") if data_schema else None
    _check_node(cfg.sample, SampleConfig, "sample")
    _check_node(cfg.eval, EvalConfig, "eval")
    _check_node(cfg.trainer, TrainerConfig, "trainer", allow_extra=True)
    _require(isinstance(cfg.seed, int), f"seed must be an integer, got {cfg.seed!r}")
    if model is not None and data is not None:
        model.check_data(data.info())
    # Relative paths mean relative to where dgmrun was started; stored absolute, they stay right in
    # checkpoints used from elsewhere.
    if cfg.data.get("root"):
        cfg.data.root = resolve_path(str(cfg.data.root))
    if cfg.ckpt_path is not None:
        path = resolve_path(str(cfg.ckpt_path))
        _require(os.path.exists(path), f"ckpt_path={cfg.ckpt_path}: no such file or run dir ({path})")
        cfg.ckpt_path = path
    elif cfg.task.name in ("sample", "eval"):
        raise DgmrunError(f"task={cfg.task.name} needs a checkpoint: ckpt_path=<file.ckpt or run dir>")
