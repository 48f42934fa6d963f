"""Audio copy detector: landmark fingerprints of the training corpus, and queries against them.

The token detector (copies.py) finds a copy only when the prior replays the same codes. A passage
re-rendered through other tokens, shifted by a fraction of a hop, at another gain, refined, or sent
through an MP3 encoder has other codes but the same spectral peaks. So, as in landmark audio
fingerprinting (Wang, "An Industrial-Strength Audio Search Algorithm", 2003):

1. audio → mono at 8 kHz (what survives resampling, codecs and the VQ-VAE best: the band below
   4 kHz) → log-magnitude STFT → spectral peaks (local maxima over a time-frequency neighbourhood
   that stand out from the frame's median), a few dozen per second;
2. landmarks: each peak is paired with the next few peaks ahead of it; a pair's hash packs
   (anchor frequency, target frequency, time difference), which neither gain, added noise at
   moderate levels nor a time shift changes; the anchor's frame is kept beside it. The band below
   625 Hz gets peaks and landmarks of its own, denser and flagged in the hash: a coarse VQ-VAE level
   (hop 32) re-renders the bass and kick faithfully but invents the band above (measured on the
   real-music run: 89 % of the peaks below 312 Hz survive its level 1, 4 % between 1 and 2 kHz), and
   the loud upper band would otherwise take most of the peaks;
3. the index: every training file's hashes, sorted, with (file, frame) for each;
4. a query's hashes are looked up; each hit votes for (file, training frame − query frame). A copied
   passage piles votes on one offset (within a frame, for shifts between frame boundaries); a novel
   track's hits scatter. For the alignments with most votes, the hits are split where they pause for
   over a second; the longest run dense enough in hits is the match, its hits per second the score.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.audio import resample, to_mono

RATE = 8000  # fingerprints look at 0–4 kHz
N_FFT = 1024  # 128 ms windows
HOP = 256  # 32 ms frames: 31.25 frames per second
FRAMES_PER_SECOND = RATE / HOP
PEAK_NEIGHBOURHOOD = (9, 21)  # a peak is the largest value in ±4 frames (±0.13 s) × ±10 bins (±78 Hz)
PEAK_FLOOR_DB = 10.0  # ... and this far above its frame's median: quiet bins of a silent stretch are no peaks
FAN_OUT = 5  # targets per anchor
LOW_BAND_BINS = 80  # the low band: 0–625 Hz, where a coarse VQ-VAE level keeps the music
LOW_NEIGHBOURHOOD = (7, 5)  # its peaks: the largest value in ±3 frames × ±2 bins (±16 Hz)
LOW_FAN_OUT = 8
LOW_BAND_FLAG = 1 << 24  # set in the hash of a low-band landmark: the two bands never vote for each other
LOOK_AHEAD = 30  # peaks after an anchor that are considered as its targets
TARGET_FRAMES = (1, 40)  # a target comes 1 to 40 frames (1.3 s) after its anchor
TARGET_BINS = 127  # ... within ±127 bins (±1 kHz)
MAX_OCCURRENCES = 500  # hashes found more often in the corpus are ignored in queries
CANDIDATES = 20  # (file, offset) alignments with the most votes that are examined
MIN_HITS_PER_SECOND = 10  # a copied passage holds at least this many hits per second on its alignment
MIN_HITS = 12  # ... and this many in all
MAX_GAP_FRAMES = round(FRAMES_PER_SECOND)  # hits more than a second apart belong to separate passages


@dataclass
class Landmarks:
    """A track's landmarks: `hashes` (N,) uint32 and the anchor frame of each, `frames` (N,) int32."""

    hashes: np.ndarray
    frames: np.ndarray


