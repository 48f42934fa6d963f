"""VQ-VAE reconstruction losses and the data "bandwidth" that normalises them.

Jukebox divides every loss term by a statistic of the training audio (its variance for the sample
losses, the mean STFT-magnitude norm for the spectral ones), so the weights in the config mean the
same thing whatever the loudness of the corpus. `compute_bandwidth` measures those statistics once
per dataset; the model keeps them in buffers so they travel inside its checkpoint.

Spectra use torch.stft (no torchaudio) and always run in float32, also under bf16 autocast.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from jukebox_lite.core.precision import float32_region

# Jukebox's single-resolution STFT, used for the bandwidth statistic and the spectral-convergence metric.
BANDWIDTH_STFT = (2048, 256, 1536)  # n_fft, hop_length, window_size
LOG_MAG_FLOOR = 1e-5  # magnitudes below this count as silence in the log-spectral distances
MR_STFT_RESOLUTIONS = ((2048, 512, 2048), (1024, 256, 1024), (512, 128, 512))  # n_fft, hop, window


def _magnitude(x: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """(batch, time) → |STFT| (batch, n_fft//2 + 1, frames), centred with reflect padding as in
    Jukebox (zero padding for clips too short to reflect)."""
    pad_mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"
    spec = torch.stft(
        x,
        n_fft,
        hop_length,
        win_length=window.shape[0],
        window=window,
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return spec.abs()


def _mono(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, time) → float32 (batch, time), averaging the channels."""
    return x.float().mean(dim=1) if x.dim() == 3 else x.float()


def _per_item_norm(x: torch.Tensor) -> torch.Tensor:
    """(batch, ...) → (batch,) Euclidean norm of each item."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def l2_loss(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean squared error over everything."""
    return torch.mean((pred - target) ** 2)


def linf_loss(target: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each item's k largest squared errors: a soft L∞ that punishes clicks and spikes."""
    squared = ((pred - target) ** 2).reshape(target.shape[0], -1)  # (batch, channels·time)
    return torch.topk(squared, min(k, squared.shape[1]), dim=1, sorted=False).values.mean()


class MultiSpectralLoss(nn.Module):
    """Mean over STFT resolutions of ‖|STFT(target)| − |STFT(pred)|‖₂ per item, averaged over the batch.

    The Hann windows are non-persistent buffers: they follow the module to its device but stay out of
    the state dict (so checkpoints keep OpenAI's key layout).
    """

    def __init__(self, n_ffts: Sequence[int], hop_lengths: Sequence[int], window_sizes: Sequence[int]):
        super().__init__()
        self.settings = list(zip(n_ffts, hop_lengths, window_sizes))
        for i, (_, _, window_size) in enumerate(self.settings):
            self.register_buffer(f"window_{i}", torch.hann_window(window_size), persistent=False)

    def spectra(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Audio (batch, channels, time) → its magnitude spectrogram at each resolution."""
        with float32_region(x.device):
            mono = _mono(x)  # (batch, time) float32
            return [
                _magnitude(mono, n_fft, hop, getattr(self, f"window_{i}"))
                for i, (n_fft, hop, _) in enumerate(self.settings)
            ]

    def from_spectra(self, target_spectra: list[torch.Tensor], pred: torch.Tensor) -> torch.Tensor:
        """The loss against a target whose `spectra` were computed once (the VQ-VAE reuses them per level)."""
        per_item = sum(_per_item_norm(t - p) for t, p in zip(target_spectra, self.spectra(pred)))
        return (per_item / len(self.settings)).mean()

    def forward(self, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self.from_spectra(self.spectra(target), pred)


def spectral_convergence(target: torch.Tensor, pred: torch.Tensor, epsilon: float = 2e-3) -> torch.Tensor:
    """‖|S(target)| − |S(pred)|‖ / ‖S(target)‖ per item (0 where the target is silent), batch mean.

    A metric, not a training loss: it is comparable across corpora without a bandwidth.
    """
    n_fft, hop, window_size = BANDWIDTH_STFT
    with float32_region(pred.device):
        window = torch.hann_window(window_size, device=pred.device)
        spec_target = _magnitude(_mono(target), n_fft, hop, window)
        spec_pred = _magnitude(_mono(pred), n_fft, hop, window)
        target_norm = _per_item_norm(spec_target)
        residual_norm = _per_item_norm(spec_target - spec_pred)
        mask = (target_norm > epsilon).float()
        return (residual_norm * mask / target_norm.clamp(min=epsilon)).mean()


def multi_resolution_stft_distance(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    resolutions: Sequence[tuple[int, int, int]] = MR_STFT_RESOLUTIONS,
) -> torch.Tensor:
    """Mean over STFT resolutions of spectral convergence (a ratio) + mean |log10 magnitude error|, per item (batch,).

    The two terms of the multi-resolution STFT loss of Parallel WaveGAN: the first weighs the loud
    partials, the second the quiet ones. A 10× louder estimate scores 9 + 1 = 10; identical is 0. Both inputs
    (batch, channels, time) or (batch, time) of one length; differentiable (the refiner's estimator trains on it).
    """
    reference, estimate = _mono(reference), _mono(estimate)  # (batch, time) float32
    total = reference.new_zeros(reference.shape[0])
    with float32_region(reference.device):
        for n_fft, hop, window_size in resolutions:
            window = torch.hann_window(window_size, device=reference.device)
            mag_ref = _magnitude(reference, n_fft, hop, window)  # (batch, freq, frames)
            mag_est = _magnitude(estimate, n_fft, hop, window)
            convergence = _per_item_norm(mag_ref - mag_est) / _per_item_norm(mag_ref).clamp(min=LOG_MAG_FLOOR)
            log_error = (
                torch.log10(mag_ref.clamp(min=LOG_MAG_FLOOR)) - torch.log10(mag_est.clamp(min=LOG_MAG_FLOOR))
            ).abs().mean(dim=(1, 2))
            total = total + convergence + log_error
    return total / len(resolutions)


@torch.no_grad()
def compute_bandwidth(clips: Iterable[torch.Tensor | np.ndarray]) -> dict[str, float]:
    """Statistics of the training audio that normalise the losses: {'l1', 'l2', 'spec'}.

    Feed clips of the training window length (`vqvae.sample_length`, as (channels, time) or (time,)):
    'spec' is the mean norm of a clip's STFT magnitude, so it depends on the clip length, exactly as
    the spectral loss of a training window does. 'l2' is the sample variance, 'l1' the mean |x|.
    Under torch.distributed each rank passes its own share and all ranks get the global statistics.
    """
    n_fft, hop, window_size = BANDWIDTH_STFT
    window = torch.hann_window(window_size, dtype=torch.float64)
    # [n_samples, sum, sum of squares, sum of |x|, sum of spectral norms, n_clips]
    totals = torch.zeros(6, dtype=torch.float64)
    for clip in clips:
        x = torch.as_tensor(clip, dtype=torch.float64)
        if x.dim() == 2:
            x = x.mean(dim=0)  # (channels, time) → (time,)
        spec_norm = torch.linalg.vector_norm(_magnitude(x[None], n_fft, hop, window))
        totals += torch.stack(
            [x.new_tensor(x.numel()), x.sum(), (x**2).sum(), x.abs().sum(), spec_norm, x.new_tensor(1.0)]
        )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    n, total, total_sq, total_abs, spec_total, n_clips = totals.tolist()
    if n == 0:
        raise ValueError("compute_bandwidth needs at least one clip")
    mean = total / n
    return {"l1": total_abs / n, "l2": total_sq / n - mean**2, "spec": spec_total / n_clips}
