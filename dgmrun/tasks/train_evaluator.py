"""``task=train_evaluator``: train the dataset's domain classifier, the feature network of FID/KID/IS/PR.

The classifier (``dgmrun.metrics.features``: a small CNN for 8 x 8 digits, LeNet-like for 28 px grey,
a small ResNet for 32 px colour images) learns from the training pool (train + val splits) in grey
levels, whatever ``data.binarize`` says; half of every batch is replaced by one Bernoulli draw of itself
so that binarized samples are read as well as grey ones. Its test accuracy goes to metrics.json as
``test/acc``; its weights go to ``paths.evaluators_dir/<data name>-<data checksum>/classifier.pt``.
An evaluator already cached for the same data is reused (``task.force=true`` retrains it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from dgmrun.errors import DgmrunError
from dgmrun.files import atomic_open, write_json
from dgmrun.loggers import finish_loggers
from dgmrun.metrics.features import (
    build_classifier,
    classifier_arch,
    data_checksum,
    evaluator_path,
    file_sha256,
    load_classifier,
)
from dgmrun.tasks.common import make_trainer, write_run_files

log = logging.getLogger("dgmrun")


class ClassifierModule(pl.LightningModule):
    def __init__(self, arch: str, shape: tuple[int, ...], num_classes: int, lr: float, binarize_fraction: float,
                 epochs: int) -> None:
        super().__init__()
        self.net = build_classifier(arch, shape, num_classes)
        self.lr, self.binarize_fraction, self.epochs = lr, binarize_fraction, epochs

    def forward(self, x: Tensor) -> Tensor:
        return self.net.head(self.net.body(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.binarize_fraction > 0:
            pick = torch.rand(len(x), 1, 1, 1, device=x.device) < self.binarize_fraction
            x = torch.where(pick, torch.bernoulli(x), x)
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("test/acc", (logits.argmax(1) == y).float().mean(), batch_size=len(x))
        self.log("test/acc_binarized", (self(torch.bernoulli(x)).argmax(1) == y).float().mean(), batch_size=len(x))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps, pct_start=0.2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _grey_datamodule(cfg: DictConfig) -> Any:
    overrides = {"binarize": "none"} if "binarize" in cfg.data else {}
    return instantiate(cfg.data, _convert_="all", **overrides)


def train_evaluator(cfg: DictConfig) -> float | None:
    """Returns the test accuracy."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = cfg.task
    datamodule = _grey_datamodule(cfg)
    info = datamodule.info
    if not info.is_image or not info.num_classes:
        raise DgmrunError(f"task=train_evaluator needs labelled images; data={info.name} has "
                          f"{'no class labels' if info.is_image else 'no images'}. For unlabelled images use "
                          "eval.feature_network=inception eval.inception_weights=PATH")
    checksum = data_checksum(datamodule)
    path = evaluator_path(cfg.paths.evaluators_dir, info.name, checksum)
    x_test, y_test = datamodule.split_tensors("test")
    metrics: dict[str, Any] = {"evaluator/path": str(path), "evaluator/data_checksum": checksum}
    if path.is_file() and not task.get("force", False):
        log.info("evaluator for data=%s already cached at %s: reusing it (task.force=true retrains)", info.name, path)
        network = load_classifier(path)
        _, probs = network(x_test)
        metrics.update({"test/acc": (probs.argmax(1) == y_test).float().mean().item(), "evaluator/cached": 1,
                        "evaluator/checksum": network.checksum})
        write_run_files(cfg, metrics)
        return metrics["test/acc"]

    arch = classifier_arch(tuple(info.shape))
    x_train = torch.cat([datamodule.split_tensors("train")[0], datamodule.split_tensors("val")[0]])
    y_train = torch.cat([datamodule.split_tensors("train")[1], datamodule.split_tensors("val")[1]])
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=int(task.batch_size), shuffle=True,
                              generator=generator, drop_last=len(x_train) > int(task.batch_size))
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=1000)
    epochs = int(task.max_epochs[arch] if isinstance(task.max_epochs, DictConfig) else task.max_epochs)
    module = ClassifierModule(arch, tuple(info.shape), info.num_classes, float(task.lr),
                              float(task.binarize_fraction), epochs)
    trainer = make_trainer(cfg, [], max_epochs=epochs, max_steps=-1, max_time=None, enable_checkpointing=False,
                           limit_train_batches=None, limit_val_batches=0, limit_test_batches=None,
                           check_val_every_n_epoch=1)
    failed = True
    start = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=train_loader)
        seconds = time.perf_counter() - start
        results = trainer.test(module, dataloaders=test_loader, verbose=False)
        failed = False
    finally:
        finish_loggers(trainer.loggers, failed)
    metrics.update(results[0] if results else {})
    if trainer.is_global_zero:
        net = module.net.cpu().eval()
        with atomic_open(path, "wb") as f:
            torch.save({"arch": arch, "shape": list(info.shape), "num_classes": info.num_classes,
                        "state_dict": net.state_dict(), "data_name": info.name, "data_checksum": checksum,
                        "test_acc": float(metrics.get("test/acc", float("nan"))), "epochs": epochs}, f)
        write_json(Path(path).with_name("evaluator.json"),
                   {"arch": arch, "data_name": info.name, "data_checksum": checksum, "epochs": epochs,
                    "test_acc": float(metrics.get("test/acc", float("nan"))), "train_seconds": seconds,
                    "train_examples": len(x_train), "test_examples": len(x_test)})
        log.info("evaluator for data=%s: test accuracy %.4f after %d epochs (%.0f s); cached at %s",
                 info.name, metrics.get("test/acc", float("nan")), epochs, seconds, path)
        metrics.update({"evaluator/cached": 0, "evaluator/checksum": file_sha256(path),
                        "evaluator/train_seconds": seconds, "evaluator/arch": arch})
    write_run_files(cfg, metrics)
    acc = metrics.get("test/acc")
    return float(acc) if acc is not None else None
