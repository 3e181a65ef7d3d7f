"""``sample.classes``: honoured by class-conditional models, refused clearly by the others."""

from __future__ import annotations

import pytest
import torch

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.models.pixelcnn import PixelCNN
from dgmrun.models.vae import VAE

DIGITS = DataInfo("digits", (1, 8, 8), 10, 2).to_dict()


def test_conditional_model_gets_the_classes_asked_for(monkeypatch):
    model = PixelCNN.build(DIGITS, channels=8, num_layers=2, kernel_size=3, conditional=True).eval()
    seen = []
    original = model.grid_labels
    monkeypatch.setattr(model, "grid_labels", lambda n, classes: seen.append(classes) or original(n, classes))
    x = model.sampler([3, 7])(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 8, 8) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert seen == [[3, 7]]
    assert original(16, [3, 7]).tolist() == [3] * 8 + [7] * 8  # one class per row of 8


def test_unconditional_models_and_unknown_classes_are_refused():
    with pytest.raises(DgmrunError, match="not class-conditional"):
        VAE.build(DIGITS, latent_dim=2).sampler([1])
    model = PixelCNN.build(DIGITS, channels=8, num_layers=2, kernel_size=3, conditional=True)
    with pytest.raises(DgmrunError, match=r"\[10\] not in 0..9"):
        model.sampler([2, 10])
    assert VAE.build(DIGITS, latent_dim=2).sampler(None).__name__ == "sample"
