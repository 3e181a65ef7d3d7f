"""Metrics computed from a model's samples (as opposed to its likelihood), for any GenerativeModel."""

from __future__ import annotations

from typing import Any

import torch

from dgmrun.io import sample_in_batches
from dgmrun.metrics.toy import mode_metrics
from dgmrun.models.base import GenerativeModel


@torch.no_grad()
def sample_metrics(model: GenerativeModel, datamodule: Any, num_samples: int, seed: int,
                   batch_size: int = 500) -> dict[str, Any]:
    """``test/*`` sample metrics for this data: mode coverage and quality on toy2d mixtures
    (PacGAN/VEEGAN protocol: within 3 std of a component; a mode counts with >= 20 such samples)."""
    modes = getattr(datamodule, "modes", None)
    centers, std = modes() if modes is not None else (torch.empty(0, 2), 0.0)
    if len(centers) == 0:
        return {}
    was_training = model.training
    model.eval()
    generator = torch.Generator(model.device).manual_seed(seed)
    samples = sample_in_batches(model.sample, num_samples, batch_size, generator)
    model.train(was_training)
    found = mode_metrics(samples.cpu(), centers, std)
    return {"test/hq": found["hq"], "test/modes": found["modes"], "test/modes_total": len(centers),
            "test/sample_metrics_protocol": f"{num_samples} samples, 3-std radius, >=20 per mode"}
