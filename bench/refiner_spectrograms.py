"""Spectrograms of one held-out excerpt: the original, and for each run's refiner its decoded and refined audio.

    python bench/refiner_spectrograms.py --run RUN [--run RUN_LEVEL1 ...] --figure docs/refiner_spectrograms.png

The excerpt is the first segment eval-refiner evaluates (the validation split's first file, cut as
eval-refiner cuts it, --seconds long). Each run's VQ-VAE encodes and decodes it at its refiner's
cond_level ("decoded"), and the refiner refines it with its own settings ("refined"), as eval-refiner
does; a refiner with a detail model is also shown without it ("estimate alone", strength 0). The
results file holds each panel's MR-STFT and log-mel distance to the original and its energy in four
bands against the original's (dB; positive: louder than the original).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from jukebox_lite.algorithms import metrics
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.runs import Run
from jukebox_lite.stages.evaluation import evaluation_clips

# bench/ is on sys.path when a script here runs
from common import add_out_argument, write_results


BANDS_HZ = (0, 1000, 3000, 5500, None)  # the last band runs to Nyquist


def band_errors_db(reference: np.ndarray, estimate: np.ndarray, sr: int) -> list[float]:
    """10·log10(energy of estimate / energy of reference) in each of BANDS_HZ, from whole-excerpt spectra."""
    freqs = np.fft.rfftfreq(reference.size, 1 / sr)
    power = [np.abs(np.fft.rfft(x)) ** 2 for x in (reference, estimate)]
    errors = []
    for low, high in zip(BANDS_HZ[:-1], BANDS_HZ[1:]):
        band = (freqs >= low) & (freqs < (high or sr))
        errors.append(float(10 * np.log10((power[1][band].sum() + 1e-20) / (power[0][band].sum() + 1e-20))))
    return errors


def panels(run_dir: Path, seconds: float) -> tuple[np.ndarray, int, list[tuple[str, np.ndarray]]]:
    """(the original excerpt, its rate, [(title, audio)] decoded, estimate alone and refined)."""
    run = Run(run_dir)
    vqvae = run.load_vqvae(torch.device("cpu"))
    refiner = run.load_refiner(torch.device("cpu"), vqvae.fingerprint())
    level, sr = refiner.config.cond_level, refiner.config.sample_rate
    clips, *_ = evaluation_clips(run, None, sr, seconds, 1, vqvae.hop_lengths[level])
    clip = clips[0][None]  # (1, 1, T)
    with torch.no_grad():
        decoded = vqvae.decode(vqvae.encode(clip, levels=[level]), level)
    rows = [(f"decoded (level {level})", decoded)]
    if refiner.detail is not None and refiner.config.strength > 0:
        rows.append((f"estimate alone (level {level})", refine(refiner, decoded, strength=0.0)))
    rows.append((f"refined (level {level}, {refiner.config.steps} steps)", refine(refiner, decoded)))
    return clip[0, 0].numpy(), sr, [(title, audio[0, 0].numpy()) for title, audio in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a run with a refiner (repeat for several)")
    parser.add_argument("--figure", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--seconds", type=float, default=3.0)
    add_out_argument(parser)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for run_dir in args.run:
        original, sr, decoded_and_refined = panels(run_dir, args.seconds)
        if not rows:
            rows.append(("original", original))
        rows += decoded_and_refined
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.1 * len(rows)), sharex=True)
    for ax, (title, audio) in zip(axes, rows):
        ax.specgram(audio, NFFT=1024, Fs=sr, noverlap=768, cmap="magma", vmin=-140, vmax=-20)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("Hz")
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(args.figure, dpi=80)
    print(f"wrote {args.figure}")
    reference = torch.from_numpy(rows[0][1])[None, None]
    results = []
    for title, audio in rows[1:]:
        estimate = torch.from_numpy(audio)[None, None]
        bands = band_errors_db(rows[0][1], audio, sr)
        results.append({"device": "cpu", "panel": title,
                        "mr_stft_distance": float(metrics.multi_resolution_stft_distance(reference, estimate)[0]),
                        "log_mel_distance": float(metrics.log_mel_distance(reference, estimate, sr)[0]),
                        **{f"band_error_db_{low}_{high or 'nyquist'}hz": e for low, high, e in zip(BANDS_HZ[:-1], BANDS_HZ[1:], bands)}})
        print(f"{title:40}  MR-STFT {results[-1]['mr_stft_distance']:.3f}  log-mel {results[-1]['log_mel_distance']:.3f}  "
              f"band energy vs original (dB, {'/'.join(str(b) for b in BANDS_HZ[1:-1])} Hz): {' '.join(f'{e:+.1f}' for e in bands)}")
    write_results("refiner_spectrograms", args, results, args.out)


if __name__ == "__main__":
    main()
