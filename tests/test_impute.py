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
from dgmrun.models.gan import GAN
from dgmrun.models.rbm import RBM
from dgmrun.models.vae import VAE
from dgmrun.schema import validate
from dgmrun.tasks.impute import refuse_what_cannot_impute, squared_error

DIGITS = DataInfo("digits", (1, 8, 8), 10, 2)
FIXTURE_VAE = Path(__file__).parent / "fixtures" / "6cc1d98-vae-digits.ckpt"


def _models():
    torch.manual_seed(0)
    return [(VAE.build(DIGITS, latent_dim=3, hidden_dims=[16]), "pseudo_gibbs"),
            (RBM.build(DIGITS, hidden_dim=8), "gibbs")]


@pytest.mark.parametrize("index", [0, 1], ids=["vae", "rbm"])
def test_observed_pixels_are_never_changed(index):
    model, method = _models()[index]
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(16, 1, 8, 8, generator=generator) < 0.4).float()
    missing = pixel_mask("random", (1, 8, 8), p=0.5, generator=generator, n=16)
    imputed = model.impute(fill_missing(x, missing, "noise", generator), missing, method, 5, generator)
    assert torch.equal(imputed[~missing], x[~missing])
    assert not torch.equal(imputed[missing], x[missing])  # the missing ones were drawn anew
    nothing = torch.zeros_like(missing)
    assert torch.equal(model.impute(x, nothing, method, 5, generator), x)


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
    imputed = model.impute(x, missing, "gibbs", 50, torch.Generator().manual_seed(1)).view(n, 6)[:, free]
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
    errors = {k: squared_error(x, model.impute(corrupted, missing, "pseudo_gibbs", k, torch.Generator().manual_seed(0)),
                               missing) for k in (1, 20)}
    noise = squared_error(x, corrupted, missing)
    assert errors[20] < errors[1] < noise, (errors, noise)


def test_refusals_are_one_line(cfg_factory, tmp_path):
    gan = GAN.build(DataInfo("toy2d", (2,), 8, None))
    with pytest.raises(DgmrunError, match="model GAN cannot impute: it has no conditional sampler"):
        refuse_what_cannot_impute(gan, "auto")
    with pytest.raises(DgmrunError, match="impute.size=12 does not fit images of 8x8 px"):
        pixel_mask("center", (1, 8, 8), size=12)
    with pytest.raises(DgmrunError, match=r"impute.p must be in \[0, 1\], got 1.5"):
        validate(cfg_factory("task=impute", f"ckpt_path={FIXTURE_VAE}", "impute.p=1.5"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(DgmrunError, match="is 5x5 px; the images are 8x8"):
        pixel_mask("file", (1, 8, 8), file=str(tmp_path / "mask.png"))
    with pytest.raises(DgmrunError, match="impute.method=ddim: model VAE imputes by pseudo_gibbs"):
        _models()[0][0].impute(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool), "ddim", 1)


def test_task_impute_writes_metrics_and_the_imputations(cfg_factory):
    from dgmrun.tasks.impute import impute

    cfg = cfg_factory("task=impute", f"ckpt_path={FIXTURE_VAE}", "impute.size=4", "impute.iterations=10",
                      "impute.num_examples=40", "impute.num_samples=2")
    validate(cfg)
    mse = impute(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["impute/mse"] == mse and math.isfinite(mse) and metrics["impute/missing_fraction"] == 0.25
    assert metrics["impute/protocol"].startswith("mask center 4x4; fill noise; method pseudo_gibbs, 10 iterations")
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
    imputed = model.impute(x, missing.view(n, *shape), method, iterations, torch.Generator().manual_seed(2))
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
        model.impute(torch.zeros(1, 1, 8, 8), center, "exact", 1)