def log_spectrogram(audio: np.ndarray, sr: int) -> np.ndarray:
    """(channels, time) audio → (frames, N_FFT // 2 + 1) magnitudes in dB of its mono mix at RATE."""
    x = resample(to_mono(audio), sr, RATE)[0]
    if x.size < N_FFT:
        return np.zeros((0, N_FFT // 2 + 1), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]  # (frames, N_FFT), a view
    window = np.hanning(N_FFT).astype(np.float32)
    magnitude_db = np.empty((windows.shape[0], N_FFT // 2 + 1), np.float32)  # (frames, bins)
    for start in range(0, windows.shape[0], 4096):  # in blocks: an hour of audio never sits in memory as complex STFT
        block = np.fft.rfft(windows[start : start + 4096] * window, axis=1)
        magnitude_db[start : start + 4096] = 20 * np.log10(np.abs(block) + 1e-6)
    return magnitude_db


def spectral_peaks(magnitude_db: np.ndarray, neighbourhood: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames, bins) dB → the (frames, bins) of its peaks, sorted by frame: the largest value of their
    (frames, bins) neighbourhood, PEAK_FLOOR_DB above their frame's median and within 80 dB of the loudest."""
    if magnitude_db.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    local_max = ndimage.maximum_filter(magnitude_db, size=neighbourhood, mode="constant", cval=-np.inf)
    floor = np.median(magnitude_db, axis=1, keepdims=True) + PEAK_FLOOR_DB
    audible = magnitude_db.max() - 80  # 80 dB below the loudest bin is silence, not music
    peak = (magnitude_db == local_max) & (magnitude_db > floor) & (magnitude_db > audible)
    peak[:, :2] = False  # DC and the lowest bin: rumble, not music
    t, f = np.nonzero(peak)
    return t, f


def _pairs(t: np.ndarray, f: np.ndarray, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Peaks sorted by frame → the hashes of each with its first `fan_out` targets, and its frames."""
    n = t.size
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ahead = np.arange(n)[:, None] + np.arange(1, LOOK_AHEAD + 1)  # (n, LOOK_AHEAD): candidate targets
    inside = ahead < n
    ahead = np.minimum(ahead, n - 1)
    dt, df = t[ahead] - t[:, None], f[ahead] - f[:, None]
    ok = inside & (dt >= TARGET_FRAMES[0]) & (dt <= TARGET_FRAMES[1]) & (np.abs(df) <= TARGET_BINS)
    ok &= np.cumsum(ok, axis=1) <= fan_out  # the first fan_out targets in the zone
    anchor = np.broadcast_to(np.arange(n)[:, None], ok.shape)[ok]
    target = ahead[ok]
    return (f[anchor] << 15) | (f[target] << 6) | (t[target] - t[anchor]), t[anchor]  # 9 + 9 + 6 bits


def landmarks(audio: np.ndarray, sr: int) -> Landmarks:
    """(channels, time) audio → its landmark hashes and anchor frames, both bands (see the module docstring)."""
    magnitude_db = log_spectrogram(audio, sr)
    full_hashes, full_frames = _pairs(*spectral_peaks(magnitude_db, PEAK_NEIGHBOURHOOD), FAN_OUT)
    low_hashes, low_frames = _pairs(*spectral_peaks(magnitude_db[:, :LOW_BAND_BINS], LOW_NEIGHBOURHOOD), LOW_FAN_OUT)
    return Landmarks(np.concatenate([full_hashes, low_hashes | LOW_BAND_FLAG]).astype(np.uint32),
                     np.concatenate([full_frames, low_frames]).astype(np.int32))


@dataclass
class AudioMatch:
    """A passage of a query that replays a training file."""

    file: int  # position in the index's files
    offset_seconds: float  # where the passage starts in the query
    training_offset_seconds: float  # ... and in the training file
    seconds: float
    score: float  # landmark hits per second on the passage's alignment


# what an index was built with: one built otherwise is rebuilt, not queried
SETTINGS = dict(rate=RATE, n_fft=N_FFT, hop=HOP, neighbourhood=list(PEAK_NEIGHBOURHOOD), floor_db=PEAK_FLOOR_DB,
                fan_out=FAN_OUT, low_band_bins=LOW_BAND_BINS, low_neighbourhood=list(LOW_NEIGHBOURHOOD),
                low_fan_out=LOW_FAN_OUT, look_ahead=LOOK_AHEAD, target_frames=list(TARGET_FRAMES), target_bins=TARGET_BINS)


@dataclass
class FingerprintIndex:
    """Every training file's landmarks sorted by hash, with the file and anchor frame of each."""

    hashes: np.ndarray  # (N,) uint32, sorted
    files: np.ndarray  # (N,) int32: positions in `ids`
    frames: np.ndarray  # (N,) int32: anchor frames
    ids: list[str]  # the training files' ids (the data stage's manifest ids), in file order

    @classmethod
    def build(cls, files: Iterable[tuple[str, Landmarks]], base: FingerprintIndex | None = None) -> FingerprintIndex:
        """An index of `base`'s files (if any) and `files`, sorted once at the end."""
        parts = [] if base is None else [(base.hashes, base.files, base.frames)]
        ids = [] if base is None else list(base.ids)
        for file_id, marks in files:
            parts.append((marks.hashes, np.full(marks.hashes.size, len(ids), np.int32), marks.frames))
            ids.append(file_id)
        if not parts:
            return cls(np.zeros(0, np.uint32), np.zeros(0, np.int32), np.zeros(0, np.int32), ids)
        hashes, files_of, frames = (np.concatenate(column) for column in zip(*parts))
        order = np.argsort(hashes, kind="stable")
        return cls(hashes[order], files_of[order], frames[order], ids)

    def save(self, path: Path, extra: dict) -> None:
        """One .npz (arrays, then ids and settings as JSON text) written atomically."""
        meta = json.dumps({"ids": self.ids, "settings": SETTINGS, **extra})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, hashes=self.hashes, files=self.files, frames=self.frames, meta=np.array(meta))

    @classmethod
    def load(cls, path: Path) -> tuple[FingerprintIndex, dict] | None:
        """The index at `path` and what it records, or None when it is missing, damaged or was built
        with other settings (the caller rebuilds it)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                index = cls(data["hashes"], data["files"], data["frames"], list(meta["ids"]))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):  # JSONDecodeError is a ValueError
            return None
        return (index, meta) if meta.get("settings") == SETTINGS else None

    def query(self, marks: Landmarks, min_seconds: float, max_matches: int = 5) -> list[AudioMatch]:
        """The passages of a query (its landmarks) that replay indexed files, longest first."""
        left = np.searchsorted(self.hashes, marks.hashes, side="left")
        count = np.searchsorted(self.hashes, marks.hashes, side="right") - left
        count[count > MAX_OCCURRENCES] = 0  # a hash on every beat of the corpus is no evidence of a copy
        if count.sum() == 0:
            return []
        query_frame = np.repeat(marks.frames, count)  # (H,) one entry per hit
        target_frame = query_frame + np.repeat(marks.hashes & 63, count)  # the pair's second peak
        hit = np.repeat(left - np.cumsum(count) + count, count) + np.arange(count.sum())
        file, offset = self.files[hit].astype(np.int64), self.frames[hit].astype(np.int64) - query_frame
        key = file << 32 | (offset + (1 << 31))
        keys, votes = np.unique(key, return_counts=True)
        found = []
        for best in keys[np.argsort(-votes)[:CANDIDATES]]:
            f, o = int(best >> 32), int(best & 0xFFFFFFFF) - (1 << 31)
            on_line = (file == f) & (np.abs(offset - o) <= 1)  # a shift between frame boundaries: ±1 frame
            span = _longest_dense_run(query_frame[on_line], target_frame[on_line])
            if span is None:
                continue
            first, last, hits = span
            seconds = (last - first + 1) / FRAMES_PER_SECOND
            if seconds >= min_seconds:
                found.append(AudioMatch(f, first / FRAMES_PER_SECOND, (first + o) / FRAMES_PER_SECOND, seconds, hits / seconds))
        return _distinct(sorted(found, key=lambda m: -m.seconds))[:max_matches]


def _longest_dense_run(anchors: np.ndarray, targets: np.ndarray) -> tuple[int, int, int] | None:
    """(first frame, last frame, hits) of the longest run of hits (anchor frames) with no gap over
    MAX_GAP_FRAMES that holds at least MIN_HITS hits, MIN_HITS_PER_SECOND on average; None when there
    is none. The run ends at its last hit's target peak: both peaks of a pair are in the passage."""
    order = np.argsort(anchors, kind="stable")
    anchors, targets = anchors[order], targets[order]
    best = None
    for run in np.split(np.arange(anchors.size), np.nonzero(np.diff(anchors) > MAX_GAP_FRAMES)[0] + 1):
        first, last = int(anchors[run[0]]), int(targets[run].max())
        if run.size >= MIN_HITS and run.size >= MIN_HITS_PER_SECOND * (last - first + 1) / FRAMES_PER_SECOND:
            if best is None or last - first > best[1] - best[0]:
                best = (first, last, int(run.size))
    return best


def _distinct(matches: list[AudioMatch]) -> list[AudioMatch]:
    """Drop matches that cover the same stretch of the query as a longer one (neighbouring offsets)."""
    kept: list[AudioMatch] = []
    for m in matches:
        if all(m.offset_seconds + m.seconds <= k.offset_seconds or k.offset_seconds + k.seconds <= m.offset_seconds or m.file != k.file
               for k in kept):
            kept.append(m)
    return kept
