"""DDPM: the forward chain, posteriors, parameterizations, samplers and the bound against what can be
computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dgmrun.data.info import DataInfo
from dgmrun.models.ddpm import DDPM, GaussianDiffusion, discretized_gaussian_log_prob, make_betas
from dgmrun.nets.unet import UNet
from dgmrun.schema.diffusion import auto_channel_mult

torch.set_num_threads(1)

POINTS = DataInfo(name="toy2d", shape=(2,)).to_dict()
DIGITS = DataInfo(name="digits", shape=(1, 8, 8), num_classes=10, levels=17).to_dict()


def tiny_ddpm(info=POINTS, **kw) -> DDPM:
    args = dict(num_timesteps=50, hidden_dims=[32, 32], base_channels=16, num_res_blocks=1, attention_resolutions=[4],
                dropout=0.0, ema_decay=None)
    torch.manual_seed(0)
    model = DDPM.build(info, **{**args, **kw}).eval()
    # Random (not zero) output layers, so that the samplers have a non-trivial prediction to follow.
    for p in model.net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_closed_form_q_xt_given_x0_matches_iterating_the_forward_chain(schedule):
    d = GaussianDiffusion(schedule, 100)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.7, -0.3])
    x = x0.expand(200_000, 2).clone()
    for t in range(60):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
        x = (1 - d.betas[t]).sqrt() * x + d.betas[t].sqrt() * torch.randn(x.shape, generator=gen)
    ab = d.alpha_bar[59]
    torch.testing.assert_close(x.mean(0), ab.sqrt() * x0, atol=5e-3, rtol=0)
    torch.testing.assert_close(x.var(0), (1 - ab).expand(2), atol=5e-3, rtol=0)
    closed = d.q_sample(x0.expand(200_000, 2), torch.full((200_000,), 59), torch.randn(200_000, 2, generator=gen))
    torch.testing.assert_close(closed.mean(0), x.mean(0), atol=8e-3, rtol=0)


def test_schedules_follow_their_definitions():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    cosine = make_betas("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert torch.cumprod(1 - cosine, 0)[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)
    assert cosine.max().item() <= 0.999


def test_posterior_mean_and_variance_against_a_hand_computation():
    d = GaussianDiffusion("linear", 1000)
    t = 300
    beta, ab, ab_prev = d.betas[t].double(), d.alpha_bar[t].double(), d.alpha_bar[t - 1].double()
    x0, xt = torch.tensor([[0.5]]), torch.tensor([[-0.2]])
    mean, logvar = d.q_posterior(x0, xt, torch.tensor([t]))
    # Ho et al. eq. 7, written out.
    expected_mean = ab_prev.sqrt() * beta / (1 - ab) * 0.5 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * -0.2
    expected_var = (1 - ab_prev) / (1 - ab) * beta
    assert mean.item() == pytest.approx(expected_mean.item(), rel=1e-5)
    assert logvar.exp().item() == pytest.approx(expected_var.item(), rel=1e-5)


def test_eps_x0_and_v_parameterizations_convert_into_each_other_exactly():
    d = GaussianDiffusion("cosine", 200)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(64, 3, generator=gen), torch.randn(64, 3, generator=gen)
    t = torch.randint(200, (64,), generator=gen)
    xt = d.q_sample(x0, t, noise)
    for prediction in ("eps", "x0", "v"):
        got_x0, got_eps = d.to_x0_and_eps(d.target(x0, noise, t, prediction), xt, t, prediction)
        torch.testing.assert_close(got_x0, x0, atol=2e-3, rtol=1e-3)  # float32; 1/sqrt(abar) is large near T
        torch.testing.assert_close(got_eps, noise, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weight_makes_every_target_the_same_capped_x0_error(prediction):
    """Hang et al.'s loss is min(SNR_t, gamma) ||x0 - x0_hat||^2 whichever target the network predicts."""
    d = GaussianDiffusion("linear", 1000).double()
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(256, 4, generator=gen, dtype=torch.float64), torch.randn(256, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(1000, (256,), generator=gen)
    xt = d.q_sample(x0, t, noise)
    output = d.target(x0, noise, t, prediction) + 0.1 * torch.randn(256, 4, generator=gen, dtype=torch.float64)
    x0_hat, _ = d.to_x0_and_eps(output, xt, t, prediction)
    target_error = (output - d.target(x0, noise, t, prediction)).pow(2).sum(1)
    snr = d.alpha_bar[t] / (1 - d.alpha_bar[t])
    expected = snr.clamp(max=5.0) * (x0_hat - x0).pow(2).sum(1)
    torch.testing.assert_close(d.min_snr_weight(t, prediction, 5.0) * target_error, expected)
    assert (snr > 5).any() and (snr < 5).any()  # both sides of the cap were drawn


def test_ddim_eta_1_with_every_step_is_the_ddpm_sampler():
    model = tiny_ddpm()
    ddpm = model.sample(16, torch.Generator().manual_seed(3), sampler="ddpm")
    ddim = model.sample(16, torch.Generator().manual_seed(3), sampler="ddim", steps=50, eta=1.0)
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ddpm, model.sample(16, torch.Generator().manual_seed(4), sampler="ddpm"))


