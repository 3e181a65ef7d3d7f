"""Missing-pixel imputation (``task=impute``): observed pixels kept exactly, the RBM's clamped Gibbs sampler
against the exact conditional by enumeration, pseudo-Gibbs on real digits, and the refusals."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgmrun.data.datamodule import Digits
from dgmrun.data.info import DataInfo
from dgmrun.data.masks import fill_missing, pixel_mask
from dgmrun.errors import DgmrunError
from dgmrun.models.ddpm import DDPM
from dgmrun.models.gan import GAN
from dgmrun.models.rbm import RBM
from dgmrun.models.vae import VAE
from dgmrun.schema import ImputeConfig, validate
from dgmrun.tasks.impute import method_of, squared_error

DIGITS = DataInfo("digits", (1, 8, 8), 10, 2)
FIXTURE_VAE = Path(__file__).parent / "fixtures" / "6cc1d98-vae-digits.ckpt"
FIXTURE_DDPM = Path(__file__).parent / "fixtures" / "6cc1d98-ddpm-digits.ckpt"


def how(method: str, iterations: int, **settings) -> ImputeConfig:
    return ImputeConfig(method=method, iterations=iterations, **settings)


def _models():
    torch.manual_seed(0)
    vae = VAE.build(DIGITS, latent_dim=3, hidden_dims=[16])
    ddpm = DDPM.build(DataInfo("digits", (1, 8, 8), 10, 17), num_timesteps=20, base_channels=8, num_res_blocks=1,
                      attention_resolutions=[], ema_decay=None)
    vae.eval_settings = {"num_importance_samples": 50}
    return [(vae, "pseudo_gibbs"), (vae, "metropolis_within_gibbs"), (vae, "importance"),
            (RBM.build(DIGITS, hidden_dim=8), "gibbs"), (ddpm.eval(), "repaint")]


@pytest.mark.parametrize("index", range(5), ids=["vae-pseudo-gibbs", "vae-mwg", "vae-importance", "rbm", "ddpm-repaint"])
def test_observed_pixels_are_never_changed(index):
    model, method = _models()[index]
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(16, 1, 8, 8, generator=generator) < 0.4).float()
    missing = pixel_mask("random", (1, 8, 8), p=0.5, generator=generator, n=16)
    imputed = model.impute(fill_missing(x, missing, "noise", generator), missing, how(method, 5), generator)
    assert torch.equal(imputed[~missing], x[~missing])
    assert not torch.equal(imputed[missing], x[missing])  # the missing ones were drawn anew
    nothing = torch.zeros_like(missing)
    assert torch.equal(model.impute(x, nothing, how(method, 5), generator), x)


def test_masks_cover_what_they_say():
    center = pixel_mask("center", (3, 28, 28), size=12, n=2)
    assert center.shape == (2, 3, 28, 28) and center[0, 0].sum() == 144 and center[0, 0, 8:20, 8:20].all()
    assert torch.equal(center[:, 0], center[:, 2])  # a missing pixel is missing in every channel
    bottom = pixel_mask("bottom", (1, 8, 8))
    assert bottom[0, 0, 4:].all() and not bottom[0, 0, :4].any()
    assert pixel_mask("columns", (1, 8, 8), size=2)[0, 0].sum() == 16
    p = pixel_mask("random", (1, 28, 28), p=0.3, generator=torch.Generator().manual_seed(0), n=200).float().mean()
    assert abs(p - 0.3) < 0.01


def _exact_conditional(model: RBM, v: torch.Tensor, free: list[int]) -> dict[tuple[int, ...], float]:
    """p(v_free | v_rest) by enumerating the free visibles: proportional to exp(-F(v))."""
    configs = list(itertools.product([0.0, 1.0], repeat=len(free)))
    batch = v.repeat(len(configs), 1)
    batch[:, free] = torch.tensor(configs)
    weights = torch.softmax(-model.free_energy(batch).double(), 0)
    return {tuple(int(c) for c in config): w.item() for config, w in zip(configs, weights)}


@pytest.mark.parametrize("free", [[1, 4], [0, 1, 2, 3, 4, 5]], ids=["two-missing", "all-missing"])
def test_rbm_clamped_gibbs_draws_the_exact_conditional(free):
    """Chi-square of 20,000 imputations against p(v_missing | v_observed) by enumeration (all missing: p(v))."""
    torch.manual_seed(0)
    info = DataInfo("tiny", (1, 1, 6), 0, 2)
    model = RBM.build(info, hidden_dim=3)
    with torch.no_grad():
        model.W.copy_(torch.randn(6, 3) * 1.5)
        model.b.copy_(torch.randn(6))
        model.c.copy_(torch.randn(3))
    v = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    exact = _exact_conditional(model, v, free)
    n = 20_000
    missing = torch.zeros(n, 1, 1, 6, dtype=torch.bool)
    missing[..., free] = True
    x = fill_missing(v.view(1, 1, 1, 6).repeat(n, 1, 1, 1), missing, "zeros")
    imputed = model.impute(x, missing, how("gibbs", 50), torch.Generator().manual_seed(1)).view(n, 6)[:, free]
    counts = {config: 0 for config in exact}
    for row in imputed.int().tolist():
        counts[tuple(row)] += 1
    chi2 = sum((counts[c] - n * p) ** 2 / (n * p) for c, p in exact.items())
    critical = {3: 16.27, 63: 103.4}[len(exact) - 1]  # chi-square quantiles at p = 0.001
    assert chi2 < critical, (chi2, counts, exact)


def test_vae_pseudo_gibbs_lowers_the_error_on_real_digits():
    torch.manual_seed(0)
    data = Digits.build(binarize="static", seed=0)
    x_train, _ = data.split_tensors("train")
    model = VAE.build(data.info, latent_dim=8, hidden_dims=[128])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(600):
        batch = x_train[torch.randint(len(x_train), (128,))]
        reconstruction, kl = model.elbo_terms(batch)
        loss = -(reconstruction - kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x, _ = data.split_tensors("test")
    missing = pixel_mask("bottom", (1, 8, 8), n=len(x))
    corrupted = fill_missing(x, missing, "noise", torch.Generator().manual_seed(0))
    errors = {k: squared_error(x, model.impute(corrupted, missing, how("pseudo_gibbs", k), torch.Generator().manual_seed(0)),
                               missing) for k in (1, 20)}
    noise = squared_error(x, corrupted, missing)
    assert errors[20] < errors[1] < noise, (errors, noise)


def test_refusals_are_one_line(cfg_factory, tmp_path):
    gan = GAN.build(DataInfo("toy2d", (2,), 8, None))
    with pytest.raises(DgmrunError, match="model GAN cannot impute: it has no conditional sampler"):
        method_of(gan, "auto")
    with pytest.raises(DgmrunError, match="impute.size=12 does not fit images of 8x8 px"):
        pixel_mask("center", (1, 8, 8), size=12)
    with pytest.raises(DgmrunError, match=r"impute.p must be in \[0, 1\], got 1.5"):
        validate(cfg_factory("task=impute", f"ckpt_path={FIXTURE_VAE}", "impute.p=1.5"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(DgmrunError, match="is 5x5 px; the images are 8x8"):
        pixel_mask("file", (1, 8, 8), file=str(tmp_path / "mask.png"))
    conditional = DDPM.build(DIGITS, conditional=True, p_uncond=0.0, num_timesteps=2, base_channels=8, num_res_blocks=1)
    with pytest.raises(DgmrunError, match="trained without a null label"):
        conditional.impute(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool), how("repaint", 1))
    with pytest.raises(DgmrunError, match="impute.method=ddim: model VAE imputes by pseudo_gibbs, metropolis_within_gibbs"):
        _models()[0][0].impute(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool), how("ddim", 1))


@pytest.mark.parametrize("family", ["vae", "ddpm"])
def test_task_impute_writes_metrics_and_the_imputations(cfg_factory, family):
    from dgmrun.tasks.impute import impute

    checkpoint = {"vae": FIXTURE_VAE, "ddpm": FIXTURE_DDPM}[family]
    cfg = cfg_factory("task=impute", f"ckpt_path={checkpoint}", "impute.size=4", "impute.iterations=10",
                      "impute.num_examples=40", "impute.num_samples=2", "impute.resamplings=2", "impute.jump=5",
                      "eval.num_importance_samples=7")
    validate(cfg)
    mse = impute(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["impute/mse"] == mse and math.isfinite(mse) and metrics["impute/missing_fraction"] == 0.25
    method = {"vae": "pseudo_gibbs, 10 iterations", "ddpm": "repaint over 20 timesteps, jump 5, 2 resamplings"}[family]
    assert metrics["impute/protocol"].startswith(f"mask center 4x4; fill noise; method {method}")
    if family == "vae":  # the conditional NLL of the missing pixels, a few nats for 16 binary pixels
        assert metrics["impute/nll_missing_kind"].startswith("estimate") and 0 < metrics["impute/nll_missing"] < 16
        assert metrics["impute/nll_missing_kind"].endswith("k=7)")  # the command line's eval settings
    else:
        assert "impute/nll_missing" not in metrics
    saved = np.load(out / "imputed.npz")
    assert saved["originals"].shape == saved["imputations"].shape == (40, 1, 8, 8)
    kept = ~saved["masks"]
    assert np.array_equal(saved["imputations"][kept], saved["originals"][kept])
    assert (out / "imputed.png").read_bytes()[:4] == b"\x89PNG"


def _chi_square_against_enumeration(model, shape: tuple[int, ...], missing_at: list[int], method: str,
                                    iterations: int) -> tuple[float, float]:
    """(chi-square, its p = 0.001 critical value) of 20,000 imputations of one binary image against the exact
    p(x_missing | x_observed), by enumerating log p(x) over the missing pixels' values."""
    d = math.prod(shape)
    observed = (torch.arange(d) % 3 == 0).float()
    configs = list(itertools.product([0.0, 1.0], repeat=len(missing_at)))
    batch = observed.repeat(len(configs), 1)
    batch[:, missing_at] = torch.tensor(configs)
    with torch.no_grad():
        exact = torch.softmax(model.log_likelihood(batch.view(-1, *shape)).double(), 0).tolist()
    n = 20_000
    missing = torch.zeros(n, d, dtype=torch.bool)
    missing[:, missing_at] = True
    x = observed.repeat(n, 1).view(n, *shape)
    imputed = model.impute(x, missing.view(n, *shape), how(method, iterations), torch.Generator().manual_seed(2))
    counts = {c: 0 for c in configs}
    for row in imputed.view(n, d)[:, missing_at].tolist():
        counts[tuple(row)] += 1
    chi2 = sum((counts[c] - n * p) ** 2 / (n * p) for c, p in zip(configs, exact))
    return chi2, {3: 16.27, 7: 24.32}[len(configs) - 1]


