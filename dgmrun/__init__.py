"""dgmrun: a Hydra-configured command-line runner for deep generative models.

Importing this package is cheap (no torch, no lightning): the command line imports the heavy
libraries only inside the task it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from dgmrun.models.base import GenerativeModel


def load(path: str, map_location: str = "cpu", **model_overrides: Any) -> "GenerativeModel":
    """Rebuild a trained model from a checkpoint file or a run dir (meaning its ``last.ckpt``).

    The checkpoint carries the resolved config, so nothing else is needed:
    ``model = dgmrun.load("outputs/train/.../checkpoints/last.ckpt"); x = model.sample(16)``.
    """
    from dgmrun.checkpoint import load_model

    return load_model(path, map_location=map_location, model_overrides=model_overrides)
