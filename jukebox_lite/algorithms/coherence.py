"""Does a long track hold together? Measures that compare a track's segments with each other and with other tracks.

A track is cut into segments of a few seconds, and each segment is described by four vectors:
loudness (RMS dB), timbre (mean MFCCs 1–19), harmony (mean chroma, unit length) and rhythm (mean
tempogram, unit length). Distances between descriptions are Euclidean. Over a set of tracks of one
kind (recordings, or samples of one model and setting):
  - identity = mean distance between adjacent segments of a track / mean distance between segments
    of two tracks at the same position: 1 where a track's next segment is as far as another track's
    (no character of its own), well below 1 for recorded music;
  - drift = mean distance from a track's first segment to each later one / the adjacent distance:
    above 1 where tracks wander steadily away from where they began;
  - memory (tracks continued from recordings) = mean distance from each later segment to the first
    segment of its own recording / to the first segments of the other recordings: below 1 while a
    continuation still resembles what it was primed with.
And from a track's codes: the longest run of one token and the share of spans that repeat an
earlier span exactly (loops, a stuck sampler).
"""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np

DESCRIPTIONS = ("loudness", "timbre", "harmony", "rhythm")
LOOP_TOKENS = 16  # a span of this many tokens repeated exactly counts as a loop
TEMPOGRAM_FRAMES = 192  # onset frames per tempogram window: 2.2 s at 22.05 kHz (hop 512)

Description = dict[str, np.ndarray]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def describe(audio: np.ndarray, sample_rate: int) -> Description:
    """One mono segment (T,) → its loudness (1,), timbre (19,), harmony (12,) and rhythm (lags,) vectors."""
    import librosa  # imported lazily: it takes seconds, and only the long-track measures need it

    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) + 1e-6
    mfcc = librosa.feature.mfcc(y=audio, sr=sample_rate, n_mfcc=20)[1:].mean(axis=1)  # c0 is loudness again
    chroma = librosa.feature.chroma_stft(y=audio, sr=sample_rate, tuning=0.0).mean(axis=1)
    tempogram = librosa.feature.tempogram(y=audio, sr=sample_rate, win_length=TEMPOGRAM_FRAMES).mean(axis=1)[1:]  # lag 0 is 1
    return {"loudness": np.array([20 * np.log10(rms)]), "timbre": mfcc, "harmony": _unit(chroma), "rhythm": _unit(tempogram)}


def describe_segments(audio: np.ndarray, sample_rate: int, seconds: float) -> list[Description]:
    """A mono track (T,) → the description of each whole `seconds`-long segment, in order."""
    n = int(seconds * sample_rate)
    return [describe(audio[i * n:(i + 1) * n], sample_rate) for i in range(len(audio) // n)]


def _mean_distance(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([np.linalg.norm(a - b) for a, b in pairs]))


def _ratio(a: float, b: float) -> float:
    """a / b, NaN where b is 0 (identical tracks or segments: the measure says nothing)."""
    return a / b if b > 0 else float("nan")


def coherence(tracks: list[list[Description]], key: str, primes: list[list[Description]] | None = None) -> dict[str, float]:
    """One kind's measures for description `key` (see the module docstring): within (adjacent segments),
    across (two tracks, same position), identity, drift, and memory when `primes` gives the recording
    each track continues (in the same order; its first segment is what the track began from), else NaN."""
    if len(tracks) < 2 or min(len(t) for t in tracks) < 2:
        raise ValueError("coherence needs at least two tracks of at least two segments")
    within = _mean_distance((t[i][key], t[i + 1][key]) for t in tracks for i in range(len(t) - 1))
    across = _mean_distance(
        (a[i][key], b[i][key]) for a, b in itertools.combinations(tracks, 2) for i in range(min(len(a), len(b)))
    )
    drift = _mean_distance((t[0][key], t[i][key]) for t in tracks for i in range(1, len(t)))
    measures = {"within": within, "across": across, "identity": _ratio(within, across), "drift": _ratio(drift, within), "memory": float("nan")}
    if primes is not None:
        own = _mean_distance((t[i][key], p[0][key]) for t, p in zip(tracks, primes) for i in range(1, len(t)))
        other = _mean_distance(
            (t[i][key], p[0][key])
            for j, t in enumerate(tracks) for k, p in enumerate(primes) if j != k for i in range(1, len(t))
        )
        measures["memory"] = _ratio(own, other)
    return measures


def degeneration(codes: np.ndarray, seconds_per_token: float) -> dict[str, float]:
    """One track's codes (L,) → the longest run of one token in seconds, and the share of LOOP_TOKENS-long
    spans that occurred earlier in the track."""
    codes = np.asarray(codes)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]])
    seen, repeats = set(), 0
    spans = max(0, len(codes) - LOOP_TOKENS + 1)
    for i in range(spans):
        span = codes[i:i + LOOP_TOKENS].tobytes()
        repeats += span in seen
        seen.add(span)
    return {"longest_run_s": float(np.diff(bounds).max() * seconds_per_token), "loop_share": repeats / max(1, spans)}
