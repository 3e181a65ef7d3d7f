"""``GenerativeModel``: the one interface the tasks talk to.

A model is a LightningModule (it owns its training step) that also answers three questions:

- ``sample(n, generator)``: a batch in data space (images in [0, 1] as N×C×H×W, points as N×D);
- ``log_likelihood(x, labels)``: per-example log p(x) in nats, of the ``likelihood_kind`` it declares
  (``exact``, a lower ``bound``, an ``estimate``; ``none``: the model has no likelihood);
- ``nll_estimator``: how that number is obtained (``exact``, ``elbo``, ``importance-k100``, ...).

and declares what else it can do, for the tasks and metrics to read (never to sniff): whether it is
``class_conditional`` (then ``sample`` takes ``classes=`` and ``log_likelihood`` is log p(x | labels)),
whether it has an unsupervised ``categorical_code`` (then ``sample_by_code`` says which value drew each
sample), and which keys of the run's ``sample`` group its ``sample`` takes (``sampler_options``).
Its settings are declared once, torch-free, in ``dgmrun.schema`` (their defaults, types and ranges, and
whether the model steps its optimizers itself): the constructor takes them all, checked and with
``auto`` resolved, as ``Model.build(data_info, **settings)`` gives them from Python.

Evaluation (``test_step``) is generic: it logs ``test/nll`` and, when ``log_likelihood`` is a
probability mass (``likelihood_is_discrete``), ``test/bpd`` from it, plus whatever
``extra_test_metrics`` a model adds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.schema import MODEL_SCHEMAS, EvalConfig, declared_model
from dgmrun.schema.base import SCHEDULER_DEFAULTS, ModelConfig


def make_optimizer(params: Any, settings: dict[str, Any]) -> torch.optim.Optimizer:
    """``model.optimizer`` (or a GAN player's): Adam, RMSprop (WGAN's recipe) or plain SGD (RBM's). Adam is
    torch's fused implementation (one kernel for all parameters; 5x faster than its default per-tensor
    loop on a CPU, a fifth of a small MLP's step), the same update up to float rounding."""
    name, lr, weight_decay = settings["name"], settings["lr"], settings["weight_decay"]
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=tuple(settings["betas"]), eps=settings["eps"],
                            weight_decay=weight_decay, fused=True)


def burda_stage_end(stage: int) -> int:
    """Epochs at the end of stage ``stage`` (0-based) of Burda et al. 2015's schedule, whose stage i is 3**i
    epochs long: 1, 4, 13, 40, 121, 364, 1093, 3280."""
    return (3 ** (stage + 1) - 1) // 2


def burda_stage(epoch: int) -> int:
    """The stage of Burda et al.'s schedule that (0-based) ``epoch`` is in."""
    stage = 0
    while epoch >= burda_stage_end(stage):
        stage += 1
    return stage


def build_model(model_cfg: Mapping[str, Any], info: DataInfo) -> "GenerativeModel":
    """Instantiate ``model_cfg`` (a ``_target_`` and its settings; the others take their declared defaults)
    for data described by ``info``."""
    try:
        model = instantiate(declared_model(model_cfg, info), data_info=info.to_dict(), _convert_="all")
    except InstantiationException as e:  # a model refusing its arguments: the user's one-line message
        if isinstance(e.__cause__, DgmrunError):
            raise e.__cause__ from None
        raise
    if not isinstance(model, GenerativeModel):
        raise DgmrunError(f"model._target_={model_cfg['_target_']} is not a dgmrun GenerativeModel")
    return model