@pytest.mark.parametrize("family", ["nade", "pixelcnn"])
@pytest.mark.parametrize("method,missing_at", [("exact", [3, 4, 5]), ("gibbs", [1, 4])])
def test_autoregressive_imputation_draws_the_exact_conditional(family, method, missing_at):
    """``exact`` on the last pixels (the bottom mask of a 2x3 image) and ``gibbs`` on pixels with observed ones
    after them, against enumeration."""
    torch.manual_seed(0)
    info = DataInfo("tiny", (1, 2, 3), 0, 2)
    if family == "nade":
        from dgmrun.models.nade import NADE

        model = NADE.build(info, hidden_dim=4)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 1.5)
    else:
        from dgmrun.models.pixelcnn import PixelCNN

        model = PixelCNN.build(info, channels=8, num_layers=2, kernel_size=3)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)  # far from uniform conditionals
    chi2, critical = _chi_square_against_enumeration(model.eval(), (1, 2, 3), missing_at, method, 20)
    assert chi2 < critical, chi2


def test_exact_imputation_refuses_a_mask_with_observed_pixels_after_missing_ones():
    from dgmrun.models.nade import NADE

    model = NADE.build(DIGITS, hidden_dim=4)
    center = pixel_mask("center", (1, 8, 8), size=4)
    with pytest.raises(DgmrunError, match="impute.method=exact needs every missing pixel after every observed one"):
        model.impute(torch.zeros(1, 1, 8, 8), center, how("exact", 1))


