"""Typed configs: the types and sensible ranges of every key, checked before torch is imported.

The YAML files under ``conf/`` hold the values; the dataclasses here hold the types. ``validate``
merges each composed group into its dataclass (OmegaConf converts ``"3"`` to 3 and refuses ``"abc"``
for an int), then the dataclasses' ``check`` methods refuse values that make no sense. Models and
datasets are looked up by their ``_target_``: every class of dgmrun's own has its declaration here (one
without is refused), while a user's own ``_target_`` is passed through unchecked.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Any, Optional, Union, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.schema import diffusion, gan, likelihood_models, vae
from dgmrun.schema.base import ModelConfig, require
from dgmrun.schema.data import DATA_SCHEMAS

# Every model family's schemas, by the ``_target_`` of its YAML; a new family adds its module here.
MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {}
for _family in (vae, likelihood_models, gan, diffusion):
    MODEL_SCHEMAS.update(_family.SCHEMAS)


# --------------------------------------------------------------------------------- run settings
@dataclass
class SampleConfig:
    num: int = 64
    seed: int = 0
    every_n_epochs: int = 5
    batch_size: int = 256
    classes: Optional[list[int]] = None
    # Options of models that take them (``sampler_options``; DDPM):
    sampler: str = "ddpm"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 1.0

    def check(self) -> None:
        require(self.num > 0, f"sample.num must be > 0, got {self.num}")
        require(self.sampler in ("ddpm", "ddim"), f"sample.sampler must be one of ddpm, ddim, got {self.sampler!r}")
        require(self.steps >= 1, f"sample.steps must be >= 1, got {self.steps}")
        require(0 <= self.eta <= 1, f"sample.eta must be in [0, 1], got {self.eta}")
        require(self.guidance >= 0, f"sample.guidance must be >= 0, got {self.guidance}")
        require(self.classes is None or (len(self.classes) > 0 and all(c >= 0 for c in self.classes)),
                 f"sample.classes must be a non-empty list of class indices or null, got {self.classes}")
        require(self.every_n_epochs >= 0, f"sample.every_n_epochs must be >= 0, got {self.every_n_epochs}")
        require(self.batch_size > 0, f"sample.batch_size must be > 0, got {self.batch_size}")


@dataclass
class EvalConfig:
    num_importance_samples: int = 100
    batch_size: int = 100
    num_samples: int = 2500
    ais_chains: int = 100
    ais_betas: int = 14500
    ais_runs: int = 2
    raise_examples: int = 100
    bound_timesteps: int = 0
    # sample-quality metrics (dgmrun.metrics.samples)
    feature_network: str = "auto"
    inception_weights: Optional[str] = None
    reference_split: str = "train"
    reference_num_samples: int = 0
    kid_subset_size: int = 1000
    kid_num_subsets: int = 100
    pr_num_samples: int = 10000
    every_n_epochs: int = 0
    num_samples_during_training: int = 2000
    samples: Optional[str] = None

    def check(self) -> None:
        require(self.feature_network in ("auto", "classifier", "inception", "none"),
                f"eval.feature_network must be one of auto, classifier, inception, none, got {self.feature_network!r}")
        require(self.reference_split in ("train", "val", "test"),
                f"eval.reference_split must be one of train, val, test, got {self.reference_split!r}")
        for key in ("kid_subset_size", "kid_num_subsets", "pr_num_samples", "num_samples_during_training"):
            require(getattr(self, key) > 0, f"eval.{key} must be > 0, got {getattr(self, key)}")
        for key in ("reference_num_samples", "every_n_epochs"):
            require(getattr(self, key) >= 0, f"eval.{key} must be >= 0, got {getattr(self, key)}")
        require(self.ais_chains > 0, f"eval.ais_chains must be > 0, got {self.ais_chains}")
        require(self.ais_betas > 0, f"eval.ais_betas must be > 0, got {self.ais_betas}")
        require(self.ais_runs > 0, f"eval.ais_runs must be > 0, got {self.ais_runs}")
        require(self.raise_examples >= 0, f"eval.raise_examples must be >= 0, got {self.raise_examples}")
        require(self.bound_timesteps >= 0, f"eval.bound_timesteps must be >= 0, got {self.bound_timesteps}")
        require(self.num_importance_samples > 0,
                 f"eval.num_importance_samples must be > 0, got {self.num_importance_samples}")
        require(self.batch_size > 0, f"eval.batch_size must be > 0, got {self.batch_size}")
        require(self.num_samples > 0, f"eval.num_samples must be > 0, got {self.num_samples}")


@dataclass
class TrainerConfig:
    """The Trainer keys dgmrun documents; other Lightning keys pass through to Lightning unchecked."""

    max_epochs: Optional[int] = None
    max_steps: int = -1
    max_time: Optional[str] = None
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "32-true"
    # Lightning reads an int as a number of batches and a float as a fraction of them: both are kept as given.
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    limit_test_batches: Optional[Union[int, float]] = None
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: Optional[int] = None
    gradient_clip_val: Optional[float] = None

    def check(self) -> None:
        require(self.max_epochs is None or self.max_epochs >= -1, f"trainer.max_epochs must be >= -1, got {self.max_epochs}")
        require(self.max_steps >= -1, f"trainer.max_steps must be >= -1, got {self.max_steps}")
        require(self.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {self.num_nodes}")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"trainer.{key} must be >= 0, got {value}")


# ----------------------------------------------------------------------------------- validation
def _check_node(config_node: Any, schema: type, prefix: str, allow_extra: bool = False) -> Any:
    """Merge a config node into its dataclass; re-word OmegaConf's errors with the full key; write the
    checked values back, so that the run sees ``3`` where the command line said ``'3'``."""
    if not isinstance(config_node, DictConfig):
        raise DgmrunError(f"{prefix} must be a mapping of keys, got {config_node!r}")
    # Resolve interpolations (``seed: ${seed}``) against the whole config before checking the part alone.
    node = OmegaConf.create(OmegaConf.to_container(config_node, resolve=True))
    if allow_extra:
        names = {f.name for f in fields(schema)}
        node = OmegaConf.masked_copy(node, [k for k in node.keys() if k in names])
    try:
        checked = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        raise DgmrunError(_describe(e, node, schema, prefix)) from None
    checked.check()
    _write_back(config_node, checked)
    return checked


def _write_back(config_node: DictConfig, checked: Any) -> None:
    """The checked (converted, resolved) values of the keys ``config_node`` has."""
    values = OmegaConf.to_container(OmegaConf.structured(checked))
    for key in list(config_node.keys()):
        if key in values:
            config_node[key] = values[key]


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


def resolve_ckpt_path(path: str | os.PathLike, key: str = "ckpt_path") -> Path:
    """A checkpoint file, or a run dir meaning its ``checkpoints/last.ckpt``; ``key`` (the config key
    that gave the path) names it in the errors."""
    p = Path(resolve_path(str(path)))
    if p.is_dir():
        last = p / "checkpoints" / "last.ckpt"
        require(last.is_file(), f"{key}={path} is a directory without checkpoints/last.ckpt; "
                "give the run dir of a `dgmrun task=train` run, or a .ckpt file")
        return last
    require(p.is_file(), f"{key}={path}: no such file or run dir ({p})")
    return p


def resolve_path(path: str) -> str:
    """Relative paths on the command line mean: relative to the directory dgmrun was started in."""
    return os.path.abspath(os.path.expanduser(path))


def _declaration(group: str, node: Any, schemas: dict[str, type], package: str) -> Optional[type]:
    """The schema of ``node``'s ``_target_``; None for a user's own class (outside ``package``), which passes
    unchecked; an error for one of dgmrun's own without a declaration."""
    target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
    if target in schemas or not str(target).startswith(package):
        return schemas.get(target)
    raise DgmrunError(f"{group}._target_={target} has no declaration in dgmrun.schema; dgmrun's {group} classes: "
                      f"{', '.join(sorted(t.rsplit('.', 1)[-1] for t in schemas))}")


