"""``task=train``: fit, keep the best and last checkpoints, test the best, write samples and metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from dgmrun.callbacks import (RNGState, SampleGrids, SampleQuality, StopOnNonFinite, StopOnSignal, ThrottledCheckpoint,
                              Throughput)
from dgmrun.errors import DgmrunError
from dgmrun.models.base import build_model
from dgmrun.loggers import finish_loggers
from dgmrun.metrics.samples import SampleScorer
from dgmrun.tasks.common import (collect_test_metrics, config_from_checkpoint, make_trainer, name_logger_run,
                                 requeued_checkpoint, resumed_in_place, run_dir, run_record, write_run_files)


def has_validation_loss(model: pl.LightningModule) -> bool:
    return type(model).validation_step is not pl.LightningModule.validation_step


def has_validation_data(cfg: DictConfig) -> bool:
    """False with ``data.val_fraction=0`` (the papers' protocol of training on the whole training set)."""
    return cfg.data.get("val_fraction") != 0


def train(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` of the run (when set), the objective of searches."""
    resume_from = None
    if cfg.ckpt_path is None:
        cfg.ckpt_path = requeued_checkpoint(cfg)
    if cfg.ckpt_path is not None:  # resume: see "Resume" in the README
        cfg, _ = config_from_checkpoint(cfg)
        resume_from = cfg.ckpt_path  # validate() made it the checkpoint file itself
    name_logger_run(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out = run_dir(cfg)

    datamodule = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg.model, datamodule.info)
    model.eval_settings = dict(cfg.eval)
    model.run_record = run_record(cfg)
    model.sampler(cfg.sample.classes, cfg.sample)  # refuse sample.classes the model cannot honour before training

    # last.ckpt by a monitor-free checkpoint of its own: Lightning's save_last only refreshes it in steps
    # where a top-k checkpoint is saved, which would leave it stale once val/loss stops improving.
    every = cfg.task.checkpoint_every_s
    validating = has_validation_data(cfg)
    last = ThrottledCheckpoint(min_interval_s=every, dirpath=out / "checkpoints", filename="last",
                               enable_version_counter=False)
    best = ThrottledCheckpoint(min_interval_s=every, dirpath=out / "checkpoints", filename="best", monitor="val/loss",
                               enable_version_counter=False) if has_validation_loss(model) and validating else None
    throughput = Throughput()
    scorer = SampleScorer(cfg, datamodule)  # feature network + reference statistics, resolved once when needed
    scorer.check()
    stop_on_signal = StopOnSignal(out / "checkpoints" / "last.ckpt")
    # best before last: the checkpoint callbacks save in this order, and last.ckpt must hold best's updated score.
    callbacks = [*([best] if best else []), last, throughput, RNGState(), StopOnNonFinite(), stop_on_signal,
                 SampleGrids(out / "samples", cfg.sample)]
    if cfg.eval.every_n_epochs > 0:
        callbacks.append(SampleQuality(scorer, cfg.eval.every_n_epochs, cfg.eval.num_samples_during_training, cfg.seed))
    trainer = make_trainer(cfg, callbacks, resumed=resumed_in_place(cfg), **({} if validating else {"limit_val_batches": 0}))
    failed = True
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        metrics: dict[str, Any] = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        metrics["perf/train_samples_per_s"] = throughput.samples_per_s
        if cfg.task.test:
            use_best = best is not None and bool(best.best_model_path)
            results = trainer.test(model, datamodule=datamodule, ckpt_path=best.best_model_path if use_best else None,
                                   verbose=False, weights_only=True)
            metrics.update(collect_test_metrics(trainer, model, datamodule, cfg, results, scorer))
            metrics["test/checkpoint"] = "best" if use_best else "last"
        failed = False
    except SIGTERMException:  # Lightning stopped at the end of a step for SIGTERM or Ctrl-C
        raise stop_on_signal.stopped() from None
    finally:
        finish_loggers(trainer.loggers, failed)
    write_run_files(cfg, metrics)
    return None if cfg.optimized_metric is None else objective(metrics, cfg.optimized_metric)


def objective(metrics: dict[str, Any], name: str) -> float:
    """The run's ``optimized_metric``; without it (or NaN) the run fails, which a search counts as a failed
    trial (a NaN returned to Optuna's sweeper would end the search)."""
    value = metrics.get(name)
    if isinstance(value, (int, float, torch.Tensor)) and math.isfinite(float(value)):
        return float(value)
    numbers = sorted(k for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)))
    problem = f"is {float(value)}" if name in metrics else "is not among its metrics"
    raise DgmrunError(f"optimized_metric={name} {problem} (the run's files are written; its metrics: "
                      f"{', '.join(numbers)})")
