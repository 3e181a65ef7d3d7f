"""Resuming ``task=train`` from a checkpoint: a killed and resumed run ends where the uninterrupted one
does, to the bit; it continues in the checkpoint's run dir, to the checkpoint's budget, with its logs.

Each run is the real train task in process (real Trainer, data and files, on the CPU). A run is "killed"
by a callback that, at a given batch, optionally writes ``checkpoints/last.ckpt`` there with
``trainer.save_checkpoint`` (what SIGTERM does) and then raises; without that write the run dies
after its last epoch-end checkpoint, as on a SIGKILL.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import dgmrun.tasks.train as train_task
from dgmrun.schema import validate
from tests.conftest import compose_config

QUIET = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
         "trainer.log_every_n_steps=1", "sample.every_n_epochs=0", "sample.num=8"]
VAE = ["eval.num_importance_samples=4"]
GAN = ["model=gan", "data=toy2d", "data.num_train=1024", "data.num_val=256", "data.num_test=256", "eval.num_samples=256"]
RBM = ["model=rbm", "model.persistent=true", "model.hidden_dim=32", "model.num_chains=20", "model.sample_gibbs_steps=20",
       "eval.ais_chains=8", "eval.ais_betas=30"]


class Killed(Exception):
    pass


class KillAt(pl.Callback):
    """Ends the run with an exception before its training batch ``batches + 1``; when ``save``, it wrote
    last.ckpt at the end of batch ``batches`` (as SIGTERM handling does: checkpoint, then stop)."""

    def __init__(self, batches: int, save: bool) -> None:
        self.batches, self.save, self.seen = batches, save, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.batches and self.save:
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.batches:
            raise Killed


def train(run: Path, *overrides: str) -> None:
    cfg = compose_config([*QUIET, *overrides], run)
    validate(cfg)
    train_task.train(cfg)


def metrics(run: Path) -> dict:
    """Everything in metrics.json but the wall-clock throughput."""
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if not k.startswith("perf/")}


def killed(monkeypatch, run: Path, batches: int, save: bool, *overrides: str) -> None:
    real = train_task.make_trainer
    with monkeypatch.context() as m:
        m.setattr(train_task, "make_trainer", lambda cfg, callbacks, **kw:
                  real(cfg, [*callbacks, KillAt(batches, save)], **kw))
        with pytest.raises(Killed):
            train(run, *overrides)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


def csv_rows(run: Path) -> list[dict]:
    """The values in metrics.csv but the wall-clock throughput. A value logged only in some steps (the
    RBM logs every 10th batch) is repeated by Lightning in the steps after it, up to the epoch's end; a
    resumed part has no such repeats of the values before it, so repeats are dropped."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if not k.startswith("perf/") and v != ""} for row in csv.DictReader(f)]
    values = [{k: v for k, v in row.items() if k != "step"} for row in rows]
    return [row for i, row in enumerate(rows) if row.keys() - {"step", "epoch"} and values[i] not in values[:i]]


@pytest.mark.parametrize("overrides,budget,kill_after,save", [
    (VAE, ["trainer.max_epochs=2"], 13, True),     # 10 batches an epoch: killed in the middle of the 2nd
    (VAE, ["trainer.max_epochs=2"], 15, False),    # dies in the 2nd epoch: resumes from the end of the 1st
    (GAN, ["trainer.max_epochs=2"], 5, True),      # 4 batches (8 optimizer steps) an epoch; two optimizers
    (RBM, ["trainer.max_epochs=3"], 14, True),     # persistent chains (train/* logged on every 10th batch only:
                                                   # the epoch after the kill must log them for metrics.json)
], ids=["vae-mid-epoch", "vae-epoch-end", "gan-mid-epoch", "rbm-pcd-mid-epoch"])
def test_killed_and_resumed_run_ends_bit_identical(tmp_path, monkeypatch, overrides, budget, kill_after, save):
    """Resumed with no trainer options, the run finishes its own budget (not the default 50 epochs) in
    its own run dir, with the weights, best checkpoint, metrics and CSV log of the uninterrupted run."""
    assert_resume_is_exact(tmp_path, monkeypatch, overrides, budget, kill_after, save)


