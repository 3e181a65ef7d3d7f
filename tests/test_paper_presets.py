"""What the paper presets rest on: Burda et al.'s learning-rate stages, their networks as the presets build them,
training on the whole training set (data.val_fraction=0), and the standard error of test/nll."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from dgmrun.models.base import build_model, burda_stage, burda_stage_end
from dgmrun.models.nade import NADE
from dgmrun.schema import validate
from tests.conftest import compose_config


def test_burda_stages_are_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7():
    assert [burda_stage_end(i) for i in range(8)] == [1, 4, 13, 40, 121, 364, 1093, 3280]
    assert [burda_stage(e) for e in (0, 1, 3, 4, 12, 13, 39, 40, 120, 121, 363, 364, 3279)] == \
        [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7]
    model = NADE.build({"name": "digits", "shape": [1, 2, 2], "num_classes": 0, "levels": 2}, hidden_dim=2,
                       optimizer={"lr": 1e-3}, scheduler={"name": "burda", "stages": 3})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    config = model.make_scheduler(optimizer)
    assert config["interval"] == "epoch"
    rates = []
    for _ in range(20):  # stepped once per epoch, as Lightning does for interval "epoch"
        rates.append(optimizer.param_groups[0]["lr"])
        config["scheduler"].step()
    # stage 0: epoch 0; stage 1: epochs 1-3; stage 2: 4-12; then the last stage's rate holds (stages: 3)
    expected = [1e-3 * 10 ** (-min(burda_stage(e), 2) / 7) for e in range(20)]
    assert rates == pytest.approx(expected, rel=1e-9)
    assert rates[13] == pytest.approx(1e-3 * 10 ** (-2 / 7))


def preset(name: str, *overrides: str):
    try:
        cfg = compose_config([f"experiment={name}", "data.root=.", *overrides])
        validate(cfg, checkpoint_merged=True)
    finally:
        GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("name, parameters", [("vae_mnist", 425_284), ("iwae_mnist", 425_284),
                                              ("vae2_mnist", 236_184), ("iwae2_mnist", 236_184)])
def test_burda_presets_build_the_papers_networks_and_protocol(name, parameters):
    """784-200-200-50: (784*200+200) + (200*200+200) + (200*100+100) in q, (50*200+200) + (200*200+200) +
    (200*784+784) in p. Two layers: 784-100-100-100 and 100-50-50-50 in q, their mirror images in p."""
    cfg = preset(name)
    from dgmrun.data.info import DataInfo

    model = build_model(cfg.model, DataInfo("mnist", (1, 28, 28), 10, 2))
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert all(isinstance(m, torch.nn.Tanh) for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.Tanh)))
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.defaults["eps"] == 1e-4 and optimizer.defaults["lr"] == 1e-3
    assert (cfg.data.batch_size, cfg.data.val_fraction, cfg.data.binarize) == (20, 0, "dynamic")
    assert (cfg.trainer.max_epochs, cfg.eval.num_importance_samples) == (3280, 5000)
    assert getattr(model, "k", 1) == (50 if name.startswith("iwae") else 1)


def test_upper_layers_need_the_mlp_network():
    from dgmrun.errors import DgmrunError

    with pytest.raises(DgmrunError, match="model.upper_layers needs model.arch=mlp"):
        preset("vae2_mnist", "model.arch=conv")


def test_without_a_validation_split_training_uses_every_image_and_the_test_reports_a_standard_error(tmp_path):
    """data.val_fraction=0: all training images, no validation loop and no best.ckpt; test/nll_sem is the
    standard error of the per-example NLL (NADE's: exact, so it can be recomputed here)."""
    from dgmrun.tasks.train import train

    try:
        cfg = compose_config(["model=nade", "model.hidden_dim=8", "data=digits", "data.val_fraction=0",
                              "data.binarize=static", "trainer.max_epochs=1", "~logger", "trainer.enable_progress_bar=false",
                              "sample.num=4"], tmp_path)
        validate(cfg)
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.load()
    assert len(datamodule.split_tensors("val")[0]) == 0
    assert len(datamodule.split_tensors("train")[0]) + len(datamodule.split_tensors("test")[0]) == 1797
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and not (tmp_path / "checkpoints" / "best.ckpt").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/checkpoint"] == "last" and not any(k.startswith("val/") for k in metrics)
    model = NADE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True).eval()
    x = datamodule.split_tensors("test")[0]
    nll = -model.log_likelihood(x).double()
    assert metrics["test/nll"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert metrics["test/nll_sem"] == pytest.approx(nll.std().item() / math.sqrt(len(x)), rel=1e-3)
    assert "test/nll_squared" not in metrics and "test/examples" not in metrics