def _tiny_vae() -> tuple[VAE, torch.Tensor]:
    """A VAE with a one-dimensional latent on 6 binary pixels, far from its initialisation, and the decoder's
    logits on a fine grid of z with the grid's log prior weights, for exact integrals over z by quadrature."""
    torch.manual_seed(0)
    model = VAE.build(DataInfo("tiny", (1, 1, 6), 0, 2), latent_dim=1, hidden_dims=[8]).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model, torch.linspace(-7, 7, 4001).unsqueeze(1)


def _exact_missing_distribution(model: VAE, z: torch.Tensor, observed: torch.Tensor, free: list[int]):
    """p(x_free | x_rest) = int p(x | z) p(z) dz / (same summed over x_free), by quadrature over z."""
    configs = list(itertools.product([0.0, 1.0], repeat=len(free)))
    with torch.no_grad():
        logits = model.decode(z).view(len(z), 6)
        log_prior = -0.5 * z.squeeze(1) ** 2
        log_joint = []
        for config in configs:
            x = observed.clone()
            x[free] = torch.tensor(config)
            log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand(len(z), 6),
                                                                            reduction="none").sum(1)
            log_joint.append(torch.logsumexp(log_px_z + log_prior, 0))
    return configs, torch.softmax(torch.stack(log_joint).double(), 0)