def test_image_folder_read_by_workers_resumes_bit_identical(tmp_path, monkeypatch):
    """Files decoded by two DataLoader workers, dynamically binarized: the same order and draws after a resume."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    data = ["data=image_folder", f"data.root={folder}", "data.image_size=8", "data.channels=1", "data.batch_size=8",
            "data.binarize=dynamic", "data.num_workers=2", "data.eval_batch_size=8"]
    # 32 training images: 4 batches an epoch, killed in the middle of the 2nd
    assert_resume_is_exact(tmp_path, monkeypatch, [*VAE, *data], ["trainer.max_epochs=2"], 6, True)


def assert_resume_is_exact(tmp_path, monkeypatch, overrides, budget, kill_after, save):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(whole, *overrides, *budget)
    killed(monkeypatch, parts, kill_after, save, *overrides, *budget)
    train(tmp_path / "resume_cmd", *overrides, f"ckpt_path={parts}")  # continues in parts
    assert not (tmp_path / "resume_cmd" / "metrics.json").exists()
    assert_same_weights(whole / "checkpoints" / "last.ckpt", parts / "checkpoints" / "last.ckpt")
    if (whole / "checkpoints" / "best.ckpt").exists():  # the best epoch over the whole run, not the resumed part
        assert_same_weights(whole / "checkpoints" / "best.ckpt", parts / "checkpoints" / "best.ckpt")
    assert metrics(parts) == metrics(whole)
    assert csv_rows(parts) == csv_rows(whole)


def test_a_requeued_slurm_job_resumes_from_its_run_dir(tmp_path, monkeypatch):
    """A SLURM job started again after a preemption (the same command: the same run dir, see
    ``dgmrun.schema.run_stamp``) resumes from the last checkpoint there without being told, and ends as the
    uninterrupted run."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(whole, *VAE, "trainer.max_epochs=2")
    killed(monkeypatch, parts, 13, True, *VAE, "trainer.max_epochs=2")
    counter = KillAt(batches=-1, save=False)  # counts the batches trained, kills none
    real = train_task.make_trainer
    monkeypatch.setattr(train_task, "make_trainer", lambda cfg, callbacks, **kw: real(cfg, [*callbacks, counter], **kw))
    train(parts, *VAE, "trainer.max_epochs=2")  # the requeued job's start
    assert counter.seen == 20 - 13  # the rest of the 2 epochs of 10 batches, not a new start
    assert_same_weights(whole / "checkpoints" / "last.ckpt", parts / "checkpoints" / "last.ckpt")
    assert metrics(parts) == metrics(whole)
    assert csv_rows(parts) == csv_rows(whole)


