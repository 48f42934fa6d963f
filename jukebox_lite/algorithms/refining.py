"""The refiner's algorithms: training pairs for training; chunked estimation and DDIM for refining.

`refine` turns coarse audio of any length into refined audio: the estimator's output, then (with a
detail model) deterministic DDIM from one noise draw for the whole track. Every U-Net call runs
over overlapping chunks whose edges (one receptive field wide) are dropped before the outputs are
cross-faded, so the result equals refining the whole track at once while memory stays bounded.
The model itself is in `models.refiner`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from jukebox_lite.core.errors import UserError
from jukebox_lite.core.precision import autocast
from jukebox_lite.models.refiner import Refiner, alpha_sigma, audio_from_residual, envelope, noised, residual_target, x0_from_v

# ----------------------------------------------------------------------------------------------
# Training pairs


@torch.no_grad()
def make_training_pair(vqvae: nn.Module, clean: torch.Tensor, cond_level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean audio (B, 1, T) → (coarse, clean): coarse is the VQ-VAE's level-`cond_level` reconstruction.

    T must be a multiple of the VQ-VAE's hop at that level. The VQ-VAE is only read, never trained.
    """
    if not 0 <= cond_level < vqvae.levels:
        raise UserError(f"refiner.cond_level is {cond_level}; this VQ-VAE has levels 0 to {vqvae.levels - 1}.")
    codes = vqvae.encode(clean, levels=[cond_level])
    return vqvae.decode(codes, level=cond_level), clean


def matched_filter(coarse: torch.Tensor, clean: torch.Tensor, taps: int, n_fft: int = 1024) -> torch.Tensor:
    """The least-squares linear filter from coarse audio to its error: (B, 1, T) pairs → conv weights (1, 1, taps).

    Per frequency, the Wiener gain H = Σ conj(C)·X / Σ |C|² over Hann-windowed frames of all items
    (C, X: spectra of coarse and clean) says how much of the coarse audio at that frequency is the
    original: below 1 where the VQ-VAE added what was not there, above where it lost some. The
    filter applies H − 1 (the correction, added to the coarse audio), cut to `taps` samples around
    lag 0 with a Hann taper and laid out for `nn.Conv1d` (which correlates, so the taps are flipped).
    """
    window = torch.hann_window(n_fft, dtype=torch.float64)
    frames = lambda x: torch.stft(x.double().reshape(-1, x.shape[-1]), n_fft, n_fft // 2, window=window,  # noqa: E731
                                  center=False, return_complex=True)  # (B, n_fft/2 + 1, frames)
    c, x = frames(coarse), frames(clean)
    power = c.abs().square().sum(dim=(0, 2))
    gain = (c.conj() * x).sum(dim=(0, 2)) / (power + 1e-12 * power.max() + 1e-30)
    impulse = torch.fft.irfft(gain - 1, n_fft)  # (n_fft,), lag 0 at index 0, negative lags at the end
    half = taps // 2
    centred = torch.roll(impulse, half)[:taps] * torch.hann_window(taps + 2, periodic=False, dtype=torch.float64)[1:-1]
    return centred.flip(0).float().reshape(1, 1, taps)


# ----------------------------------------------------------------------------------------------
# Sampling: DDIM over overlapping chunks


def chunk_plan(length: int, chunk: int, overlap: int, margin: int, align: int) -> tuple[list[int], list[torch.Tensor]]:
    """Chunk starts and blending weights (chunk,) for a track of `length` samples, a multiple of `align`.

    Starts are multiples of `align` (so every chunk sees the track's own down-sampling grid) and the
    last chunk is flush with the end. Where a chunk meets a neighbour, its `margin` outermost samples
    get weight 0 (there its output sees the chunk's edge instead of the track), then a raised-cosine
    ramp of `overlap` samples cross-fades it with the neighbour; weight 1 elsewhere. With margin ≥ the
    U-Net's receptive field, every weighted output equals the whole track's output.
    """
    if length <= chunk:
        return [0], [torch.ones(length)]
    hop = (chunk - 2 * margin - overlap) // align * align
    if hop < align:
        raise ValueError(
            f"chunk length {chunk} leaves no room: it must exceed 2 × the U-Net's receptive field ({margin} samples) "
            f"+ overlap ({overlap}) by at least the stride {align}"
        )
    starts = list(range(0, length - chunk, hop)) + [length - chunk]
    ramp = torch.sin(math.pi / 2 * (torch.arange(overlap) + 0.5) / overlap) ** 2  # rises from ~0 to ~1
    weights = []
    for k in range(len(starts)):
        w = torch.ones(chunk)
        if k > 0:
            w[:margin] = 0.0
            w[margin : margin + overlap] = ramp
        if k < len(starts) - 1:
            w[chunk - margin :] = 0.0
            w[chunk - margin - overlap : chunk - margin] = ramp.flip(0)
        weights.append(w)
    return starts, weights


