"""Audio and codebook metrics for evaluating reconstructions (eval-vqvae and eval-refiner).

Every audio metric takes a reference and an estimate shaped (batch, channels, time), downmixes them
to mono, and returns one float32 value per item (batch,), so callers can average over files or
report the spread. Spectra come from torch.stft (no torchaudio) in float32, also under autocast.
Values in dB are floored at `DB_FLOOR` instead of -inf, so they stay finite in JSON.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from jukebox_lite.models import losses
from jukebox_lite.models.losses import LOG_MAG_FLOOR, MR_STFT_RESOLUTIONS, _magnitude, _mono, spectral_convergence
from jukebox_lite.core.precision import float32_region

DB_FLOOR = -160.0  # dB: a ratio of 1e-8 (amplitude) or 1e-16 (power) and below


def _amplitude_db(ratio: torch.Tensor) -> torch.Tensor:
    return (20 * torch.log10(ratio.clamp(min=10 ** (DB_FLOOR / 20)))).clamp(min=DB_FLOOR)


def _power_db(ratio: torch.Tensor) -> torch.Tensor:
    return (10 * torch.log10(ratio.clamp(min=10 ** (DB_FLOOR / 10)))).clamp(min=DB_FLOOR)


def _pairs(reference: torch.Tensor, estimate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (batch, channels, time) → float32 mono (batch, time), trimmed to the shorter length."""
    if reference.shape[0] != estimate.shape[0]:
        raise ValueError(f"batch sizes differ: {reference.shape[0]} vs {estimate.shape[0]}")
    length = min(reference.shape[-1], estimate.shape[-1])
    return _mono(reference[..., :length]), _mono(estimate[..., :length])


def spectral_convergence_db(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """20·log10(‖|S(ref)| − |S(est)|‖ / ‖S(ref)‖) per item, with Jukebox's STFT (n_fft 2048, hop 256).

    0 dB means the error is as large as the signal (e.g. an all-silent estimate); lower is better.
    """
    reference, estimate = _pairs(reference, estimate)
    ratios = torch.stack([spectral_convergence(r[None], e[None]) for r, e in zip(reference, estimate)])
    return _amplitude_db(ratios)


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale-invariant signal-to-distortion ratio in dB per item (Le Roux et al. 2019), means removed.

    The estimate is projected on the reference; the projection is the signal, the rest distortion.
    Rescaling either input leaves it unchanged; estimate = reference + noise gives about the SNR.
    """
    reference, estimate = _pairs(reference, estimate)
    reference = (reference - reference.mean(dim=1, keepdim=True)).double()
    estimate = (estimate - estimate.mean(dim=1, keepdim=True)).double()
    alpha = (estimate * reference).sum(dim=1, keepdim=True) / ((reference**2).sum(dim=1, keepdim=True) + eps)
    target = alpha * reference  # (batch, time)
    distortion = estimate - target
    ratio = ((target**2).sum(dim=1) + eps) / ((distortion**2).sum(dim=1) + eps)
    return _power_db(ratio).float()


@functools.lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney-normalised mel filters; librosa's, cached per setting."""
    import librosa  # imported lazily: it takes seconds, and only this metric needs it

    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32))


def log_mel_distance(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    sample_rate: int,
    n_fft: int = 2048,
    hop_length: int = 512,
    n_mels: int = 80,
) -> torch.Tensor:
    """Mean |log10 mel(ref) − log10 mel(est)| per item, on mel-filtered STFT magnitudes.

    Magnitudes are floored at LOG_MAG_FLOOR, so silence vs silence is 0 and a 10× louder estimate
    scores exactly 1 (one decade) wherever both are above the floor.
    """
    reference, estimate = _pairs(reference, estimate)
    logs = [log_mel(x, sample_rate, n_fft, hop_length, n_mels) for x in (reference, estimate)]
    return (logs[0] - logs[1]).abs().mean(dim=(1, 2))


