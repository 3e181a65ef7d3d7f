"""The GAN family: losses and penalty against hand computations, the training loop's bookkeeping
(n_critic, max_steps, EMA, NaN stop), packing, images, bf16 and DDP."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from dgmrun.data.datamodule import Toy2D
from dgmrun.errors import DgmrunError
from dgmrun.models.ema import EMA
from dgmrun.models.gan import GAN, LOSSES, gradient_penalty
from dgmrun.nets.gan_blocks import MinibatchStd, pack_samples, raw_weight
from tests.conftest import run_dgmrun

TOY = {"name": "toy2d", "shape": [2], "num_classes": 8, "levels": None}


def sp(v: float) -> float:  # softplus
    return math.log1p(math.exp(v))


# ------------------------------------------------------------------------------------ losses
R = torch.tensor([0.5, -1.0])  # D's logits on real data
Fk = torch.tensor([0.5, 0.25])  # D's logits on fake data (inside every loss's non-flat region)

EXPECTED = {  # name: (d_loss, g_loss), by hand from the formulas in gan.py's docstring
    "minimax": ((sp(-0.5) + sp(1)) / 2 + (sp(0.5) + sp(0.25)) / 2, -(sp(0.5) + sp(0.25)) / 2),
    "ns": ((sp(-0.5) + sp(1)) / 2 + (sp(0.5) + sp(0.25)) / 2, (sp(-0.5) + sp(-0.25)) / 2),
    "wgan": (0.375 + 0.25, -0.375),
    "wgan_gp": (0.375 + 0.25, -0.375),
    "lsgan": (0.5 * (0.25 + 4) / 2 + 0.5 * (0.25 + 0.0625) / 2, 0.5 * (0.25 + 0.5625) / 2),
    "hinge": ((0.5 + 2) / 2 + (1.5 + 1.25) / 2, -0.375),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_values_and_gradient_signs(name):
    d_fn, g_fn = LOSSES[name]
    real, fake = R.clone().requires_grad_(True), Fk.clone().requires_grad_(True)
    d = d_fn(real, fake)
    assert d.item() == pytest.approx(EXPECTED[name][0], abs=1e-5)
    d.backward()
    # Minimising D's loss raises its scores on real data and lowers them on fake data.
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake2 = Fk.clone().requires_grad_(True)
    g = g_fn(fake2)
    assert g.item() == pytest.approx(EXPECTED[name][1], abs=1e-5)
    g.backward()
    assert (fake2.grad < 0).all()  # G's loss falls as D scores G's samples higher


def test_minimax_generator_saturates_where_non_saturating_does_not():
    confident = torch.tensor([-8.0], requires_grad=True)  # D rejects the sample with certainty
    LOSSES["minimax"][1](confident).backward()
    minimax_grad = confident.grad.abs().item()
    confident.grad = None
    LOSSES["ns"][1](confident).backward()
    assert minimax_grad < 1e-3 < confident.grad.abs().item()


@pytest.mark.parametrize("pack", [1, 2])
def test_gradient_penalty_of_a_linear_critic(pack):
    torch.manual_seed(0)
    w = torch.tensor([3.0, 4.0, 0.0, 12.0][: 2 * pack])  # ||w|| = 5 (pack 1) or 13 (pack 2)
    critic = lambda x: pack_samples(x, pack) @ w
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    gp = gradient_penalty(critic, real, fake, pack)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_interpolates_between_real_and_fake():
    # D(x) = ||x||^2 / 2 has gradient x: at e = 0.25 the interpolate is 0.25 real + 0.75 fake.
    real, fake = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    gp = gradient_penalty(lambda x: 0.5 * (x**2).sum(1), real, fake, eps=torch.tensor([0.25]))
    assert gp.item() == pytest.approx((1.0 - 1) ** 2) and gp.item() == 0.0
    gp = gradient_penalty(lambda x: 0.5 * (x**2).sum(1), real, fake, eps=torch.tensor([1.0]))
    assert gp.item() == pytest.approx(9.0)


# ------------------------------------------------------------------------------------ packing, blocks
def test_packing_shapes():
    x = torch.arange(12.0).view(6, 2)
    packed = pack_samples(x, 3)
    assert packed.shape == (2, 6) and packed[0].tolist() == [0, 1, 2, 3, 4, 5]
    images = torch.rand(6, 1, 4, 4)
    assert pack_samples(images, 2).shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="divisible"):
        pack_samples(x[:5], 2)
    model = GAN.build(TOY, pack=4)
    assert model.discriminator.body[1].in_features == 8
    assert model.critic(torch.randn(16, 2)).shape == (4, 1)


def test_minibatch_std_feature():
    h = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # per-feature std (biased): 1 and 0 -> mean 0.5
    out = MinibatchStd()(h)
    assert out.shape == (2, 3) and out[:, 2].tolist() == pytest.approx([0.5, 0.5], abs=1e-3)
    assert MinibatchStd()(torch.rand(4, 3, 5, 5)).shape == (4, 4, 5, 5)


@pytest.mark.parametrize("noise,variance", [("normal", 1.0), ("uniform", 1 / 3)])
def test_noise_distribution(noise, variance):
    z = GAN.build(TOY, noise=noise, latent_dim=8).sample_latent(20_000, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(0.0, abs=0.01) and z.var().item() == pytest.approx(variance, rel=0.02)
    assert (z.abs().max() <= 1) == (noise == "uniform")


MNIST = {"name": "mnist", "shape": [1, 28, 28], "num_classes": 10, "levels": 256}


def _saturated(model: GAN) -> float:
    """The fraction of G's output pixels at |tanh| > 0.99 for 64 fresh z (train-mode batch norm)."""
    with torch.no_grad():
        return (model.generator(model.sample_latent(64)).abs() > 0.99).float().mean().item()


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dcgan_init_draws_the_papers_weights_and_the_ema_starts_from_them(spectral_norm):
    torch.manual_seed(0)
    model = GAN.build(MNIST, arch="dcgan", init="dcgan", fc_dim=256, d_batch_norm=True, spectral_norm=spectral_norm)
    layers = [m for net in (model.generator, model.discriminator) for m in net.modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(layers) == 13  # G: 2 linear, 2 conv, 3 batch norms; D: 2 conv, 2 linear, 2 batch norms
    for layer in layers:
        weight = raw_weight(layer)
        centre = 1.0 if isinstance(layer, nn.modules.batchnorm._BatchNorm) else 0.0
        assert weight.mean().item() == pytest.approx(centre, abs=0.01)
        if weight.numel() >= 1000:
            assert weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert layer.bias is None or not layer.bias.any()
    shadows = dict(zip(model.ema.names, model.ema._shadows()))
    assert torch.equal(shadows["0.weight"], model.generator[0].weight)
    # PyTorch's default init saturates the tanh of a one-channel G on about a tenth of its pixels before the
    # first step; Radford et al.'s on none
    assert _saturated(model) == 0.0
    torch.manual_seed(0)
    assert _saturated(GAN.build(MNIST, arch="dcgan", fc_dim=256)) > 0.05


# ------------------------------------------------------------------------------------ EMA
def test_ema_average_and_swap_restore_around_sampling():
    model = GAN.build(TOY, ema_decay=0.5)
    live = {k: v.clone() for k, v in model.generator.state_dict().items()}
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.ema.num_updates.fill_(10**6)  # past the decay's warm-up (tested below)
    model.ema.update(model.generator)  # shadow = 0.5 old + 0.5 (old + 1) = old + 0.5
    trained = {k: v.clone() for k, v in model.generator.state_dict().items()}
    shadow_first = model.ema._shadows()[0]
    assert torch.allclose(shadow_first, live[model.ema.names[0]] + 0.5)

    z = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(1))
    with model.ema_generator():
        expected = model.generator(z)  # the averaged weights are in place inside the context
        assert torch.allclose(next(model.generator.parameters()), shadow_first)
    samples = model.sample(5, torch.Generator().manual_seed(1))
    assert torch.allclose(samples, expected)
    for k, v in model.generator.state_dict().items():  # the trained weights are back
        assert torch.equal(v, trained[k]), k
    # and the samples differ from those of the trained weights
    assert not torch.allclose(samples, model.generator(z))


