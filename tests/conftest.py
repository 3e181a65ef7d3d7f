"""Shared fixtures: composing configs in process, and running the installed ``dgmrun`` command."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
MNIST_SMALL = (REPO / ".." / "shared" / "data" / "mnist-small").resolve()


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config ``dgmrun <overrides>`` would run with, composed by Hydra's compose API."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dgmrun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path)

    yield make
    GlobalHydra.instance().clear()


def dgmrun_command() -> list[str]:
    exe = shutil.which("dgmrun")
    if exe is None:
        pytest.fail("the dgmrun console script is not installed: pip install -e .")
    return [exe]


def run_dgmrun(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would, from ``cwd`` (``env`` values of None unset a variable)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(dgmrun_command() + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


@pytest.fixture
def mnist_small() -> Path:
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST digits not found at {MNIST_SMALL} (see ../shared/data/README.md)")
    return MNIST_SMALL


PYTHON = sys.executable


def train_losses(model, datamodule, max_steps: int) -> list[float]:
    """The training loss of every step of a short CPU fit (no logger, checkpoints or validation)."""
    losses: list[float] = []

    class Recorder(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               callbacks=[Recorder()]).fit(model, datamodule=datamodule)
    return losses


class SaveWeightsPerRank(pl.Callback):
    """Saves every rank's state dict (float32) to ``folder/rank<i>.pt`` when training ends, for DDP tests
    that compare the replicas. Module-level, so that ddp_spawn can pickle it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({k: v.detach().float().clone() for k, v in pl_module.state_dict().items()},
                   self.folder / f"rank{trainer.global_rank}.pt")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_mnist(root: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """MNIST-format files made of sklearn's digits enlarged to 28 x 28: real labels, tiny, instant."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3))) * (255 / 16)  # 24 x 24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", images[:n_train])
    write_idx(root / "train-labels-idx1-ubyte.gz", digits.target[:n_train])
    write_idx(root / "t10k-images-idx3-ubyte.gz", images[n_train:n_train + n_test])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", digits.target[n_train:n_train + n_test])
    return root
