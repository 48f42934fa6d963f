"""How far could a refiner that only reshapes the decoded audio's spectrum go? Oracle bounds, per level.

A refiner that "cannot add what it was not asked for" keeps the decoded audio's phase and changes its
magnitudes. This measures what such corrections could reach at best, with the original in hand (so
every row is an upper bound, fitted on the very segments it is judged on), on eval-refiner's own
held-out segments of a run, at each VQ-VAE level, beside one correction that is not an oracle (fixed
band gains fitted on training windows, applied to the held-out segments):

- fixed band gains: one gain per mel band (32) for all segments (the best fixed equalizer, by energy);
- band gains per frame: each STFT frame's 32 mel-band energies matched to the original's (what a
  network predicting smooth per-band gains from the decoded audio could reach if it were perfect);
- every bin's magnitude: the original's magnitude with the decoded phase (any magnitude-only refiner);
- the least-squares (Wiener) filter: the complex gain per frequency, fitted on these segments.

    python bench/refiner_bounds.py --run RUN [--levels 0 1] [--out FOLDER]

Then, per track of both splits (its first segments, as eval-refiner cuts them), the share of the
energy above sr/4 in the original and in the decoded audio: whether the decoded audio says how
bright the original was, which a refiner conditioned on it needs to know; and whether a linear map
from the level's quantised latents (or from the decoded audio's band energies), fitted on training
windows, predicts a held-out window's treble share.

Nothing here trains: it says which kind of refiner is worth training, and what the level-1 target
(half the gap to level 0) asks of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jukebox_lite import Run
from jukebox_lite.algorithms import metrics
from jukebox_lite.algorithms.datasets import RESIDUAL_STREAM, AudioWindows, read_manifest
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.stages.evaluation import evaluation_clips, load_clips

# bench/ is on sys.path when a script here runs
from common import add_out_argument, machine_line, write_results

N_FFT, HOP, BANDS = 1024, 256, 32


def stft(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, T) → complex (B, N_FFT/2 + 1, frames)."""
    return torch.stft(x[:, 0].double(), N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64), return_complex=True)


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    """complex (B, F, frames) → (B, 1, length) float32."""
    return torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64), length=length)[:, None].float()


def band_weights(sample_rate: int) -> torch.Tensor:
    """(BANDS, F): triangular mel filters, each bin's weights summing to 1 (so band gains interpolate over bins)."""
    mel = metrics._mel_filterbank(sample_rate, N_FFT, BANDS).double()
    mel = mel / mel.sum(dim=1, keepdim=True).clamp(min=1e-12)  # each band an average of its bins' energy
    return mel


def band_energies(audio: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, 1, T) → each frame's mel-band energy (B, BANDS, frames)."""
    return torch.einsum("bf,nft->nbt", weights, stft(audio).abs().square())


