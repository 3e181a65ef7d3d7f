"""Training paths in process with a real Lightning Trainer: LR schedules, bf16 mixed precision, and the
checkpoints' write interval."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from dgmrun.checkpoint import AtomicCheckpointIO
from dgmrun.models.base import build_model
from dgmrun.schema import validate
from dgmrun.tasks.train import train


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


@pytest.mark.parametrize("every", [0, 10**6])
def test_checkpoints_kept_in_memory_between_writes_end_as_the_last_and_the_best(cfg_factory, monkeypatch, every):
    """task.checkpoint_every_s=0 writes both files at every epoch; a long interval writes each when first due
    and then once at the end, and the files hold the same states: the last step, and the best epoch's."""
    written: list[tuple[str, int]] = []
    save = AtomicCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, storage_options=None):
        written.append((Path(path).name, checkpoint["global_step"]))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    cfg = cfg_factory("trainer.max_epochs=4", "trainer.limit_train_batches=3", "task.test=false", "sample.num=8",
                      f"task.checkpoint_every_s={every}", "model.latent_dim=4")
    validate(cfg)
    train(cfg)
    out = Path(cfg.paths.output_dir)
    with open(out / "csv" / "metrics.csv", newline="") as f:
        val = [(float(row["val/loss"]), int(row["step"])) for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(val) == 4
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (3, 12)
    assert best["global_step"] == min(val)[1] + 1  # Lightning logs an epoch's validation at its last step - 1
    last_writes = [step for name, step in written if name == "last.ckpt"]
    if every == 0:
        assert last_writes == [3, 6, 9, 12]
    else:
        assert last_writes == [3, 12] and len(written) <= 4


def test_channels_last_trains_the_conv_nets_in_that_order_and_checkpoints_load_eagerly(cfg_factory, monkeypatch):
    """trainer.channels_last=true through the train task: the conv weights are channels-last while training,
    and the checkpoint's parameter names are those of a model built without it."""
    seen: list[bool] = []

    class Order(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            convs = [p for p in pl_module.parameters() if p.dim() == 4]
            seen.append(bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs))

    import dgmrun.tasks.train as train_task

    cfg = cfg_factory("trainer.channels_last=true", "model.arch=conv", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "task.test=false", "sample.num=4", "model.latent_dim=4")
    validate(cfg)
    original = train_task.make_trainer
    monkeypatch.setattr(train_task, "make_trainer",
                        lambda cfg, callbacks, **kw: original(cfg, [*callbacks, Order()], **kw))
    train(cfg)
    assert seen == [True, True]
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    eager = build_model(cfg.model, instantiate(cfg.data).info)
    eager.load_state_dict(state)  # strict: the same names


def test_compile_compiles_each_network_forward_and_keeps_outputs_and_names():
    from torch._dynamo.utils import counters

    from dgmrun.callbacks import NetworkSpeedups

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
            self.scale = torch.nn.Parameter(torch.ones(()))  # not a network: left alone

    torch.manual_seed(0)
    model, x = Model(), torch.randn(5, 3)
    names, eager = list(model.state_dict()), model.net(x)
    counters.clear()
    speedups = NetworkSpeedups(compile=True, channels_last=False)
    speedups.setup(None, model, "fit")
    torch.testing.assert_close(model.net(x), eager)
    assert counters["frames"]["ok"] >= 1  # a graph was captured and run
    assert list(model.state_dict()) == names
    compiled = model.net.forward
    speedups.setup(None, model, "test")  # the test after fit: not compiled again
    assert model.net.forward is compiled
