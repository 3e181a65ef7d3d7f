"""The GAN family's other members (CGAN, AC-GAN, InfoGAN, EBGAN, BiGAN) and GMMN: their math against
direct computations, a few training steps each, and the shapes of samples and figures."""

from __future__ import annotations

import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dgmrun.errors import DgmrunError
from dgmrun.models.bigan import BiGAN
from dgmrun.models.cgan import ACGAN, CGAN
from dgmrun.models.ebgan import EBGAN, pull_away_term
from dgmrun.models.gmmn import GMMN, median_bandwidths, mixed_rbf_kernel, mmd2
from dgmrun.models.infogan import InfoGAN
from tests.conftest import SaveWeightsPerRank

TOY = {"name": "toy2d", "shape": [2], "num_classes": 8, "levels": None}
IMG = {"name": "tiny", "shape": [1, 16, 16], "num_classes": 3, "levels": 256}
SMALL_MLP = {"g_hidden_dims": [16], "d_hidden_dims": [16]}
SMALL_CONV = {"g_channels": [4, 8], "d_channels": [4, 8], "latent_dim": 4}


def loader(info: dict, n: int = 64, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    shape = info["shape"]
    x = torch.rand(n, *shape, generator=g) if len(shape) == 3 else torch.randn(n, *shape, generator=g)
    y = torch.randint(max(info["num_classes"], 1), (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fit(model: pl.LightningModule, info: dict, batches: int = 3, **kw) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=1, limit_train_batches=batches, log_every_n_steps=1,
                         **kw)
    trainer.fit(model, train_dataloaders=loader(info))
    return trainer


def check_images(x: torch.Tensor, n: int, shape: list[int]) -> None:
    assert x.shape == (n, *shape) and x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()


# ------------------------------------------------------------------------------------ conditional
@pytest.mark.parametrize("conditioning,info,args", [("projection", TOY, SMALL_MLP), ("concat", TOY, SMALL_MLP),
                                                    ("projection", IMG, SMALL_CONV), ("concat", IMG, SMALL_CONV)])
def test_cgan_trains_and_samples_given_classes(conditioning, info, args):
    model = CGAN.build(info, conditioning=conditioning, pack=2, **args)
    trainer = fit(model, info)
    assert trainer.global_step == 6
    model.eval()
    x = model.sample(8, torch.Generator().manual_seed(0), classes=[1, 2])
    assert x.shape == (8, *info["shape"])
    labels = model.sample_labels(8, None, [1, 2])
    assert labels.tolist() == [1, 2] * 4


def test_cgan_class_conditioning_changes_samples_and_refuses_bad_classes():
    model = CGAN.build(TOY, **SMALL_MLP)
    a = model.sample(4, torch.Generator().manual_seed(0), classes=[0])
    b = model.sample(4, torch.Generator().manual_seed(0), classes=[5])
    assert not torch.allclose(a, b)
    with pytest.raises(DgmrunError, match="sample.classes"):
        model.sample(4, torch.Generator(), classes=[8])


def test_image_grids_have_one_row_per_class():
    model = CGAN.build(IMG, **SMALL_CONV)
    assert model.sample_labels(32, None, None).tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [0] * 8


def test_projection_discriminator_formula():
    model = CGAN.build(TOY, pack=1, **SMALL_MLP)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 4])
    h = model.discriminator.body(x)
    expected = model.discriminator.head(h) + (model.class_embedding(y) * h).sum(1, keepdim=True)
    assert torch.allclose(model.critic(x, y), expected)


def test_unconditional_gan_refuses_classes():
    from dgmrun.models.gan import GAN

    with pytest.raises(DgmrunError, match="not class-conditional"):
        GAN.build(TOY).sampler([1])
    model = CGAN.build(TOY, **SMALL_MLP)
    assert model.sampler([3])(5, torch.Generator().manual_seed(0)).shape == (5, 2)
    with pytest.raises(DgmrunError, match="sample.classes"):
        model.sampler([9])


