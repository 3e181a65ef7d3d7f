"""``task=eval``: recompute a checkpoint's test metrics into this run's metrics.json, or (``eval.samples=PATH``)
score a folder of images or an .npz made by any tool against the data's reference statistics."""

from __future__ import annotations


import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from dgmrun.checkpoint import model_from_checkpoint
from dgmrun.loggers import finish_loggers
from dgmrun.metrics.samples import score_sample_file
from dgmrun.tasks.common import collect_test_metrics, config_from_checkpoint, make_trainer, pick_device, write_run_files


def evaluate(cfg: DictConfig) -> float | None:
    if cfg.eval.get("samples"):
        return evaluate_samples(cfg)
    cfg, checkpoint = config_from_checkpoint(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = model_from_checkpoint(checkpoint, cfg.ckpt_path, cfg.model).to(pick_device(cfg)).eval()
    model.eval_settings = dict(cfg.eval)
    datamodule = instantiate(cfg.data, _convert_="all")
    trainer = make_trainer(cfg, [])
    failed = True
    try:
        results = trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = collect_test_metrics(trainer, model, datamodule, cfg, results)
        failed = False
    finally:
        finish_loggers(trainer.loggers, failed)
    metrics["test/checkpoint"] = str(cfg.ckpt_path)
    write_run_files(cfg, metrics)
    nll = metrics.get("test/nll")
    return float(nll) if nll is not None else None


def evaluate_samples(cfg: DictConfig) -> float | None:
    """Sample metrics of ``eval.samples`` (no checkpoint needed; with one, its data settings are used)."""
    if cfg.ckpt_path is not None:
        cfg, _ = config_from_checkpoint(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    metrics = score_sample_file(cfg, datamodule, cfg.eval.samples, cfg.seed, pick_device(cfg))
    metrics["test/samples"] = str(cfg.eval.samples)
    write_run_files(cfg, metrics)
    fid = metrics.get("test/fid")
    return float(fid) if fid is not None else None
