"""The installed ``dgmrun`` command end to end, as a user runs it: train -> sample -> eval, on real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import dgmrun
from tests.conftest import run_dgmrun

pytestmark = pytest.mark.slow


def assert_ok(out) -> Path:
    assert out.returncode == 0, f"dgmrun failed:\nSTDOUT:\n{out.stdout[-3000:]}\nSTDERR:\n{out.stderr[-3000:]}"
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("run dir: "), last
    return Path(last.removeprefix("run dir: "))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One short VAE training run on sklearn's digits, shared by the tests below."""
    cwd = tmp_path_factory.mktemp("digits")
    out = run_dgmrun("trainer.max_epochs=3", "sample.every_n_epochs=2", "hydra.run.dir=runs/train", cwd=cwd)
    run = assert_ok(out)
    assert run == (cwd / "runs" / "train").resolve()
    return run


def test_train_leaves_the_run_dir_contract(digits_run):
    for rel in [".hydra/config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "samples/epoch_0002.png",
                "samples/final.png", "samples/reconstructions.png", "samples/interpolations.png",
                "metrics.json", "provenance.json", "dgmrun.log", "csv/metrics.csv"]:
        assert (digits_run / rel).is_file(), f"missing {rel}"
    metrics = json.loads((digits_run / "metrics.json").read_text())
    for key in ["train/loss", "val/loss", "test/elbo", "test/nll", "test/bpd", "perf/train_samples_per_s"]:
        assert isinstance(metrics[key], float), key
    assert metrics["test/nll_estimator"] == "importance-k100"
    # The importance-sampled NLL is a tighter bound than the negative ELBO (up to Monte-Carlo noise).
    assert metrics["test/nll"] <= -metrics["test/elbo"] + 0.05
    assert metrics["test/bpd"] == pytest.approx(metrics["test/nll"] / (64 * np.log(2)), rel=1e-5)
    provenance = json.loads((digits_run / "provenance.json").read_text())
    assert provenance["dgmrun"] == dgmrun.__version__ and provenance["torch"] == torch.__version__
    checkpoint = torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["dgmrun"]["config"]["model"]["latent_dim"] == 16
    assert checkpoint["dgmrun"]["version"] == dgmrun.__version__


def test_sample_is_reproducible_and_shaped(digits_run, tmp_path):
    runs = []
    for seed, name in [(7, "a"), (7, "b"), (8, "c")]:
        out = run_dgmrun("task=sample", f"ckpt_path={digits_run}", "sample.num=10", f"sample.seed={seed}",
                         f"hydra.run.dir={name}", cwd=tmp_path)
        runs.append(assert_ok(out))
    images = [np.load(run / "samples.npz")["images"] for run in runs]
    assert images[0].dtype == np.uint8 and images[0].shape == (10, 1, 8, 8)
    assert np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])
    assert (runs[0] / "samples.png").is_file()


def test_eval_from_another_directory_recomputes_test_metrics(digits_run, tmp_path):
    ckpt = os.path.relpath(digits_run / "checkpoints" / "best.ckpt", tmp_path)
    out = run_dgmrun("task=eval", f"ckpt_path={ckpt}", "eval.num_importance_samples=20", "hydra.run.dir=ev", cwd=tmp_path)
    run = assert_ok(out)
    metrics = json.loads((run / "metrics.json").read_text())
    trained = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["test/nll_estimator"] == "importance-k20"
    assert metrics["test/elbo"] == pytest.approx(trained["test/elbo"], abs=0.5)  # same weights, fresh noise


def test_dgmrun_load_rebuilds_the_model(digits_run):
    model = dgmrun.load(str(digits_run))
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert not model.training


def test_resume_continues_training(digits_run, tmp_path):
    out = run_dgmrun(f"ckpt_path={digits_run}", "trainer.max_epochs=5", "hydra.run.dir=resumed", cwd=tmp_path)
    run = assert_ok(out)
    before = torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=True)
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["epoch"] == 2 and after["epoch"] == 4
    steps_per_epoch = before["global_step"] // 3
    assert after["global_step"] == before["global_step"] + 2 * steps_per_epoch


def test_mnist_small_with_a_relative_root(mnist_small, tmp_path):
    root = os.path.relpath(mnist_small, tmp_path)
    out = run_dgmrun("data=mnist", f"data.root={root}", "trainer.max_steps=40", "trainer.limit_val_batches=2",
                     "eval.num_importance_samples=10", "hydra.run.dir=mnist", cwd=tmp_path)
    run = assert_ok(out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/nll"] < 784 * np.log(2)  # better than a coin per pixel after 40 steps
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_dgmrun("task=eval", "ckpt_path=../mnist", "eval.num_importance_samples=10", "hydra.run.dir=ev",
                     cwd=elsewhere)
    assert json.loads((assert_ok(out) / "metrics.json").read_text())["test/nll"] == pytest.approx(metrics["test/nll"], rel=0.05)


def test_ddp_on_cpu_from_the_console_script(tmp_path):
    out = run_dgmrun("trainer=ddp_cpu", "trainer.max_epochs=2", "hydra.run.dir=ddp", cwd=tmp_path)
    run = assert_ok(out)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # Two ranks each see half of the 1294 training images: 5 batches of 128 per epoch.
    assert checkpoint["global_step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run dir for both ranks
    assert "test/nll" in json.loads((run / "metrics.json").read_text())


def test_tensorboard_logger_writes_event_files(tmp_path):
    run = assert_ok(run_dgmrun("logger=tensorboard", "trainer=debug", "hydra.run.dir=tb", cwd=tmp_path))
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_multirun_sweeps_and_survives_a_failing_job(tmp_path):
    out = run_dgmrun("-m", "trainer=debug", "model.latent_dim=4,-1,8", "hydra.sweep.dir=sweep", cwd=tmp_path)
    jobs = sorted((tmp_path / "sweep").iterdir())
    finished = [j for j in jobs if (j / "metrics.json").is_file()]
    assert len(finished) == 2, out.stdout + out.stderr
    assert "model.latent_dim must be > 0" in out.stderr


def test_optuna_search_preset_runs_trials_and_reports_the_best(tmp_path):
    out = run_dgmrun("hparams_search=vae_optuna", "trainer=debug", "hydra.sweeper.n_trials=2", "hydra.sweep.dir=opt",
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = (tmp_path / "opt" / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model.latent_dim" in results
    assert len([d for d in (tmp_path / "opt").iterdir() if (d / "metrics.json").is_file()]) == 2