def test_vae_metropolis_within_gibbs_draws_the_exact_conditional():
    """Chi-square of 20,000 chains against p(x_missing | x_observed) by quadrature over the latent; pseudo-Gibbs,
    which is not exact, is rejected on the same model."""
    model, z = _tiny_vae()
    observed, free = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), [1, 4]
    configs, exact = _exact_missing_distribution(model, z, observed, free)
    n = 20_000
    missing = torch.zeros(n, 1, 1, 6, dtype=torch.bool)
    missing[..., free] = True
    x = fill_missing(observed.view(1, 1, 1, 6).repeat(n, 1, 1, 1), missing, "zeros")

    def chi_square(method: str) -> float:
        means = model.impute(x, missing, how(method, 60), torch.Generator().manual_seed(3)).view(n, 6)[:, free]
        imputed = torch.bernoulli(means, generator=torch.Generator().manual_seed(4))  # pixels from the decoder's means
        counts = {c: 0 for c in configs}
        for row in imputed.tolist():
            counts[tuple(row)] += 1
        return sum((counts[c] - n * p) ** 2 / (n * p) for c, p in zip(configs, exact.tolist()))

    assert chi_square("metropolis_within_gibbs") < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    assert chi_square("pseudo_gibbs") > 16.27  # rejected at the same level


def test_vae_importance_imputation_is_the_exact_conditional_mean():
    """E[x_missing | x_observed] by quadrature over the latent, against the importance estimate started from a
    completion far from the truth (the free pixels filled with their least likely values)."""
    model, z = _tiny_vae()
    model.eval_settings = {"num_importance_samples": 20_000}  # (with 2 draws the second pixel is off by 0.04-0.06)
    free = [1, 4]
    missing = torch.zeros(1, 1, 1, 6, dtype=torch.bool)
    missing[..., free] = True
    for observed in (torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])):
        configs, exact = _exact_missing_distribution(model, z, observed, free)
        exact_mean = (torch.tensor(configs, dtype=torch.float64) * exact[:, None]).sum(0)
        start = observed.clone()
        start[free] = (exact_mean < 0.5).float()
        mean = model.impute(start.view(1, 1, 1, 6), missing, how("importance", 50), torch.Generator().manual_seed(0))
        torch.testing.assert_close(mean.view(6)[free].double(), exact_mean, atol=0.005, rtol=0)
        # task=impute's NLL of the true pixels, proposing from the proposal fitted for the imputation
        estimate, _ = model.missing_log_likelihood(observed.view(1, 1, 1, 6), missing, mean)
        truth = math.log(exact[configs.index(tuple(observed[free].tolist()))].item())
        assert abs(estimate.item() - truth) < 0.02, (estimate.item(), truth)


