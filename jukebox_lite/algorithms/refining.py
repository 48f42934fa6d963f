"""The refiner's algorithms: training pairs and the v-loss for training, chunked DDIM for sampling.

`refine` turns coarse audio of any length into refined audio: deterministic DDIM from one noise draw
for the whole track, with the U-Net run over overlapping chunks whose edges (one receptive field
wide) are dropped before their v-predictions are cross-faded, so the result equals refining the
whole track at once while memory stays bounded. The model itself is in `models.refiner`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from jukebox_lite.core.errors import UserError
from jukebox_lite.core.precision import autocast
from jukebox_lite.models.refiner import (
    RefinerUNet, alpha_sigma, diffusion_target, noised, v_target, waveform_from_target, x0_from_v,
)

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


def v_loss_per_item(
    model: nn.Module, x0: torch.Tensor, coarse: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """The model's loss per item for x0 (`diffusion_target`) and coarse (B, 1, T) noised to t (B,) → (B,).

    `model` may be wrapped (DDP), so autocast is the caller's business.
    """
    _, metrics = model(noised(x0, noise, t), t, coarse, v_target(x0, noise, t))
    return metrics["loss_per_item"]


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


class ChunkedDenoiser:
    """v-prediction for a whole track (B, 1, T) from overlapping chunks, blended; model memory is per chunk.

    The track is zero-padded to a multiple of the U-Net's stride, exactly as a whole-track call pads
    it, and cut by `chunk_plan` with the receptive field as margin: the result equals one call on the
    whole track up to float rounding, at the seams too.
    """

    def __init__(
        self, model: RefinerUNet, coarse: torch.Tensor, chunk: int, overlap: int, chunk_batch: int, precision: str = "auto"
    ):
        self.model, self.chunk_batch, self.precision = model, chunk_batch, precision
        stride = model.config.stride
        self.length = coarse.shape[2]
        padded = -(-self.length // stride) * stride
        self.span = min(padded, chunk)  # samples each chunk covers
        self.starts, self.weights = chunk_plan(padded, self.span, overlap, model.receptive_field, stride)
        self.coarse = self._pad(coarse, padded)
        total = torch.zeros(padded)
        for start, w in zip(self.starts, self.weights):
            total[start : start + self.span] += w
        self.total_weight = total

    @staticmethod
    def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
        return F.pad(x, (0, length - x.shape[2]))

    @property
    def calls(self) -> int:
        """Model calls per denoising step."""
        return math.ceil(len(self.starts) / self.chunk_batch)

    def _chunks(self, x: torch.Tensor, indices: range) -> torch.Tensor:
        """Chunks `indices` of the padded (B, 1, T') stacked → (n·B, 1, span)."""
        return torch.cat([x[:, :, self.starts[k] : self.starts[k] + self.span] for k in indices])

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: float, progress: tqdm) -> torch.Tensor:
        device, batch = self.model.device, x_t.shape[0]
        x_t = self._pad(x_t, self.coarse.shape[2])
        v = torch.zeros_like(x_t)  # (B, 1, T')
        for first in range(0, len(self.starts), self.chunk_batch):
            indices = range(first, min(first + self.chunk_batch, len(self.starts)))
            x_chunks = self._chunks(x_t, indices).to(device)
            c_chunks = self._chunks(self.coarse, indices).to(device)
            with autocast(device, self.precision):
                v_chunks, _ = self.model(x_chunks, torch.full((1,), t, device=device), c_chunks)
            for k, v_chunk in zip(indices, v_chunks.float().cpu().split(batch)):  # n × (B, 1, span)
                v[:, :, self.starts[k] : self.starts[k] + self.span] += self.weights[k] * v_chunk
            progress.update(1)
        return (v / self.total_weight)[:, :, : self.length]


@torch.no_grad()
def refine(
    model: RefinerUNet,
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

    Deterministic given `seed`: t runs from `strength` to 0 in `steps` equal DDIM steps, starting from
    the coarse audio's own target (the zero residual, or the coarse waveform) noised to t = strength
    (strength 1: from pure noise; 0: the input unchanged). Each step's x0 estimate is clamped so the
    audio it stands for stays in [-1, 1].
    Unset arguments come from the model's config. The whole-track state lives on the CPU; only
    chunks of `chunk_length` samples go through the model, on its device, and the result equals
    refining the whole track in one call (see `ChunkedDenoiser`). `precision` as in `core.precision`.
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
    if strength == 0.0:
        return coarse.clone()
    noise = torch.randn(coarse.shape, generator=torch.Generator().manual_seed(seed))  # one draw for the whole track
    times = torch.linspace(strength, 0.0, steps + 1, dtype=torch.float64)
    denoiser = ChunkedDenoiser(model, coarse, chunk, overlap, cfg.chunk_batch, precision)
    x = noised(diffusion_target(cfg, coarse, coarse), noise, times[0].float())
    with tqdm(total=steps * denoiser.calls, desc="refine", unit="call", disable=not progress) as bar:
        for t, t_next in zip(times[:-1].float(), times[1:].float()):
            v = denoiser(x, float(t), bar)
            alpha, sigma = alpha_sigma(t)
            audio = waveform_from_target(cfg, x0_from_v(x, v, t), coarse).clamp(-1.0, 1.0)  # (B, 1, T)
            x0 = diffusion_target(cfg, audio, coarse)
            eps = (x - alpha * x0) / sigma  # the noise implied by the clamped x0 (σ > 0 for t > 0)
            alpha_next, sigma_next = alpha_sigma(t_next)
            x = alpha_next * x0 + sigma_next * eps
    return waveform_from_target(cfg, x, coarse).clamp(-1.0, 1.0)


