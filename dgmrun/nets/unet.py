"""The DDPM denoiser networks: Ho et al. (2020)'s U-Net for images, an MLP for points.

Both map (x_t, t[, class]) to a tensor of x_t's shape. The U-Net follows the paper's appendix B
(the PixelCNN++ backbone): a sinusoidal time embedding through a two-layer MLP, residual blocks with
group norm, SiLU, dropout and the embedding added after the first convolution, self-attention at
chosen resolutions, ``num_res_blocks`` blocks per resolution going down and one more going up, each
up block fed the matching down activation. The output layer starts at zero, so the untrained network
predicts zero (for eps-prediction: x_t is pure noise), which the paper's code does too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal embedding of integer timesteps: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(embedding, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups as in the paper, fewer for narrow layers (groups must divide the channels)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Sequential(group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.conv2 = nn.Sequential(group_norm(out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(h)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H×W positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        attended = nn.functional.scaled_dot_product_attention(q, k, v)  # (N, HW, C)
        return x + self.out(attended.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    def __init__(self, in_channels: int, image_side: int, base_channels: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float, num_classes: int = 0):
        super().__init__()
        mult = list(channel_mult)
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Class conditioning: one extra embedding row for "no class", used for classifier-free guidance.
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch, side = [base_channels], base_channels, image_side
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, base_channels * m, emb_dim, dropout)])
                ch = base_channels * m
                if side in attention_resolutions:
                    block.append(SelfAttention(ch))
                self.down.append(block)
                skips.append(ch)
            if level < len(mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                side //= 2
        self.middle = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch),
                                     ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), base_channels * m, emb_dim, dropout)])
                ch = base_channels * m
                if side in attention_resolutions:
                    block.append(SelfAttention(ch))
                if level > 0 and i == num_res_blocks:
                    block.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
                    side *= 2
                self.up.append(block)
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @staticmethod
    def _run_block(block: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(y)
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = self._run_block(block, h, emb)
            skips.append(h)
        h = self._run_block(self.middle, h, emb)
        for block in self.up:
            h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


class MLPDenoiser(nn.Module):
    """For points (toy2d): x_t and the time embedding through an MLP with SiLU activations."""

    def __init__(self, dim: int, hidden_dims: Sequence[int] = (256, 256, 256), num_classes: int = 0):
        super().__init__()
        self.emb_dim = hidden_dims[0]
        self.time_mlp = nn.Sequential(nn.Linear(self.emb_dim, self.emb_dim), nn.SiLU())
        self.class_embedding = nn.Embedding(num_classes + 1, self.emb_dim) if num_classes else None
        layers: list[nn.Module] = []
        width = dim + self.emb_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(y)
        return self.net(torch.cat([x, emb], dim=1))
