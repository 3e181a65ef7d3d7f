"""``task=impute``: fill in the missing pixels of the test images with a checkpoint's conditional sampler,
and score the result as the lectures' table does (the evaluator classifier's error on the clean, the
corrupted and the imputed images, and the squared error on the missing pixels)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from dgmrun.checkpoint import model_from_checkpoint
from dgmrun.data.masks import fill_missing, pixel_mask
from dgmrun.errors import DgmrunError
from dgmrun.files import atomic_open
from dgmrun.io import picture, save_png, to_uint8
from dgmrun.metrics.features import data_checksum, evaluator_path, load_classifier
from dgmrun.models.base import GenerativeModel
from dgmrun.tasks.common import config_from_checkpoint, pick_device, run_dir, write_run_files

log = logging.getLogger("dgmrun")
GRID_COLUMNS = 8  # images per row of imputed.png: rows of originals, corrupted images, imputations


def impute(cfg: DictConfig) -> float:
    """Returns impute/mse, the mean squared error on the missing pixels."""
    cfg, checkpoint = config_from_checkpoint(cfg)
    settings = cfg.impute
    device = pick_device(cfg)
    model = model_from_checkpoint(checkpoint, cfg.ckpt_path, cfg.model).to(device).eval()
    method = refuse_what_cannot_impute(model, settings.method)
    datamodule = instantiate(cfg.data, _convert_="all")
    x, y = datamodule.split_tensors("test")
    if settings.num_examples:
        x, y = x[: settings.num_examples], y[: settings.num_examples]
    generator = torch.Generator().manual_seed(settings.seed)
    missing = pixel_mask(settings.mask, tuple(x.shape[1:]), settings.size, settings.p, settings.file, generator, len(x))
    corrupted = fill_missing(x, missing, settings.fill, generator)
    imputed = torch.zeros_like(x)
    device_generator = torch.Generator(device).manual_seed(settings.seed)
    for start in range(0, len(x), settings.batch_size):
        part = slice(start, start + settings.batch_size)
        draws = [model.impute(corrupted[part].to(device), missing[part].to(device), method, settings.iterations,
                              device_generator).cpu() for _ in range(settings.num_samples)]
        imputed[part] = torch.stack(draws).mean(0)
    metrics = {"impute/mse": squared_error(x, imputed, missing), "impute/mse_corrupted": squared_error(x, corrupted, missing),
               "impute/missing_fraction": missing.float().mean().item(), "impute/num_examples": len(x),
               "impute/protocol": protocol(settings, method)}
    metrics.update(classifier_errors(datamodule, cfg, {"clean": x, "corrupted": corrupted, "imputed": imputed}, y))
    out = run_dir(cfg)
    with atomic_open(out / "imputed.npz", "wb") as f:
        np.savez(f, originals=to_uint8(x), masks=missing.numpy(), imputations=to_uint8(imputed))
    shown = slice(0, GRID_COLUMNS)
    save_png(out / "imputed.png", picture(torch.cat([x[shown], corrupted[shown], imputed[shown]]), nrow=GRID_COLUMNS))
    write_run_files(cfg, metrics)
    return metrics["impute/mse"]


def refuse_what_cannot_impute(model: GenerativeModel, method: str) -> str:
    """The method to impute by (``auto``: the model's first); a model without a conditional sampler is refused."""
    if not model.imputation_methods:
        raise DgmrunError(f"model {type(model).__name__} cannot impute: it has no conditional sampler (models that "
                          "can: vae, iwae, beta_vae by pseudo-Gibbs; rbm by clamped Gibbs; nade, pixelcnn exactly "
                          "for impute.mask=bottom, by Gibbs from the full conditionals otherwise)")
    return model.imputation_methods[0] if method == "auto" else method


def squared_error(x: Tensor, other: Tensor, missing: Tensor) -> float:
    """Mean squared error over the missing pixels only, on the [0, 1] scale."""
    return ((x - other)[missing] ** 2).mean().item() if missing.any() else 0.0


def protocol(settings: DictConfig, method: str) -> str:
    mask = {"center": f"center {settings.size}x{settings.size}", "columns": f"columns {settings.size} px",
            "random": f"random p={settings.p}", "file": f"file {Path(str(settings.file)).name}"}.get(settings.mask,
                                                                                                  settings.mask)
    return (f"mask {mask}; fill {settings.fill}; method {method}, {settings.iterations} iterations, "
            f"mean of {settings.num_samples} imputations; seed {settings.seed}")


def classifier_errors(datamodule: object, cfg: DictConfig, images: dict[str, Tensor], labels: Tensor) -> dict[str, object]:
    """impute/error_<clean, corrupted, imputed>: the data's evaluator classifier's error on each (skipped,
    with a note, when the data has none or no labels)."""
    path = evaluator_path(cfg.paths.evaluators_dir, cfg.data.name, data_checksum(datamodule))
    if not path.is_file() or (labels < 0).all():
        log.info("impute/error_* skipped: no evaluator classifier for data=%s; train one with "
                 "`dgmrun task=train_evaluator data=%s`", cfg.data.name, cfg.data.name)
        return {}
    classifier = load_classifier(path)
    errors: dict[str, object] = {"impute/evaluator": classifier.description}
    for name, x in images.items():
        predicted = torch.cat([classifier(x[i:i + 1000])[1].argmax(1) for i in range(0, len(x), 1000)])
        errors[f"impute/error_{name}"] = (predicted != labels).float().mean().item()
    return errors