def test_vae_missing_likelihood_estimate_matches_quadrature():
    model, z = _tiny_vae()
    model.eval_settings = {"num_importance_samples": 5000}
    observed, free = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), [1, 4]
    configs, exact = _exact_missing_distribution(model, z, observed, free)
    missing = torch.zeros(1, 1, 1, 6, dtype=torch.bool)
    missing[..., free] = True
    estimate, kind = model.missing_log_likelihood(observed.view(1, 1, 1, 6), missing, observed.view(1, 1, 1, 6))
    truth = math.log(exact[configs.index(tuple(observed[free].tolist()))].item())
    assert kind.startswith("estimate") and abs(estimate.item() - truth) < 0.02, (estimate.item(), truth)


@pytest.mark.parametrize("family", ["nade", "pixelcnn"])
def test_autoregressive_missing_likelihood_is_exact_for_the_bottom_mask(family):
    """log p(x_missing | x_observed) = log p(x) - log sum over the missing values of p(x), by enumeration;
    not given for a mask with observed pixels after missing ones."""
    torch.manual_seed(0)
    info = DataInfo("tiny", (1, 2, 3), 0, 2)
    if family == "nade":
        from dgmrun.models.nade import NADE

        model = NADE.build(info, hidden_dim=4)
    else:
        from dgmrun.models.pixelcnn import PixelCNN

        model = PixelCNN.build(info, channels=8, num_layers=2, kernel_size=3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 3)
    bottom = pixel_mask("bottom", (1, 2, 3))
    batch = x.repeat(8, 1, 1, 1).view(8, 6)
    batch[:, 3:] = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    with torch.no_grad():
        truth = model.log_likelihood(x) - torch.logsumexp(model.log_likelihood(batch.view(8, 1, 2, 3)), 0)
    value, kind = model.missing_log_likelihood(x, bottom, x)
    assert kind == "exact" and torch.allclose(value, truth, atol=1e-5), (value, truth)
    # Observed pixels after the missing ones: log p(x) - log p(x_observed), the latter by importance sampling
    # (with weights milder than the above, whose near-deterministic conditionals make a poor proposal).
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    left = pixel_mask("left", (1, 2, 3))
    free = left.flatten().nonzero().flatten()
    batch = x.repeat(4, 1, 1, 1).view(4, 6)
    batch[:, free] = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)))
    with torch.no_grad():
        truth = model.log_likelihood(x) - torch.logsumexp(model.log_likelihood(batch.view(4, 1, 2, 3)), 0)
    model.eval_settings = {"num_importance_samples": 20_000}
    value, kind = model.missing_log_likelihood(x, left, x)
    assert kind.startswith("estimate") and abs(value.item() - truth.item()) < 0.01, (value, truth)


