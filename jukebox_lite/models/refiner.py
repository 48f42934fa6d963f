"""Diffusion refiner: a waveform U-Net that turns VQ-VAE-decoded (coarse) audio into cleaner audio.

Diffusion in continuous time t ∈ [0, 1] with the cosine schedule α = cos(πt/2), σ = sin(πt/2):
x_t = α·x0 + σ·ε. The network predicts v = α·ε − σ·x0 (v-prediction, Salimans & Ho 2022), from which
x0 = α·x_t − σ·v and ε = σ·x_t + α·v; v keeps a unit-scale target at every t, unlike ε at t → 0 or
x0 at t → 1. The condition is the coarse waveform, fed as a second input channel. What is diffused
(x0) is set by `config.target`: "residual" (the default) is (original − coarse) / residual_scale, a
unit-variance signal the output adds to the coarse audio, so the network only has to learn the VQ-VAE's
error and its own errors are scaled down by residual_scale; "waveform" is the original audio itself,
which the network must rebuild from the condition (and whose errors become a noise floor of their
own). Training pairs are made on the fly by `make_training_pair` (encode → decode at
`cond_level` through the frozen VQ-VAE), so nothing is stored.

The U-Net is local by construction: per-position norms instead of GroupNorm, self-attention only
within a window, so its output at a position depends on a bounded stretch of audio around it
(`RefinerUNet.receptive_field`, summed from its blocks' reach). Sampling (`refine`) is deterministic DDIM: one noise tensor is drawn for the
whole track from the seed. At every step the U-Net sees overlapping chunks of `chunk_length`
samples (bounded model memory for any length) whose edges, one receptive field wide, are discarded
before their v-predictions are cross-faded, so chunked refinement equals whole-track refinement.

Shapes: audio (batch, 1, time); the U-Net takes time lengths that are multiples of `config.stride`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jukebox_lite.core.config import RefinerConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.nn.unet import Downsample, Level, PositionNorm, ResBlock, SelfAttention, TimestepEmbedding, Upsample, reach


# ----------------------------------------------------------------------------------------------
# The v-objective with a cosine schedule


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales at time t: α = cos(πt/2), σ = sin(πt/2); α² + σ² = 1."""
    angle = t * (math.pi / 2)
    return torch.cos(angle), torch.sin(angle)