@pytest.mark.parametrize("info,args", [(TOY, SMALL_MLP), (IMG, SMALL_CONV)])
def test_acgan_trains_with_class_heads_per_sample(info, args):
    model = ACGAN.build(info, pack=2, **args)
    real, classes = model._heads(model.to_model_space(loader(info).dataset.tensors[0][:6]))
    assert real.shape == (3, 1) and classes.shape == (6, info["num_classes"])
    trainer = fit(model, info)
    assert "train/d_aux" in trainer.callback_metrics and "train/g_aux" in trainer.callback_metrics
    model.eval()
    assert model.sample(4, torch.Generator().manual_seed(0), classes=[2]).shape == (4, *info["shape"])


# ------------------------------------------------------------------------------------ InfoGAN
def test_infogan_info_loss_and_traversal_grids():
    model = InfoGAN.build(IMG, num_categorical=1, categorical_dim=3, continuous_dim=2, pack=2, **SMALL_CONV)
    trainer = fit(model, IMG)
    bound = trainer.callback_metrics["train/mi_lower_bound"]
    assert bound <= torch.log(torch.tensor(3.0)) + 1e-6  # H(c) - L_I <= H(c) for the categorical part
    model.eval()
    grids = model.figures(torch.rand(8, 1, 16, 16))
    assert set(grids) == {"traversal_categorical0", "traversal_continuous0", "traversal_continuous1"}
    for grid in grids.values():
        check_images(grid, 64, IMG["shape"])


def test_infogan_paper_networks_fc_layers_and_batch_norm():
    model = InfoGAN.build(IMG, pack=1, fc_dim=32, d_batch_norm=True, **SMALL_CONV)
    g_first, d_fc = model.generator[0], model.discriminator.body[-3]
    assert (g_first.in_features, g_first.out_features) == (4 + 10 + 2, 32)  # z, one-hot code, 2 continuous
    # batch norm over each of the projection's 8 x 4 x 4 features, as in the paper (per channel, G collapsed)
    assert isinstance(model.generator[4], torch.nn.BatchNorm1d) and model.generator[4].num_features == 8 * 4 * 4
    assert isinstance(d_fc, torch.nn.Linear) and d_fc.out_features == 32 == model.q_head[0].in_features
    batch_norms = [m for m in (*model.discriminator.modules(), *model.q_head.modules())
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(batch_norms) == 3  # D's second convolution, D's FC layer, Q's hidden layer
    fit(model, IMG)
    assert batch_norms[0].num_batches_tracked > 0
    model.eval()
    check_images(model.sample(4, torch.Generator().manual_seed(0)), 4, IMG["shape"])


def test_infogan_info_loss_is_small_when_q_reads_the_codes_exactly():
    model = InfoGAN.build(TOY, num_categorical=1, categorical_dim=4, continuous_dim=1, pack=1, **SMALL_MLP)
    latent = model.sample_latent(6)
    codes = latent[:, model.latent_dim:]
    class ExactQ(torch.nn.Module):  # 50 x the one-hot (confident, right class) and the continuous code itself
        def forward(self, h):
            return torch.cat([codes[:, :4] * 50, codes[:, 4:]], 1)

    model.q_head = ExactQ()
    loss, bound = model.info_loss(torch.randn(6, 16), latent)  # D's body features (ExactQ ignores them)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert bound.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-6)


# ------------------------------------------------------------------------------------ EBGAN
@pytest.mark.parametrize("make,extra", [(InfoGAN, "q_head"), (BiGAN, "encoder")])
def test_dcgan_init_reaches_the_networks_a_family_adds(make, extra):
    torch.manual_seed(0)
    model = make.build(IMG, arch="dcgan", init="dcgan")
    linear = [m for m in getattr(model, extra).modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert linear and all(m.weight.std().item() == pytest.approx(0.02, rel=0.15) for m in linear)
    assert all(not m.bias.any() for m in linear if m.bias is not None)


def test_pull_away_term_against_a_double_loop():
    s = torch.randn(5, 3)
    total = 0.0
    for i, j in itertools.permutations(range(5), 2):
        total += (torch.dot(s[i], s[j]) / (s[i].norm() * s[j].norm())).item() ** 2
    assert pull_away_term(s).item() == pytest.approx(total / 20, rel=1e-5)
    assert pull_away_term(torch.eye(3)).item() == pytest.approx(0.0)


@pytest.mark.parametrize("info,args", [(TOY, SMALL_MLP), (IMG, SMALL_CONV)])
def test_ebgan_trains_with_margin(info, args):
    model = EBGAN.build(info, margin=0.5, **args)
    x = model.to_model_space(loader(info).dataset.tensors[0][:4])
    energy = model.critic(x)
    assert energy.shape == (4,) and (energy >= 0).all()
    trainer = fit(model, info)
    assert "train/energy_fake" in trainer.callback_metrics and "train/pull_away" in trainer.callback_metrics
    with pytest.raises(DgmrunError, match="pack"):
        EBGAN.build(info, pack=2, **args)


# ------------------------------------------------------------------------------------ BiGAN
@pytest.mark.parametrize("info,args", [(TOY, SMALL_MLP), (IMG, SMALL_CONV)])
def test_bigan_trains_encoder_and_reconstructs(info, args):
    model = BiGAN.build(info, pack=2, **args)
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    fit(model, info)
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, model.encoder.parameters()))  # E is trained
    model.eval()
    x = loader(info).dataset.tensors[0][:32]
    assert model.reconstruct(x).shape == x.shape
    figures = model.figures(x)
    if len(info["shape"]) == 3:
        check_images(figures["reconstructions"], 64, info["shape"])
    else:
        assert figures == {}