class Chunked:
    """A U-Net applied to whole tracks (B, C, T) through overlapping chunks, blended; model memory is per chunk.

    Tracks are zero-padded to a multiple of the U-Net's stride, exactly as a whole-track call pads
    them, and cut by `chunk_plan` with the U-Net's receptive field as margin: the result equals one
    call on the whole track up to float rounding, at the seams too.
    """

    def __init__(self, model: Refiner, length: int, chunk: int, overlap: int, chunk_batch: int, precision: str = "auto"):
        self.model, self.chunk_batch, self.precision = model, chunk_batch, precision
        stride = model.config.stride
        self.length = length
        self.padded = -(-length // stride) * stride
        self.span = min(self.padded, chunk)  # samples each chunk covers
        self.starts, self.weights = chunk_plan(self.padded, self.span, overlap, model.receptive_field, stride)
        total = torch.zeros(self.padded)
        for start, w in zip(self.starts, self.weights):
            total[start : start + self.span] += w
        self.total_weight = total

    @property
    def calls(self) -> int:
        """Model calls per pass over the track."""
        return math.ceil(len(self.starts) / self.chunk_batch)

    def _chunks(self, x: torch.Tensor, indices: range) -> torch.Tensor:
        """Chunks `indices` of the padded (B, C, T') stacked → (n·B, C, span)."""
        return torch.cat([x[:, :, self.starts[k] : self.starts[k] + self.span] for k in indices])

    @torch.no_grad()
    def __call__(self, network: Callable[[torch.Tensor], torch.Tensor], track: torch.Tensor, progress: tqdm) -> torch.Tensor:
        """`network` on chunks (n·B, C, span) → (n·B, 1, span), over a track (B, C, T) → (B, 1, T), on the CPU."""
        device, batch = self.model.device, track.shape[0]
        track = F.pad(track, (0, self.padded - track.shape[2]))
        out = torch.zeros(batch, 1, self.padded)
        for first in range(0, len(self.starts), self.chunk_batch):
            indices = range(first, min(first + self.chunk_batch, len(self.starts)))
            with autocast(device, self.precision):
                chunks = network(self._chunks(track, indices).to(device))
            for k, chunk in zip(indices, chunks.float().cpu().split(batch)):  # n × (B, 1, span)
                out[:, :, self.starts[k] : self.starts[k] + self.span] += self.weights[k] * chunk
            progress.update(1)
        return (out / self.total_weight)[:, :, : self.length]


@torch.no_grad()
def refine(
    model: Refiner,
    coarse: torch.Tensor,
    steps: int | None = None,
    strength: float | None = None,
    seed: int = 0,
    chunk_length: int | None = None,
    overlap_length: int | None = None,
    progress: bool = False,
    precision: str = "auto",
) -> torch.Tensor:
    """Coarse audio (B, 1, T), any T → refined audio (B, 1, T) in [-1, 1], on the CPU.

    The estimator's output, then with a detail model and `strength` > 0 its detail: deterministic
    given `seed`, t runs from `strength` to 0 in `steps` equal DDIM steps, starting from the zero detail
    noised to t = strength (1: from pure noise). Each step's x0 estimate is clamped so the audio it
    stands for stays in [-1, 1]. Unset arguments come from the model's config. The whole-track state
    lives on the CPU; only chunks of `chunk_length` samples go through the model, on its device, and
    the result equals refining the whole track in one call (see `Chunked`). `precision` as in `core.precision`.
    """
    cfg = model.config
    steps = cfg.steps if steps is None else steps
    strength = cfg.strength if strength is None else strength
    chunk = cfg.chunk_length if chunk_length is None else chunk_length
    overlap = cfg.overlap_length if overlap_length is None else overlap_length
    if coarse.dim() != 3 or coarse.shape[1] != 1 or coarse.shape[2] == 0:
        raise ValueError(f"expected coarse audio shaped (batch, 1, time), got {tuple(coarse.shape)}")
    if not torch.isfinite(coarse).all():
        raise ValueError("the audio to refine contains NaN or infinite samples")
    if not 0.0 <= strength <= 1.0 or steps < 1:
        raise ValueError(f"need 0 <= strength <= 1 and steps >= 1, got strength {strength}, steps {steps}")
    if chunk % cfg.stride or overlap < 1:
        raise ValueError(f"chunk_length must be a multiple of {cfg.stride} and overlap_length at least 1")
    coarse = coarse.detach().float().cpu()
    env = envelope(coarse, cfg.envelope_window)  # (B, 1, T), of the whole track
    cond = coarse / env
    chunked = Chunked(model, coarse.shape[2], chunk, overlap, cfg.chunk_batch, precision)
    detailed = model.detail is not None and strength > 0.0
    with tqdm(total=(1 + detailed * steps) * chunked.calls, desc="refine", unit="call", disable=not progress) as bar:
        estimate = chunked(lambda chunks: model.estimate(*chunks.split(1, dim=1)), torch.cat([coarse, 1 / env], dim=1), bar)  # r̂
        if not detailed:
            return audio_from_residual(cfg, estimate, coarse, env).clamp(-1.0, 1.0)
        noise = torch.randn(coarse.shape, generator=torch.Generator().manual_seed(seed))  # one draw for the whole track
        times = torch.linspace(strength, 0.0, steps + 1, dtype=torch.float64)
        x = noised(torch.zeros_like(coarse), noise, times[0].float())  # the detail d at t = strength
        for t, t_next in zip(times[:-1].float(), times[1:].float()):
            t_chunk = t[None].to(model.device)

            def velocity(chunks: torch.Tensor) -> torch.Tensor:  # (n·B, 3, span): x_t, c, r̂
                x_t, c, r = chunks.split(1, dim=1)
                return model.velocity(x_t, t_chunk, c, r)

            v = chunked(velocity, torch.cat([x, cond, estimate], dim=1), bar)
            alpha, sigma = alpha_sigma(t)
            audio = audio_from_residual(cfg, estimate + x0_from_v(x, v, t), coarse, env).clamp(-1.0, 1.0)  # (B, 1, T)
            x0 = residual_target(cfg, audio, coarse, env) - estimate
            eps = (x - alpha * x0) / sigma  # the noise implied by the clamped x0 (σ > 0 for t > 0)
            alpha_next, sigma_next = alpha_sigma(t_next)
            x = alpha_next * x0 + sigma_next * eps
    return audio_from_residual(cfg, estimate + x, coarse, env).clamp(-1.0, 1.0)