def test_ddim_eta_0_is_deterministic_given_the_starting_noise():
    model = tiny_ddpm()
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    steps = model.timesteps("ddim", 10)
    assert steps[0] == 49 and steps[-1] == 0 and len(steps) == 10
    a = model.reverse_chain(x_T.clone(), steps, torch.Generator().manual_seed(6), None, "ddim", 0.0, 1.0)
    b = model.reverse_chain(x_T.clone(), steps, torch.Generator().manual_seed(7), None, "ddim", 0.0, 1.0)
    assert torch.equal(a, b)


def test_guidance_weight_0_is_the_unconditional_prediction_and_1_the_conditional():
    model = tiny_ddpm(DIGITS, conditional=True)
    xt, t, y = torch.randn(4, 1, 8, 8), torch.tensor([5, 10, 20, 40]), torch.tensor([1, 2, 3, 4])
    null = torch.full_like(y, 10)
    _, eps_uncond = model.denoise(xt, t, null)
    _, eps_cond = model.denoise(xt, t, y)
    assert not torch.allclose(eps_uncond, eps_cond)
    torch.testing.assert_close(model.denoise(xt, t, y, guidance=0.0)[1], eps_uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.denoise(xt, t, y, guidance=1.0)[1], eps_cond, atol=1e-5, rtol=1e-5)


def test_sampling_with_ema_leaves_the_training_weights_untouched():
    model = tiny_ddpm(ema_decay=0.5)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)  # the average now differs from the weights
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.sample(4, torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())
    with model.averaged_weights() as net:
        assert not torch.equal(next(net.parameters()), before[next(iter(before))])


