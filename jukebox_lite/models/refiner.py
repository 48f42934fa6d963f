"""The refiner: turns VQ-VAE-decoded (coarse) audio into audio closer to the original.

Two parts on one loudness-free scale:
- Loudness. The coarse audio's smoothed RMS envelope (`envelope`, from the coarse audio alone, so
  sampling knows it too) is divided out of everything the networks see and multiplied back at the
  output. They work on the scale of the signal's own local level: the condition c = coarse / envelope,
  and the residual r = (original − coarse) / (envelope · residual_scale), about unit variance. Quiet
  passages weigh as much as loud ones, and an error in a quiet bar stays as quiet as the bar.
- The estimator regresses r̂ ≈ r from the coarse audio alone: a U-Net on c plus a linear equalizer
  (a filter of the coarse audio, which train-refiner starts as the least-squares filter). It is
  trained with the same multi-resolution STFT distance that judges the refiner (spectral convergence
  + mean log-magnitude error: every band and every level of loudness weighs alike) plus the squared
  error of r̂ (which keeps the phase, and so SI-SDR). Its output layer and a fresh equalizer start at
  zero (a new estimator returns the coarse audio unchanged), and it moves away from the coarse audio
  where that lowers the error, including taking energy away (the treble a VQ-VAE adds to recordings).
- The detail model (`config.detail`), a diffusion U-Net with the v-objective, generates what is left,
  d = r − r̂, conditioned on c and r̂: detail that the coarse audio does not determine. Sampling starts
  it at t = `strength` (0: the estimate alone).

Diffusion in continuous time t ∈ [0, 1], cosine schedule α = cos(πt/2), σ = sin(πt/2):
x_t = α·x0 + σ·ε; the network predicts v = α·ε − σ·x0, so x0 = α·x_t − σ·v.

Both U-Nets are local (per-position norms, windowed attention), so their output at a sample depends
on a bounded stretch of input (`UNet.receptive_field`), and `algorithms.refining` refines any length
in chunks with the same result as whole. Training pairs are made on the fly by the frozen VQ-VAE.
Shapes: audio (batch, 1, time); the U-Nets take lengths that are multiples of `config.stride`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jukebox_lite.core.config import RefinerConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.losses import multi_resolution_stft_distance
from jukebox_lite.nn.unet import Downsample, Level, PositionNorm, ResBlock, SelfAttention, TimestepEmbedding, Upsample, reach

EQUALIZER_TAPS = 127  # the estimator's linear filter, samples
ENVELOPE_FLOOR = 1e-3  # the envelope never falls below −60 dBFS, so silence does not blow the scale up


# ----------------------------------------------------------------------------------------------
# The loudness scale


def envelope(coarse: torch.Tensor, window: int) -> torch.Tensor:
    """(B, 1, T) → (B, 1, T): RMS over the `window` samples centred on each sample, + ENVELOPE_FLOOR.

    Zero-padded at the ends, so computing it on a whole track and cutting it equals computing it on
    any stretch that reaches window // 2 beyond the cut.
    """
    power = F.avg_pool1d(coarse.float().square(), window | 1, stride=1, padding=window // 2, count_include_pad=True)
    return power.clamp(min=0).sqrt() + ENVELOPE_FLOOR


def residual_target(cfg: RefinerConfig, clean: torch.Tensor, coarse: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """r (B, 1, T): the VQ-VAE's error on the loudness-free scale, (clean − coarse) / (envelope · residual_scale)."""
    return (clean - coarse) / (env * cfg.residual_scale)


