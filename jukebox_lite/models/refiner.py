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
(`config.receptive_field`). Sampling (`refine`) is deterministic DDIM: one noise tensor is drawn for the
whole track from the seed. At every step the U-Net sees overlapping chunks of `chunk_length`
samples (bounded model memory for any length) whose edges, one receptive field wide, are discarded
before their v-predictions are cross-faded, so chunked refinement equals whole-track refinement.

Shapes: audio (batch, 1, time); the U-Net takes time lengths that are multiples of `config.stride`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from jukebox_lite.core.checkpoint import load_checkpoint, load_state_checked, save_checkpoint
from jukebox_lite.core.config import RefinerConfig, section_from_dict
from jukebox_lite.core.errors import UserError

log = logging.getLogger(__name__)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, T).transpose(-1, -2).unbind(1)
        h = local_attention(q, k, v, self.window)  # (B, heads, T, C / heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, T))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution level."""

    def __init__(self, in_ch: int, out_ch: int, cfg: RefinerConfig, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, cfg.embedding_dim, cfg.kernel_size)
            for i in range(cfg.res_blocks)
        )
        self.attention = nn.ModuleList(
            SelfAttention(out_ch, cfg.attention_heads, cfg.attention_window) if attention else nn.Identity()
            for _ in range(cfg.res_blocks)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block, attention in zip(self.blocks, self.attention):
            x = attention(block(x, emb))
        return x


class Downsample(nn.Module):
    """(B, in, T) → (B, out, T / factor): a strided conv whose kernel spans two strides."""

    def __init__(self, in_ch: int, out_ch: int, factor: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, 2 * factor, stride=factor, padding=factor // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """(B, in, T) → (B, out, T · factor): nearest-neighbour repeat then a conv (no checkerboard artefacts)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


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
        attends = [i >= n - cfg.attention_levels for i in range(n)]
        self.time_embedding = TimestepEmbedding(cfg.embedding_dim)
        self.stem = nn.Conv1d(2, widths[0], 7, padding=3)  # channels: x_t, coarse
        self.down = nn.ModuleList(Level(widths[i], widths[i], cfg, attends[i]) for i in range(n))
        self.downsample = nn.ModuleList(Downsample(widths[i], widths[i + 1], cfg.factors[i]) for i in range(n - 1))
        self.middle = nn.ModuleList([
            ResBlock(widths[-1], widths[-1], cfg.embedding_dim, cfg.kernel_size),
            SelfAttention(widths[-1], cfg.attention_heads, cfg.attention_window) if cfg.attention_levels else nn.Identity(),
            ResBlock(widths[-1], widths[-1], cfg.embedding_dim, cfg.kernel_size),
        ])
        self.up = nn.ModuleList(Level(2 * widths[i], widths[i], cfg, attends[i]) for i in range(n))
        self.upsample = nn.ModuleList(Upsample(widths[i + 1], widths[i], cfg.factors[i]) for i in range(n - 1))
        self.out_norm = PositionNorm(widths[0])
        self.out = nn.Conv1d(widths[0], 1, 7, padding=3)
        nn.init.zeros_(self.out.weight)  # v̂ = 0 at the start: the loss starts at E[v²] ≈ 1
        nn.init.zeros_(self.out.bias)

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


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_refiner(path: str | os.PathLike, model: RefinerUNet, ema: dict | None = None, **extra) -> None:
    """Our checkpoint: config, weights, optional EMA weights (what sampling uses), and the fingerprint
    (`VQVAE.fingerprint()`) of the VQ-VAE whose audio the refiner was trained on."""
    if not model.vqvae_fingerprint:
        raise ValueError("the refiner has no vqvae_fingerprint; set it to the VQ-VAE's fingerprint()")
    if ema is not None:
        extra["ema"] = ema
    save_checkpoint(
        path, "refiner", dataclasses.asdict(model.config), model.state_dict(),
        vqvae_fingerprint=model.vqvae_fingerprint, **extra,
    )


def load_refiner(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", vqvae: str | None = None
) -> RefinerUNet:
    """Our refiner checkpoint → the model in eval mode with its EMA weights when it has them.

    `vqvae` is the fingerprint (`VQVAE.fingerprint()`) of the VQ-VAE whose audio will be refined;
    a refiner trained on another VQ-VAE's audio is refused.
    """
    state = load_checkpoint(path, kind="refiner", map_location=str(map_location))
    fingerprint = state.get("vqvae_fingerprint")
    if not isinstance(fingerprint, str):
        raise UserError(f"Refiner checkpoint '{path}' does not record which VQ-VAE it was trained with; retrain it with train-refiner.")
    if vqvae is not None and fingerprint != vqvae:
        raise UserError(
            f"Refiner checkpoint '{path}' was trained on another VQ-VAE's audio (fingerprint {fingerprint}, "
            f"this run's is {vqvae}); train a refiner for this VQ-VAE or use the run it came from."
        )
    if "norm_groups" in state["config"]:
        raise UserError(
            f"Refiner checkpoint '{path}' is the older GroupNorm U-Net, which cannot refine in chunks exactly; "
            "retrain it with train-refiner."
        )
    cfg = section_from_dict(RefinerConfig, state["config"], "refiner.")
    model = RefinerUNet(cfg, vqvae_fingerprint=fingerprint)
    load_state_checked(model, state["model"], str(path))
    if state.get("ema"):
        load_state_checked(model, state["ema"], f"{path} (ema)")
    return model.to(map_location).eval()