def sample_labels(n: int, num_classes: int, classes: Sequence[int] | None, is_image: bool,
                  generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The labels of n class-conditional samples: the given classes in turn; without them, for images one
    row of 8 per class (class 0 in the first row, ...), for points random classes."""
    if classes is not None:
        classes = list(classes)
        bad = [c for c in classes if not 0 <= c < num_classes]
        if not classes or bad:
            raise DgmrunError(f"sample.classes must be class indices in [0, {num_classes}), got {classes}")
        return torch.tensor(classes, device=device)[torch.arange(n, device=device) % len(classes)]
    if is_image:
        return (torch.arange(n, device=device) // 8) % num_classes
    return torch.randint(num_classes, (n,), generator=generator, device=device)


def missing_last(missing: Tensor) -> bool:
    """Whether every missing pixel comes after every observed one in raster order (a ``bottom`` mask)."""
    flat = missing.flatten(1).int()
    return not (flat[:, 1:] < flat[:, :-1]).any()


def require_missing_last(missing: Tensor) -> None:
    """Exact autoregressive imputation draws the missing pixels in the model's (raster) order given those
    before them: the exact conditional only when every missing pixel comes after every observed one."""
    if not missing_last(missing):
        raise DgmrunError("impute.method=exact needs every missing pixel after every observed one in raster order "
                          "(impute.mask=bottom); for other masks use impute.method=gibbs or importance")


# ``progress(done, total)``: told after each of the ``total`` iterations of an imputation (task=impute's bar).
Progress = Callable[[int, int], None]


def iterations(total: int, progress: Progress) -> Iterator[int]:
    """range(total), telling ``progress`` of each iteration done."""
    for i in range(total):
        yield i
        progress(i + 1, total)


def binary_gibbs(log_prob: Callable[[Tensor], Tensor], x: Tensor, missing: Tensor, sweeps: int,
                 generator: torch.Generator | None, progress: Progress) -> Tensor:
    """Gibbs sampling of binary missing pixels: each in turn redrawn from its full conditional
    p(x_d | x_-d) = sigmoid(log p(x with x_d = 1) - log p(x with x_d = 0)), computed exactly; ``sweeps``
    passes over the missing pixels."""
    current = x.clone()
    flat, free = current.view(len(x), -1), missing.reshape(len(x), -1)
    for _ in iterations(sweeps, progress):
        for d in free.any(0).nonzero().flatten().tolist():
            flat[:, d] = 1.0
            log_p1 = log_prob(current)
            flat[:, d] = 0.0
            draw = torch.bernoulli(torch.sigmoid(log_p1 - log_prob(current)), generator=generator)
            flat[:, d] = torch.where(free[:, d], draw, x.view(len(x), -1)[:, d])
    return current


def self_normalised_mean(chunks: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """sum_k w_k v_k / sum_k w_k and log sum_k w_k, per example, over chunks of (log w: (n, N), v: (n, N, ...))
    of importance-weighted values, accumulated chunk by chunk (no chunk is kept)."""
    log_total = mean = None
    for log_w, values in chunks:
        chunk_total = torch.logsumexp(log_w, 0)
        new_total = chunk_total if log_total is None else torch.logaddexp(log_total, chunk_total)
        shape = (-1, *[1] * (values.dim() - 2))
        chunk_mean = (torch.exp(log_w - new_total).view(*log_w.shape, *shape[1:]) * values).sum(0)
        mean = chunk_mean if mean is None else mean * torch.exp(log_total - new_total).view(shape) + chunk_mean
        log_total = new_total
    return mean, log_total


def reconstruction_grid(x: Tensor, reconstruct: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """``{"reconstructions": grid}`` of up to 32 images ``x`` (whole rows of 8), each row of inputs above the
    row of their reconstructions; ``{}`` for fewer than 8 images."""
    if len(x) < 8:
        return {}
    x = x[: min(32, len(x)) // 8 * 8]
    pairs = torch.stack([x.view(-1, 8, *x.shape[1:]), reconstruct(x).view(-1, 8, *x.shape[1:])], 1)
    return {"reconstructions": pairs.reshape(-1, *x.shape[1:])}


class GenerativeModel(pl.LightningModule):
    # Keys of the run's ``sample`` group that this model's ``sample`` takes as keyword options
    # (DDPM: sampler, steps, eta, guidance); the tasks pass these and no others.
    sampler_options: tuple[str, ...] = ()
    # What ``log_likelihood`` gives: "exact", a lower "bound", an "estimate" (importance sampling, AIS), "none".
    likelihood_kind = "exact"
    # The conditional samplers ``impute_missing`` offers (the first: impute.method=auto); none: it cannot impute.
    imputation_methods: tuple[str, ...] = ()

    def __init__(self, data_info: dict[str, Any], optimizer: dict[str, Any] | None,
                 scheduler: dict[str, Any] | None):
        super().__init__()
        self.data_info = DataInfo.from_dict(data_info)
        self.optimizer_settings = dict(optimizer) if optimizer else None
        self.scheduler_settings = dict(scheduler) if scheduler else None
        self.automatic_optimization = not self.declaration().manual_optimization
        self.eval_settings = {}
        # The resolved run config and provenance, written into every checkpoint by the tasks.
        self.run_record: dict[str, Any] = {}
        # trainer.steps_per_execution (``execute_steps``): updates per Lightning batch, and whether the update
        # being made is its epoch's last (None: one update per batch, Lightning's batch_idx tells).
        self.steps_per_execution = 1
        self._ends_epoch: bool | None = None

    @property
    def eval_settings(self) -> dict[str, Any]:
        """The run's ``eval`` config group, which the tasks set before testing; keys not set have the
        defaults of ``dgmrun.schema.EvalConfig`` (a model used outside a task has all of them)."""
        return self._eval_settings

    @eval_settings.setter
    def eval_settings(self, settings: Mapping[str, Any]) -> None:
        self._eval_settings = {**dataclasses.asdict(EvalConfig()), **settings}

    @classmethod
    def declaration(cls) -> type[ModelConfig]:
        """The ``dgmrun.schema`` declaration of this class's settings (of the nearest declared base class for
        a user's subclass)."""
        for c in cls.__mro__:
            if f"{c.__module__}.{c.__qualname__}" in MODEL_SCHEMAS:
                return MODEL_SCHEMAS[f"{c.__module__}.{c.__qualname__}"]
        return ModelConfig

    @classmethod
    def build(cls, data_info: DataInfo | Mapping[str, Any], **settings: Any) -> "GenerativeModel":
        """This model for data ``data_info``, as the command line builds it: the settings not given take
        their declared defaults, all are checked, and ``auto`` is resolved for the data."""
        info = data_info if isinstance(data_info, DataInfo) else DataInfo.from_dict(dict(data_info))
        return build_model({"_target_": f"{cls.__module__}.{cls.__qualname__}", **settings}, info)

    # ------------------------------------------------------------------ the interface
    @property
    def nll_estimator(self) -> str:
        return "exact"

    @property
    def likelihood_is_discrete(self) -> bool:
        """Whether ``log_likelihood`` is a probability mass (so bits/dim are reported), not a density.

        By default, whether the data are discrete: right for models that are exact distributions over the
        data's levels (NADE, PixelCNN). Models with a decoder likelihood ask it (``Likelihood.is_mass``)."""
        return self.data_info.levels is not None

    @property
    def class_conditional(self) -> bool:
        return False

    @property
    def categorical_code(self) -> bool:
        return False

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def sample_by_code(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples and the value of the categorical code that drew each (models with a ``categorical_code``)."""
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-example log p(x) (log p(x | labels) when ``class_conditional``) in nats, of ``likelihood_kind``."""
        raise NotImplementedError

    @torch.no_grad()
    def impute(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None = None,
               progress: Progress | None = None) -> Tensor:
        """``x`` with its ``missing`` pixels (a boolean mask of its shape) drawn from the model given the others,
        by ``settings.method``, one of its ``imputation_methods``, with the other keys of the run's ``impute``
        group (a ``dgmrun.schema.ImputeConfig`` from Python); the observed pixels are returned exactly as given.
        ``progress(done, total)`` is told of each iteration of the sampler."""
        if settings.method not in self.imputation_methods:
            raise DgmrunError(f"impute.method={settings.method}: model {type(self).__name__} imputes by "
                              f"{', '.join(self.imputation_methods) or 'no method (it has no conditional sampler)'}")
        drawn = self.impute_missing(x, missing, settings, generator, progress or (lambda done, total: None))
        return torch.where(missing, drawn, x)

    def impute_missing(self, x: Tensor, missing: Tensor, settings: Any, generator: torch.Generator | None,
                       progress: Progress) -> Tensor:
        """The imputation behind ``impute``; only its missing pixels are used."""
        raise NotImplementedError

    def remember(self, x: Tensor, missing: Tensor, value: Any) -> None:
        """Keep ``value``, computed by an imputation from x's observed pixels, for ``recall`` (task=impute asks for
        the imputations and then the NLL of the missing pixels, which can reuse it)."""
        self._remembered = (torch.where(missing, 0.0, x), missing, value)

    def recall(self, x: Tensor, missing: Tensor) -> Any | None:
        """What ``remember`` kept for these very observed pixels and mask, else None."""
        kept = getattr(self, "_remembered", None)
        if kept is None or not torch.equal(kept[1], missing) or not torch.equal(kept[0], torch.where(missing, 0.0, x)):
            return None
        return kept[2]

    def imputation_protocol(self, settings: Any) -> str:
        """How ``impute`` draws with these settings, for the protocol string of ``task=impute``."""
        if settings.method == "exact":
            return "exact (the missing pixels drawn in raster order given the pixels before them)"
        return f"{settings.method}, {settings.iterations} iterations"

    def missing_log_likelihood(self, x: Tensor, missing: Tensor, completed: Tensor) -> tuple[Tensor, str] | None:
        """Per-example log p(x_missing | x_observed) in nats of the true pixels ``x``, and what it is ("exact",
        "estimate (...)"); None where the model does not give it (for this mask). ``completed``, an imputation
        of ``x``, may serve an estimate as its proposal."""
        return None

    def sampler(self, classes: Sequence[int] | None = None, settings: Mapping[str, Any] | None = None
                ) -> Callable[[int, torch.Generator | None], Tensor]:
        """``sample`` for the grids, ``task=sample`` and the sample metrics: with this model's
        ``sampler_options`` taken from ``settings`` (the run's ``sample`` group), and of the given classes
        (``sample.classes``) for a class-conditional model, which takes them as ``sample(n, generator, classes=...)``."""
        options = {key: settings[key] for key in self.sampler_options} if settings is not None else {}
        if classes is None:
            return functools.partial(self.sample, **options) if options else self.sample
        if not self.class_conditional:
            raise DgmrunError(f"sample.classes={list(classes)}: model {type(self).__name__} is not class-conditional")
        bad = [c for c in classes if not 0 <= c < self.data_info.num_classes]
        if bad:
            raise DgmrunError(f"sample.classes: {bad} not in 0..{self.data_info.num_classes - 1} "
                              f"(data {self.data_info.name} has {self.data_info.num_classes} classes)")
        return functools.partial(self.sample, classes=list(classes), **options)

    def sampler_description(self, settings: Mapping[str, Any] | None) -> str | None:
        """How ``sampler(settings)`` draws, for the sample metrics' protocol strings (None: nothing to add)."""
        return None

    def extra_test_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Per-example test metrics beyond NLL (e.g. the ELBO)."""
        return {}

    def figures(self, x: Tensor) -> dict[str, Tensor]:
        """Image grids to write at the end of training, from a batch of validation data: name -> N×C×H×W."""
        return {}

    # ------------------------------------------------------------------ shared plumbing
    def bits_per_dim(self, nll: Tensor) -> Tensor:
        return nll / (self.data_info.num_dims * math.log(2))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        # Always evaluate in float32: under bf16 autocast, log-likelihoods of ~100 nats would carry errors
        # of ~0.5 nat (8 bits of mantissa), more than the differences between models that papers report.
        with torch.autocast(self.device.type, enabled=False):
            metrics = self._test_metrics(x.float(), y if self.class_conditional else None)
        if "nll" in metrics:  # for test/nll_sem, the standard error of test/nll over the test examples
            metrics["nll_squared"] = metrics["nll"] ** 2
            self.log("test/examples", float(len(x)), reduce_fx="sum", sync_dist=True)
        for name, values in metrics.items():
            self.log(f"test/{name}", values.mean(), batch_size=len(x), sync_dist=True)

    def _test_metrics(self, x: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        metrics = dict(self.extra_test_metrics(x))
        if self.likelihood_kind != "none":
            log_px = self.log_likelihood(x, labels)
            metrics["nll"] = -log_px
            if self.likelihood_is_discrete:  # bits/dim only for probability masses
                metrics["bpd"] = self.bits_per_dim(-log_px)
        return metrics

    # ------------------------------------------------------------------ divergence
    divergence_hint = "lower the learning rate (model.optimizer.lr)"

    def check_finite(self, name: str, loss: Tensor) -> None:
        """Stop the run at the first non-finite loss: before it reaches the weights in a training step,
        before the checkpoints of an epoch's end are written after validation. So every checkpoint
        written before stays as it was, and no NaN reaches a checkpoint or metrics.json.

        Every training step of automatic optimization is checked here (``on_before_backward``); models
        that optimize by hand call this for each loss they step on, validation losses are checked by
        ``dgmrun.callbacks.StopOnNonFinite``.
        """
        if torch.isfinite(loss.detach()).all():
            return
        where = f"epoch {self.current_epoch}"
        if self.trainer.training:
            where += f", batch {self.trainer.fit_loop.epoch_loop.batch_idx}"
        value = loss.detach().float().max().item()
        raise DgmrunError(f"{name} is {value} at global step {self.global_step} ({where}); training stopped, "
                          f"the checkpoints written before are unchanged. Try to {self.divergence_hint}.")

    # ------------------------------------------------------------------ training curves
    def logging_now(self, batch_idx: int) -> bool:
        """Whether the loggers write this training batch: Lightning's own rule (every ``log_every_n_steps``-th
        batch, and a stopping one), plus each epoch's last batch and the run's last step, so that the
        run's final ``train/*`` figures are of its last batch."""
        trainer = self._trainer
        if trainer is None:  # a step called by hand: nothing to log to
            return False
        ends_epoch = batch_idx + 1 >= trainer.num_training_batches if self._ends_epoch is None else self._ends_epoch
        last = ends_epoch or 0 < trainer.max_steps <= self.global_step + 1
        # The property Lightning's own LearningRateMonitor and ThroughputMonitor ask.
        return trainer._logger_connector.should_update_logs or last or bool(trainer.fast_dev_run)

    def log_training(self, batch_idx: int, metrics: Mapping[str, Any], bar: Mapping[str, Any], batch_size: int) -> None:
        """``metrics`` (``train/...``) to the loggers and ``bar`` to the progress bar, on the batches the loggers
        write (``logging_now``) only: a ``self.log`` call costs 0.1-1 ms, as much as a small model's whole
        step, and the values of the other batches would never reach a logger. The curves are unchanged; the
        bar's figures change every ``log_every_n_steps`` batches."""
        if self.logging_now(batch_idx):
            self.log_dict(dict(metrics), batch_size=batch_size)
            self.log_dict(dict(bar), prog_bar=True, logger=False, batch_size=batch_size)

    def on_before_backward(self, loss: Tensor) -> None:
        if self.automatic_optimization:  # what training_step returned, which every model logs as train/loss
            self.check_finite("train/loss", loss)

    def after_update(self) -> None:
        """Called after each optimizer update of automatic optimization (DDPM: its EMA moves)."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.automatic_optimization:
            self.after_update()

    def execute_steps(self, k: int, gradient_clip_val: float | None, gradient_clip_algorithm: str = "norm") -> None:
        """``trainer.steps_per_execution=k``: each training batch holds k batches (``dgmrun.data.datamodule.Grouped``),
        and this model makes k updates on them, as Lightning's automatic optimization makes one, with the
        same update index, loss check, gradient clipping, per-step schedulers and ``after_update``.
        Lightning's cost per batch (hooks, closure, loop bookkeeping) is then paid once per k updates."""
        self.steps_per_execution, self._clip = k, (gradient_clip_val, gradient_clip_algorithm)
        self.automatic_optimization = False
        self.training_step = self._execute_group  # the instance's: the class's one-batch step stays callable

    def _execute_group(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        xs, ys = batch
        trainer, optimizer = self.trainer, self.optimizers()
        loop = trainer.fit_loop.epoch_loop
        # Lightning counts the loggers' steps in batches: through the group, it counts this group's updates,
        # so that the curves are written at the steps (and with the values) of one update per batch.
        first = loop._batches_that_stepped
        last_group = batch_idx + 1 >= trainer.num_training_batches
        for j in range(len(xs)):
            loop._batches_that_stepped = first + j
            self._ends_epoch = last_group and j == len(xs) - 1
            loss = type(self).training_step(self, (xs[j], ys[j]), batch_idx * self.steps_per_execution + j)
            self.check_finite("train/loss", loss)
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self._clip[0] is not None:
                self.clip_gradients(optimizer, *self._clip)
            optimizer.step()
            self.step_schedulers("step")
            self.after_update()
            if 0 < trainer.max_steps <= self.global_step:
                break
        self._ends_epoch = None

    def planned_updates(self) -> float:
        """The run's number of optimizer updates (inf without a budget): Lightning's estimate, which counts
        batches, in updates under ``trainer.steps_per_execution``."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if self.steps_per_execution == 1:
            return total
        per_epoch = min(trainer.num_training_batches * self.steps_per_execution, trainer.train_dataloader.num_updates)
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
        return min(per_epoch * epochs, trainer.max_steps if trainer.max_steps > 0 else math.inf)

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.parameters(), self.optimizer_settings)
        scheduler = self.make_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def make_scheduler(self, optimizer: torch.optim.Optimizer, updates: float | None = None) -> dict[str, Any] | None:
        """``model.scheduler`` of ``optimizer``: cosine decay to 0 over its ``updates`` (default: the run's
        ``planned_updates()``; 10**6 when the run has no step budget) (per step), linear warm-up
        over ``warmup_steps`` then constant (per step; DDPM's schedule), step decay (per epoch), or Burda et al.
        2015's stages (per epoch): lr * 10**(-i/7) in stage i (``burda_stage``), the last stage's rate after
        ``stages`` stages."""
        if self.scheduler_settings is None:
            return None
        settings = {**SCHEDULER_DEFAULTS, **self.scheduler_settings}
        if settings["name"] == "warmup":
            steps = settings["warmup_steps"]
            warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / steps))
            return {"scheduler": warmup, "interval": "step"}
        if settings["name"] == "cosine":
            total = float(self.planned_updates() if updates is None else updates)
            total = max(1, int(total) if math.isfinite(total) else 10**6)
            return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "interval": "step"}
        if settings["name"] == "burda":
            last = settings["stages"] - 1
            stages = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 10 ** (-min(burda_stage(epoch), last) / 7))
            return {"scheduler": stages, "interval": "epoch"}
        step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings["step_size"], gamma=settings["gamma"])
        return {"scheduler": step, "interval": "epoch"}

    def step_schedulers(self, interval: str, optimizers: Sequence[int] | None = None) -> None:
        """Under manual optimization, which Lightning leaves to the model: step the schedulers that go by
        ``interval`` ("step": call after an update; "epoch": done at each epoch's end), of the optimizers
        with these indices (default: all)."""
        for i, config in enumerate(self.trainer.lr_scheduler_configs):
            if config.interval == interval and (optimizers is None or i in optimizers):
                config.scheduler.step()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self.step_schedulers("epoch")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dgmrun"] = self.run_record
