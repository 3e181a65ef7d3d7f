"""Exponential moving average of a network's weights (Yazici et al. 2019, arXiv:1806.04498;
Karras et al. 2018): theta_ema <- d_n * theta_ema + (1 - d_n) * theta after the n-th update, with the
decay warmed up as d_n = min(decay, (1 + n) / (10 + n)) (as in TensorFlow's ExponentialMovingAverage
with num_updates), so that a short run averages trained weights rather than its initial ones.

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
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Checkpoints written before the warm-up have no update count: their averages are warmed up already.
        state_dict.setdefault(prefix + "num_updates", torch.tensor(10**9))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _shadows(self) -> list[Tensor]:
        return [getattr(self, name.replace(".", "__")) for name in self.names]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for shadow, (_, live) in zip(self._shadows(), _tracked(module)):
            shadow.lerp_(live.detach().to(shadow.dtype), weight)
        self.num_updates += 1

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
