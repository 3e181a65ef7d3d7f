"""IWAE: the bound grows with k on a trained model, k=1 is the ELBO, and it trains on real digits."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from dgmrun.data.datamodule import MNISTLike
from dgmrun.models.iwae import IWAE

torch.set_num_threads(1)  # the test machine is shared: oversubscribed threads are ~20x slower
MNIST_SMALL = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist-small"


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def train(model: pl.LightningModule, datamodule: pl.LightningDataModule, steps: int) -> list[float]:
    recorder = LossRecorder()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[recorder])
    trainer.fit(model, datamodule=datamodule)
    return recorder.losses


@pytest.fixture(scope="module")
def trained():
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("mnist-small not found")
    torch.manual_seed(0)
    dm = MNISTLike.build(name="mnist", root=str(MNIST_SMALL), batch_size=32, binarize="dynamic")
    dm.setup("fit")
    model = IWAE.build(dm.info.to_dict(), k=5, latent_dim=8, hidden_dims=[64], optimizer={"lr": 2e-3})
    losses = train(model, dm, 150)
    dm.setup("test")
    x = next(iter(dm.test_dataloader()))[0][:100]
    return model.eval(), losses, x


def test_loss_falls_and_samples_are_images(trained):
    model, losses, _ = trained
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 50
    samples = model.sample(6, torch.Generator().manual_seed(0))
    assert samples.shape == (6, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1


def test_bound_does_not_decrease_with_k(trained):
    model, _, x = trained
    torch.manual_seed(1)
    with torch.no_grad():
        bounds = [model.iwae_bound(x, k).mean().item() for k in (1, 10, 100)]
    assert bounds[0] <= bounds[1] <= bounds[2], bounds


def test_k1_is_the_elbo_in_expectation(trained):
    model, _, x = trained
    x = x[:20]
    torch.manual_seed(2)
    with torch.no_grad():
        draws = torch.stack([model.iwae_bound(x, 1) for _ in range(300)])
        reconstruction, kl = zip(*[model.elbo_terms(x) for _ in range(300)])
        elbo = torch.stack(reconstruction) - torch.stack(kl)
    # Same expectation: the ELBO with the analytic KL only has less variance.
    err = (draws.std(0) ** 2 / 300 + elbo.std(0) ** 2 / 300).sqrt()
    assert ((draws.mean(0) - elbo.mean(0)).abs() < 4 * err + 1e-3).all()


def test_iwae_gradient_is_the_weighted_sum_of_the_log_weight_gradients():
    """Burda et al. eq. 14: grad L_k = sum_i w~_i grad log w_i (for fixed noise)."""
    torch.manual_seed(0)
    info = {"name": "t", "shape": [1, 4, 4], "num_classes": 0, "levels": 2}
    model = IWAE.build(info, k=7, latent_dim=3, hidden_dims=[8])
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    torch.manual_seed(5)
    log_w = model.log_importance_weights(x, 7)
    weights = torch.softmax(log_w.detach(), 0)
    params = list(model.parameters())
    expected = torch.autograd.grad((weights * log_w).sum(), params)
    torch.manual_seed(5)
    got = torch.autograd.grad(model.iwae_bound(x, 7).sum(), params)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5)