def _expand(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-item scales (B,) → (B, 1, 1) to broadcast over audio; a scalar stays a scalar."""
    return scale.reshape(-1, *([1] * (like.dim() - 1))) if scale.dim() else scale


def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = α·x0 + σ·ε."""
    alpha, sigma = (_expand(s, x0) for s in alpha_sigma(t))
    return alpha * x0 + sigma * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = α·ε − σ·x0, what the network learns to predict."""
    alpha, sigma = (_expand(s, x0) for s in alpha_sigma(t))
    return alpha * noise - sigma * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean signal implied by (x_t, v): x0 = α·x_t − σ·v."""
    alpha, sigma = (_expand(s, x_t) for s in alpha_sigma(t))
    return alpha * x_t - sigma * v


def diffusion_target(cfg: RefinerConfig, clean: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """What the refiner diffuses, x0 (B, 1, T): the scaled residual (clean − coarse) / residual_scale, or clean."""
    return (clean - coarse) / cfg.residual_scale if cfg.target == "residual" else clean


def waveform_from_target(cfg: RefinerConfig, x0: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """The audio (B, 1, T) an x0 stands for; the inverse of `diffusion_target`."""
    return coarse + cfg.residual_scale * x0 if cfg.target == "residual" else x0


# ----------------------------------------------------------------------------------------------
# The U-Net


class RefinerUNet(nn.Module):
    """(x_t, t, coarse) → predicted v, all audio (B, 1, T) with T a multiple of `config.stride`.

    Level i works at 1 / prod(factors[:i]) of the sample rate with channels[i] widths; the coarsest
    `attention_levels` levels and the middle add self-attention. Each level's output on the way
    down is concatenated to the input of the same level on the way up.
    """

    def __init__(self, cfg: RefinerConfig, vqvae_fingerprint: str | None = None):
        super().__init__()
        cfg.validate()
        if cfg.target == "residual" and cfg.residual_scale is None:
            raise ValueError("refiner.residual_scale is not set; train-refiner measures it (measure_residual_scale)")
        self.config = cfg
        self.vqvae_fingerprint = vqvae_fingerprint  # which VQ-VAE's decoded audio it was trained to refine
        n, widths = len(cfg.channels), cfg.channels
        attention = (cfg.attention_heads, cfg.attention_window)
        attends = [attention if i >= n - cfg.attention_levels else None for i in range(n)]
        block = (cfg.res_blocks, cfg.embedding_dim, cfg.kernel_size)
        self.time_embedding = TimestepEmbedding(cfg.embedding_dim)
        self.stem = nn.Conv1d(2, widths[0], 7, padding=3)  # channels: x_t, coarse
        self.down = nn.ModuleList(Level(widths[i], widths[i], *block, attends[i]) for i in range(n))
        self.downsample = nn.ModuleList(Downsample(widths[i], widths[i + 1], cfg.factors[i]) for i in range(n - 1))
        self.middle = nn.ModuleList([
            ResBlock(widths[-1], widths[-1], cfg.embedding_dim, cfg.kernel_size),
            SelfAttention(widths[-1], *attention) if cfg.attention_levels else nn.Identity(),
            ResBlock(widths[-1], widths[-1], cfg.embedding_dim, cfg.kernel_size),
        ])
        self.up = nn.ModuleList(Level(2 * widths[i], widths[i], *block, attends[i]) for i in range(n))
        self.upsample = nn.ModuleList(Upsample(widths[i + 1], widths[i], cfg.factors[i]) for i in range(n - 1))
        self.out_norm = PositionNorm(widths[0])
        self.out = nn.Conv1d(widths[0], 1, 7, padding=3)
        nn.init.zeros_(self.out.weight)  # v̂ = 0 at the start: the loss starts at E[v²] ≈ 1
        nn.init.zeros_(self.out.bias)
        self.check_chunk(cfg.chunk_length, "refiner.chunk_length")

    def check_chunk(self, chunk_length: int, name: str) -> None:
        """Refuse a refining chunk too short to keep anything: one receptive field is discarded at both
        edges and overlap_length cross-faded."""
        shortest = 2 * self.receptive_field + self.config.overlap_length + self.config.stride
        if chunk_length < shortest:
            raise UserError(
                f"{name} is {chunk_length}; each chunk discards one receptive field ({self.receptive_field} "
                f"samples) at both edges and cross-fades overlap_length, so use at least {shortest}."
            )

    @property
    def receptive_field(self) -> int:
        """Samples on either side of a position that the output there can depend on (an upper bound),
        summed from the modules along the deepest path: stem, each level down, the middle, each level
        up, out; a level's reach in positions counts prod(factors[:i]) samples each."""
        steps = [math.prod(self.config.factors[:i]) for i in range(len(self.down))]  # samples per position per level
        field = self.stem.padding[0] + self.out.padding[0]
        for i, (down, up) in enumerate(zip(self.down, self.up)):
            field += (down.reach + up.reach) * steps[i]
        field += sum(reach(m) for m in self.middle) * steps[-1]
        for i, (downsample, upsample) in enumerate(zip(self.downsample, self.upsample)):
            field += downsample.reach_samples(steps[i]) + upsample.reach_samples(steps[i])
        return field

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, coarse: torch.Tensor, v_target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x_t, coarse (B, 1, T), t (B,) or (1,) → (predicted v (B, 1, T), metrics).

        With `v_target` (B, 1, T) the metrics hold the training objective: 'loss_per_item' (B,), the
        squared error of v per item, and 'loss', its mean; without it they are empty.
        """
        if x_t.shape != coarse.shape or x_t.dim() != 3 or x_t.shape[1] != 1:
            raise ValueError(f"expected x_t and coarse both shaped (batch, 1, time), got {tuple(x_t.shape)} and {tuple(coarse.shape)}")
        if x_t.shape[2] % self.config.stride:
            raise ValueError(f"audio length {x_t.shape[2]} is not a multiple of the refiner's stride {self.config.stride}; pad it")
        emb = self.time_embedding(t.expand(x_t.shape[0]))  # (B, embedding_dim)
        h = self.stem(torch.cat([x_t, coarse], dim=1))  # (B, channels[0], T)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, channels[i+1], T / prod(factors[:i+1]))
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        for i in reversed(range(len(self.up))):
            if i < len(self.upsample):
                h = self.upsample[i](h)  # (B, channels[i], T / prod(factors[:i]))
            h = self.up[i](torch.cat([h, skips[i]], dim=1), emb)
        v = self.out(F.silu(self.out_norm(h)))  # (B, 1, T)
        if v_target is None:
            return v, {}
        per_item = (v.float() - v_target).pow(2).mean(dim=(1, 2))  # (B,)
        return v, {"loss": per_item.mean(), "loss_per_item": per_item}
