"""NADE: autoregressive structure, a normalised distribution, and training on real digits."""

from __future__ import annotations

import itertools

import pytest
import torch

from dgmrun.data.datamodule import MNISTLike
from dgmrun.models.nade import NADE
from tests.conftest import MNIST_SMALL, train_losses

torch.set_num_threads(1)  # the test machine is shared: oversubscribed threads are ~20x slower

def info(shape):
    return {"name": "t", "shape": list(shape), "num_classes": 0, "levels": 2}


def test_logit_d_depends_only_on_earlier_dimensions():
    torch.manual_seed(0)
    model = NADE.build(info((1, 8, 8)), hidden_dim=16)
    x = torch.bernoulli(torch.full((1, 1, 8, 8), 0.5))
    jac = torch.autograd.functional.jacobian(lambda v: model.logits(v)[0], x).reshape(64, 64)
    assert (jac.triu() == 0).all()  # d logit_d / d x_j = 0 for j >= d
    assert (jac.tril(-1).abs().sum(1)[1:] > 0).all()  # and it does depend on every earlier pixel


def test_probabilities_of_all_binary_images_sum_to_one():
    torch.manual_seed(0)
    model = NADE.build(info((1, 2, 5)), hidden_dim=7)
    with torch.no_grad():
        model.b.normal_()
        model.V.normal_()
        model.W.normal_()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10))).view(-1, 1, 2, 5)
    total = model.log_likelihood(images).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-5)


def test_samples_follow_the_model():
    """Ancestral samples of a tiny NADE have the enumerated probabilities (chi-square-ish check)."""
    torch.manual_seed(0)
    model = NADE.build(info((1, 1, 3)), hidden_dim=5)
    with torch.no_grad():
        model.W.normal_(std=2.0)
        model.b.normal_()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3))).view(-1, 1, 1, 3)
    p = model.log_likelihood(images).exp().detach()
    s = model.sample(20000, torch.Generator().manual_seed(0)).view(-1, 3)
    codes = (s * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=8).float() / 20000
    assert torch.allclose(freq, p, atol=0.015)


def test_trains_on_mnist_small_and_samples():
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("mnist-small not found")
    torch.manual_seed(0)
    dm = MNISTLike.build(name="mnist", root=str(MNIST_SMALL), batch_size=32, binarize="dynamic")
    model = NADE.build(dm.info.to_dict(), hidden_dim=32, optimizer={"lr": 5e-3})
    losses = train_losses(model, dm, max_steps=200)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 100
    samples = model.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 28, 28) and set(samples.unique().tolist()) <= {0.0, 1.0}


def test_blocked_logits_and_their_gradients_equal_autograd_through_the_whole_tensors():
    """The reference: a_d as one exclusive cumulative sum over all D dimensions (eq. 3), differentiated by
    autograd. D = 21 is not a multiple of the block size, so a short last block is covered."""
    torch.manual_seed(0)
    model = NADE.build(info((1, 3, 7)), hidden_dim=5).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x = torch.bernoulli(torch.full((4, 1, 3, 7), 0.5, dtype=torch.double)).requires_grad_()
    weights = torch.randn(4, 21, dtype=torch.double)

    def reference(v):
        contributions = v.flatten(1).unsqueeze(-1) * model.W
        a = model.c + torch.cumsum(contributions, dim=1) - contributions
        return model.b + (torch.sigmoid(a) * model.V).sum(-1)

    wanted = reference(x)
    got = model.logits(x)
    inputs = [x, *model.parameters()]
    grads_wanted = torch.autograd.grad((wanted * weights).sum(), inputs)
    grads_got = torch.autograd.grad((got * weights).sum(), inputs)
    torch.testing.assert_close(got, wanted, rtol=0, atol=1e-12)
    for g_got, g_wanted in zip(grads_got, grads_wanted):
        torch.testing.assert_close(g_got, g_wanted, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), wanted, rtol=0, atol=1e-12)