def test_ema_decay_warms_up_and_old_checkpoints_count_as_warmed_up():
    net = nn.Linear(1, 1, bias=False)
    ema = EMA(net, 0.9)
    with torch.no_grad():
        net.weight.fill_(0.0)
        ema._shadows()[0].fill_(0.0)
    expected = 0.0
    for n in range(12):  # decay min(0.9, (1 + n) / (10 + n)): 0.1, 0.18, ..., then 0.9 from n = 80 on
        with torch.no_grad():
            net.weight.fill_(float(n + 1))
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * (n + 1)
        ema.update(net)
        assert ema._shadows()[0].item() == pytest.approx(expected, rel=1e-6)
    old = {k: v for k, v in ema.state_dict().items() if k != "num_updates"}  # written before the warm-up existed
    fresh = EMA(nn.Linear(1, 1, bias=False), 0.9)
    fresh.load_state_dict(old)
    assert fresh.current_decay() == 0.9


def test_ema_restores_weights_after_an_error():
    net = nn.Linear(2, 2)
    ema = EMA(net, 0.9)
    with torch.no_grad():
        net.weight.add_(1.0)
    before = net.weight.detach().clone()
    with pytest.raises(RuntimeError), ema.swapped(net):
        raise RuntimeError("boom")
    assert torch.equal(net.weight, before)