def log_mel(audio: torch.Tensor, sample_rate: int, n_fft: int = 2048, hop_length: int = 512, n_mels: int = 80) -> torch.Tensor:
    """(batch, time) audio → (batch, n_mels, frames) log10 mel-filtered STFT magnitudes, floored at LOG_MAG_FLOOR."""
    window = torch.hann_window(n_fft, device=audio.device)
    mel = _mel_filterbank(sample_rate, n_fft, n_mels).to(audio.device)
    with float32_region(audio.device):
        return torch.log10((mel @ _magnitude(audio, n_fft, hop_length, window)).clamp(min=LOG_MAG_FLOOR))


def multi_resolution_stft_distance(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    resolutions: Sequence[tuple[int, int, int]] = MR_STFT_RESOLUTIONS,
) -> torch.Tensor:
    """`losses.multi_resolution_stft_distance` (what the refiner trains on) per item, lengths trimmed to the shorter."""
    return losses.multi_resolution_stft_distance(*_pairs(reference, estimate), resolutions)


def high_band_energy_error_db(
    reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int, cutoff_hz: float | None = None
) -> torch.Tensor:
    """10·log10(energy of est above the cutoff / energy of ref above it) per item; 0 dB is perfect.

    VQ-VAEs and vocoders tend to lose the top octaves: a negative value says how much treble is
    missing, a positive one that hiss was added. The cutoff defaults to sample_rate / 4, the upper
    half of the spectrum. Energies come from the full-length real FFT (Parseval, no windowing loss).
    """
    reference, estimate = _pairs(reference, estimate)
    cutoff_hz = sample_rate / 4 if cutoff_hz is None else cutoff_hz
    if not 0 < cutoff_hz < sample_rate / 2:
        raise ValueError(f"cutoff_hz must lie between 0 and the Nyquist frequency, got {cutoff_hz}")
    freqs = torch.fft.rfftfreq(reference.shape[-1], d=1.0 / sample_rate).to(reference.device)
    band = freqs >= cutoff_hz
    energy_ref = torch.fft.rfft(reference.double(), dim=-1)[:, band].abs().pow(2).sum(dim=-1)
    energy_est = torch.fft.rfft(estimate.double(), dim=-1)[:, band].abs().pow(2).sum(dim=-1)
    tiny = 1e-20
    return (_power_db((energy_est + tiny) / (energy_ref + tiny)).clamp(max=-DB_FLOOR)).float()


# ----------------------------------------------------------------------------------------------
# Codebook metrics: how much of a codebook a set of codes uses


def code_histogram(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts (bins,) of every code in `codes` (any shape), for accumulating over many batches."""
    return torch.bincount(codes.reshape(-1).long().cpu(), minlength=bins)[:bins].double()


def codebook_usage(histogram: torch.Tensor) -> float:
    """Fraction of codebook entries that occur at least once."""
    return float((histogram > 0).double().mean())


def codebook_perplexity(histogram: torch.Tensor) -> float:
    """exp(entropy of the code distribution): the number of equally used codes it is worth.

    1 when one code is used; the codebook size when all are used equally; 0 for no codes at all.
    """
    total = histogram.sum()
    if total == 0:
        return 0.0
    prob = histogram[histogram > 0] / total
    return float(torch.exp(-(prob * prob.log()).sum()))


def audio_metrics(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
    """Both (B, 1, T) → every metric per item (B,), float32 on the CPU."""
    high_band = high_band_energy_error_db(reference, estimate, sample_rate)
    values = {
        "mr_stft_distance": multi_resolution_stft_distance(reference, estimate),
        "log_mel_distance": log_mel_distance(reference, estimate, sample_rate),
        "high_band_error_db": high_band,
        "high_band_abs_error_db": high_band.abs(),
        "spectral_convergence_db": spectral_convergence_db(reference, estimate),
        "si_sdr_db": si_sdr(reference, estimate),
    }
    return {name: value.float().cpu() for name, value in values.items()}
