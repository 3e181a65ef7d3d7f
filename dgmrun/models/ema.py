"""Exponential moving average of a network's weights (Yazici et al. 2019, arXiv:1806.04498;
Karras et al. 2018): theta_ema <- decay * theta_ema + (1 - decay) * theta after every update.

The average lives in buffers (so it is saved in checkpoints and follows the module across devices)
and is swapped into the network only while it is used (``with ema.swapped(): ...``), then the
trained weights are put back, so training never sees the average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def _tracked(module: nn.Module) -> list[tuple[str, Tensor]]:
    """Parameters and floating-point buffers (BN running statistics), by name."""
    named = list(module.named_parameters()) + [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    return named


class EMA(nn.Module):
    def __init__(self, module: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.names = [name for name, _ in _tracked(module)]
        for name, tensor in _tracked(module):
            self.register_buffer(name.replace(".", "__"), tensor.detach().clone())

    def _shadows(self) -> list[Tensor]:
        return [getattr(self, name.replace(".", "__")) for name in self.names]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for shadow, (_, live) in zip(self._shadows(), _tracked(module)):
            shadow.lerp_(live.detach().to(shadow.dtype), 1.0 - self.decay)

    @contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """The module with the averaged weights in place; its own weights are restored on exit."""
        live = _tracked(module)
        saved = [t.detach().clone() for _, t in live]
        with torch.no_grad():
            for shadow, (_, t) in zip(self._shadows(), live):
                t.copy_(shadow)
        try:
            yield module
        finally:
            with torch.no_grad():
                for old, (_, t) in zip(saved, live):
                    t.copy_(old)
