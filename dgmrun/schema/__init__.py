"""Typed configs: the types and sensible ranges of every key, checked before torch is imported.

The YAML files under ``conf/`` hold the values; the dataclasses here hold the types. ``validate``
merges each composed group into its dataclass (OmegaConf converts ``"3"`` to 3 and refuses ``"abc"``
for an int), then the dataclasses' ``check`` methods refuse values that make no sense. Models and
datasets are looked up by their ``_target_``: every class of dgmrun's own has its declaration here (one
without is refused), while a user's own ``_target_`` is passed through unchecked.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Any, Optional, Union, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.schema import diffusion, gan, likelihood_models, vae
from dgmrun.schema.base import ModelConfig, one_of, require
from dgmrun.schema.data import DATA_SCHEMAS

# Every model family's schemas, by the ``_target_`` of its YAML; a new family adds its module here.
MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {}
for _family in (vae, likelihood_models, gan, diffusion):
    MODEL_SCHEMAS.update(_family.SCHEMAS)


# --------------------------------------------------------------------------------- run settings
@dataclass
class SampleConfig:
    num: int = 64  # samples in each PNG grid and in task=sample
    seed: int = 0  # task=sample is reproducible for a given seed
    every_n_epochs: int = 5  # grids during training (0: only at the end)
    batch_size: int = 256
    # class-conditional models (cgan, acgan, conditional pixelcnn and ddpm): these classes, e.g. [3, 7];
    # null: one row of 8 per class
    classes: Optional[list[int]] = None
    # The options of models that take them (their ``sampler_options``; DDPM):
    sampler: str = "ddpm"  # ddpm (T ancestral steps) | ddim (sample.steps steps)
    steps: int = 50  # ddim: number of steps
    eta: float = 0.0  # ddim: noise scale (0: deterministic given x_T; 1 with all T steps: the ddpm sampler)
    guidance: float = 1.0  # conditional ddpm: classifier-free guidance weight (0: unconditional, 1: conditional)

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
    num_importance_samples: int = 100  # IS estimate of test NLL for latent-variable models (5000: paper protocol)
    batch_size: int = 100
    num_samples: int = 2500  # samples drawn for sample-quality metrics (toy2d mode coverage, ...)
    ais_chains: int = 100  # RBM: AIS chains per run for log Z (Salakhutdinov & Murray 2008 use 100)
    # RBM: AIS (and RAISE) intermediate distributions, Salakhutdinov & Murray's 14,500. On a 500-hidden PCD RBM
    # of mnist-small, 1000 put the NLL 7.5 nats low (AIS 118.3, RAISE 140.7; with 14500: 125.8 and 131.2)
    ais_betas: int = 14500
    ais_runs: int = 2  # RBM: independent AIS runs; test/log_z pools their chains, test/nll_std is their spread
    raise_examples: int = 100  # RBM: test examples given a RAISE estimate, test/nll_raise (0: none)
    bound_timesteps: int = 0  # DDPM: 0 sums all T terms of the bound; K > 0 a Monte Carlo estimate from K timesteps
    # Sample quality of images (FID, KID, IS, precision/recall, class coverage/KL); see dgmrun/metrics/samples.py.
    # auto: the data's cached classifier (dgmrun task=train_evaluator), else inception if inception_weights is
    # set, else skipped | classifier | inception | none
    feature_network: str = "auto"
    # weights-inception-2015-12-05-6726825d.pth (needs pip install "dgmrun[inception]")
    inception_weights: Optional[str] = None
    reference_split: str = "train"  # the real images the samples are compared with
    reference_num_samples: int = 0  # 0: the whole reference split
    kid_subset_size: int = 1000
    kid_num_subsets: int = 100
    pr_num_samples: int = 10000  # features per side for precision/recall (k=3)
    every_n_epochs: int = 0  # > 0: val/fid, val/kid, ... during training, every n epochs
    num_samples_during_training: int = 2000
    samples: Optional[str] = None  # task=eval: score a folder of PNG/JPEG images or an .npz instead of a checkpoint

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


# Groups whose settings a checkpoint fixes; the rest (trainer, sample, eval, ...) belong to the new run.
CHECKPOINT_GROUPS = ("model", "data")
IMPUTE_MASKS = ("center", "random", "bottom", "top", "left", "right", "columns", "file")


@dataclass
class ImputeConfig:
    """``task=impute``: which pixels of the test images are missing, and how the model fills them in."""

    # center: a centred size x size square (the lectures' "Rect (k x k)") | random: each pixel with probability p
    # | bottom, top, left, right: that half | columns: a centred vertical band size px wide | file: see file
    mask: str = "center"
    size: int = 12
    p: float = 0.5
    file: Optional[str] = None  # mask=file: a PNG of the images' size whose black pixels are missing
    fill: str = "noise"  # what stands in the missing pixels at the start: uniform noise (the lectures' protocol) | zeros
    # one of the model's imputation_methods (auto: its first): VAE pseudo_gibbs, metropolis_within_gibbs or
    # importance; RBM gibbs; NADE, PixelCNN exact (mask=bottom), gibbs or importance; DDPM repaint
    method: str = "auto"
    iterations: int = 100  # of the conditional sampler (the lectures' protocol: 100; Gibbs: sweeps)
    # DDPM's repaint (Lugmayr et al. 2022): the reverse chain over all T timesteps, or this many evenly spaced
    # ones; every `jump` steps it goes back `jump` steps by the forward chain, `resamplings` - 1 times (1: none)
    steps: Optional[int] = None
    resamplings: int = 10
    jump: int = 10
    num_samples: int = 1  # imputations per image; the error figures use their mean
    num_examples: int = 0  # test images imputed (0: the whole test split)
    batch_size: int = 500
    seed: int = 0

    def check(self) -> None:
        one_of("impute.mask", self.mask, IMPUTE_MASKS)
        one_of("impute.fill", self.fill, ("noise", "zeros"))
        require(self.size >= 1, f"impute.size must be >= 1 pixel, got {self.size}")
        require(0 <= self.p <= 1, f"impute.p must be in [0, 1], got {self.p}")
        require(self.mask != "file" or self.file is not None, "impute.mask=file needs impute.file=<PNG of the mask>")
        for key in ("iterations", "num_examples"):
            require(getattr(self, key) >= 0, f"impute.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("num_samples", "batch_size", "resamplings", "jump"):
            require(getattr(self, key) >= 1, f"impute.{key} must be >= 1, got {getattr(self, key)}")
        require(self.steps is None or self.steps >= 2, f"impute.steps must be >= 2 (or null: all), got {self.steps}")


@dataclass
class TrainerConfig:
    """The Trainer keys dgmrun documents; other Lightning keys pass through to Lightning unchecked."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_epochs: Optional[int] = 50
    max_steps: int = -1
    max_time: Optional[str] = None  # DD:HH:MM:SS
    # Lightning reads an int as a number of batches and a float as a fraction of them: both are kept as given.
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    limit_test_batches: Optional[Union[int, float]] = None
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: Optional[int] = 10
    gradient_clip_val: Optional[float] = None
    deterministic: Any = False
    enable_progress_bar: bool = True
    # dgmrun's own (not Lightning's): torch.compile of the networks, and conv weights in channels-last order
    # (measured in the README's Performance section).
    compile: bool = False
    channels_last: bool = False
    # K optimizer updates per Lightning batch (a batch of K stacked batches, stepped by the model): Lightning's
    # fixed cost per batch (~0.4 ms) paid once per K updates. The same updates, curves and checkpoints as K=1.
    steps_per_execution: int = 1

    def check(self) -> None:
        require(self.max_epochs is None or self.max_epochs >= -1, f"trainer.max_epochs must be >= -1, got {self.max_epochs}")
        require(self.max_steps >= -1, f"trainer.max_steps must be >= -1, got {self.max_steps}")
        require(self.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {self.num_nodes}")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"trainer.{key} must be >= 0, got {value}")
        k = self.steps_per_execution
        require(k >= 1, f"trainer.steps_per_execution must be >= 1, got {k}")
        if k > 1:
            why = f"trainer.steps_per_execution={k}"
            require(self.devices in (1, "1") and self.num_nodes == 1 and "ddp" not in str(self.strategy),
                    f"{why} runs on one device; use steps_per_execution=1 with devices={self.devices}")
            require(not self.log_every_n_steps or self.log_every_n_steps % k == 0,
                    f"{why} must divide trainer.log_every_n_steps={self.log_every_n_steps} (the loggers are "
                    "written once per group of updates at most)")
            limit = self.limit_train_batches
            require(not isinstance(limit, int) or limit % k == 0,
                    f"{why}: trainer.limit_train_batches={limit} (batches, each one update) must be a multiple of {k}")


# --------------------------------------------------------------------------------- declarations
def register_declarations() -> None:
    """Make every declaration the base of its config options: ``conf/model/vae.yaml`` starts from
    ``/schema/model/VAE`` (VAEConfig's defaults), so each default is written once, in its dataclass, and
    ``--cfg job`` still shows every key. Stored as plain nodes: the types are checked by ``validate``,
    which words its errors for the user."""
    store = ConfigStore.instance()
    declared = {"model": MODEL_SCHEMAS, "data": DATA_SCHEMAS}
    for group, schemas in declared.items():
        for target, schema in schemas.items():
            store.store(group=f"schema/{group}", name=target.rsplit(".", 1)[-1], node=_defaults(schema))
    for name, schema in (("sample", SampleConfig), ("eval", EvalConfig), ("impute", ImputeConfig),
                         ("trainer", TrainerConfig)):
        store.store(group="schema/run", name=name, node=_defaults(schema))


def run_stamp() -> str:
    """The run dir's name (conf/hydra/default.yaml): DATE/TIME; inside a SLURM job, ``slurm-JOB[.STEP]-HASH``
    (HASH: of the command line), the same for every task that SLURM starts the command as (``srun dgmrun ...``,
    one per rank, seconds apart) and for the job started again after a preemption or time-out, which then
    resumes from the checkpoints in it (``dgmrun.tasks.common.requeued_checkpoint``); different commands of
    one job script get different dirs."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if job and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):  # not an interactive shell
        command = hashlib.sha256("\0".join(sys.argv[1:]).encode()).hexdigest()[:6]
        return f"slurm-{job}{f'.{step}' if step and step != 'batch' else ''}-{command}"
    return time.strftime("%Y-%m-%d/%H-%M-%S")


def _defaults(schema: type) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(schema))  # type: ignore[return-value]


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
        close = difflib.get_close_matches(full_key, names, n=3) if "." not in full_key else []
        hint = f"; did you mean {' or '.join(f'{prefix}.{c}' for c in close)}?" if close else ""
        return f"unknown key {key}{hint} ({prefix} takes: {', '.join(names)})"
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


def _on_declaration(group: str, settings: Any, schemas: dict[str, type], package: str) -> tuple[DictConfig, Any]:
    """(``settings`` on top of their declaration's defaults, the checked declaration); for a user's own
    ``_target_``, (the settings as given, None)."""
    node = OmegaConf.create(settings if isinstance(settings, dict) else OmegaConf.to_container(settings, resolve=True))
    schema = _declaration(group, node, schemas, package)
    if schema is None:
        return node, None
    node = OmegaConf.merge(_defaults(schema), node)
    return node, _check_node(node, schema, group)


def declared_model(model_cfg: Any, info: DataInfo) -> DictConfig:
    """``model_cfg`` (a ``_target_`` and some settings) on top of its declaration's defaults, checked, with
    ``auto`` resolved for data ``info``: what a model of dgmrun's receives, from the command line, a checkpoint
    or Python (``VAE.build``). A user's own ``_target_`` is returned as given."""
    node, checked = _on_declaration("model", model_cfg, MODEL_SCHEMAS, "dgmrun.models.")
    if checked is not None:
        checked.check_data(info)
        _write_back(node, checked)
    return node


def declared_data(data_cfg: dict[str, Any]) -> DictConfig:
    """``data_cfg`` (a ``_target_`` and some settings) on top of its declaration's defaults, checked, its root
    made absolute: what a datamodule of dgmrun's receives (``Digits.build`` from Python). ``binarize`` must
    be concrete: ``auto`` is the model's choice, known only on the command line."""
    node, checked = _on_declaration("data", data_cfg, DATA_SCHEMAS, "dgmrun.data.")
    if checked is not None:
        require(node.get("binarize") != "auto", "data.binarize=auto is the model's choice: give none, static or dynamic")
        if node.get("root"):
            node.root = resolve_path(str(node.root))
    return node


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
    require(cfg.get("optimized_metric") is None or isinstance(cfg.optimized_metric, str),
            f"optimized_metric must be a metric's name (val/loss, test/nll, ...) or null, got {cfg.optimized_metric!r}")
    # With a checkpoint, the model and data settings are checked once merged with the checkpoint's.
    merging = cfg.ckpt_path is not None and not checkpoint_merged
    model_schema = None if merging else _declaration("model", cfg.model, MODEL_SCHEMAS, "dgmrun.models.")
    data_schema = None if merging else _declaration("data", cfg.data, DATA_SCHEMAS, "dgmrun.data.")
    model = _check_node(cfg.model, model_schema, "model") if model_schema else None
    data = _check_node(cfg.data, data_schema, "data") if data_schema else None
    _check_node(cfg.sample, SampleConfig, "sample")
    _check_node(cfg.eval, EvalConfig, "eval")
    _check_node(cfg.impute, ImputeConfig, "impute")
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
    require(not (cfg.data.get("val_fraction") == 0 and cfg.eval.reference_split == "val"),
            "eval.reference_split=val needs a validation split, but data.val_fraction=0; use train or test")
    if model is not None and model.manual_optimization:
        require(cfg.trainer.get("gradient_clip_val") is None,
                f"trainer.gradient_clip_val: {cfg.model._target_.rsplit('.', 1)[-1]} steps its optimizers itself, and "
                f"Lightning cannot clip gradients for such models; remove trainer.gradient_clip_val")
    if cfg.trainer.get("steps_per_execution", 1) > 1:
        why = f"trainer.steps_per_execution={cfg.trainer.steps_per_execution}"
        require(model is None or not model.manual_optimization,
                f"{why}: {cfg.model._target_.rsplit('.', 1)[-1]} steps its optimizers itself; use steps_per_execution=1")
        require(cfg.trainer.get("accumulate_grad_batches", 1) == 1,
                f"{why} steps on every batch; it cannot be combined with trainer.accumulate_grad_batches")
    # Relative paths mean relative to where dgmrun was started; stored absolute, they stay right in
    # checkpoints used from elsewhere.
    if cfg.data.get("root"):
        cfg.data.root = resolve_path(str(cfg.data.root))
    if cfg.eval.get("samples"):
        cfg.eval.samples = resolve_path(str(cfg.eval.samples))
    if cfg.impute.get("file"):
        cfg.impute.file = resolve_path(str(cfg.impute.file))
    if cfg.task.name == "train":
        every = cfg.task.get("checkpoint_every_s")
        require(isinstance(every, (int, float)) and not isinstance(every, bool) and every >= 0,
                f"task.checkpoint_every_s must be a number of seconds >= 0, got {every!r}")
    if cfg.task.name == "report":
        require(not OmegaConf.is_missing(cfg, "dir"), "task=report needs dir=<a sweep dir, run dir or folder of "
                "either>, or dir=[A,B] for several")
    if cfg.ckpt_path is not None:
        cfg.ckpt_path = str(resolve_ckpt_path(cfg.ckpt_path))
    elif cfg.task.name in ("sample", "impute") or (cfg.task.name == "eval" and not cfg.eval.get("samples")):
        also = " or eval.samples=<folder of PNG/JPEG images or .npz>" if cfg.task.name == "eval" else ""
        raise DgmrunError(f"task={cfg.task.name} needs a checkpoint: ckpt_path=<file.ckpt or run dir>{also}")


register_declarations()
OmegaConf.register_new_resolver("dgmrun.run_stamp", run_stamp, use_cache=True, replace=True)
