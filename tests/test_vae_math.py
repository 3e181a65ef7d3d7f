"""The VAE's mathematics against what can be computed exactly."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from dgmrun.models.base import build_model
from dgmrun.data.info import DataInfo
from dgmrun.models.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian
from dgmrun.models.vae import VAE
from dgmrun.schema import validate


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_masses_sum_to_one(levels):
    torch.manual_seed(0)
    likelihood = DiscretizedLogistic(levels)
    params = torch.randn(5, 2, 1, 1) * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)  # loc, log-scale
    grid = torch.arange(levels) / (levels - 1)
    log_p = torch.stack([likelihood.log_prob(params, v.expand(5, 1, 1, 1)) for v in grid])
    assert torch.allclose(log_p.exp().sum(0), torch.ones(5), atol=1e-4)


def test_discretized_logistic_matches_logistic_cdf_differences():
    likelihood = DiscretizedLogistic(256)
    loc, log_scale = 0.1, math.log(0.05)
    params = torch.tensor([loc, log_scale]).view(1, 2, 1, 1)
    x = torch.tensor(100 / 255).view(1, 1, 1, 1)
    y = 2 * 100 / 255 - 1
    cdf = lambda v: 1 / (1 + math.exp(-(v - loc) / math.exp(log_scale)))  # noqa: E731
    expected = math.log(cdf(y + 1 / 255) - cdf(y - 1 / 255))
    assert likelihood.log_prob(params, x).item() == pytest.approx(expected, rel=1e-5)


def test_bernoulli_and_gaussian_log_probs():
    logits = torch.tensor([[0.3, -1.2]])
    x = torch.tensor([[1.0, 0.0]])
    expected = math.log(torch.sigmoid(torch.tensor(0.3)).item()) + math.log(1 - torch.sigmoid(torch.tensor(-1.2)).item())
    assert Bernoulli().log_prob(logits, x).item() == pytest.approx(expected, rel=1e-6)
    params = torch.tensor([[0.5, -0.5, math.log(2.0), 0.0]])  # means then log-stds
    point = torch.tensor([[1.0, 0.0]])
    expected = (-0.5 * (0.5 / 2) ** 2 - math.log(2) - 0.5 * math.log(2 * math.pi)
                - 0.5 * 0.5**2 - 0.5 * math.log(2 * math.pi))
    assert Gaussian(learn_variance=True).log_prob(params, point).item() == pytest.approx(expected, rel=1e-6)


class ExactPosterior(nn.Module):
    """q(z|x) = p(z|x) of the linear-Gaussian model x = W z + b + noise, noise ~ N(0, I)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.cov = torch.linalg.inv(torch.eye(weight.shape[1]) + weight.T @ weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = (x - self.bias) @ self.weight @ self.cov.T
        logvar = torch.log(torch.diagonal(self.cov)).expand_as(mu)
        return torch.cat([mu, logvar], -1)


def linear_gaussian_vae() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A VAE whose decoder is x = W z + b with unit noise, W with orthogonal columns (diagonal posterior)."""
    info = DataInfo("points", (3,), 0, None)
    vae = VAE.build(info.to_dict(), latent_dim=2, arch="mlp", hidden_dims=[8], likelihood="gaussian", learn_variance=False)
    q, _ = torch.linalg.qr(torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))
    weight = q * torch.tensor([2.0, 0.7])
    bias = torch.tensor([0.5, -1.0, 0.2])
    decoder = nn.Linear(2, 3)
    decoder.weight.data, decoder.bias.data = weight.clone(), bias.clone()
    vae.decoder = decoder
    vae.encoder = ExactPosterior(weight, bias)
    return vae, weight, bias


def exact_log_marginal(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    cov = weight @ weight.T + torch.eye(3)
    return torch.distributions.MultivariateNormal(bias, covariance_matrix=cov).log_prob(x)


def test_importance_weights_are_exact_under_the_true_posterior():
    torch.manual_seed(1)
    vae, weight, bias = linear_gaussian_vae()
    x = torch.randn(6, 3) * 2
    log_w = vae.log_importance_weights(x, num_samples=7)
    assert torch.allclose(log_w, exact_log_marginal(x, weight, bias).expand(7, 6), atol=1e-4)
    vae.eval_settings["num_importance_samples"] = 3
    assert torch.allclose(vae.log_likelihood(x), exact_log_marginal(x, weight, bias), atol=1e-4)


def test_elbo_is_exact_in_expectation_and_importance_sampling_converges_from_a_poor_posterior():
    torch.manual_seed(2)
    vae, weight, bias = linear_gaussian_vae()
    x = torch.randn(4, 3)
    exact = exact_log_marginal(x, weight, bias)
    reconstruction, kl = zip(*[vae.elbo_terms(x) for _ in range(4000)])
    elbo = torch.stack(reconstruction).mean(0) - kl[0]
    assert torch.allclose(elbo, exact, atol=0.05)
    # A deliberately wrong posterior: the ELBO is a strict lower bound, importance sampling closes the gap.
    vae.encoder = nn.Sequential(nn.Linear(3, 4))
    nn.init.zeros_(vae.encoder[0].weight)
    nn.init.zeros_(vae.encoder[0].bias)  # q(z|x) = N(0, I) = the prior
    vae.eval_settings["num_importance_samples"] = 1
    k1 = vae.log_likelihood(x)
    vae.eval_settings["num_importance_samples"] = 20000
    k20000 = vae.log_likelihood(x)
    assert (exact - k20000).abs().max() < 0.02
    assert k1.mean() < k20000.mean() - 0.1


def two_layer_linear_gaussian_vae() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """z2 ~ N(0, 1), z1 | z2 ~ N(A z2 + c, diag s^2), x | z1 ~ N(W z1 + b, I): x is Gaussian with mean W c + b and
    covariance W (A A^T + diag s^2) W^T + I. The encoders are deliberately poor (q = N(0, I) at both layers)."""
    info = DataInfo("points", (3,), 0, None)
    vae = VAE.build(info.to_dict(), latent_dim=2, arch="mlp", hidden_dims=[8], upper_layers=[[4, 1]],
                    likelihood="gaussian", learn_variance=False)
    weight, bias = torch.tensor([[1.5, 0.0], [0.3, -0.8], [0.0, 1.1]]), torch.tensor([0.5, -1.0, 0.2])
    a, c, log_s2 = torch.tensor([[1.2], [-0.6]]), torch.tensor([0.3, -0.2]), torch.tensor([-1.0, 0.4])
    vae.decoder = nn.Linear(2, 3)
    vae.decoder.weight.data, vae.decoder.bias.data = weight.clone(), bias.clone()
    upper = nn.Linear(1, 4)  # (mean, log-variance) of p(z1 | z2)
    upper.weight.data = torch.cat([a, torch.zeros(2, 1)])
    upper.bias.data = torch.cat([c, log_s2])
    vae.upper_decoders[0] = upper
    for encoder in (vae.encoder, vae.upper_encoders[0]):
        for parameter in encoder.parameters():
            nn.init.zeros_(parameter)
    cov = weight @ (a @ a.T + torch.diag(log_s2.exp())) @ weight.T + torch.eye(3)
    return vae, weight @ c + bias, cov


def test_two_stochastic_layers_importance_sampling_converges_to_the_exact_marginal_and_samples_follow_it():
    torch.manual_seed(3)
    vae, mean, cov = two_layer_linear_gaussian_vae()
    x = torch.randn(5, 3) + mean
    exact = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    vae.eval_settings["num_importance_samples"] = 20000
    assert (vae.log_likelihood(x) - exact).abs().max() < 0.03
    reconstruction, kl = zip(*[vae.elbo_terms(x) for _ in range(2000)])  # the one-sample KL estimate
    elbo = (torch.stack(reconstruction) - torch.stack(kl)).mean(0)
    assert (elbo < exact - 0.1).all()  # a strict bound under the poor posterior
    vae.eval_settings["num_importance_samples"] = 1
    k1 = vae.log_likelihood(x.repeat(2000, 1)).view(2000, 5).mean(0)
    assert torch.allclose(k1, elbo, atol=0.3)  # k = 1 is the ELBO in expectation
    samples = vae.sample(40000, torch.Generator().manual_seed(0))  # z2, then z1 | z2, then x | z1
    assert torch.allclose(samples.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(samples.T), cov, atol=0.1)


def test_kl_warmup_is_linear_up_to_beta():
    info = DataInfo("points", (2,), 0, None).to_dict()
    vae = VAE.build(info, latent_dim=2, beta=2.0, kl_warmup_steps=100)
    assert [vae.kl_weight(step) for step in (0, 50, 100, 400)] == [0.0, 1.0, 2.0, 2.0]
    assert VAE.build(info, latent_dim=2, beta=3.0).kl_weight(0) == 3.0


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "discretized_logistic"])
def test_bits_per_dim_only_for_a_probability_mass(cfg_factory, likelihood):
    """A Gaussian decoder on (17-level) digits gives a density: test/nll but no test/bpd. A Bernoulli
    (binarized digits) or discretized logistic decoder gives a mass: test/bpd = nll / (D ln 2)."""
    binarize = ["data.binarize=dynamic"] if likelihood == "bernoulli" else []
    cfg = cfg_factory(f"model.likelihood={likelihood}", "model.latent_dim=4", "eval.num_importance_samples=2",
                      *binarize)
    validate(cfg)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, datamodule.info)
    model.eval_settings = dict(cfg.eval)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    torch.manual_seed(0)
    metrics = pl.Trainer(**quiet).test(model, datamodule=datamodule, verbose=False)[0]
    assert math.isfinite(metrics["test/nll"])
    if likelihood == "gaussian":
        assert "test/bpd" not in metrics
    else:
        assert metrics["test/bpd"] == pytest.approx(metrics["test/nll"] / (64 * math.log(2)), rel=1e-5)