class LinearJointCritic(torch.nn.Module):
    """D(x, z) = a . x + b . z on packed inputs: its gradient w.r.t. the joint input (x, z) is (a, b)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(a), torch.nn.Parameter(b)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.a + z @ self.b)[:, None]


def bigan_with_linear_critic(loss: str, pack: int) -> BiGAN:
    model = BiGAN.build(TOY, loss=loss, pack=pack, latent_dim=3, **SMALL_MLP)
    g = torch.Generator().manual_seed(0)
    model.discriminator = LinearJointCritic(torch.randn(2 * pack, generator=g), torch.randn(3 * pack, generator=g))
    return model


# What G and E together minimise, by loss, on D's logits f = D(G(z), z) and r = D(x, E(x)): the table's
# G loss on f plus, on r, the same with real and fake swapped (for wgan/hinge: the negated critic).
BIGAN_G_LOSSES = {
    "minimax": lambda f, r: torch.log(1 - torch.sigmoid(f)).mean() + torch.log(torch.sigmoid(r)).mean(),
    "ns": lambda f, r: -torch.log(torch.sigmoid(f)).mean() - torch.log(1 - torch.sigmoid(r)).mean(),
    "wgan": lambda f, r: -f.mean() + r.mean(),
    "wgan_gp": lambda f, r: -f.mean() + r.mean(),
    "hinge": lambda f, r: -f.mean() + r.mean(),
    "lsgan": lambda f, r: 0.5 * ((f - 1) ** 2).mean() + 0.5 * (r**2).mean(),
}


@pytest.mark.parametrize("loss", sorted(BIGAN_G_LOSSES))
@pytest.mark.parametrize("pack", [1, 2])
def test_bigan_generator_and_encoder_loss_follows_the_loss_table(loss, pack):
    model = bigan_with_linear_critic(loss, pack)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    g_loss, _ = model.g_loss(x, torch.zeros(8))
    torch.manual_seed(2)
    z = model.sample_latent(8)  # the noise g_loss drew
    with torch.no_grad():
        fake_logits = model.joint_critic(model.generate(z), z)
        real_logits = model.joint_critic(x, model.encode(x))
    assert g_loss.item() == pytest.approx(BIGAN_G_LOSSES[loss](fake_logits, real_logits).item(), rel=1e-5)


@pytest.mark.parametrize("pack", [1, 2])
def test_bigan_gradient_penalty_is_on_the_joint_input(pack):
    """With D(x, z) = a . x + b . z the gradient at every interpolate (x^, z^) is (a, b): the penalty is
    (sqrt(|a|^2 + |b|^2) - 1)^2, not (|a| - 1)^2 as with z held fixed."""
    model = bigan_with_linear_critic("wgan_gp", pack)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    _, logs = model.d_loss(x, torch.zeros(8))
    a, b = model.discriminator.a.detach(), model.discriminator.b.detach()
    joint_norm = torch.sqrt(a.norm() ** 2 + b.norm() ** 2).item()
    assert logs["gp"].item() == pytest.approx((joint_norm - 1) ** 2, rel=1e-5)


def test_gradient_penalty_interpolates_every_input_of_a_joint_critic_alike():
    """D(x, z) = (|x|^2 + |z|^2) / 2 has gradient (x^, z^): at e = 0.25 both are 0.25 real + 0.75 fake."""
    from dgmrun.models.gan import gradient_penalty

    real, fake = (torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 8.0]])), (torch.zeros(1, 2), torch.zeros(1, 2))
    critic = lambda x, z: 0.5 * ((x**2).sum(1) + (z**2).sum(1))  # noqa: E731
    gp = gradient_penalty(critic, real, fake, eps=torch.tensor([0.25]))
    assert gp.item() == pytest.approx((5**0.5 - 1) ** 2, rel=1e-6)  # |(1, 0, 0, 2)| = sqrt(5)


@pytest.mark.parametrize("seed", [0, 1])
def test_bigan_encoder_learns_to_invert_the_generator(seed):
    """At the BiGAN optimum E = G^-1 (Donahue et al., Theorem 2). On the 8-Gaussian ring with a 2-D
    latent, 1,024 updates (~6 s) bring E(G(z)) in line with z: cosine ~0 before, > 0.8 after."""
    from dgmrun.data.datamodule import Toy2D

    torch.manual_seed(seed)
    dm = Toy2D.build(name="toy2d", shape="8gaussians", num_train=8192, batch_size=128, seed=seed)
    dm.setup("fit")
    model = BiGAN.build(dm.info.to_dict(), latent_dim=2, g_hidden_dims=[64, 64], d_hidden_dims=[128, 128],
                  e_hidden_dims=[64, 64], scheduler={"name": "cosine"})

    def inversion() -> float:
        model.eval()
        with torch.no_grad(), model.ema_generator():
            z = model.sample_latent(2000, torch.Generator().manual_seed(1))
            cosine = torch.nn.functional.cosine_similarity(model.encode(model.generate(z)), z).mean().item()
        model.train()
        return cosine

    before = inversion()
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, max_epochs=8, limit_val_batches=0).fit(model, datamodule=dm)
    assert abs(before) < 0.3 and inversion() > 0.8, (before, inversion())


# ------------------------------------------------------------------------------------ GMMN
def test_mmd2_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g) + 1
    bandwidths = [0.5, 2.0]

    def k(a, b):
        return sum(torch.exp(-((a - b) ** 2).sum() / (2 * s * s)).item() for s in bandwidths)

    kxx = sum(k(a, b) for a in x for b in x) / 16
    kyy = sum(k(a, b) for a in y for b in y) / 25
    kxy = sum(k(a, b) for a in x for b in y) / 20
    assert mmd2(x, y, bandwidths).item() == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-5)
    assert mmd2(x, x, bandwidths).item() == pytest.approx(0.0, abs=1e-6)
    assert mixed_rbf_kernel(x, y, bandwidths).shape == (4, 5)


def test_median_bandwidths():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # one pairwise distance: 5
    assert median_bandwidths(x, (0.5, 1.0)) == pytest.approx([2.5, 5.0])


@pytest.mark.parametrize("space,info", [("pixels", TOY), ("pixels", IMG), ("code", IMG), ("code", TOY)])
def test_gmmn_trains_and_samples(space, info):
    model = GMMN.build(info, space=space, hidden_dims=[16], ae_hidden_dims=[16], code_dim=4)
    trainer = fit(model, info)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/mmd2"])
    model.eval()
    x = model.sample(6, torch.Generator().manual_seed(0))
    if len(info["shape"]) == 3:
        check_images(x, 6, info["shape"])
    else:
        assert x.shape == (6, 2)
    assert torch.equal(x, model.sample(6, torch.Generator().manual_seed(0)))


def test_gmmn_generator_gets_closer_in_mmd():
    torch.manual_seed(0)
    model = GMMN.build(TOY, hidden_dims=[32, 32], bandwidths=[0.5, 1.0, 2.0])
    data = torch.randn(128, 2) * 0.3 + torch.tensor([2.0, -1.0])
    before = mmd2(data, model.sample(128, torch.Generator().manual_seed(1)), [0.5, 1.0, 2.0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.log_dict = model.log = lambda *a, **k: None
    for _ in range(60):
        opt.zero_grad()
        model.training_step((data, torch.zeros(128, dtype=torch.long)), 0).backward()
        opt.step()
    after = mmd2(data, model.sample(128, torch.Generator().manual_seed(1)), [0.5, 1.0, 2.0])
    assert after < before / 5


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("model,data", [("cgan", "toy2d"), ("acgan", "mnist"), ("infogan", "mnist"),
                                        ("infogan", "toy2d"), ("ebgan", "toy2d"), ("bigan", "mnist"),
                                        ("gmmn", "toy2d")])
def test_family_configs_validate(cfg_factory, model, data):
    from dgmrun.schema import validate

    cfg = cfg_factory(f"model={model}", f"data={data}")
    validate(cfg)


def test_family_configs_refuse_bad_values(cfg_factory):
    from dgmrun.schema import validate

    for overrides, message in [(["model=cgan", "model.conditioning=sum"], "model.conditioning"),
                               (["model=ebgan", "model.pack=2"], "model.pack must be 1"),
                               (["model=gmmn", "model.space=latent"], "model.space"),
                               (["model=infogan", "model.info_weight=-1"], "model.info_weight")]:
        with pytest.raises(DgmrunError, match=message):
            validate(cfg_factory(*overrides, "data=toy2d"))


# ------------------------------------------------------------------------------------ DDP and bf16
# ~20 s each (two gloo ranks): the fast suite runs InfoGAN (batch norm in D, three players' optimizers),
# `pytest -m slow` every family.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("make", [
    pytest.param(lambda: CGAN.build(IMG, pack=2, **SMALL_CONV), marks=SLOW, id="cgan"),
    pytest.param(lambda: ACGAN.build(TOY, pack=2, **SMALL_MLP), marks=SLOW, id="acgan"),
    pytest.param(lambda: InfoGAN.build(IMG, categorical_dim=3, pack=2, fc_dim=8, d_batch_norm=True, **SMALL_CONV), id="infogan"),
    pytest.param(lambda: EBGAN.build(TOY, **SMALL_MLP), marks=SLOW, id="ebgan"),
    pytest.param(lambda: BiGAN.build(IMG, pack=2, **SMALL_CONV), marks=SLOW, id="bigan"),
    pytest.param(lambda: GMMN.build(IMG, space="code", hidden_dims=[16], ae_hidden_dims=[16]), marks=SLOW, id="gmmn"),
])
def test_family_trains_under_ddp_with_bf16(make, tmp_path):
    """Two gloo ranks under bf16 mixed precision: every backward reaches every parameter (DDP raises
    otherwise), the gradients are averaged, so both replicas end with the same weights, and they trained."""
    model = make()
    initial = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    info = {"shape": list(model.data_info.shape), "num_classes": max(model.data_info.num_classes, 1)}
    pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, precision="bf16-mixed", max_epochs=1,
               limit_train_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[SaveWeightsPerRank(tmp_path)]).fit(model, train_dataloaders=loader(info))
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # BN running statistics are each rank's own (DDP broadcasts rank 0's before every forward); the rest agrees
    differ = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert [k for k in differ if "running_" not in k and "num_batches_tracked" not in k] == []
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)


def test_gmmn_code_space_keeps_distinct_codes_on_real_digits(mnist_small):
    """GMMN+AE on real MNIST: the encoder must keep images apart. Sigmoid codes saturated at 1 for
    every image within 3 epochs (the smallest per-dimension spread was 0.0), and G then matched one point."""
    from dgmrun.data.datamodule import MNISTLike

    torch.manual_seed(0)
    dm = MNISTLike.build(name="mnist", root=str(mnist_small), batch_size=128, binarize="none")
    dm.setup("fit")
    model = GMMN.build(dm.info.to_dict(), space="code")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=3, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    x, _ = dm.split_tensors("test")
    with torch.no_grad():
        codes = model.encoder(x[:500])
    assert codes.std(0).min() > 0.1, codes.std(0)
