"""Callbacks every run uses: sample grids in the run dir (and the logger), training throughput, the
random number generators' state in checkpoints, and stops (a signal, a non-finite loss) that leave the
checkpoints in order."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning_utilities.core.apply_func import apply_to_collection

from dgmrun import signals
from dgmrun.errors import DgmrunError
from dgmrun.io import picture, sample_in_batches, save_png
from dgmrun.models.base import GenerativeModel

log = logging.getLogger("dgmrun")


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
    """``perf/train_samples_per_s``: training examples per second of wall clock since this fit's training
    began (after the sanity check), everything the loop does included (data, steps, logging, validation,
    checkpoints, grids), so that it agrees with a stopwatch (``scripts/bench_runner.py``); logged at each
    epoch's end."""

    def __init__(self) -> None:
        self.samples = 0
        self._start = 0.0
        self._seconds = 0.0

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self._seconds if self._seconds > 0 else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.samples += batch[1].numel() * trainer.world_size  # the labels: one per example, grouped or not

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
        self._seconds = time.perf_counter() - self._start
        if trainer.is_global_zero and self.samples_per_s is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"perf/train_samples_per_s": self.samples_per_s}, step=trainer.global_step)


class StepsPerExecution(pl.Callback):
    """``trainer.steps_per_execution=k``: the datamodule groups k training batches into one, and the model
    makes k updates on each (``GenerativeModel.execute_steps``), clipping gradients by ``gradient_clip_val``
    (and ``gradient_clip_algorithm``) itself: Lightning clips under automatic optimization only."""

    def __init__(self, k: int, gradient_clip_val: float | None, gradient_clip_algorithm: str) -> None:
        self.k, self.clip = k, (gradient_clip_val, gradient_clip_algorithm)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.execute_steps(self.k, *self.clip)
            trainer.datamodule.steps_per_execution = self.k


class NetworkSpeedups(pl.Callback):
    """``trainer.channels_last`` (the 4-d weights of conv nets in channels-last memory order) and
    ``trainer.compile`` (torch.compile of each network's forward), applied to the model's networks (its
    child modules with parameters) when the trainer sets it up. The forward is compiled on the module
    itself, so parameter names and checkpoints are unchanged."""

    def __init__(self, compile: bool, channels_last: bool) -> None:
        self.compile, self.channels_last = compile, channels_last

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "_speedups_applied", False):  # fit, then test: once
            return
        pl_module._speedups_applied = True
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            for network in pl_module.children():
                if next(network.parameters(), None) is not None:
                    # nn.Module.compile() (which wraps _call_impl) captures no graph in this torch: wrap forward.
                    network.forward = torch.compile(network.forward)


class ThrottledCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint writing its file at most once every ``min_interval_s`` seconds. A save due
    sooner (the next epoch's last.ckpt, a new best) is kept in memory as a CPU copy and written once the
    interval has passed, at the end of training, or when training stops (an error, SIGTERM, Ctrl-C): so a
    run still ends with every checkpoint it would have written, and a crash that kills the process
    outright loses at most ``min_interval_s`` seconds. Writing a small model's checkpoint (~25 MB, fsync'd)
    costs ~75 ms, a tenth of its epoch on a CPU."""

    def __init__(self, *, min_interval_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_interval_s = min_interval_s
        self._written_at = -math.inf
        self._pending: tuple[str, dict[str, Any], float] | None = None  # (path, checkpoint, when it was taken)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)  # every rank: it may gather
        if trainer.is_global_zero:
            if time.monotonic() - self._written_at >= self.min_interval_s:
                self._write(trainer, filepath, checkpoint)
            else:  # the live tensors go on changing: keep a copy
                copy = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
                self._pending = (filepath, copy, time.time())
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def _write(self, trainer: pl.Trainer, filepath: str, checkpoint: dict[str, Any]) -> None:
        trainer.strategy.save_checkpoint(checkpoint, filepath)
        self._written_at, self._pending = time.monotonic(), None
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)

    def _flush(self, trainer: pl.Trainer) -> None:
        if self._pending is not None:
            self._write(trainer, *self._pending[:2])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._pending is not None and time.monotonic() - self._written_at >= self.min_interval_s:
            self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._flush(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._pending is None:
            return
        path, _, taken = self._pending
        if os.path.exists(path) and os.path.getmtime(path) > taken:
            self._pending = None  # written since (StopOnSignal's checkpoint of the stopping step): newer than ours
            return
        try:
            self._flush(trainer)
        except DgmrunError as e:  # a full disk, say: the error that stopped training is the one to report
            log.warning("%s", e)


class _RedrawAtMost10Hz:
    """Lightning redraws its progress bar after every batch, ~0.5 ms each time (as long as a small model's
    step on a GPU): redraw at most every 0.1 s, and at each loop's last batch."""

    _drawn_at = -math.inf

    def _due(self, batch_idx: int, total: float) -> bool:
        now = time.monotonic()
        if now - self._drawn_at >= 0.1 or batch_idx + 1 >= total:
            self._drawn_at = now
            return True
        return False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._due(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


class RichBar(_RedrawAtMost10Hz, RichProgressBar):
    pass


class TqdmBar(_RedrawAtMost10Hz, TQDMProgressBar):
    pass


def progress_bar() -> pl.Callback:
    """Lightning's own choice of bar (Rich where it is installed, else tqdm), redrawn at most 10 times a second."""
    return RichBar() if _RICH_AVAILABLE else TqdmBar()


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


class RNGState(pl.Callback):
    """The global random number generators in every checkpoint, set back when training resumes from one.

    The models draw their training noise (reparameterization, GAN noise, Gibbs chains) from torch's
    global generator; with it (and numpy's and Python's) restored, a resumed run draws what the
    uninterrupted run would have. The state is stored as tensors and plain Python values, which
    checkpoints loaded with ``weights_only=True`` accept. It is set back at ``on_train_start``, after
    everything a resumed fit does before its first step (the sanity check runs under Lightning's own
    RNG isolation). A checkpoint holds rank 0's state, and a resumed DDP run gives it to every rank
    (the ranks start from the same seed); bit-identity is tested on one process.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state(legacy=False)
        version, py_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"],
                      "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
            "python": [version, list(py_state), gauss],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
        version, py_state, gauss = state["python"]
        random.setstate((version, tuple(py_state), gauss))


class StopOnNonFinite(pl.Callback):
    """A non-finite validation loss stops the run before the checkpoints of that epoch are written (Lightning
    runs checkpoint callbacks last). Training losses are checked in every step by the model itself."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: GenerativeModel) -> None:
        if not trainer.sanity_checking:
            for name, value in trainer.callback_metrics.items():
                if name.startswith("val/") and name.endswith("loss"):
                    pl_module.check_finite(name, value)


class StopOnSignal(pl.Callback):
    """SIGTERM or Ctrl-C while training: Lightning ends the step in progress and raises its SIGTERMException,
    then ``path`` gets a checkpoint of that exact step, written by the trainer (loops, optimizers and every
    callback's state in it, so ``ckpt_path`` resumes from there). See ``dgmrun.signals``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.saved_at: tuple[int, int] | None = None  # (epoch, global step) of the checkpoint saved
        self.save_error: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signals.defer_to(self._request_stop)

    @staticmethod
    def _request_stop(signum: int) -> None:
        """Lightning's own SIGTERM handler (set while it fits) makes its loops stop at the end of the step;
        Ctrl-C goes through it too, rather than a KeyboardInterrupt in the middle of an update."""
        handler = signal.getsignal(signal.SIGTERM)
        if signum != signal.SIGTERM and callable(handler):
            handler(signal.SIGTERM, None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signals.defer_to(None)
        if signals.received() is not None:  # after the last step: its checkpoints are written already
            raise signals.Stopped(signals.received(), " at the end of training")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        signals.defer_to(None)
        if not isinstance(exception, SIGTERMException):
            return
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_at = (trainer.current_epoch, trainer.global_step)
        except DgmrunError as e:  # a full disk, say: the previous checkpoint is still there
            self.save_error = str(e)

    def stopped(self) -> signals.Stopped:
        """What ends the run after Lightning's SIGTERMException: the signal, and where it stopped."""
        if self.saved_at is not None:
            detail = f" at epoch {self.saved_at[0]}, step {self.saved_at[1]}; checkpoint saved"
        else:
            detail = f"; the checkpoint could not be saved ({self.save_error})" if self.save_error else ""
        return signals.Stopped(signals.received() or signal.SIGTERM, detail)
