"""Causal convolutions for autoregressive image models (PixelCNN, van den Oord et al. 2016a, b).

Pixels are generated in raster order; a feature at pixel (i, j) may only see pixels (i', j') with
i' < i, or i' = i and j' < j (type A, the first layer) or j' <= j (type B, later layers, whose inputs
at (i, j) already only carry information from before (i, j)). All channels of a pixel are one unit:
its C channels are predicted together from earlier pixels (independently of each other given them),
which keeps the likelihood exact with one network pass per pixel.

- ``MaskedConv2d``: a k×k convolution with the lower part of its kernel zeroed (PixelCNN, Fig. 1).
  Stacks of them have a *blind spot* (pixels above-right that no path reaches, van den Oord et al.
  2016b, Fig. 1).
- ``GatedLayer``: the gated PixelCNN layer without blind spot (2016b, Fig. 2): a *vertical* stack
  whose output at row i sees every pixel in rows <= i within its (growing) width, shifted down one row
  before it feeds the *horizontal* stack, which sees the pixels to the left in the same row; both
  gated, y = tanh(W_f * x + V_f h) . sigmoid(W_g * x + V_g h), with h a class embedding (eq. 4).
- ``PixelCNNNet``: either stack, N×C_in×H×W -> N×C_out×H×W, optionally conditioned on labels; its
  ``last_row`` computes only the output row that ancestral sampling draws next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedConv2d(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        assert mask_type in ("A", "B")
        mask = torch.ones(kernel_size, kernel_size)
        centre = kernel_size // 2
        mask[centre, centre + (mask_type == "B"):] = 0  # the centre (type A) and everything right of it
        mask[centre + 1:] = 0  # every row below
        self.register_buffer("mask", mask.view(1, 1, kernel_size, kernel_size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def shift_down(x: Tensor) -> Tensor:
    """Row i of the result is row i - 1 of x (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel_size: int, first: bool, num_classes: int = 0, in_channels: int | None = None):
        super().__init__()
        c_in = in_channels or channels
        self.first, self.k = first, kernel_size // 2
        # Vertical: kernel (k/2 + 1) x k over rows i - k/2 .. i (padding on top only).
        self.vertical = nn.Conv2d(c_in, 2 * channels, (self.k + 1, kernel_size))
        # Horizontal: 1 x (k/2 + 1) over columns j - k/2 .. j (type B), or 1 x k/2 over j - k/2 .. j - 1 (type A).
        self.horizontal = nn.Conv2d(c_in, 2 * channels, (1, self.k if first else self.k + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.label_bias = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        f, g = x.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        width = h.shape[-1]
        v_pre = self.vertical(F.pad(v, (self.k, self.k, self.k, 0)))
        h_pre = self.horizontal(F.pad(h, (self.k, 0, 0, 0)))[..., :width]  # type A: drop the extra last column
        h_pre = h_pre + self.v_to_h(shift_down(v_pre))  # row i sees the vertical stack of rows < i only
        if self.label_bias is not None and labels is not None:
            bias = self.label_bias(labels)[:, :, None, None]
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_new = self.h_out(self.gate(h_pre))
        # No residual in the first layer: its input still holds the current pixel.
        return self.gate(v_pre), h_new if self.first else h + h_new


class PlainLayer(nn.Module):
    def __init__(self, channels: int, kernel_size: int, num_classes: int = 0):
        super().__init__()
        self.conv = MaskedConv2d(channels, channels, kernel_size, "B")
        self.label_bias = nn.Embedding(num_classes, channels) if num_classes else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        y = self.conv(F.relu(x))
        if self.label_bias is not None and labels is not None:
            y = y + self.label_bias(labels)[:, :, None, None]
        return x + y


class PixelCNNNet(nn.Module):
    """Causal network: output at pixel p depends on input pixels before p in raster order only."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, num_layers: int = 6,
                 kernel_size: int = 5, gated: bool = False, num_classes: int = 0):
        super().__init__()
        self.gated = gated
        if gated:
            self.layers = nn.ModuleList(
                [GatedLayer(channels, kernel_size, first=i == 0, num_classes=num_classes,
                            in_channels=in_channels if i == 0 else None) for i in range(num_layers)])
        else:
            self.first = MaskedConv2d(in_channels, channels, 7 if kernel_size < 7 else kernel_size, "A")
            self.first_bias = nn.Embedding(num_classes, channels) if num_classes else None
            self.layers = nn.ModuleList([PlainLayer(channels, kernel_size, num_classes) for _ in range(num_layers - 1)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, out_channels, 1))

    def reaches(self) -> list[int]:
        """For each layer, how many rows above an output row the layer's input must hold for that row to be
        right (gated: the vertical kernel's k/2 rows and the one-row shift into the horizontal stack)."""
        if self.gated:
            return [layer.k + 1 for layer in self.layers]
        return [self.first.kernel_size[0] // 2] + [layer.conv.kernel_size[0] // 2 for layer in self.layers]

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self._run(x, labels, None)

    def last_row(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The output's last row (N×C_out×1×W), from x's rows up to it: the same numbers as ``forward``'s, but
        each layer runs on the rows that row still depends on (its receptive field, which narrows from layer
        to layer), not on the whole image."""
        return self._run(x, labels, self.reaches())

    def _run(self, x: Tensor, labels: Tensor | None, reaches: list[int] | None) -> Tensor:
        """The stack; with ``reaches``, before layer l only the last 1 + sum(reaches[l:]) rows are kept (the
        rows a crop's zero padding makes wrong at its top are the ones dropped before the next layer)."""
        def crop(t: Tensor, layer: int) -> Tensor:
            return t if reaches is None else t[:, :, -(1 + sum(reaches[layer:])):]

        if self.gated:
            v = h = crop(x, 0)
            for i, layer in enumerate(self.layers):
                v, h = layer(crop(v, i), crop(h, i), labels)
            return self.head(crop(h, len(self.layers)))
        h = self.first(crop(x, 0))
        if self.first_bias is not None and labels is not None:
            h = h + self.first_bias(labels)[:, :, None, None]
        for i, layer in enumerate(self.layers, start=1):
            h = layer(crop(h, i), labels)
        return self.head(crop(h, len(self.layers) + 1))
