"""Audio and codebook metrics against cases whose answer is known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from jukebox_lite.algorithms.metrics import (
    DB_FLOOR,
    code_histogram,
    codebook_perplexity,
    codebook_usage,
    high_band_energy_error_db,
    log_mel_distance,
    multi_resolution_stft_distance,
    si_sdr,
    spectral_convergence_db,
)
from tests.helpers import synth_music

SR = 16000


@pytest.fixture
def music_batch() -> torch.Tensor:
    """Two different 1-second clips, (2, 1, SR)."""
    return torch.stack([torch.from_numpy(synth_music(1.0, SR, seed=s, channels=1)) for s in (0, 1)])


def white_noise(batch: int, length: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    return scale * torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Identical signals: the best score of every metric


def test_identical_signals_score_perfectly(music_batch):
    x = music_batch
    assert torch.all(spectral_convergence_db(x, x) == DB_FLOOR)
    assert torch.all(si_sdr(x, x) > 100)
    assert torch.all(log_mel_distance(x, x, SR) == 0)
    assert torch.all(multi_resolution_stft_distance(x, x) == 0)
    assert torch.allclose(high_band_energy_error_db(x, x, SR), torch.zeros(2), atol=1e-6)


def test_results_are_per_item_and_finite(music_batch):
    x, y = music_batch, music_batch.flip(0)
    for value in (
        spectral_convergence_db(x, y),
        si_sdr(x, y),
        log_mel_distance(x, y, SR),
        multi_resolution_stft_distance(x, y),
        high_band_energy_error_db(x, y, SR),
    ):
        assert value.shape == (2,) and value.dtype == torch.float32 and torch.isfinite(value).all()


# ----------------------------------------------------------------------------------------------
# Scaled signals


def test_si_sdr_is_invariant_to_scale(music_batch):
    x = music_batch
    noisy = x + white_noise(2, SR, seed=3, scale=0.05)
    reference = si_sdr(x, noisy)
    assert torch.allclose(si_sdr(x, 3.0 * noisy), reference, atol=1e-4)
    assert torch.allclose(si_sdr(0.2 * x, noisy), reference, atol=1e-4)
    assert torch.allclose(si_sdr(x, -noisy), reference, atol=1e-4)  # a negative gain is a scale too


def test_half_amplitude_estimate_is_minus_six_db(music_batch):
    x = music_batch
    expected = 20 * math.log10(0.5)  # ‖S − S/2‖ / ‖S‖ = 1/2
    assert torch.allclose(spectral_convergence_db(x, 0.5 * x), torch.full((2,), expected), atol=1e-3)
    assert torch.allclose(high_band_energy_error_db(x, 0.5 * x, SR), torch.full((2,), expected), atol=1e-3)  # energy ¼ → 10·log10 ¼


def test_ten_times_louder_is_one_decade_of_log_mel_and_ten_of_mr_stft():
    # White noise keeps every mel band and STFT bin far above the log floor, before and after scaling.
    x = white_noise(2, SR, seed=4)
    assert torch.allclose(log_mel_distance(x, 10 * x, SR), torch.ones(2), atol=1e-4)
    # spectral convergence ‖10S − S‖/‖S‖ = 9 plus one decade of log-magnitude error
    assert torch.allclose(multi_resolution_stft_distance(x, 10 * x), torch.full((2,), 10.0), atol=1e-3)


# ----------------------------------------------------------------------------------------------
# White noise vs silence


def test_silent_estimate_of_noise():
    noise, silence = white_noise(1, SR, seed=5), torch.zeros(1, 1, SR)
    assert torch.allclose(spectral_convergence_db(noise, silence), torch.zeros(1), atol=1e-4)  # error = signal
    assert high_band_energy_error_db(noise, silence, SR).item() <= -150  # all treble missing
    assert high_band_energy_error_db(silence, noise, SR).item() >= 150  # all of it added
    assert si_sdr(noise, silence).item() < 1e-3  # nothing of the reference in the estimate
    # log-mel: every band of the silent estimate sits on the floor, the noise far above it
    assert log_mel_distance(noise, silence, SR).item() > 3
    assert log_mel_distance(silence, silence, SR).item() == 0


def test_high_band_error_sees_lost_treble_only():
    """A low-passed estimate loses the high band; a high-passed one keeps it exactly."""
    noise = white_noise(1, SR, seed=6)
    spectrum = torch.fft.rfft(noise, dim=-1)
    freqs = torch.fft.rfftfreq(SR, d=1 / SR)
    lowpassed = torch.fft.irfft(spectrum * (freqs < 2000), n=SR, dim=-1)
    highpassed = torch.fft.irfft(spectrum * (freqs >= SR / 4), n=SR, dim=-1)
    assert high_band_energy_error_db(noise, lowpassed, SR).item() <= -100
    assert abs(high_band_energy_error_db(noise, highpassed, SR).item()) < 1e-3
    # ... and with a cutoff below the low-pass edge part of the band survives
    partial = high_band_energy_error_db(noise, lowpassed, SR, cutoff_hz=1000).item()
    assert -10 < partial < -1


# ----------------------------------------------------------------------------------------------
# A known SNR gives that SI-SDR


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_si_sdr_of_known_snr(snr_db):
    gen = torch.Generator().manual_seed(7)
    reference = torch.randn(1, 1, 200_000, generator=gen)
    noise = torch.randn(1, 1, 200_000, generator=gen)
    # make the noise exactly orthogonal to the (zero-mean) reference, then set its power for the SNR
    reference = reference - reference.mean()
    noise = noise - noise.mean()
    noise = noise - (noise * reference).sum() / (reference**2).sum() * reference
    noise = noise * torch.sqrt((reference**2).sum() / (noise**2).sum() / 10 ** (snr_db / 10))
    assert si_sdr(reference, reference + noise).item() == pytest.approx(snr_db, abs=1e-3)


def test_inputs_of_different_length_are_trimmed_and_batches_must_match(music_batch):
    x = music_batch
    assert torch.allclose(si_sdr(x, x[..., :-100]), si_sdr(x[..., :-100], x[..., :-100]))
    with pytest.raises(ValueError, match="batch"):
        si_sdr(x, x[:1])


# ----------------------------------------------------------------------------------------------
# Codebook usage and perplexity


def test_codebook_usage_and_perplexity():
    bins = 16
    uniform = code_histogram(torch.arange(bins).repeat(5), bins)
    assert codebook_usage(uniform) == 1.0
    assert codebook_perplexity(uniform) == pytest.approx(bins)
    single = code_histogram(torch.full((2, 7), 3), bins)
    assert codebook_usage(single) == 1 / bins
    assert codebook_perplexity(single) == pytest.approx(1.0)
    half = code_histogram(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]), bins)
    assert codebook_usage(half) == 0.5 and codebook_perplexity(half) == pytest.approx(8.0)
    assert codebook_perplexity(code_histogram(torch.zeros(0, dtype=torch.long), bins)) == 0.0
    # histograms add up over batches
    assert torch.equal(code_histogram(torch.tensor([1, 2]), bins) + code_histogram(torch.tensor([2]), bins),
                       code_histogram(torch.tensor([1, 2, 2]), bins))