def test_trainer_options_on_the_command_line_extend_the_budget(tmp_path):
    """... and TensorBoard goes on in the same dir: a second event file, its steps after the first's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(run, *VAE, "logger=tensorboard", "trainer.max_epochs=1", "task.test=false")
    train(tmp_path / "cmd", *VAE, "logger=tensorboard", "trainer.max_epochs=2", "task.test=false", f"ckpt_path={run}")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["dgmrun"]["config"]["trainer"]["max_epochs"] == 2
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    steps = []
    for f in files:
        events = EventAccumulator(str(f))
        events.Reload()
        steps.append([e.step for e in events.Scalars("train/loss")])
    assert len(files) == 2 and max(steps[0]) < min(steps[1]) and len(steps[0]) + len(steps[1]) == checkpoint["global_step"]


def test_resume_into_a_run_dir_of_its_own_keeps_the_first_run(tmp_path):
    """hydra.run.dir=... (or a checkpoint other than last.ckpt) starts a run dir of its own from the
    checkpoint; the first run's files stay as they were."""
    run = tmp_path / "run"
    train(run, *VAE, "trainer.max_epochs=1", "task.test=false")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    cfg = compose_config([*QUIET, *VAE, "task.test=false", "trainer.max_epochs=2", f"ckpt_path={run}",
                          "hydra.run.dir=elsewhere"],
                         tmp_path / "elsewhere")
    validate(cfg)
    train_task.train(cfg)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    resumed = torch.load(tmp_path / "elsewhere" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["dgmrun"]["config"]["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")


@pytest.mark.slow  # wandb's service process: ~20 s
def test_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    """The wandb run id is fixed when the run starts (logger.id, stored in its checkpoints); resumed in its
    run dir, the run logs to that same wandb run."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    wandb = ["logger=wandb", "logger.mode=offline", "task.test=false"]
    train(run, *VAE, *wandb, "trainer.max_epochs=1")
    run_id = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["dgmrun"]["config"]["logger"]["id"]
    train(tmp_path / "cmd", *VAE, *wandb, "trainer.max_epochs=2", f"ckpt_path={run}")
    parts = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and all(name.endswith(f"-{run_id}") for name in parts), parts


@pytest.mark.parametrize("resume_overrides,expected", [
    ([], {"max_epochs": 6, "max_steps": 700, "max_time": "00:01:00:00", "accelerator": "auto"}),
    (["trainer=cpu"], {"max_epochs": 6, "max_steps": 700, "max_time": "00:01:00:00", "accelerator": "cpu"}),
    (["trainer.max_epochs=20", "trainer.max_time=null"], {"max_epochs": 20, "max_steps": 700, "max_time": None}),
])
def test_resumed_training_keeps_the_checkpoints_budget_unless_the_command_line_sets_it(
        cfg_factory, resume_overrides, expected):
    """The budget keys come from the stored trainer group; the rest of the trainer (a group chosen anew,
    trainer=cpu) and every budget key set on the command line come from this command."""
    from dgmrun.checkpoint import merge_with_checkpoint

    stored = cfg_factory("trainer=gpu", "trainer.max_epochs=6", "trainer.max_steps=700", "trainer.max_time=00:01:00:00")
    overrides = [*resume_overrides, "ckpt_path=x.ckpt"]
    merged = merge_with_checkpoint(cfg_factory(*overrides), OmegaConf.to_container(stored), overrides)
    assert {k: merged.trainer[k] for k in expected} == expected


def test_resuming_keeps_the_runs_own_trainer_eval_and_task_settings(tmp_path):
    """Only the budget was kept before: a resumed run lost its gradient clipping, logging interval and the
    test's protocol (a preset's k = 5,000 importance samples fell back to the default 100)."""
    run = tmp_path / "run"
    train(run, *VAE, "trainer.max_epochs=1", "trainer.gradient_clip_val=0.5", "task.test=false",
          "task.checkpoint_every_s=7", "trainer.limit_train_batches=3")
    train(tmp_path / "cmd", "trainer.max_epochs=2", "trainer.accelerator=cpu", f"ckpt_path={run}")
    stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["dgmrun"]["config"]
    assert stored["trainer"]["max_epochs"] == 2  # the command line's
    assert (stored["trainer"]["gradient_clip_val"], stored["trainer"]["limit_train_batches"]) == (0.5, 3)
    assert stored["eval"]["num_importance_samples"] == 4
    assert (stored["task"]["test"], stored["task"]["checkpoint_every_s"]) == (False, 7)
    assert not (run / "metrics.json").exists() or "test/nll" not in json.loads((run / "metrics.json").read_text())


def test_steps_per_execution_makes_the_same_updates_and_curves(tmp_path):
    """trainer.steps_per_execution=2 (two updates per Lightning batch) trains
    the weights bit for bit as one update per batch does, with a per-step cosine schedule and gradient
    clipping, and writes the same curves and metrics."""
    settings = [*VAE, "trainer.max_epochs=2", "model.scheduler={name: cosine}", "trainer.gradient_clip_val=1.0", "trainer.log_every_n_steps=2"]
    one, grouped = tmp_path / "one", tmp_path / "grouped"
    train(one, *settings)
    train(grouped, *settings, "trainer.steps_per_execution=2")
    assert_same_weights(one / "checkpoints" / "last.ckpt", grouped / "checkpoints" / "last.ckpt")
    assert csv_rows(grouped) == csv_rows(one)
    assert metrics(grouped) == metrics(one)
