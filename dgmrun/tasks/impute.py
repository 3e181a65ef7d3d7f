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
from tqdm.auto import tqdm

from dgmrun.checkpoint import model_from_checkpoint
from dgmrun.data.masks import fill_missing, pixel_mask
from dgmrun.errors import DgmrunError
from dgmrun.files import atomic_open
from dgmrun.io import picture, save_png, to_uint8
from dgmrun.metrics.features import data_checksum, evaluator_path, load_classifier
from dgmrun.models.base import GenerativeModel, Progress
from dgmrun.tasks.common import config_from_checkpoint, pick_device, run_dir, write_run_files

log = logging.getLogger("dgmrun")
GRID_COLUMNS = 8  # images per row of imputed.png: rows of originals, corrupted images, imputations


def impute(cfg: DictConfig) -> float:
    """Returns impute/mse, the mean squared error on the missing pixels."""
    cfg, checkpoint = config_from_checkpoint(cfg)
    settings = cfg.impute
    device = pick_device(cfg)
    model = model_from_checkpoint(checkpoint, cfg.ckpt_path, cfg.model).to(device).eval()
    model.eval_settings = dict(cfg.eval)  # eval.num_importance_samples: the VAE's estimates of the missing pixels
    settings.method = method_of(model, settings.method)
    datamodule = instantiate(cfg.data, _convert_="all")
    x, y = datamodule.split_tensors("test")
    if settings.num_examples:
        x, y = x[: settings.num_examples], y[: settings.num_examples]
    generator = torch.Generator().manual_seed(settings.seed)
    missing = pixel_mask(settings.mask, tuple(x.shape[1:]), settings.size, settings.p, settings.file, generator, len(x))
    corrupted = fill_missing(x, missing, settings.fill, generator)
    imputed = torch.zeros_like(x)
    log_p_missing: list[Tensor] = []
    device_generator = torch.Generator(device).manual_seed(settings.seed)
    batches = range(0, len(x), settings.batch_size)
    with IterationBar(len(batches) * settings.num_samples, settings.method) as bar:
        for start in batches:
            part = slice(start, start + settings.batch_size)
            originals, where = x[part].to(device), missing[part].to(device)
            draws = [model.impute(corrupted[part].to(device), where, settings, device_generator, bar.next_run())
                     for _ in range(settings.num_samples)]
            imputed[part] = torch.stack(draws).mean(0).cpu()
            given = model.missing_log_likelihood(originals, where, draws[0])
            if given is not None:
                log_p_missing.append(given[0].cpu())
                nll_missing_kind = given[1]
    metrics = {"impute/mse": squared_error(x, imputed, missing), "impute/mse_corrupted": squared_error(x, corrupted, missing),
               "impute/missing_fraction": missing.float().mean().item(), "impute/num_examples": len(x),
               "impute/protocol": protocol(settings, model)}
    if log_p_missing:  # -log p(x_missing | x_observed) per image, and what kind of number it is
        metrics.update({"impute/nll_missing": -torch.cat(log_p_missing).mean().item(), "impute/nll_missing_kind": nll_missing_kind})
    metrics.update(classifier_errors(datamodule, cfg, {"clean": x, "corrupted": corrupted, "imputed": imputed}, y))
    out = run_dir(cfg)
    with atomic_open(out / "imputed.npz", "wb") as f:
        np.savez(f, originals=to_uint8(x), masks=missing.numpy(), imputations=to_uint8(imputed))
    shown = slice(0, GRID_COLUMNS)
    save_png(out / "imputed.png", picture(torch.cat([x[shown], corrupted[shown], imputed[shown]]), nrow=GRID_COLUMNS))
    write_run_files(cfg, metrics)
    return metrics["impute/mse"]


class IterationBar:
    """A progress bar over the iterations of every imputation (``runs`` calls of ``model.impute``), on a terminal."""

    def __init__(self, runs: int, method: str):
        self.runs, self.run = runs, -1
        self.bar = tqdm(desc=f"impute ({method})", unit="it", disable=None, leave=False)

    def next_run(self) -> Progress:
        self.run += 1
        return self.tick

    def tick(self, done: int, total: int) -> None:
        if self.bar.total is None:
            self.bar.total = self.runs * total
        self.bar.update(self.run * total + done - self.bar.n)

    def __enter__(self) -> "IterationBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def method_of(model: GenerativeModel, method: str) -> str:
    """The method to impute by (``auto``: the model's first); a model without a conditional sampler is refused."""
    if not model.imputation_methods:
        raise DgmrunError(f"model {type(model).__name__} cannot impute: it has no conditional sampler (models that "
                          "can: vae, iwae, beta_vae by pseudo-Gibbs, Metropolis-within-Gibbs or importance "
                          "sampling; rbm by clamped Gibbs; nade, pixelcnn exactly for impute.mask=bottom, by Gibbs "
                          "from the full conditionals or importance sampling otherwise; vqvae by "
                          "Metropolis-within-Gibbs over its codes; ddpm by RePaint)")
    return model.imputation_methods[0] if method == "auto" else method


def squared_error(x: Tensor, other: Tensor, missing: Tensor) -> float:
    """Mean squared error over the missing pixels only, on the [0, 1] scale."""
    return ((x - other)[missing] ** 2).mean().item() if missing.any() else 0.0


def protocol(settings: DictConfig, model: GenerativeModel) -> str:
    mask = {"center": f"center {settings.size}x{settings.size}", "columns": f"columns {settings.size} px",
            "random": f"random p={settings.p}", "file": f"file {Path(str(settings.file)).name}"}.get(settings.mask,
                                                                                                  settings.mask)
    return (f"mask {mask}; fill {settings.fill}; method {model.imputation_protocol(settings)}; "
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