def test_sampling_uses_only_its_generator():
    model = GAN.build(TOY)
    a = model.sample(10, torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    b = model.sample(10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (10, 2)


# ------------------------------------------------------------------------------------ the loop
def toy_data(n: int = 512, batch_size: int = 64) -> Toy2D:
    return Toy2D.build(num_train=n, num_val=64, num_test=64, batch_size=batch_size, seed=0)


def fit(model: GAN, datamodule, **trainer_args) -> pl.Trainer:
    args = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "log_every_n_steps": 1, "max_epochs": 1}
    args.update(trainer_args)
    trainer = pl.Trainer(**args)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    return int(state["step"]) if state else 0


def small_gan(**kw) -> GAN:
    kw = {"g_hidden_dims": [16], "d_hidden_dims": [16], **kw}
    return GAN.build(TOY, **kw)


@pytest.mark.parametrize("n_critic", [1, 3])
def test_n_critic_d_steps_per_g_step_and_global_step(n_critic):
    model = small_gan(n_critic=n_critic)
    trainer = fit(model, toy_data(), limit_train_batches=6)
    opt_d, opt_g = (o.optimizer for o in model.optimizers())
    assert adam_steps(opt_d) == 6
    assert adam_steps(opt_g) == 6 // n_critic
    assert trainer.global_step == 6 + 6 // n_critic  # global_step counts D and G updates
    assert trainer.callback_metrics["train/d_grad_norm"] > 0
    assert "train/g_loss" in trainer.callback_metrics


def test_losses_and_grad_norms_reach_the_logger_on_its_steps(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    model = small_gan()
    fit(model, toy_data(), limit_train_batches=8, max_epochs=2, log_every_n_steps=3,
        logger=CSVLogger(tmp_path, name="", version=""))
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/d_loss")]
    # 16 batches across the two epochs: Lightning writes after batches 3, 6, 9, 12 and 15 (its step 2, 5, ...)
    assert [int(r["step"]) for r in rows] == [2, 5, 8, 11, 14]
    assert all(float(r["train/d_grad_norm"]) > 0 and float(r["train/g_grad_norm"]) > 0 for r in rows)


def test_n_critic_cycle_continues_across_epochs():
    model = small_gan(n_critic=3)
    fit(model, toy_data(n=256), max_epochs=2)  # 4 batches per epoch: D D D G | D ; D D G D D
    opt_d, opt_g = (o.optimizer for o in model.optimizers())
    assert (adam_steps(opt_d), adam_steps(opt_g)) == (8, 2)


def test_max_steps_counts_both_players():
    model = small_gan()
    trainer = fit(model, toy_data(), max_steps=10, max_epochs=-1)
    opt_d, opt_g = (o.optimizer for o in model.optimizers())
    assert trainer.global_step == 10 and (adam_steps(opt_d), adam_steps(opt_g)) == (5, 5)


def test_cosine_schedule_spans_each_players_updates():
    model = small_gan(n_critic=2, scheduler={"name": "cosine"})
    fit(model, toy_data(), max_steps=12, max_epochs=-1)  # cycles D D G: 8 D and 4 G updates
    opt_d, opt_g = (o.optimizer for o in model.optimizers())
    assert (adam_steps(opt_d), adam_steps(opt_g)) == (8, 4)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_warmup_schedule_steps_with_each_players_updates():
    """Linear warm-up over 8 updates, for D after each of its updates and for G after each of its own."""
    model = small_gan(n_critic=2, scheduler={"name": "warmup", "warmup_steps": 8})
    fit(model, toy_data(), max_steps=12, max_epochs=-1)  # 8 D and 4 G updates
    opt_d, opt_g = (o.optimizer for o in model.optimizers())
    assert opt_d.param_groups[0]["lr"] == pytest.approx(1e-3)  # warmed up: min(1, (8 + 1) / 8) of lr
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 5 / 8)


def test_max_time_stops_the_run():
    model = small_gan()
    trainer = fit(model, toy_data(n=100_000, batch_size=64), max_epochs=-1, max_time={"seconds": 2})
    assert 0 < trainer.global_step < 2 * 100_000 // 64


def test_nan_loss_stops_with_a_clear_error():
    model = small_gan()
    with torch.no_grad():
        model.discriminator.head.bias.fill_(float("nan"))
    with pytest.raises(DgmrunError, match=r"train/d_loss is nan at global step 0 .*epoch 0, batch 0"):
        fit(model, toy_data(), limit_train_batches=2)


def test_generator_nan_is_named():
    model = small_gan()
    with torch.no_grad():
        model.generator[-1].bias.fill_(float("inf"))
    with pytest.raises(DgmrunError, match=r"train/(d|g)_loss is nan"):
        fit(model, toy_data(), limit_train_batches=2)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_with_every_remedy(loss):
    model = small_gan(loss=loss, spectral_norm=True, minibatch_std=True, pack=4,
                      scheduler={"name": "cosine"})
    trainer = fit(model, toy_data(n=256), limit_train_batches=3)
    assert trainer.global_step == 6
    if loss == "wgan":
        assert all(p.abs().max() <= model.clip + 1e-7 for p in model.discriminator.parameters())
    if loss == "wgan_gp":
        assert "train/gp" in trainer.callback_metrics


def test_bf16_mixed_precision_smoke():
    model = small_gan(loss="wgan_gp")
    trainer = fit(model, toy_data(n=256), limit_train_batches=3, precision="bf16-mixed")
    assert trainer.global_step == 6
    samples = model.sample(8, torch.Generator().manual_seed(0))
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()


def test_dcgan_preset_on_mnist_trains_and_samples_images(mnist_small, cfg_factory):
    from hydra.utils import instantiate

    from dgmrun.models.base import build_model
    from dgmrun.schema import validate

    cfg = cfg_factory("model=dcgan", "data=mnist", f"data.root={mnist_small}", "data.batch_size=16",
                      "model.g_channels=[8,16]", "model.d_channels=[8,16]", "model.latent_dim=8")
    validate(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule.info)
    assert model.arch == "dcgan" and model.pack == 2 and model.ema is not None
    assert datamodule.info.levels == 256  # data.binarize=auto: a GAN learns the grey levels
    trainer = fit(model, datamodule, limit_train_batches=3)
    assert trainer.global_step == 6
    model.eval()
    samples = model.sample(6, torch.Generator().manual_seed(0))
    assert samples.shape == (6, 1, 28, 28)
    assert samples.min() >= 0 and samples.max() <= 1


def test_schema_refuses_bad_values(cfg_factory):
    from dgmrun.schema import validate

    for bad, message in [("model.loss=wgan_xx", "model.loss"), ("model.pack=0", "model.pack"),
                         ("model.ema_decay=1.5", "model.ema_decay"), ("model.arch=dcgan", "needs images"),
                         ("model.optimizer_d.name=adagrad", "model.optimizer_d.name"),
                         ("model.optimizer_g.lr=0", "model.optimizer_g.lr"),
                         ("model.noise=gaussian", "model.noise"), ("model.fc_dim=0", "model.fc_dim")]:
        cfg = cfg_factory("model=gan", "data=toy2d", bad)
        with pytest.raises(DgmrunError, match=message):
            validate(cfg)
    cfg = cfg_factory("model=dcgan", "data=mnist", "model.loss=wgan_gp", "model.d_batch_norm=true")
    with pytest.raises(DgmrunError, match="does not go with model.loss=wgan_gp"):
        validate(cfg)


@pytest.mark.parametrize("preset,key,value", [("dcgan", "arch", "dcgan"), ("wgan_gp", "n_critic", 5),
                                              ("wgan", "loss", "wgan"), ("lsgan", "loss", "lsgan"),
                                              ("sngan", "spectral_norm", True)])
def test_presets_extend_the_gan(cfg_factory, preset, key, value):
    from dgmrun.schema import validate

    cfg = cfg_factory(f"model={preset}", "data=mnist")
    assert cfg.model._target_ == "dgmrun.models.gan.GAN" and cfg.model[key] == value
    assert "pack" in cfg.model  # the rest comes from gan.yaml
    validate(cfg)


def test_each_player_gets_the_optimizer_it_names():
    model = small_gan(loss="wgan", optimizer_d={"name": "rmsprop", "lr": 5e-5}, optimizer_g={"lr": 1e-3},
                      scheduler=None)
    opt_d, opt_g = model.configure_optimizers()
    assert isinstance(opt_d, torch.optim.RMSprop) and opt_d.param_groups[0]["lr"] == 5e-5
    assert isinstance(opt_g, torch.optim.Adam) and opt_g.param_groups[0]["betas"] == (0.5, 0.999)
    assert {id(p) for p in opt_d.param_groups[0]["params"]} == {id(p) for p in model.discriminator.parameters()}


def test_gan_trains_under_ddp_cpu_through_the_cli(tmp_path):
    out = run_dgmrun("model=gan", "data=toy2d", "data.num_train=2048", "trainer=ddp_cpu", "trainer.max_steps=20",
                     "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                     timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/modes_total"] == 8 and "train/d_loss" in metrics
