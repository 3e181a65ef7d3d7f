"""Every model YAML and every experiment preset, stepped: one ``trainer=debug`` training step on data it
supports, then ``task=sample`` from its checkpoint (in process, through the tasks the command runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from dgmrun.errors import DgmrunError
from dgmrun.schema import validate
from tests.conftest import MNIST_SMALL, compose_config
from tests.test_config import options
from tests.test_fuzz import ONE_STEP, data_overrides

# The data each model is stepped on: the first of these it accepts (the 8x8 digits, the 2-D points, then
# 32 px colour images for the convolutional GANs, which need sides of 16 px or more).
DATA_IN_TURN = ("digits", "toy2d", "cifar10")
# Presets on their own data, in batches of 2 (ddpm_cifar10's U-Net has 35.7M parameters).
PRESET_DATA = {"vae_mnist": "mnist", "ddpm_mnist": "mnist", "ddpm_cifar10": "cifar10"}
SMALL_BATCH = ["data.batch_size=2", "data.eval_batch_size=2"]


def step_and_sample(run: Path, first: list[str]) -> np.ndarray:
    """Train one step with the overrides ``first`` into ``run``, then draw 4 samples from its checkpoint."""
    from dgmrun.tasks.sample import sample
    from dgmrun.tasks.train import train

    try:
        cfg = compose_config([*first, *ONE_STEP], run)
        validate(cfg)
        train(cfg)
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


# ddpm_cifar10 (35.7M parameters) takes ~30 s: in `pytest -m slow`.
@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p == "ddpm_cifar10" else p
                                    for p in options("experiment")])
def test_every_preset_trains_a_step_and_samples(tmp_path, preset):
    data = PRESET_DATA[preset]  # a new preset must say here which data it is for
    if data == "mnist" and not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST digits not found at {MNIST_SMALL} (see ../shared/data/README.md)")
    budget = ["trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.max_time=null"]  # a preset's own budget: not here
    samples = step_and_sample(tmp_path / "run", [f"experiment={preset}", *data_overrides(data, tmp_path), *SMALL_BATCH,
                                                 *budget])
    assert samples.shape[0] == 4 and samples.shape[-1] == (32 if data == "cifar10" else 28)
