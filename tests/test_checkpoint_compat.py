"""Checkpoints written before the settings were declared once (commit 6cc1d98: defaults in the YAMLs, the
constructors and the schema; ``auto`` resolved in the models) still load, sample and evaluate.

The fixtures are that version's ``dgmrun trainer=debug`` runs: a VAE (``model.hidden_dims=[16]
model.latent_dim=2``) and a DDPM (``model.base_channels=4 model.num_res_blocks=1 model.attention_resolutions=[]
model.num_timesteps=20 sample.sampler=ddim sample.steps=5``), both on the bundled digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import dgmrun
from dgmrun.schema import validate

FIXTURES = Path(__file__).parent / "fixtures"
VAE_CKPT, DDPM_CKPT = FIXTURES / "6cc1d98-vae-digits.ckpt", FIXTURES / "6cc1d98-ddpm-digits.ckpt"


@pytest.mark.parametrize("path", [VAE_CKPT, DDPM_CKPT], ids=["vae", "ddpm"])
def test_an_earlier_versions_checkpoint_loads_with_its_weights(path):
    checkpoint = torch.load(path, weights_only=True)
    model = dgmrun.load(str(path))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in checkpoint["state_dict"].items())
    assert torch.isfinite(model.sample(4, torch.Generator().manual_seed(0))).all()


def test_the_ddpm_of_an_earlier_version_has_its_unet_sized_as_then():
    """Its config says channel_mult: null, which the U-Net then resolved itself; the declaration resolves it now."""
    assert torch.load(DDPM_CKPT, weights_only=True)["dgmrun"]["config"]["model"]["channel_mult"] is None
    assert dgmrun.load(str(DDPM_CKPT)).hparams.channel_mult == [1, 2]


def test_task_sample_of_an_earlier_ddpm_keeps_its_sampler(cfg_factory, tmp_path):
    from dgmrun.tasks.sample import sample

    def run(*overrides: str) -> tuple[dict, np.ndarray]:
        cfg = cfg_factory("task=sample", f"ckpt_path={DDPM_CKPT}", "sample.num=8", *overrides)
        validate(cfg)
        sample(cfg)
        out = Path(cfg.paths.output_dir)
        return OmegaConf.load(out / "config.yaml").sample, np.load(out / "samples.npz")["images"]

    kept, samples = run()
    assert (kept.sampler, kept.steps) == ("ddim", 5)  # the checkpoint's, not the default ddpm sampler
    assert samples.shape == (8, 1, 8, 8)
    chosen, _ = run("sample.steps=3")
    assert (chosen.sampler, chosen.steps) == ("ddim", 3)
