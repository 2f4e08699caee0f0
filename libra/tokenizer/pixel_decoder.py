"""Pixel decoder of Libra's vision tokenizer: code vectors → RGB image (docs/design.md §5.5).

A taming-transformers style convolutional decoder without time embedding. State-dict names follow the
official ``vqgan.ckpt`` (``decoder.conv_in``, ``decoder.mid.block_1``, ``decoder.up.<level>.block.<i>``,
``...attn.<i>``, ``...upsample.conv``, ``norm_out``, ``conv_out``). Levels are built from the highest
(coarsest) down to 0; every level but 0 upsamples ×2, except level 1, whose nearest upsampling scale is
``resolution / current resolution`` (1.75 in the official 336-px model) so the output lands exactly on
the input resolution. The LLM never uses this module; it only turns generated codes into pictures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, channels split into heads."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (n, c, h, w) -> (n, nh, h*w, c/nh)
            return t.reshape(n, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2)

        q, k, v = heads(self.q(y)), heads(self.k(y)), heads(self.v(y))
        scores = q @ k.transpose(-1, -2) * (c // self.num_heads) ** -0.5  # (n, nh, hw, hw)
        out = scores.softmax(-1) @ v  # (n, nh, hw, c/nh)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int, scale_factor: float) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scale_factor (not size) so a non-integer scale picks source rows as PyTorch's nearest rule does.
        return self.conv(F.interpolate(x, scale_factor=self.scale_factor, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResnetBlocks (each followed by attention at attention resolutions)."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock], upsample: Upsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if upsample is not None:
            self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class PixelDecoder(nn.Module):
    def __init__(
        self,
        *,
        z_channels: int,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        resolution: int,
        initial_resolution: int,
        num_attn_head: int,
        out_ch: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in, num_attn_head)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)

        levels: dict[int, Level] = {}
        res = initial_resolution
        for i_level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i_level]
            blocks, attn = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attn.append(AttnBlock(block_in, num_attn_head))
            upsample = None
            if i_level == 1:
                # The last upsampling lands on the image size; the official resolution counter is not
                # advanced here (it only matters for attn_resolutions at level 0).
                upsample = Upsample(block_in, resolution / res)
            elif i_level > 1:
                upsample = Upsample(block_in, 2.0)
                res *= 2
            levels[i_level] = Level(blocks, attn, upsample)
        self.up = nn.ModuleList(levels[i] for i in range(len(ch_mult)))
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward_mid(self, z: torch.Tensor) -> torch.Tensor:
        """(n, z_channels, g, g) → activation after the middle block (for parity tests)."""
        h = self.conv_in(z)
        return self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(n, z_channels, g, g) → (n, out_ch, resolution, resolution), roughly in [-1, 1]."""
        h = self.forward_mid(z)
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
