"""RBM: free energy, the CD gradient, AIS against the exact partition function, training on digits."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from dgmrun.data.datamodule import MNISTLike
from dgmrun.errors import DgmrunError
from dgmrun.metrics.likelihood import ais_log_partition, exact_log_partition, raise_log_likelihood
from dgmrun.models.rbm import RBM
from dgmrun.schema import EvalConfig
from tests.conftest import SaveWeightsPerRank

torch.set_num_threads(1)  # the test machine is shared: oversubscribed threads are ~20x slower
MNIST_SMALL = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist-small"


def info(shape, levels=2):
    return {"name": "t", "shape": list(shape), "num_classes": 0, "levels": levels}


def tiny_rbm(d=5, h=3, seed=0):
    torch.manual_seed(seed)
    model = RBM.build(info((1, 1, d)), hidden_dim=h)
    with torch.no_grad():
        model.W.normal_()
        model.b.normal_()
        model.c.normal_()
    return model


def test_free_energy_matches_enumeration_of_the_joint():
    model = tiny_rbm()
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)))
    h = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    energy = -(v @ model.b)[:, None] - (h @ model.c)[None] - v @ model.W @ h.T  # (2^5, 2^3)
    expected = -torch.logsumexp(-energy, 1)
    assert torch.allclose(model.free_energy(v), expected, atol=1e-5)
    # ... and the exact log Z by hidden enumeration is the log of the sum over all (v, h).
    assert exact_log_partition(model.W, model.b, model.c).item() == pytest.approx(torch.logsumexp(-energy.flatten(), 0).item(), abs=1e-5)
    # so exp(-F(v) - log Z) sums to one over all v
    log_p = -model.free_energy(v) - exact_log_partition(model.W, model.b, model.c)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_free_energy_integrates_the_hiddens():
    torch.manual_seed(0)
    model = RBM.build(info((1, 1, 4), levels=None), hidden_dim=3, visible="gaussian")
    with torch.no_grad():
        model.W.normal_()
        model.b.normal_()
    v = torch.randn(6, 4)
    h = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    energy = 0.5 * ((v - model.b) ** 2).sum(-1, keepdim=True) - (h @ model.c)[None] - v @ model.W @ h.T
    assert torch.allclose(model.free_energy(v), -torch.logsumexp(-energy, 1), atol=1e-5)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_cd_gradients_are_the_cd_update_and_the_gradient_of_the_free_energy_gap(persistent, visible):
    torch.manual_seed(0)
    model = RBM.build(info((1, 4, 4)), hidden_dim=6, visible=visible, cd_k=2, persistent=persistent, num_chains=7)
    with torch.no_grad():
        model.W.normal_(std=0.5)
        model.b.normal_()
    v = torch.bernoulli(torch.full((9, 16), 0.3))
    loss, negative = model.cd_gradients(v)
    assert negative.shape == ((7, 16) if persistent else (9, 16))
    h_pos, h_neg = model.hidden_probs(v).detach(), model.hidden_probs(negative).detach()
    # minus the CD-k / PCD update <v h>_data - <v h>_chains
    assert torch.allclose(model.W.grad, -(v.T @ h_pos / len(v) - negative.T @ h_neg / len(negative)), atol=1e-5)
    assert torch.allclose(model.b.grad, -(v.mean(0) - negative.mean(0)), atol=1e-5)
    assert torch.allclose(model.c.grad, -(h_pos.mean(0) - h_neg.mean(0)), atol=1e-5)
    # the same as autograd's gradient of mean F(v) - mean F(v~), v~ fixed
    grads = [p.grad.clone() for p in (model.W, model.b, model.c)]
    gap = model.free_energy(v).mean() - model.free_energy(negative).mean()
    assert loss.item() == pytest.approx(gap.item(), abs=1e-5)
    for grad, auto in zip(grads, torch.autograd.grad(gap, [model.W, model.b, model.c])):
        assert torch.allclose(grad, auto, atol=1e-5)
    if persistent:  # the chains move on: their new hidden state is a draw given the negative particles
        assert model.chain_hidden.shape == (7, 6) and set(model.chain_hidden.unique().tolist()) <= {0.0, 1.0}


def test_a_cd_step_raises_the_visible_bias_where_the_data_are_on():
    torch.manual_seed(0)
    model = RBM.build(info((1, 2, 2)), hidden_dim=3, cd_k=1, optimizer={"lr": 0.1})
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(64, 1).view(64, 1, 2, 2)
    model.cd_gradients(x.flatten(1))
    # descent direction -grad: up for pixels that are on in the data more often than in the model
    assert (model.b.grad[:2] < 0).all() and (model.b.grad[2:] > 0).all()


def test_ais_log_partition_is_within_0_1_nats_of_the_exact_value():
    torch.manual_seed(0)
    d, h = 784, 12
    W, b, c = torch.randn(d, h) * 0.1, torch.randn(d) * 0.5 - 1, torch.randn(h) * 0.5
    exact = exact_log_partition(W, b, c)
    estimate, runs = ais_log_partition(W, b, c, b_base=b, num_chains=50, num_betas=1000,
                                       generator=torch.Generator().manual_seed(0), num_runs=2)
    assert abs(estimate.item() - exact.item()) < 0.1
    assert runs.shape == (2,) and (runs - exact).abs().max() < 0.1
    # the pooled estimate is the log-mean-exp of the runs' (equal-sized) estimates
    assert estimate.item() == pytest.approx((torch.logsumexp(runs, 0) - math.log(2)).item(), abs=1e-4)


def test_ais_with_zero_base_rates_and_the_model_nll_estimator():
    model = tiny_rbm(d=12, h=4)
    model.eval_settings = {"ais_chains": 200, "ais_betas": 300, "ais_runs": 3, "raise_examples": 50}
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=12))).view(-1, 1, 1, 12)
    # data_seen = 0: the base model is uniform; exp(log_likelihood) over all 2^12 images sums to ~1
    total = model.log_likelihood(v).exp().sum().item()
    assert total == pytest.approx(1.0, abs=0.05)
    assert model.nll_estimator == "ais-c200-b300-r3; nll_raise: raise-c1-b300-n50"


def test_raise_is_unbiased_for_the_annealing_model_and_a_lower_bound_on_log_p():
    """Summed over all 2^8 images, RAISE's p estimates (the mean over chains of exp(log w)) add up to
    one: they are unbiased for a normalised distribution, p_ann. With a short schedule (10 betas) and one
    chain, log p is underestimated on average; with a long one it is close to exact."""
    model = tiny_rbm(d=8, h=4)
    W, b, c = model.W.detach() * 0.5, model.b.detach(), model.c.detach()
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)))
    exact = v @ b + F.softplus(v @ W + c).sum(-1) - exact_log_partition(W, b, c)
    a = torch.randn(8) * 0.3
    many = raise_log_likelihood(W, b, c, v, a, num_chains=1000, num_betas=10, generator=torch.Generator().manual_seed(1))
    assert many.exp().sum().item() == pytest.approx(1.0, abs=0.01)
    one = raise_log_likelihood(W, b, c, v, a, num_chains=1, num_betas=10, generator=torch.Generator().manual_seed(1))
    assert (one - exact).mean() < -0.1
    long = raise_log_likelihood(W, b, c, v, a, num_chains=1, num_betas=500, generator=torch.Generator().manual_seed(1))
    assert (long - exact).abs().mean() < 0.2


def test_gaussian_ais_and_raise_match_the_closed_form():
    """Unit-variance Gaussian visibles: Z = (2 pi)^(D/2) sum_h exp(c.h + b.Wh + |Wh|^2 / 2)."""
    torch.manual_seed(0)
    W, b, c = torch.randn(3, 2) * 0.5, torch.randn(3), torch.randn(2)
    h = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)))
    mean = h @ W.T
    log_z = (torch.logsumexp(h @ c + mean @ b + 0.5 * (mean**2).sum(-1), 0) + 1.5 * math.log(2 * math.pi)).item()
    estimate, _ = ais_log_partition(W, b, c, torch.zeros(3), 200, 300, torch.Generator().manual_seed(0), gaussian=True)
    assert estimate.item() == pytest.approx(log_z, abs=0.05)
    x = torch.randn(50, 3)
    exact = -(0.5 * ((x - b) ** 2).sum(-1) - F.softplus(x @ W + c).sum(-1)) - log_z
    log_p = raise_log_likelihood(W, b, c, x, torch.zeros(3), 1, 300, torch.Generator().manual_seed(0), gaussian=True)
    assert (log_p - exact).mean().item() == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("key, value", [("ais_runs", 0), ("raise_examples", -1)])
def test_bad_ais_settings_are_refused(key, value):
    with pytest.raises(DgmrunError, match=f"eval.{key} must be"):
        EvalConfig(**{key: value}).check()


@pytest.fixture(scope="module")
def cd1_digit_rbm():
    """A 14-hidden RBM trained by CD-1 on 2,000 mnist-small digits (10 epochs, lr 0.1): small enough for
    the exact log Z, and hard for AIS from the data's base rates alone, because most of its mass sits
    where the data never are (with that base, 100 chains x 1,000 betas put log Z 12-24 nats low)."""
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("mnist-small not found (the hard case needs real 28x28 digits)")
    dm = MNISTLike.build(name="mnist", root=str(MNIST_SMALL), batch_size=64, binarize="static")
    x, test = dm.split_tensors("train")[0][:2000], dm.split_tensors("test")[0][:200]
    torch.manual_seed(0)
    model = RBM.build(dm.info.to_dict(), hidden_dim=14, cd_k=1, optimizer={"lr": 0.1})
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), batch_size=64)
    pl.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(model, loader)
    return model, test


@pytest.mark.slow  # the defaults' 14,500 temperatures: ~70 s on 2 cores (pytest -m slow)
def test_default_ais_gets_the_exact_log_z_and_with_raise_brackets_the_exact_nll(cd1_digit_rbm):
    """Through Lightning's test loop with the default eval settings: log Z within 1 nat of the exact
    value, the forward-AIS NLL at most the exact NLL (up to noise), the RAISE NLL (from log Z of the
first eval.raise_examples, there 100 of 200) at least and close,
    and the spread over the independent AIS runs reported."""
    model, test = cd1_digit_rbm
    model.eval_settings = {}  # the config's defaults
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(test, torch.zeros(len(test))), batch_size=40)
    metrics = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False).test(model, loader, verbose=False)[0]
    defaults = EvalConfig()
    log_z = exact_log_partition(model.W, model.b, model.c).item()
    assert abs(metrics["test/log_z"] - log_z) < 1.0
    _, runs = model.log_partition()
    assert runs.shape == (defaults.ais_runs,) and (runs - log_z).abs().max() < 1.0
    assert metrics["test/nll_std"] == pytest.approx(runs.std().item(), rel=1e-4)
    exact = (model.free_energy(test.flatten(1)) + log_z).mean().item()
    assert metrics["test/nll"] <= exact + 0.2
    assert metrics["test/nll_raise"] >= exact - 0.2
    assert metrics["test/nll_raise"] - exact < 1.0  # and close: the annealing is long enough
    assert metrics["test/log_z_raise"] - metrics["test/log_z"] == pytest.approx(
        metrics["test/nll_raise"] - metrics["test/nll"], abs=1e-3)


def test_trains_on_mnist_small_and_samples():
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("mnist-small not found")
    torch.manual_seed(0)
    dm = MNISTLike.build(name="mnist", root=str(MNIST_SMALL), batch_size=64, binarize="dynamic")
    model = RBM.build(dm.info.to_dict(), hidden_dim=64, persistent=True, num_chains=64, sample_gibbs_steps=50,
                optimizer={"lr": 0.05})
    errors: list[float] = []

    class Recorder(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            value = trainer.callback_metrics.get("train/recon_error")
            if value is not None and (not errors or value.item() != errors[-1]):  # logged every 5th batch
                errors.append(value.item())

    pl.Trainer(max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, log_every_n_steps=5,
               callbacks=[Recorder()]).fit(model, datamodule=dm)
    assert len(errors) >= 38 and sum(errors[-8:]) / 8 < 0.7 * sum(errors[:8]) / 8
    assert model.data_seen.item() == 200 * 64
    samples = model.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    model.eval_settings = {"ais_chains": 20, "ais_betas": 200}
    dm.setup("test")
    x = next(iter(dm.test_dataloader()))[0][:100]
    nll = -model.log_likelihood(x).mean().item()
    assert 60 < nll < 400


def test_under_ddp_the_replicas_take_the_same_steps(tmp_path):
    """Two gloo processes see different shards and run different chains; the CD gradients are averaged
    over them, so both end with the same weights (without the all-reduce they would drift apart)."""
    from dgmrun.data.datamodule import Digits

    dm = Digits.build(batch_size=32, binarize="dynamic")
    model = RBM.build(dm.info.to_dict(), hidden_dim=16, persistent=True, num_chains=16)
    initial = model.W.detach().clone()
    pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=5, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0, callbacks=[SaveWeightsPerRank(tmp_path)]).fit(model, datamodule=dm)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt")["W"], torch.load(tmp_path / "rank1.pt")["W"]
    assert torch.equal(rank0, rank1)
    assert (rank0 - initial).abs().max() > 1e-3  # it trained