@pytest.mark.parametrize("family", ["nade", "pixelcnn"])
def test_autoregressive_importance_imputation_is_the_exact_conditional_mean(family):
    """E[x_missing | x_observed] by enumeration on a 2x3 image, with observed pixels after the missing ones (the
    proposal, the model's own conditionals given the pixels before, ignores them), against the importance estimate;
    with a handful of draws it is off."""
    torch.manual_seed(0)
    info = DataInfo("tiny", (1, 2, 3), 0, 2)
    if family == "nade":
        from dgmrun.models.nade import NADE

        model = NADE.build(info, hidden_dim=4).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 1.5)
    else:
        from dgmrun.models.pixelcnn import PixelCNN

        model = PixelCNN.build(info, channels=8, num_layers=2, kernel_size=3).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)
    free = [1, 4]
    missing = torch.zeros(2, 1, 2, 3, dtype=torch.bool)
    missing.view(2, 6)[:, free] = True
    observed = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)))
    exact_means = []
    for row in observed:
        batch = row.repeat(4, 1)
        batch[:, free] = configs
        with torch.no_grad():
            p = torch.softmax(model.log_likelihood(batch.view(4, 1, 2, 3)).double(), 0)
        exact_means.append((configs.double() * p[:, None]).sum(0))
    exact_mean = torch.stack(exact_means)

    def estimate(k: int) -> torch.Tensor:
        model.eval_settings = {"num_importance_samples": k}
        x = fill_missing(observed.view(2, 1, 2, 3), missing, "noise", torch.Generator().manual_seed(0))
        return model.impute(x, missing, how("importance", 1), torch.Generator().manual_seed(1)).view(2, 6)[:, free]

    torch.testing.assert_close(estimate(50_000).double(), exact_mean, atol=0.01, rtol=0)
    # task=impute's NLL of the true missing pixels then reuses the imputation's estimate of log p(x_observed).
    truth = observed.clone()
    truth[:, free] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    full = truth.repeat_interleave(4, 0)
    full[:, free] = configs.repeat(2, 1)
    with torch.no_grad():
        log_observed = torch.logsumexp(model.log_likelihood(full.view(8, 1, 2, 3)).view(2, 4), 1)
        exact = model.log_likelihood(truth.view(2, 1, 2, 3)) - log_observed
    value, kind = model.missing_log_likelihood(truth.view(2, 1, 2, 3), missing, truth.view(2, 1, 2, 3))
    torch.testing.assert_close(value, exact, atol=0.01, rtol=0)
    assert (estimate(3).double() - exact_mean).abs().max() > 0.05


class GaussianEps(torch.nn.Module):
    """The exact eps-prediction E[eps | x_t] for data x_0 ~ N(mean, cov): with x_t = a x_0 + s eps,
    E[eps | x_t] = s (a^2 cov + s^2 I)^-1 (x_t - a mean)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.mean, self.cov, self.alpha_bar = mean, cov, alpha_bar

    def forward(self, xt: torch.Tensor, t: torch.Tensor, y: object = None) -> torch.Tensor:
        alpha_bar = self.alpha_bar[t[0]]  # (the samplers step every example at one timestep)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        precision = torch.linalg.inv(a**2 * self.cov + s**2 * torch.eye(len(self.mean)))
        return s * (xt - a * self.mean) @ precision


def test_repaint_with_the_exact_denoiser_draws_the_gaussian_conditional():
    """With the exact denoiser of Gaussian data, RePaint's draws of x_1 given x_0 have the closed-form
    conditional's mean and variance (0.1 and 0.36 here); without its resampling they are far off."""
    torch.manual_seed(0)
    model = DDPM.build(DataInfo("points", (2,), 0, None), ema_decay=None).eval()
    mean, cov = torch.tensor([0.5, -0.3]), torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    model.net = GaussianEps(mean, cov, model.diffusion.alpha_bar)
    n = 5_000
    x = torch.tensor([1.0, 0.0]).repeat(n, 1)
    missing = torch.tensor([False, True]).repeat(n, 1)

    def drawn(resamplings: int) -> torch.Tensor:
        return model.impute(x, missing, how("repaint", 0, resamplings=resamplings, jump=10),
                            torch.Generator().manual_seed(5))[:, 1]

    resampled, replaced = drawn(10), drawn(1)
    # (the standard errors: 0.008 of the mean, 0.007 of the variance)
    assert abs(resampled.mean() - 0.1) < 0.03 and abs(resampled.var() - 0.36) < 0.03, (resampled.mean(), resampled.var())
    assert abs(replaced.mean() - 0.1) > 0.1 and replaced.var() > 0.42, (replaced.mean(), replaced.var())


