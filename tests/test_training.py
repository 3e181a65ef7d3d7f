"""Training paths in process with a real Lightning Trainer: LR schedules and bf16 mixed precision."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from dgmrun.models.base import build_model
from dgmrun.schema import validate


@pytest.mark.parametrize("scheduler,precision", [("cosine", "32-true"), ("step", "bf16-mixed")])
def test_vae_fits_with_a_scheduler_and_precision(cfg_factory, scheduler, precision):
    settings = "{name: step, step_size: 1, gamma: 0.5}" if scheduler == "step" else "{name: cosine}"
    cfg = cfg_factory(f"model.scheduler={settings}", "model.latent_dim=4")
    validate(cfg)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, datamodule.info)
    trainer = pl.Trainer(max_epochs=2, precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=datamodule)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if scheduler == "cosine":  # annealed over all steps of the run: back to ~0 at the end
        assert lr == pytest.approx(0.0, abs=1e-6)
    else:  # halved after each of the 2 epochs
        assert lr == pytest.approx(cfg.model.optimizer.lr * 0.25)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_test_metrics_are_computed_in_float32_under_bf16(cfg_factory):
    cfg = cfg_factory("model.latent_dim=4")
    validate(cfg)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, datamodule.info)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    pl.Trainer(max_epochs=1, enable_checkpointing=False, **quiet).fit(model, datamodule=datamodule)
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        results[precision] = pl.Trainer(precision=precision, **quiet).test(model, datamodule=datamodule, verbose=False)[0]
    assert results["bf16-mixed"]["test/nll"] == pytest.approx(results["32-true"]["test/nll"], abs=1e-4)
