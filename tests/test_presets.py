"""Every model YAML and every experiment preset, stepped: one ``trainer=debug`` training step on data it
supports, then ``task=sample`` from its checkpoint (in process, through the tasks the command runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from dgmrun.errors import DgmrunError
from dgmrun.schema import validate
from tests.conftest import MNIST_SMALL, compose_config
from tests.test_config import options
from tests.test_fuzz import ONE_STEP, data_overrides

# The data each model is stepped on: the first of these it accepts (the 8x8 digits, the 2-D points, then
# 32 px colour images for the convolutional GANs, which need sides of 16 px or more).
DATA_IN_TURN = ("digits", "toy2d", "cifar10")
# Presets on their own data, in batches of 2 (ddpm_cifar10's U-Net has 35.7M parameters).
PRESET_DATA = {**{f"{name}_mnist": "mnist" for name in ("vae", "iwae", "vae2", "iwae2", "rbm", "nade", "pixelcnn", "vqvae",
                                                         "dcgan", "wgan_gp", "infogan", "ddpm")},
               "ddpm_cifar10": "cifar10"}
SMALL_BATCH = ["data.batch_size=2", "data.eval_batch_size=2"]


def step_and_sample(run: Path, first: list[str], draw: bool = True) -> np.ndarray | None:
    """Train one step with the overrides ``first`` into ``run``, then (``draw``) draw 4 samples from its checkpoint."""
    from dgmrun.tasks.sample import sample
    from dgmrun.tasks.train import train

    try:
        cfg = compose_config([*first, *ONE_STEP], run)
        validate(cfg)
        train(cfg)
        if not draw:
            return None
        cfg = compose_config(["task=sample", f"ckpt_path={run}", "sample.num=4", "sample.sampler=ddim", "sample.steps=2"],
                             run / "sampled")
        validate(cfg)
        sample(cfg)
    finally:
        GlobalHydra.instance().clear()
    with np.load(run / "sampled" / "samples.npz") as f:
        return f["images"] if "images" in f else f["x"]


def natural_data(model: str, tmp: Path) -> list[str]:
    for data in DATA_IN_TURN:
        overrides = [f"model={model}", *data_overrides(data, tmp)]
        try:
            validate(compose_config(overrides, tmp))
            return overrides
        except DgmrunError:
            continue
        finally:
            GlobalHydra.instance().clear()
    pytest.fail(f"model={model} takes none of {DATA_IN_TURN}")


# ... and the convolutional networks, which the 8x8 digits and the points never reach (arch=auto gives MLPs there).
CONV_MODELS = ("vae", "dcgan", "cgan", "acgan", "infogan", "bigan", "ebgan")


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vqvae") / "run"
    step_and_sample(run, ["model=vqvae", "data=digits"])
    return run


@pytest.mark.parametrize("model", options("model"))
def test_every_model_trains_a_step_and_samples(tmp_path, model, vqvae_run):
    first = [f"model.vqvae_ckpt={vqvae_run}", "data=digits", "model=vqvae_prior"] if model == "vqvae_prior" \
        else natural_data(model, tmp_path)
    samples = step_and_sample(tmp_path / "run", first)
    assert len(samples) == 4 and np.isfinite(samples.astype(np.float64)).all()


@pytest.mark.parametrize("model", CONV_MODELS)
def test_the_convolutional_networks_train_a_step_and_sample(tmp_path, model):
    samples = step_and_sample(tmp_path / "run", [f"model={model}", *data_overrides("cifar10", tmp_path), "model.arch=auto",
                                                 *SMALL_BATCH])
    assert samples.shape == (4, 3, 32, 32)


# In `pytest -m slow`: ddpm_cifar10 (35.7M parameters, ~30 s) and pixelcnn_mnist, whose grids at the end of
# training take minutes on 2 cores (784 sequential passes of 16 layers per image); the fast suite composes,
# validates and builds them (test_every_preset_composes_validates_and_builds).
SLOW = {"ddpm_cifar10", "pixelcnn_mnist"}


def preset_config(preset: str, tmp_path: Path) -> list[str]:
    data = PRESET_DATA[preset]  # a new preset must say here which data it is for
    if data == "mnist" and not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST digits not found at {MNIST_SMALL} (see ../shared/data/README.md)")
    budget = ["trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.max_time=null"]  # a preset's own budget: not here
    return [f"experiment={preset}", *data_overrides(data, tmp_path), *SMALL_BATCH, *budget]


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p
                                    for p in options("experiment")])
def test_every_preset_trains_a_step_and_samples(tmp_path, preset):
    samples = step_and_sample(tmp_path / "run", preset_config(preset, tmp_path))
    assert samples.shape[0] == 4 and samples.shape[-1] == (32 if PRESET_DATA[preset] == "cifar10" else 28)


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_preset_composes_validates_and_builds(tmp_path, preset):
    from dgmrun.models.base import build_model

    try:
        cfg = compose_config(preset_config(preset, tmp_path), tmp_path)
        validate(cfg)
    finally:
        GlobalHydra.instance().clear()
    data = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg.model, data.info)
    assert sum(p.numel() for p in model.parameters()) > 0