class TablePrior:
    """A prior over the 1x2 code grid of ``_tiny_vqvae`` given as a table, with proposals for the second code
    that depend on the first (as the PixelCNN prior's do): what ``VQVAE.code_chain`` needs of a prior."""

    def __init__(self, num_codes: int):
        generator = torch.Generator().manual_seed(5)
        self.table = torch.randn(num_codes, num_codes, generator=generator) * 1.5
        self.first = torch.randn(num_codes, generator=generator)
        self.second = torch.randn(num_codes, num_codes, generator=generator)

    def prior_log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.table.flatten(), 0)[codes[:, 0, 0] * len(self.table) + codes[:, 0, 1]]

    def proposal_logits(self, codes: torch.Tensor, row: int) -> torch.Tensor:
        return torch.stack([self.first.expand(len(codes), -1), self.second[codes[:, 0, 0]]], dim=2)


def _tiny_vqvae():
    from dgmrun.models.vqvae import VQVAE

    torch.manual_seed(0)
    model = VQVAE.build(DataInfo("tiny", (1, 4, 8), 0, 2), num_codes=3, code_dim=2, channels=[4, 4]).eval()
    model.codebook.copy_(torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]]))
    return model


@pytest.mark.parametrize("prior", ["uniform", "table"])
def test_vqvae_code_chain_draws_the_exact_posterior_over_codes(prior):
    """The 3 x 3 code grids of a 4x8 image, enumerated: p(codes | x_o) ∝ p_prior(codes) p(x_o | codes), against
    the codes of 10,000 chains (chi-square, 8 degrees of freedom, p = 0.001); with the table prior the proposals
    are not the target's conditionals, so a wrong Hastings correction would show."""
    model = _tiny_vqvae()
    prior_model = model if prior == "uniform" else TablePrior(3)
    generator = torch.Generator().manual_seed(6)
    x = (torch.rand(1, 1, 4, 8, generator=generator) < 0.5).float()
    missing = torch.zeros(1, 1, 4, 8, dtype=torch.bool)
    missing[..., 1:3, 2:7] = True
    grids = torch.tensor(list(itertools.product(range(3), repeat=2))).view(9, 1, 2)
    with torch.no_grad():
        log_px = model.likelihood.log_prob(model.decode(model.embed(grids)), x.expand(9, -1, -1, -1),
                                           ~missing.expand(9, -1, -1, -1))
        exact = torch.softmax((prior_model.prior_log_prob(grids) + log_px).double(), 0)
    n = 10_000
    codes = model.code_chain(x.expand(n, -1, -1, -1), missing.expand(n, -1, -1, -1), 8, prior_model,
                             torch.Generator().manual_seed(7), lambda done, total: None)
    counts = torch.bincount(codes[:, 0, 0] * 3 + codes[:, 0, 1], minlength=9).double()
    chi2 = ((counts - n * exact) ** 2 / (n * exact)).sum().item()
    assert chi2 < 26.12, (counts / n, exact)


def test_vqvae_imputation_keeps_the_observed_pixels_and_the_prior_proposes_from_the_codes_before(tmp_path):
    from dgmrun.models.vqvae import VQVAEPrior
    from tests.test_presets import step_and_sample

    step_and_sample(tmp_path / "vqvae", ["model=vqvae", "data=digits"], draw=False)
    prior = VQVAEPrior.build(DIGITS, vqvae_ckpt=str(tmp_path / "vqvae"), channels=8, num_layers=2).eval()
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(16, 1, 8, 8, generator=generator) < 0.4).float()
    missing = pixel_mask("center", (1, 8, 8), size=4, n=16)
    for model in (prior.vqvae, prior):
        imputed = model.impute(fill_missing(x, missing, "noise", generator), missing, how("metropolis_within_gibbs", 2),
                               generator)
        assert torch.equal(imputed[~missing], x[~missing]) and not torch.equal(imputed[missing], x[missing])
    codes = torch.randint(0, prior.vqvae.num_codes, (4, 2, 2), generator=generator)
    changed = codes.clone()
    changed[:, 1, 0:] = (codes[:, 1, 0:] + 1) % prior.vqvae.num_codes  # the codes at and after (1, 0)
    assert torch.equal(prior.proposal_logits(codes, 1)[:, :, 0], prior.proposal_logits(changed, 1)[:, :, 0])
    assert not torch.equal(prior.proposal_logits(codes, 1)[:, :, 1], prior.proposal_logits(changed, 1)[:, :, 1])
