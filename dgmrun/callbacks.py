"""Callbacks every run uses: sample grids in the run dir (and the logger), and training throughput."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from dgmrun.io import picture, sample_in_batches, save_png
from dgmrun.models.base import GenerativeModel


def log_image(logger: Any, key: str, array: Any, step: int) -> None:
    """Send a picture to loggers that show images (wandb, tensorboard); others ignore it."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[array], step=step)
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, array, step, dataformats="HW" if array.ndim == 2 else "HWC")


class SampleGrids(pl.Callback):
    """``samples/epoch_XXXX.png`` every ``every_n_epochs`` epochs, and at the end ``samples/final.png``
    plus the model's own figures (reconstructions, interpolations, ...). The same noise seed every
    time, so the grids show one set of samples improving. ``settings`` is the run's ``sample`` group."""

    def __init__(self, dirpath: str | Path, settings: Mapping[str, Any]):
        self.dirpath, self.settings = Path(dirpath), settings
        self.num, self.every_n_epochs = settings["num"], settings["every_n_epochs"]
        self.seed, self.batch_size, self.classes = settings["seed"], settings["batch_size"], settings["classes"]

    def _samples(self, model: GenerativeModel) -> torch.Tensor:
        generator = torch.Generator(model.device).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        try:
            return sample_in_batches(model.sampler(self.classes, self.settings), self.num, self.batch_size, generator)
        finally:
            model.train(was_training)

    def _write(self, trainer: pl.Trainer, name: str, images: torch.Tensor) -> None:
        array = picture(images, nrow=8 if images.dim() == 4 and len(images) % 8 == 0 else None)
        save_png(self.dirpath / f"{name}.png", array)
        for logger in trainer.loggers:
            log_image(logger, f"samples/{name.split('_')[0]}", array, trainer.global_step)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: GenerativeModel) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and not trainer.sanity_checking:
            self._write(trainer, f"epoch_{epoch:04d}", self._samples(pl_module))

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: GenerativeModel) -> None:
        self._write(trainer, "final", self._samples(pl_module))
        batch = next(iter(trainer.datamodule.val_dataloader()), None) if trainer.datamodule else None
        if batch is not None:
            was_training = pl_module.training
            pl_module.eval()
            figures = pl_module.figures(batch[0].to(pl_module.device))
            pl_module.train(was_training)
            for name, images in figures.items():
                self._write(trainer, name, images)


class Throughput(pl.Callback):
    """``perf/train_samples_per_s``: examples per second of training-step time (data + step), per epoch."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._start = 0.0

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.seconds if self.seconds > 0 else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for the step before stopping the clock
        self.seconds += time.perf_counter() - self._start
        self.samples += len(batch[0]) * trainer.world_size

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.samples_per_s is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"perf/train_samples_per_s": self.samples_per_s}, step=trainer.global_step)


class SampleQuality(pl.Callback):
    """``val/fid``, ``val/kid``, ``val/is``, ``val/precision``, ... every ``every_n_epochs`` epochs, from
    ``num_samples`` samples (the model's ``sample()``, so EMA weights where a model keeps them), logged so
    the loggers chart them over training. ``scorer`` is a ``dgmrun.metrics.samples.SampleScorer``; without
    a feature network for the data it logs one note and does nothing."""

    def __init__(self, scorer: Any, every_n_epochs: int, num_samples: int, seed: int = 0, batch_size: int = 500):
        self.scorer, self.every_n_epochs, self.num_samples = scorer, every_n_epochs, num_samples
        self.seed, self.batch_size = seed, batch_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: GenerativeModel) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or not self.every_n_epochs or epoch % self.every_n_epochs:
            return
        if not trainer.is_global_zero:
            return
        from dgmrun.metrics.samples import sample_metrics

        metrics = sample_metrics(pl_module, trainer.datamodule, self.num_samples, self.seed, self.batch_size,
                                 prefix="val", scorer=self.scorer)
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                pl_module.log(key, float(value), rank_zero_only=True)