def fixed_gains(clean: torch.Tensor, decoded: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One amplitude gain per band (BANDS, 1) matching decoded's energy to clean's over all frames of all items."""
    floor = 1e-10
    return ((band_energies(clean, weights).sum(dim=(0, 2)) + floor) / (band_energies(decoded, weights).sum(dim=(0, 2)) + floor)).sqrt()[:, None]


@torch.no_grad()
def uniform_windows(run: Run, vqvae: VQVAE, level: int, split: str, windows: int = 64, seconds: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, decoded) (windows, 1, T): uniform random windows of `split`, as the refiner trains on them
    (the refiner's residual stream)."""
    length = round(seconds * vqvae.sample_rate) // vqvae.hop_lengths[level] * vqvae.hop_lengths[level]
    data = AudioWindows(run.manifest, vqvae.sample_rate, length, seed=0, split=split)
    clean = torch.stack([data.window(i, RESIDUAL_STREAM) for i in range(windows)])
    decoded = torch.cat([vqvae.decode(vqvae.encode(part, levels=[level]), level).float() for part in clean.split(8)])
    return clean, decoded


def corrections(clean: torch.Tensor, decoded: torch.Tensor, sample_rate: int, trained: torch.Tensor) -> dict[str, torch.Tensor]:
    """The corrections of `decoded` (B, 1, T) towards `clean`, each (B, 1, T): the oracles, and `trained` (BANDS, 1) gains."""
    x, c = stft(clean), stft(decoded)
    weights = band_weights(sample_rate)  # (BANDS, F)
    spread = weights / weights.sum(dim=0, keepdim=True).clamp(min=1e-12)  # (BANDS, F), columns sum to 1 where covered
    covered = weights.sum(dim=0) > 0  # bins under some band (the rest keep gain 1)

    def apply(band_gain: torch.Tensor) -> torch.Tensor:  # (B, BANDS, frames) or (BANDS, 1) → audio
        gain = torch.einsum("bf,...bt->...ft", spread, band_gain)
        gain = torch.where(covered[:, None], gain, torch.ones_like(gain))
        return istft(c * gain, clean.shape[-1])

    ex, ec = band_energies(clean, weights), band_energies(decoded, weights)  # (B, BANDS, frames)
    floor = 1e-10
    per_frame = ((ex + floor) / (ec + floor)).sqrt().clamp(max=100.0)
    wiener = (c.conj() * x).sum(dim=(0, 2)) / (c.abs().square().sum(dim=(0, 2)) + 1e-12)  # (F,)
    return {
        "fixed band gains fitted on 64 training windows (not an oracle)": apply(trained),
        "fixed band gains": apply(fixed_gains(clean, decoded, weights)),
        "band gains per frame": apply(per_frame),
        "every bin's magnitude": istft(x.abs() * torch.exp(1j * c.angle()), clean.shape[-1]),
        "least-squares filter": istft(c * wiener[:, None], clean.shape[-1]),
    }


@torch.no_grad()
def measure(run: Run, vqvae: VQVAE, level: int, seconds: float, segments: int) -> dict[str, dict[str, float]]:
    sr = vqvae.sample_rate
    clips, _, _, _ = evaluation_clips(run, None, sr, seconds, segments, vqvae.hop_lengths[level])
    for split in ("valid", "train"):
        clean, decoded = uniform_windows(run, vqvae, level, split)
        signed = metrics.high_band_energy_error_db(clean, decoded, sr).mean()
        print(f"level {level}: decoded audio's signed high-band error on 64 uniform {split} windows: {float(signed):+.1f} dB")
    trained = fixed_gains(clean, decoded, band_weights(sr))  # fitted on the training windows: not an oracle
    sums: dict[str, dict[str, list[float]]] = {}
    for clip in clips:
        clean = clip[None]  # (1, 1, T)
        decoded = vqvae.decode(vqvae.encode(clean, levels=[level]), level).float()
        for name, audio in {"decoded": decoded, **corrections(clean, decoded, sr, trained)}.items():
            for metric, value in metrics.audio_metrics(clean, audio, sr).items():
                sums.setdefault(name, {}).setdefault(metric, []).append(float(value[0]))
    return {name: {m: sum(v) / len(v) for m, v in by_metric.items()} for name, by_metric in sums.items()}


def treble_share_db(audio: torch.Tensor, over: tuple[int, ...] = (0, 1, 2)) -> torch.Tensor:
    """The share of (B, 1, T)'s energy above a quarter of the sample rate in dB, pooled over the
    spectrogram's dims `over` (all: one value; (1, 2): one per item)."""
    power = stft(audio).abs().square()  # (B, F, frames)
    return 10 * torch.log10(power[:, power.shape[1] // 2 :].sum(dim=over) / power.sum(dim=over) + 1e-12)


@torch.no_grad()
def treble_per_track(run: Run, vqvae: VQVAE, level: int, seconds: float, segments: int) -> list[dict]:
    """Per corpus file: its split, name, and the treble share of the original and of the decoded audio."""
    hop = vqvae.hop_lengths[level]
    rows = []
    for split in ("train", "valid"):
        for entry in read_manifest(run.manifest, split):
            clips = load_clips([run.data.path / entry["path"]], entry["source"], True, vqvae.sample_rate,
                               round(seconds * vqvae.sample_rate) // hop * hop, segments, hop)
            clean = torch.stack([c for c in clips if c.shape[-1] == clips[0].shape[-1]])  # (n, 1, T)
            decoded = vqvae.decode(vqvae.encode(clean, levels=[level]), level).float()
            rows.append({"split": split, "track": entry["source"], "original_db": float(treble_share_db(clean)),
                         "decoded_db": float(treble_share_db(decoded))})
    return rows


@torch.no_grad()
def treble_probe(run: Run, vqvae: VQVAE, level: int, windows: int = 256, ridge: float = 1.0) -> dict[str, float]:
    """Can a linear map predict a window's treble share (dB) from the level's quantised latents, or from the
    decoded audio's mel-band energies? Ridge regressions fitted on training windows, judged on held-out
    ones: RMS error in dB, beside predicting the training mean."""
    weights = band_weights(vqvae.sample_rate)
    features, targets = {}, {}
    for split in ("train", "valid"):
        clean, decoded = uniform_windows(run, vqvae, level, split, windows)
        block = vqvae.bottleneck.level_blocks[level]
        latents = torch.cat([block.decode(vqvae.encode(part, levels=[level])[level]) for part in clean.split(8)]).double()
        features[split] = {
            "latents (mean, std over time)": torch.cat([latents.mean(dim=2), latents.std(dim=2)], dim=1),
            "decoded audio (log mel-band energies)": torch.log10(band_energies(decoded, weights).mean(dim=2) + 1e-10),
        }
        targets[split] = treble_share_db(clean, over=(1, 2))  # (windows,)
    rms = lambda error: float(error.pow(2).mean().sqrt())  # noqa: E731
    result = {"train mean": rms(targets["valid"] - targets["train"].mean())}
    for name in features["train"]:
        x, y = features["train"][name], targets["train"]
        mean, std = x.mean(dim=0), x.std(dim=0) + 1e-9
        design = lambda f: torch.cat([(f - mean) / std, torch.ones(len(f), 1, dtype=f.dtype)], dim=1)  # noqa: E731
        a = design(x)
        coef = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y)
        result[name] = rms(design(features["valid"][name]) @ coef - targets["valid"])
        result[name + ", on its training windows"] = rms(a @ coef - y)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run with data and a trained VQ-VAE")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--segment-seconds", type=float, default=3.0, help="as eval-refiner cuts them")
    parser.add_argument("--max-segments", type=int, default=4)
    add_out_argument(parser)
    args = parser.parse_args()
    run = Run(args.run)
    vqvae = run.load_vqvae("cpu")
    results = {level: measure(run, vqvae, level, args.segment_seconds, args.max_segments) for level in args.levels}
    print(machine_line())
    print("| level | correction | MR-STFT ↓ | log-mel ↓ | abs. high-band dB ↓ (signed) | SC dB ↓ | SI-SDR dB ↑ |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for level, rows in results.items():
        for name, m in rows.items():
            print(f"| {level} | {name} | {m['mr_stft_distance']:.3f} | {m['log_mel_distance']:.3f} | "
                  f"{m['high_band_abs_error_db']:.2f} ({m['high_band_error_db']:+.1f}) | {m['spectral_convergence_db']:.2f} | "
                  f"{m['si_sdr_db']:.2f} |")
    print("\n| level | split | track | treble share, original (dB) | decoded (dB) |")
    print("|---|---|---|---:|---:|")
    tracks = {level: treble_per_track(run, vqvae, level, args.segment_seconds, args.max_segments) for level in args.levels}
    for level, rows in tracks.items():
        for row in rows:
            print(f"| {level} | {row['split']} | {row['track']} | {row['original_db']:.1f} | {row['decoded_db']:.1f} |")
    probes = {level: treble_probe(run, vqvae, level) for level in args.levels}
    print("\nA window's treble share predicted by ridge regression (256 training windows → 256 held-out), RMS error in dB:")
    for level, errors in probes.items():
        for name, error in errors.items():
            print(f"  level {level}, {name}: {error:.1f} dB")
    rows = [{"device": "cpu", "level": level, "correction": name, **m} for level, by_name in results.items() for name, m in by_name.items()]
    rows += [{"device": "cpu", "level": level, **row} for level, by_track in tracks.items() for row in by_track]
    rows += [{"device": "cpu", "level": level, "probe": name, "rms_error_db": e} for level, errors in probes.items() for name, e in errors.items()]
    print(write_results("refiner_bounds", args, rows, args.out))


if __name__ == "__main__":
    main()