def validate(cfg: DictConfig, checkpoint_merged: bool = False, trained_on: Optional[DataInfo] = None) -> None:
    """Check types and values of every group, and that the model can take the data.

    With a ``ckpt_path`` the model is the checkpoint's, known only once the checkpoint is read: the
    model-data checks (and ``data.binarize=auto``) wait for the second call, on the merged config
    (``checkpoint_merged=True``), where ``trained_on`` (the checkpoint's data) must have the data's shape.
    """
    # Top-level keys first: group keys interpolate them (data.seed: ${seed}), and a bad value is the
    # user's seed=..., not data.seed.
    require(isinstance(cfg.seed, int), f"seed={cfg.seed!r} has the wrong type: expected int")
    require(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32) (numpy's range), got {cfg.seed}")
    model_schema = _declaration("model", cfg.model, MODEL_SCHEMAS, "dgmrun.models.")
    data_schema = _declaration("data", cfg.data, DATA_SCHEMAS, "dgmrun.data.")
    model = _check_node(cfg.model, model_schema, "model") if model_schema else None
    data = _check_node(cfg.data, data_schema, "data") if data_schema else None
    _check_node(cfg.sample, SampleConfig, "sample")
    _check_node(cfg.eval, EvalConfig, "eval")
    _check_node(cfg.trainer, TrainerConfig, "trainer", allow_extra=True)
    scoring_files = cfg.task.name == "eval" and cfg.ckpt_path is None  # eval.samples: no model is involved
    model_known = (cfg.ckpt_path is None or checkpoint_merged) and not scoring_files
    if (model_known or scoring_files) and cfg.data.get("binarize") == "auto":  # the loaders never see auto
        require(model_schema is not None or not model_known,
                f"data.binarize=auto: model {cfg.model.get('_target_')} declares no choice of its own; set "
                "data.binarize=none, static or dynamic")
        cfg.data.binarize = model_schema.binarize_auto if model_known and model_schema else "none"
        if data is not None:
            data.binarize = cfg.data.binarize
    if model is not None and data is not None and model_known:
        model.check_data(data.info())
        model.check_batch_size(data.batch_size)
        _write_back(cfg.model, model)  # "auto" resolved for this data: what the checkpoint records
    if trained_on is not None and data is not None:
        shape = tuple(data.info().shape)
        require(shape == tuple(trained_on.shape),
                f"ckpt_path={cfg.ckpt_path} was trained on {trained_on.name} of shape {tuple(trained_on.shape)}, but "
                f"data={cfg.data.name} gives {shape}; use data of the checkpoint's shape")
    if model is not None and model.manual_optimization:
        require(cfg.trainer.get("gradient_clip_val") is None,
                f"trainer.gradient_clip_val: {cfg.model._target_.rsplit('.', 1)[-1]} steps its optimizers itself, and "
                f"Lightning cannot clip gradients for such models; remove trainer.gradient_clip_val")
    # Relative paths mean relative to where dgmrun was started; stored absolute, they stay right in
    # checkpoints used from elsewhere.
    if cfg.data.get("root"):
        cfg.data.root = resolve_path(str(cfg.data.root))
    if cfg.eval.get("samples"):
        cfg.eval.samples = resolve_path(str(cfg.eval.samples))
    if cfg.ckpt_path is not None:
        cfg.ckpt_path = str(resolve_ckpt_path(cfg.ckpt_path))
    elif cfg.task.name == "sample" or (cfg.task.name == "eval" and not cfg.eval.get("samples")):
        also = " or eval.samples=<folder of PNG/JPEG images or .npz>" if cfg.task.name == "eval" else ""
        raise DgmrunError(f"task={cfg.task.name} needs a checkpoint: ckpt_path=<file.ckpt or run dir>{also}")