def audio_from_residual(cfg: RefinerConfig, residual: torch.Tensor, coarse: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """The audio (B, 1, T) a residual on the loudness-free scale stands for; the inverse of `residual_target`."""
    return coarse + env * cfg.residual_scale * residual


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
    """v = α·ε − σ·x0, what the detail model learns to predict."""
    alpha, sigma = (_expand(s, x0) for s in alpha_sigma(t))
    return alpha * noise - sigma * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean signal implied by (x_t, v): x0 = α·x_t − σ·v."""
    alpha, sigma = (_expand(s, x_t) for s in alpha_sigma(t))
    return alpha * x_t - sigma * v


# ----------------------------------------------------------------------------------------------
# The U-Net


class UNet(nn.Module):
    """`inputs` channels (B, inputs, T) [+ t (B,) when `timed`] → one channel (B, 1, T); T a multiple of `config.stride`.

    Level i works at 1 / prod(factors[:i]) of the sample rate with channels[i] widths; the coarsest
    `attention_levels` levels and the middle add self-attention. Each level's output on the way down
    is concatenated to the input of the same level on the way up. Untimed, the blocks' scale/shift
    come from one learned vector instead of a timestep embedding. The output starts at zero.
    """

    def __init__(self, cfg: RefinerConfig, inputs: int, timed: bool):
        super().__init__()
        self.config = cfg
        n, widths = len(cfg.channels), cfg.channels
        attention = (cfg.attention_heads, cfg.attention_window)
        attends = [attention if i >= n - cfg.attention_levels else None for i in range(n)]
        block = (cfg.res_blocks, cfg.embedding_dim, cfg.kernel_size)
        if timed:
            self.time_embedding = TimestepEmbedding(cfg.embedding_dim)
        else:
            self.embedding = nn.Parameter(torch.zeros(cfg.embedding_dim))
        self.stem = nn.Conv1d(inputs, widths[0], 7, padding=3)
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
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

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

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[2] % self.config.stride:
            raise ValueError(f"audio length {x.shape[2]} is not a multiple of the refiner's stride {self.config.stride}; pad it")
        if t is None:
            emb = self.embedding.expand(x.shape[0], -1)  # (B, embedding_dim)
        else:
            emb = self.time_embedding(t.expand(x.shape[0]))
        h = self.stem(x)  # (B, channels[0], T)
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
        return self.out(F.silu(self.out_norm(h)))  # (B, 1, T)


# ----------------------------------------------------------------------------------------------
# The refiner


class Refiner(nn.Module):
    """The estimator (a regression U-Net) and, with `config.detail`, the detail model (a diffusion U-Net)."""

    def __init__(self, cfg: RefinerConfig, vqvae_fingerprint: str | None = None):
        super().__init__()
        cfg.validate()
        if cfg.residual_scale is None:
            raise ValueError("refiner.residual_scale is not set; train-refiner measures it (measure_statistics)")
        self.config = cfg
        self.vqvae_fingerprint = vqvae_fingerprint  # which VQ-VAE's decoded audio it was trained to refine
        self.estimator = UNet(cfg, inputs=1, timed=False)  # c → r̂
        # a linear filter of the coarse audio beside it, trained with it: train-refiner starts it as the
        # least-squares filter from decoded to original audio, so the VQ-VAE's tilt of the spectrum is
        # undone from the first step (a U-Net would take thousands of steps to move that far)
        self.equalizer = nn.Conv1d(1, 1, EQUALIZER_TAPS, padding=EQUALIZER_TAPS // 2, bias=False)
        nn.init.zeros_(self.equalizer.weight)
        self.detail = UNet(cfg, inputs=3, timed=True) if cfg.detail else None  # (x_t, c, r̂), t → v
        self.check_chunk(cfg.chunk_length, "refiner.chunk_length")

    def check_chunk(self, chunk_length: int, name: str) -> None:
        """Refuse a refining chunk too short to keep anything: one U-Net receptive field is discarded at
        both edges and overlap_length cross-faded."""
        shortest = 2 * self.receptive_field + self.config.overlap_length + self.config.stride
        if chunk_length < shortest:
            raise UserError(
                f"{name} is {chunk_length}; each chunk discards one receptive field ({self.receptive_field} "
                f"samples) at both edges and cross-fades overlap_length, so use at least {shortest}."
            )

    @property
    def receptive_field(self) -> int:
        """Samples on either side of a position that one U-Net's output there can depend on (both have the
        same, the equalizer's taps are within it): what a refining chunk discards at each inner edge."""
        return max(self.estimator.receptive_field, EQUALIZER_TAPS // 2)

    def reach(self, steps: int) -> int:
        """Samples on either side of a position that the audio refined there in `steps` DDIM steps can depend
        on (an upper bound): the envelope's half window, the estimator's field, and each step's detail model's."""
        return self.config.envelope_window // 2 + (1 + (steps if self.detail is not None else 0)) * self.receptive_field

    @property
    def device(self) -> torch.device:
        return self.estimator.out.weight.device

    def estimate(self, coarse: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """coarse, 1 / its envelope (B, 1, T) → r̂ (B, 1, T), the residual estimate on the loudness-free scale:
        the U-Net's on c = coarse · gain, plus the equalizer's on the audio itself. (The gain, not the
        envelope, so that zero padding stays zero.)"""
        return self.estimator(coarse * gain) + self.equalizer(coarse) * gain / self.config.residual_scale

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """The detail model: x_t, c, r̂ (B, 1, T), t (B,) or (1,) → predicted v (B, 1, T)."""
        return self.detail(torch.cat([x_t, cond, estimate], dim=1), t)

    def forward(
        self, coarse: torch.Tensor, clean: torch.Tensor | None = None,
        t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """coarse (B, 1, T) → (the estimate's audio (B, 1, T), metrics).

        With `clean` (B, 1, T) the metrics hold the training objective: 'loss_per_item' (B,), the
        estimator's MR-STFT distance + squared error of r̂ ('estimate_loss' (B,)), plus, with a detail
        model, the squared error of its v at noise level t (B,) from `noise` ('detail_loss' (B,));
        'loss' is their mean. Without `clean` the metrics are empty.
        """
        if coarse.dim() != 3 or coarse.shape[1] != 1:
            raise ValueError(f"expected coarse audio shaped (batch, 1, time), got {tuple(coarse.shape)}")
        cfg = self.config
        env = envelope(coarse, cfg.envelope_window)  # (B, 1, T)
        cond = coarse / env
        estimate = self.estimate(coarse, 1 / env)  # r̂ (B, 1, T)
        audio = audio_from_residual(cfg, estimate, coarse, env)
        if clean is None:
            return audio, {}
        residual = residual_target(cfg, clean, coarse, env)  # r (B, 1, T)
        estimate_loss = multi_resolution_stft_distance(clean, audio.float()) + (estimate.float() - residual).pow(2).mean(dim=(1, 2))
        metrics = {"estimate_loss": estimate_loss}
        per_item = estimate_loss
        if self.detail is not None:
            x0 = residual - estimate.detach()  # d: what the estimate left
            v = self.velocity(noised(x0, noise, t), t, cond, estimate.detach())
            metrics["detail_loss"] = (v.float() - v_target(x0, noise, t)).pow(2).mean(dim=(1, 2))
            per_item = per_item + metrics["detail_loss"]
        return audio, {**metrics, "loss_per_item": per_item, "loss": per_item.mean()}
