"""The refiner's U-Net blocks: per-position norms, residual blocks, windowed self-attention, resampling.

Every block is local: a block's output at a position depends only on positions within its `reach`
on either side, so the U-Net built from them (`models.refiner`) has a bounded receptive field it can
compute from its modules, and refining a track in chunks equals refining it whole.
Shapes: (batch, channels, time) throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TimestepEmbedding(nn.Module):
    """t ∈ [0, 1] (B,) → (B, dim): sinusoidal features of 1000·t, then an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 1000.0 * t.float()[:, None] * self.freqs  # (B, dim/2)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class PositionNorm(nn.Module):
    """LayerNorm over the channels of each time step, (B, C, T) → (B, C, T).

    Unlike GroupNorm, no statistic spans time, so a position's output never depends on distant audio:
    that locality is what makes refining a track in chunks equal refining it whole.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)  # statistics over channels: (B, 1, T)
        inv_std = torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + self.eps)  # (torch.var over dim 1 is 10× slower on CPU)
        return centred * inv_std * self.weight[:, None] + self.bias[:, None]


class ResBlock(nn.Module):
    """Norm → SiLU → conv, timestep scale/shift, norm → SiLU → conv, plus a skip path.

    The second conv starts at zero, so every block starts as the identity and a deep U-Net trains stably.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = PositionNorm(in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel_size, padding=pad)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = PositionNorm(out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    @property
    def reach(self) -> int:
        """Positions on either side an output position depends on: the two convolutions' (the skip is 1×1)."""
        return self.conv1.padding[0] + self.conv2.padding[0]

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None].chunk(2, dim=1)  # (B, out_ch, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Each query attends to the keys at most `window` positions away; (B, H, T, D) each → (B, H, T, D).

    Computed in blocks of `window` queries, each against the 3·window keys around its block, so memory
    grows with T·window instead of T². Keys past either end of the sequence are masked out.
    """
    B, H, T, D = q.shape
    blocks = -(-T // window)
    pad = blocks * window - T
    span = 3 * window  # the keys one block of queries can reach
    q_blocks = F.pad(q, (0, 0, 0, pad)).reshape(B, H * blocks, window, D)

    def neighbourhoods(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) → (B, H·blocks, 3·window, D)
        x = F.pad(x, (0, 0, window, pad + window)).unfold(2, span, window)  # (B, H, blocks, D, 3·window)
        return x.transpose(-1, -2).reshape(B, H * blocks, span, D)

    query = torch.arange(window)[:, None]  # offset in the block
    key = torch.arange(span)[None, :] - window  # offset of each reachable key from the block start
    key_position = torch.arange(blocks)[:, None, None] * window + key  # (blocks, 1, 3·window)
    mask = ((key - query).abs() <= window) & (key_position >= 0) & (key_position < T)  # (blocks, window, 3·window)
    mask = mask.repeat(H, 1, 1).to(q.device)  # (H·blocks, ...): 4-D inputs, the shape every SDPA kernel takes
    out = F.scaled_dot_product_attention(q_blocks, neighbourhoods(k), neighbourhoods(v), attn_mask=mask)
    return out.view(B, H, blocks * window, D)[:, :, :T]


class SelfAttention(nn.Module):
    """Multi-head self-attention over the `window` positions on either side, residual; used only at
    coarse levels, where a position spans many samples."""

    def __init__(self, channels: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm = PositionNorm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @property
    def reach(self) -> int:
        return self.window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, T).transpose(-1, -2).unbind(1)
        h = local_attention(q, k, v, self.window)  # (B, heads, T, C / heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, T))


def reach(module: nn.Module) -> int:
    """Positions on either side that `module`'s output at a position depends on (0 for nn.Identity)."""
    return getattr(module, "reach", 0)


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution level."""

    def __init__(
        self, in_ch: int, out_ch: int, blocks: int, emb_dim: int, kernel_size: int, attention: tuple[int, int] | None
    ):
        """attention: (heads, window) of the self-attention after each block, or None for none."""
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, kernel_size) for i in range(blocks)
        )
        self.attention = nn.ModuleList(
            SelfAttention(out_ch, *attention) if attention else nn.Identity() for _ in range(blocks)
        )

    @property
    def reach(self) -> int:
        return sum(block.reach + reach(attention) for block, attention in zip(self.blocks, self.attention))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block, attention in zip(self.blocks, self.attention):
            x = attention(block(x, emb))
        return x


class Downsample(nn.Module):
    """(B, in, T) → (B, out, T / factor): a strided conv whose kernel spans two strides."""

    def __init__(self, in_ch: int, out_ch: int, factor: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, 2 * factor, stride=factor, padding=factor // 2)

    def reach_samples(self, fine_step: int) -> int:
        """Samples on either side it adds where an input position spans `fine_step` samples: its kernel
        spans two output positions, one more for the rounding between the grids."""
        return self.conv.kernel_size[0] * fine_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """(B, in, T) → (B, out, T · factor): nearest-neighbour repeat then a conv (no checkerboard artefacts)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(in_ch, out_ch, 3, padding=1)

    def reach_samples(self, fine_step: int) -> int:
        """Samples on either side it adds where an output position spans `fine_step` samples: the
        conv's reach, and one input position for the repeat."""
        return self.conv.padding[0] * fine_step + self.factor * fine_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))
