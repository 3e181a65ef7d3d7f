"""VQ-VAE: quantisation, EMA codebook and restarts, the uniform-prior bound; the PixelCNN prior."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from dgmrun.data.datamodule import MNISTLike
from dgmrun.models.vqvae import VQVAE, VQVAEPrior

torch.set_num_threads(1)  # the test machine is shared: oversubscribed threads are ~20x slower
MNIST_SMALL = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist-small"


def info(shape, levels=2):
    return {"name": "t", "shape": list(shape), "num_classes": 0, "levels": levels}


def test_quantize_picks_the_nearest_code_and_gradients_pass_straight_through():
    torch.manual_seed(0)
    model = VQVAE.build(info((1, 8, 8)), num_codes=5, code_dim=3, channels=[4, 8])
    z_e = torch.randn(2, 3, 2, 2)
    codes, z_q = model.quantize(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(codes.flatten(), torch.cdist(flat, model.codebook).argmin(1))
    assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 3), model.codebook[codes.flatten()])
    x = torch.bernoulli(torch.full((2, 1, 8, 8), 0.5))
    log_px, commit, _, _ = model.losses(x)
    (-log_px.sum()).backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0  # the reconstruction trains the encoder


def test_ema_update_moves_codes_to_their_cluster_means_and_restarts_dead_codes():
    model = VQVAE.build(info((1, 8, 8)), num_codes=4, code_dim=2, ema_decay=0.5)
    with torch.no_grad():
        model.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0], [-50.0, 50.0]]))
        model.ema_sum.copy_(model.codebook)
    z_e = torch.tensor([[1.0, 1.0], [3.0, 3.0], [9.0, 11.0]]).T.reshape(1, 2, 1, 3)
    codes, _ = model.quantize(z_e)
    assert codes.flatten().tolist() == [0, 0, 1]
    for _ in range(30):
        model.update_codebook(z_e, codes)
    assert torch.allclose(model.codebook[0], torch.tensor([2.0, 2.0]), atol=1e-2)
    assert torch.allclose(model.codebook[1], torch.tensor([9.0, 11.0]), atol=1e-2)
    # codes 2 and 3 were never used: restarted at encoder outputs of the batch
    restarted = model.codebook[2:]
    assert all(any(torch.allclose(r, p, rtol=1e-2) for p in z_e.permute(0, 2, 3, 1).reshape(-1, 2)) for r in restarted)


def test_test_nll_is_reconstruction_plus_l_log_k():
    torch.manual_seed(0)
    model = VQVAE.build(info((1, 8, 8)), num_codes=16, code_dim=3, channels=[4, 8])
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.5))
    recon = model.extra_test_metrics(x)["reconstruction"]
    assert torch.allclose(-model.log_likelihood(x), recon + 4 * math.log(16), atol=1e-4)
    s = model.sample(5, torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 8, 8) and 0 <= s.min() and s.max() <= 1


def fit(model, dm, steps, batch_size=32):
    losses: list[float] = []

    class Recorder(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[Recorder()])
    trainer.fit(model, datamodule=dm)
    return trainer, losses


def test_vqvae_and_its_prior_train_on_mnist_small(tmp_path):
    if not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("mnist-small not found")
    torch.manual_seed(0)
    dm = MNISTLike.build(name="mnist", root=str(MNIST_SMALL), batch_size=32, binarize="dynamic")
    hparams = dict(num_codes=16, code_dim=8, channels=[16, 32])
    vqvae = VQVAE.build(dm.info.to_dict(), optimizer={"lr": 2e-3}, **hparams)
    trainer, losses = fit(vqvae, dm, 200)
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20
    # a dgmrun checkpoint (with its run record), as task=train writes it
    vqvae.run_record = {"config": {"model": {"_target_": "dgmrun.models.vqvae.VQVAE", **hparams}}}
    ckpt = tmp_path / "vqvae.ckpt"
    trainer.save_checkpoint(ckpt)

    prior = VQVAEPrior.build(dm.info.to_dict(), vqvae_ckpt=str(ckpt), channels=16, num_layers=3, optimizer={"lr": 3e-3})
    assert torch.equal(prior.vqvae.codebook, vqvae.codebook)
    _, prior_losses = fit(prior, dm, 100)
    assert sum(prior_losses[-10:]) / 10 < sum(prior_losses[:10]) / 10 - 10
    assert all(not p.requires_grad for p in prior.vqvae.parameters())
    dm.setup("test")
    x = next(iter(dm.test_dataloader()))[0][:64]
    uniform_bound = -vqvae.eval().log_likelihood(x).mean()
    learned_bound = -prior.eval().log_likelihood(x).mean()
    assert learned_bound < uniform_bound  # a learned prior beats the uniform one
    samples = prior.sample(3, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


def test_prior_is_causal_over_the_code_grid():
    torch.manual_seed(0)
    from dgmrun.nets.masked import PixelCNNNet

    net = PixelCNNNet(4, 6, channels=8, num_layers=3, kernel_size=3, gated=True)
    e = torch.randn(1, 4, 5, 5)
    jac = torch.autograd.functional.jacobian(lambda t: net(t)[0].reshape(6, 25), e)  # (6, 25, 1, 4, 5, 5)
    dep = jac.abs().sum((0, 2, 3)).reshape(25, 25)
    assert (dep.triu() == 0).all()


def vae_checkpoint(path: Path) -> Path:
    """A real dgmrun checkpoint (Lightning's file, with the run record task=train adds) of a model that is
    not a VQ-VAE: a small VAE on 8x8 digit-like images after one step."""
    from torch.utils.data import DataLoader, TensorDataset

    from dgmrun.models.vae import VAE

    vae = VAE.build(info((1, 8, 8), levels=17), latent_dim=2, hidden_dims=[8])
    vae.run_record = {"config": {"model": {"_target_": "dgmrun.models.vae.VAE", "latent_dim": 2, "hidden_dims": [8]}}}
    x = torch.randint(0, 17, (8, 1, 8, 8)) / 16
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(vae, DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=8))
    trainer.save_checkpoint(path)
    return path


def test_config_validation_refuses_a_missing_vqvae_ckpt(cfg_factory, tmp_path):
    from dgmrun.errors import DgmrunError
    from dgmrun.schema import validate

    for path in [tmp_path / "no" / "such.ckpt", tmp_path]:
        with pytest.raises(DgmrunError, match=f"^model.vqvae_ckpt={path}"):
            validate(cfg_factory("model=vqvae_prior", f"model.vqvae_ckpt={path}"))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "directory", "random-bytes", "not-a-vqvae"])
def test_a_bad_vqvae_ckpt_is_named_in_one_line(tmp_path, case):
    from tests.conftest import run_dgmrun

    if case == "missing":
        path = tmp_path / "no" / "such.ckpt"
    elif case == "directory":
        path = tmp_path / "run"
        path.mkdir()
    elif case == "random-bytes":
        path = tmp_path / "random.ckpt"
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    else:
        path = vae_checkpoint(tmp_path / "vae.ckpt")
    out = run_dgmrun("model=vqvae_prior", f"model.vqvae_ckpt={path}", "hydra.run.dir=prior", cwd=tmp_path,
                     timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgmrun: error: model.vqvae_ckpt="), out.stderr
    assert str(path) in lines[0] and "ckpt_path" not in lines[0]
    assert not (tmp_path / "prior" / "checkpoints").exists()
