"""PixelCNN: causality of plain and gated stacks (no blind spot), normalisation, training on digits."""

from __future__ import annotations

import itertools

import pytest
import torch

from dgmrun.data.datamodule import MNISTLike
from dgmrun.models.pixelcnn import PixelCNN
from tests.conftest import MNIST_SMALL, train_losses

torch.set_num_threads(1)  # the test machine is shared: oversubscribed threads are ~20x slower

def info(shape, levels=2, num_classes=0):
    return {"name": "t", "shape": list(shape), "num_classes": num_classes, "levels": levels}


def pixel_jacobian(model, x, labels=None):
    """J[p, q] = sum over channels of |d logits at pixel p / d x at pixel q|, pixels in raster order."""
    n_pix = x.shape[-1] * x.shape[-2]

    def f(v):
        out = model.logits(v, labels)
        return out.reshape(out.shape[0], -1, n_pix)[0]  # (channels*outputs, pixels)

    jac = torch.autograd.functional.jacobian(f, x)  # (K, P, 1, C, H, W)
    return jac.abs().sum(0).reshape(n_pix, x.shape[1], n_pix).sum(1)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("levels", [2, 4])
def test_output_at_a_pixel_depends_only_on_earlier_pixels(gated, levels):
    torch.manual_seed(0)
    model = PixelCNN.build(info((2, 8, 8), levels), channels=8, num_layers=4, kernel_size=5, gated=gated)
    x = torch.randint(0, levels, (1, 2, 8, 8)).float() / (levels - 1)
    jac = pixel_jacobian(model, x)
    assert (jac.triu() == 0).all()  # nothing from the pixel itself or later ones
    if gated:  # no blind spot: every earlier pixel is seen (4 layers of 5x5 cover the whole 8x8 past)
        assert (jac.tril(-1) + torch.triu(torch.ones(64, 64)) > 0).all()


def test_plain_pixelcnn_has_the_blind_spot_gated_does_not():
    """Plain masked stacks never reach (i-1, j+4) from (i, j) (7x7 type A, then 3x3 type B: the blind spot)."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((1, 1, 10, 10), 0.5))
    target, hidden = 5 * 10 + 3, 4 * 10 + 7  # pixel (5, 3) and pixel (4, 7)
    plain = PixelCNN.build(info((1, 10, 10)), channels=8, num_layers=6, kernel_size=3, gated=False)
    gated = PixelCNN.build(info((1, 10, 10)), channels=8, num_layers=4, kernel_size=3, gated=True)
    assert pixel_jacobian(plain, x)[target, hidden] == 0
    assert pixel_jacobian(gated, x)[target, hidden] > 0


def test_conditional_causality_and_labels_matter():
    torch.manual_seed(0)
    for gated in (False, True):
        model = PixelCNN.build(info((1, 6, 6), 2, num_classes=3), channels=8, num_layers=3, kernel_size=3, gated=gated,
                         conditional=True)
        x = torch.bernoulli(torch.full((1, 1, 6, 6), 0.5))
        jac = pixel_jacobian(model, x, torch.tensor([1]))
        assert (jac.triu() == 0).all()
        a = model.log_prob(x, torch.tensor([0]))
        b = model.log_prob(x, torch.tensor([2]))
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("shape, levels", [((1, 3, 3), 2), ((1, 2, 2), 3)])
def test_probabilities_of_all_images_sum_to_one(gated, shape, levels):
    torch.manual_seed(0)
    model = PixelCNN.build(info(shape, levels), channels=8, num_layers=3, kernel_size=3, gated=gated)
    dims = shape[0] * shape[1] * shape[2]
    images = torch.tensor(list(itertools.product(range(levels), repeat=dims))).float().view(-1, *shape) / (levels - 1)
    with torch.no_grad():
        total = model.log_prob(images).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_conditional_sampling_uses_the_requested_classes():
    model = PixelCNN.build(info((1, 4, 4), 2, num_classes=10), channels=4, num_layers=2, kernel_size=3, conditional=True)
    assert model.grid_labels(24, [3, 7]).tolist() == [3] * 8 + [7] * 8 + [3] * 8
    assert model.grid_labels(16).tolist() == [0] * 8 + [1] * 8
    s1 = model.sample(16, torch.Generator().manual_seed(1), classes=[3, 7])
    s2 = model.sample(16, torch.Generator().manual_seed(1), classes=[3, 7])
    assert torch.equal(s1, s2) and s1.shape == (16, 1, 4, 4)


@pytest.mark.parametrize("gated", [False, True])
def test_trains_on_mnist_small_and_samples(gated):
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("mnist-small not found")
    torch.manual_seed(0)
    dm = MNISTLike.build(name="mnist", root=str(MNIST_SMALL), batch_size=16, binarize="dynamic")
    model = PixelCNN.build(dm.info.to_dict(), channels=16, num_layers=3, kernel_size=3, gated=gated, optimizer={"lr": 3e-3})
    losses = train_losses(model, dm, max_steps=100)
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20
    samples = model.eval().sample(2, torch.Generator().manual_seed(0))
    assert samples.shape == (2, 1, 28, 28) and set(samples.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("gated,kernel_size,num_layers", [(False, 3, 3), (False, 5, 6), (True, 3, 4), (True, 5, 2)])
def test_the_last_row_computed_on_its_receptive_field_equals_the_whole_network_s(gated, kernel_size, num_layers):
    """Every row of a 16-row image, conditional and 4 levels: cropping a layer's input to the rows the
    output still depends on must not change a number (the crop's zero padding stays outside them)."""
    torch.manual_seed(0)
    model = PixelCNN.build(info((2, 16, 6), levels=4, num_classes=3), channels=8, num_layers=num_layers,
                           kernel_size=kernel_size, gated=gated, conditional=True)
    x = torch.randint(0, 4, (3, 2, 16, 6)).float() / 3
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        whole = model.logits(x, labels)
        for i in range(16):
            torch.testing.assert_close(model.logits(x[:, :, : i + 1], labels, last_row=True)[..., 0, :], whole[..., i, :],
                                       rtol=1e-5, atol=1e-5)


def test_samples_from_the_cropped_rows_equal_those_of_the_whole_network_under_the_same_draws():
    torch.manual_seed(0)
    model = PixelCNN.build(info((1, 10, 10)), channels=8, num_layers=4, kernel_size=3)
    with torch.no_grad():
        x = torch.zeros(16, 1, 10, 10)
        generator = torch.Generator().manual_seed(3)
        for i, j in itertools.product(range(10), range(10)):  # the sampler before the crop: the whole image each time
            x[:, :, i, j] = torch.bernoulli(torch.sigmoid(model.logits(x)[..., i, j]), generator=generator)
    samples = model.sample(16, torch.Generator().manual_seed(3))
    assert torch.equal(samples, x) and 0 < x.mean() < 1