def test_prior_term_is_the_closed_form_kl():
    model = tiny_ddpm(DIGITS)
    x = torch.rand(3, 1, 8, 8)
    ab = model.diffusion.alpha_bar[-1].double()
    x0 = (2 * x - 1).double()
    # KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)) per pixel, summed.
    expected = (0.5 * (-torch.log(1 - ab) + (1 - ab) + ab * x0**2 - 1)).flatten(1).sum(1)
    torch.testing.assert_close(model.prior_term(x).double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_gaussian_sums_to_one_over_the_levels(levels):
    grid = torch.linspace(-1, 1, levels)
    for mean, log_scale in [(0.0, -1.0), (0.93, -4.0), (-1.3, 0.5), (0.2, -7.0)]:
        p = discretized_gaussian_log_prob(grid, torch.tensor(mean), torch.tensor(log_scale), levels).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (p >= 0).all()


def test_bound_is_finite_and_bits_per_dim_are_positive_for_digits():
    model = tiny_ddpm(DIGITS, num_timesteps=20)
    x = torch.randint(0, 17, (4, 1, 8, 8)).float() / 16
    nll = -model.log_likelihood(x)
    assert torch.isfinite(nll).all() and (nll > 0).all()  # a probability mass: -log P >= 0


@pytest.mark.parametrize("side,levels", [(8, 2), (28, 3), (32, 4)])
def test_unet_is_sized_from_the_image_and_returns_its_shape(side, levels):
    net = UNet(3, side, base_channels=16, channel_mult=auto_channel_mult(side), num_res_blocks=1,
               attention_resolutions=[side // 2], dropout=0.1)
    down = sum(1 for block in net.down if isinstance(block[0], torch.nn.Conv2d))
    assert down == levels - 1
    x = torch.randn(2, 3, side, side)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_monte_carlo_bound_is_unbiased_for_the_sum_of_all_terms():
    model = tiny_ddpm(POINTS, num_timesteps=20)
    x = torch.randn(4, 2)
    exact = torch.stack([model.negative_bound(x, torch.Generator().manual_seed(s)) for s in range(20)]).mean(0)
    model.eval_settings["bound_timesteps"] = 3
    assert model.nll_estimator == "vlb-T20-mc3"
    estimates = torch.stack([model.negative_bound(x, torch.Generator().manual_seed(100 + s)) for s in range(300)])
    stderr = estimates.std(0) / 300 ** 0.5
    assert ((estimates.mean(0) - exact).abs() < 4 * stderr + 0.05 * exact.abs().mean()).all()


def _fit_on_8_gaussians(cfg_factory, num_train: int, precision: str) -> DDPM:
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from dgmrun.models.base import build_model
    from dgmrun.schema import validate

    cfg = cfg_factory("model=ddpm", "data=toy2d", f"data.num_train={num_train}", "model.num_timesteps=100",
                      "model.hidden_dims=[128,128]", "model.ema_decay=null", "model.optimizer.lr=3e-3")
    validate(cfg)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, datamodule.info)
    pl.Trainer(max_epochs=8, precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", limit_val_batches=0).fit(model, datamodule=datamodule)
    return model.eval()


def test_ddpm_learns_the_8_gaussians_and_samples_with_ddim(cfg_factory):
    model = _fit_on_8_gaussians(cfg_factory, 20480, "32-true")
    samples = model.sampler(None, {"sampler": "ddim", "steps": 20, "eta": 0.0, "guidance": 1.0})(
        2000, torch.Generator().manual_seed(0))
    radius = samples.norm(dim=1)
    # The data lie on a ring of radius 2 (std 0.02). Untrained, the median of |radius - 2| is 0.85; after
    # these 640 steps 0.3-0.4 (and 0.08 after 1,500).
    assert (radius - 2).abs().median() < 0.5, (radius - 2).abs().median()


def test_ddpm_trains_under_bf16_autocast(cfg_factory):
    model = _fit_on_8_gaussians(cfg_factory, 512, "bf16-mixed")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.sample(8, torch.Generator().manual_seed(0), sampler="ddim", steps=5)).all()


@pytest.mark.slow
def test_ddpm_trains_under_ddp_cpu_and_samples_through_the_cli(tmp_path):
    from tests.conftest import run_dgmrun

    out = run_dgmrun("model=ddpm", "data=toy2d", "data.num_train=1024", "trainer=ddp_cpu", "trainer.max_steps=10",
                     "model.num_timesteps=50", "eval.bound_timesteps=5", "eval.num_samples=200", "sample.sampler=ddim",
                     "sample.steps=10", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/nll_estimator"] == "vlb-T50-mc5" and math.isfinite(metrics["test/nll"])
    out = run_dgmrun("task=sample", f"ckpt_path={tmp_path / 'run'}", "sample.sampler=ddim", "sample.steps=5",
                     "sample.num=16", f"hydra.run.dir={tmp_path / 'sample'}", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "sample" / "samples.npz").is_file()


def test_warmup_schedule_rises_linearly_then_holds():
    model = tiny_ddpm(scheduler={"name": "warmup", "warmup_steps": 4})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = model.make_scheduler(optimizer)["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("preset", ["ddpm_mnist", "ddpm_cifar10"])
def test_presets_compose_validate_and_build(cfg_factory, preset, tmp_path):
    from dgmrun.models.base import build_model
    from dgmrun.data.info import DataInfo
    from dgmrun.schema import validate

    cfg = cfg_factory(f"experiment={preset}", f"data.root={tmp_path}")
    validate(cfg)
    shape = (1, 28, 28) if preset == "ddpm_mnist" else (3, 32, 32)
    model = build_model(cfg.model, DataInfo(preset, shape, 10, 256))
    millions = sum(p.numel() for p in model.net.parameters()) / 1e6
    assert millions == pytest.approx(0.27 if preset == "ddpm_mnist" else 35.7, abs=0.05)  # the paper: 35.7M; the preset comment: 0.27M


def test_sample_metrics_name_the_sampler_in_their_protocols():
    from dgmrun.metrics.samples import with_sampler

    model = tiny_ddpm()
    settings = {"sampler": "ddim", "steps": 10, "eta": 0.0, "guidance": 1.0}
    assert model.sampler_description(settings) == "ddim sampler, 10 steps, eta 0.0"
    assert model.sampler_description({**settings, "sampler": "ddpm"}) == "ddpm sampler, 50 steps, sigma^2 beta~"
    metrics = with_sampler({"test/fid": 3.0, "test/fid_protocol": "lenet"}, model.sampler_description(settings))
    assert metrics == {"test/fid": 3.0, "test/fid_protocol": "lenet; ddim sampler, 10 steps, eta 0.0"}
