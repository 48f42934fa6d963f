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

Sampling (`refine`) is deterministic DDIM: one noise tensor is drawn for the whole track from the
seed, so the noise at a position does not depend on how the track is cut into chunks. At every
step the U-Net sees overlapping chunks of `segment_length` samples (bounded model memory for any
length) and their v-predictions are blended with raised-cosine cross-fades before the update, so
the chunks agree at every step and the seams stay continuous.

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
from tqdm import tqdm

from jukebox_lite.checkpoint import load_checkpoint, load_state_checked, save_checkpoint
from jukebox_lite.config import RefinerConfig, section_from_dict
from jukebox_lite.errors import UserError

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


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, timestep scale/shift, GroupNorm → SiLU → conv, plus a skip path.

    The second conv starts at zero, so every block starts as the identity and a deep U-Net trains stably.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel_size, padding=pad)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None].chunk(2, dim=1)  # (B, out_ch, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention over time, residual; used only at coarse levels where T is short."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, T).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, C / heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, T))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution level."""

    def __init__(self, in_ch: int, out_ch: int, cfg: RefinerConfig, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, cfg.embedding_dim, cfg.norm_groups, cfg.kernel_size)
            for i in range(cfg.res_blocks)
        )
        self.attention = nn.ModuleList(
            SelfAttention(out_ch, cfg.attention_heads, cfg.norm_groups) if attention else nn.Identity()
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
        self.config = cfg
        self.vqvae_fingerprint = vqvae_fingerprint  # which VQ-VAE's decoded audio it was trained to refine
        n, widths = len(cfg.channels), cfg.channels
        attends = [i >= n - cfg.attention_levels for i in range(n)]
        self.time_embedding = TimestepEmbedding(cfg.embedding_dim)
        self.stem = nn.Conv1d(2, widths[0], 7, padding=3)  # channels: x_t, coarse
        self.down = nn.ModuleList(Level(widths[i], widths[i], cfg, attends[i]) for i in range(n))
        self.downsample = nn.ModuleList(Downsample(widths[i], widths[i + 1], cfg.factors[i]) for i in range(n - 1))
        self.middle = nn.ModuleList([
            ResBlock(widths[-1], widths[-1], cfg.embedding_dim, cfg.norm_groups, cfg.kernel_size),
            SelfAttention(widths[-1], cfg.attention_heads, cfg.norm_groups) if cfg.attention_levels else nn.Identity(),
            ResBlock(widths[-1], widths[-1], cfg.embedding_dim, cfg.norm_groups, cfg.kernel_size),
        ])
        self.up = nn.ModuleList(Level(2 * widths[i], widths[i], cfg, attends[i]) for i in range(n))
        self.upsample = nn.ModuleList(Upsample(widths[i + 1], widths[i], cfg.factors[i]) for i in range(n - 1))
        self.out_norm = nn.GroupNorm(cfg.norm_groups, widths[0])
        self.out = nn.Conv1d(widths[0], 1, 7, padding=3)
        nn.init.zeros_(self.out.weight)  # v̂ = 0 at the start: the loss starts at E[v²] ≈ 1
        nn.init.zeros_(self.out.bias)

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
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
        return self.out(F.silu(self.out_norm(h)))  # (B, 1, T)

    def autocast(self):
        """bf16 autocast on CUDA; float32 elsewhere."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


# ----------------------------------------------------------------------------------------------
# Training pairs and the loss


@torch.no_grad()
def make_training_pair(vqvae: nn.Module, clean: torch.Tensor, cond_level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean audio (B, 1, T) → (coarse, clean): coarse is the VQ-VAE's level-`cond_level` reconstruction.

    T must be a multiple of the VQ-VAE's hop at that level. The VQ-VAE is only read, never trained.
    """
    if not 0 <= cond_level < vqvae.levels:
        raise UserError(f"refiner.cond_level is {cond_level}; this VQ-VAE has levels 0 to {vqvae.levels - 1}.")
    codes = vqvae.encode(clean, levels=[cond_level])
    return vqvae.decode(codes, level=cond_level), clean


def diffusion_loss(
    model: RefinerUNet, clean: torch.Tensor, coarse: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mean squared error of the predicted v at a uniformly drawn t per item (B, 1, T) → scalar.

    `generator` (on the audio's device) makes t and the noise reproducible.
    """
    t = torch.rand(clean.shape[0], device=clean.device, generator=generator)
    noise = torch.randn(clean.shape, device=clean.device, generator=generator)
    with model.autocast():
        return v_loss_per_item(model, diffusion_target(model.config, clean, coarse), coarse, t, noise).mean()


def v_loss_per_item(
    model: nn.Module, x0: torch.Tensor, coarse: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Squared error of the predicted v, per item: x0 (`diffusion_target`) and coarse (B, 1, T), t (B,) → (B,).

    `model` may be wrapped (DDP), so autocast and the target are the caller's business.
    """
    v_pred = model(noised(x0, noise, t), t, coarse)
    return (v_pred.float() - v_target(x0, noise, t)).pow(2).mean(dim=(1, 2))


# ----------------------------------------------------------------------------------------------
# Sampling: DDIM over overlapping chunks


def chunk_starts(length: int, segment: int, overlap: int) -> list[int]:
    """Chunk starts covering [0, length): every segment − overlap samples, the last one flush with the end."""
    if length <= segment:
        return [0]
    hop = segment - overlap
    starts = list(range(0, length - segment, hop))
    return starts + [length - segment]


def chunk_weights(length: int, segment: int, overlap: int) -> tuple[list[int], list[torch.Tensor]]:
    """Starts and blending weights (segment,) per chunk: raised-cosine ramps of `overlap` samples where
    a chunk meets a neighbour, 1 elsewhere. Where two regular chunks overlap the ramps sum to 1; the
    blend divides by the summed weights anyway, so the flush-with-the-end last chunk is handled too."""
    starts = chunk_starts(length, segment, overlap)
    if len(starts) == 1:
        return starts, [torch.ones(min(length, segment))]
    ramp = torch.sin(math.pi / 2 * (torch.arange(overlap) + 0.5) / overlap) ** 2  # rises from ~0 to ~1
    weights = []
    for k in range(len(starts)):
        w = torch.ones(segment)
        if k > 0:
            w[:overlap] = ramp
        if k < len(starts) - 1:
            w[-overlap:] = ramp.flip(0)
        weights.append(w)
    return starts, weights


class ChunkedDenoiser:
    """v-prediction for a whole track (B, 1, T) from overlapping chunks, blended; model memory is per chunk."""

    def __init__(self, model: RefinerUNet, coarse: torch.Tensor, segment: int, overlap: int, chunk_batch: int):
        self.model, self.coarse, self.chunk_batch = model, coarse, chunk_batch
        length = coarse.shape[2]
        self.starts, weights = chunk_weights(length, segment, overlap)
        self.weights = weights
        self.span = min(length, segment)  # samples each chunk covers
        self.padded = math.ceil(self.span / model.config.stride) * model.config.stride  # what the U-Net is given
        total = torch.zeros(length)
        for start, w in zip(self.starts, weights):
            total[start : start + self.span] += w
        self.total_weight = total

    @property
    def calls(self) -> int:
        """Model calls per denoising step."""
        return math.ceil(len(self.starts) / self.chunk_batch)

    def _chunks(self, x: torch.Tensor, indices: range) -> torch.Tensor:
        """Chunks `indices` of (B, 1, T) stacked → (n·B, 1, padded), zero-padded past the end of a short track."""
        pieces = [x[:, :, self.starts[k] : self.starts[k] + self.span] for k in indices]
        return F.pad(torch.cat(pieces), (0, self.padded - self.span))

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: float, progress: tqdm) -> torch.Tensor:
        device, batch = self.model.device, x_t.shape[0]
        v = torch.zeros_like(x_t)
        for first in range(0, len(self.starts), self.chunk_batch):
            indices = range(first, min(first + self.chunk_batch, len(self.starts)))
            x_chunks = self._chunks(x_t, indices).to(device)
            c_chunks = self._chunks(self.coarse, indices).to(device)
            with self.model.autocast():
                v_chunks = self.model(x_chunks, torch.full((1,), t, device=device), c_chunks)
            v_chunks = v_chunks.float().cpu()[:, :, : self.span].split(batch)  # n × (B, 1, span)
            for k, v_chunk in zip(indices, v_chunks):
                v[:, :, self.starts[k] : self.starts[k] + self.span] += self.weights[k] * v_chunk
            progress.update(1)
        return v / self.total_weight


@torch.no_grad()
def refine(
    model: RefinerUNet,
    coarse: torch.Tensor,
    steps: int | None = None,
    strength: float | None = None,
    seed: int = 0,
    segment_length: int | None = None,
    overlap_length: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Coarse audio (B, 1, T), any T → refined audio (B, 1, T) in [-1, 1], on the CPU.

    Deterministic given `seed`: t runs from `strength` to 0 in `steps` equal DDIM steps, starting from
    the coarse audio's own target (the zero residual, or the coarse waveform) noised to t = strength
    (strength 1: from pure noise; 0: the input unchanged). Each step's x0 estimate is clamped so the
    audio it stands for stays in [-1, 1].
    Unset arguments come from the model's config. The whole-track state lives on the CPU; only
    chunks of `segment_length` samples go through the model, on its device.
    """
    cfg = model.config
    steps = cfg.steps if steps is None else steps
    strength = cfg.strength if strength is None else strength
    segment = cfg.segment_length if segment_length is None else segment_length
    overlap = cfg.overlap_length if overlap_length is None else overlap_length
    if coarse.dim() != 3 or coarse.shape[1] != 1 or coarse.shape[2] == 0:
        raise ValueError(f"expected coarse audio shaped (batch, 1, time), got {tuple(coarse.shape)}")
    if not torch.isfinite(coarse).all():
        raise ValueError("the audio to refine contains NaN or infinite samples")
    if not 0.0 <= strength <= 1.0 or steps < 1:
        raise ValueError(f"need 0 <= strength <= 1 and steps >= 1, got strength {strength}, steps {steps}")
    if segment % cfg.stride or not 0 < overlap <= segment // 2:
        raise ValueError(f"segment_length must be a multiple of {cfg.stride} and overlap_length in (0, segment_length / 2]")
    coarse = coarse.detach().float().cpu()
    if strength == 0.0:
        return coarse.clone()
    noise = torch.randn(coarse.shape, generator=torch.Generator().manual_seed(seed))  # one draw for the whole track
    times = torch.linspace(strength, 0.0, steps + 1, dtype=torch.float64)
    denoiser = ChunkedDenoiser(model, coarse, segment, overlap, cfg.chunk_batch)
    x = noised(diffusion_target(cfg, coarse, coarse), noise, times[0].float())
    with tqdm(total=steps * denoiser.calls, desc="refine", unit="call", disable=not progress) as bar:
        for t, t_next in zip(times[:-1].float(), times[1:].float()):
            v = denoiser(x, float(t), bar)
            alpha, sigma = alpha_sigma(t)
            audio = waveform_from_target(cfg, alpha * x - sigma * v, coarse).clamp(-1.0, 1.0)  # (B, 1, T)
            x0 = diffusion_target(cfg, audio, coarse)
            eps = (x - alpha * x0) / sigma  # the noise implied by the clamped x0 (σ > 0 for t > 0)
            alpha_next, sigma_next = alpha_sigma(t_next)
            x = alpha_next * x0 + sigma_next * eps
    return waveform_from_target(cfg, x, coarse).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_refiner(path: str | os.PathLike, model: RefinerUNet, ema: dict | None = None, **extra) -> None:
    """Our checkpoint: config, weights, optional EMA weights (what sampling uses), and the fingerprint
    (`codes.vqvae_fingerprint`) of the VQ-VAE whose audio the refiner was trained on."""
    if not model.vqvae_fingerprint:
        raise ValueError("the refiner has no vqvae_fingerprint; set it to codes.vqvae_fingerprint(the VQ-VAE it refines)")
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

    `vqvae` is the fingerprint (`codes.vqvae_fingerprint`) of the VQ-VAE whose audio will be refined;
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
    # checkpoints from before `target` existed diffused the waveform
    cfg = section_from_dict(RefinerConfig, {"target": "waveform", **state["config"]}, "refiner.")
    model = RefinerUNet(cfg, vqvae_fingerprint=fingerprint)
    load_state_checked(model, state["model"], str(path))
    if state.get("ema"):
        load_state_checked(model, state["ema"], f"{path} (ema)")
    return model.to(map_location).eval()
