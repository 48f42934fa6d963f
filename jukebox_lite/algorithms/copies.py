"""Copy detector: does a generated track replay passages of the training corpus?

The worry comes from the Jukebox community: a fine-tuned model replayed a DJ's intro note for note.
A prior over-fitted on a small genre corpus can do that, and a listener may not notice. So every
generated track's top-level codes are compared with every training file's codes:

1. seeds: every n-gram of the generated codes is looked up in a sorted table of the corpus's n-gram
   hashes (binary search), giving candidate alignments (generated position ↔ corpus position);
   n-grams that occur very often in the corpus (silence, a loop repeated all track long) carry no
   evidence of copying and are ignored;
2. extension: along each alignment with enough seeds, tokens are compared one by one and the
   longest passage whose share of differing tokens stays within a tolerance is kept (a re-sampled
   copy differs in a few tokens here and there; a novel passage differs almost everywhere).

The report gives, per sample, the longest matching passages (seconds, where, which training file);
a sample whose longest match reaches `flag_seconds` is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jukebox_lite.algorithms.codes import CodesCorpus
from jukebox_lite.core.config import CopiesConfig


_HASH_BASE = np.uint64(1_000_003)


@dataclass
class Match:
    """One passage of a generated track that matches a training file."""

    file_id: str
    source: str  # the training file as the user named it
    offset_seconds: float  # where the passage starts in the generated track
    training_offset_seconds: float  # ... and in the training file
    seconds: float
    score: float  # share of identical tokens over the passage


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """A polynomial hash of every n-gram: (T,) → (T - n + 1,) uint64 (arithmetic wraps, as intended)."""
    t = tokens.astype(np.uint64)
    count = t.size - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    hashes = np.zeros(count, np.uint64)
    for k in range(n):
        hashes = hashes * _HASH_BASE + t[k : k + count]
    return hashes


def longest_tolerant_run(equal: np.ndarray, tolerance: float) -> tuple[int, int]:
    """The longest [start, end) whose share of False entries is at most `tolerance`.

    With x_i = (1 − equal_i) − tolerance and prefix sums P, a run (i, j] qualifies when P[j] ≤ P[i];
    for each j the earliest such i is found by binary search on the running maximum of P.
    """
    if equal.size == 0:
        return (0, 0)
    prefix = np.concatenate([[0.0], np.cumsum((~equal).astype(np.float64) - tolerance)])  # (T + 1,)
    running_max = np.maximum.accumulate(prefix)
    first = np.searchsorted(running_max, prefix - 1e-9, side="left")  # earliest i with P[i] ≥ P[j]
    lengths = np.arange(prefix.size) - first
    end = int(np.argmax(lengths))
    return int(first[end]), end


def trim_fringes(equal: np.ndarray, start: int, end: int, width: int, tolerance: float) -> tuple[int, int]:
    """Shrink [start, end) while its first or last `width` tokens agree less than the run may.

    The tolerance budget of a long copy would otherwise let the run swallow unrelated tokens at its ends.
    """
    need = 1.0 - tolerance
    while end - start > width and equal[start : start + width].mean() < need:
        start += 1
    while end - start > width and equal[end - width : end].mean() < need:
        end -= 1
    return start, end


class CorpusIndex:
    """The corpus's n-gram hashes at one level, sorted for binary search, with file boundaries."""

    def __init__(self, corpus: CodesCorpus, cfg: CopiesConfig):
        self.corpus, self.cfg = corpus, cfg
        self.tokens = np.asarray(corpus.level(cfg.level))
        spans = [f["levels"][cfg.level] for f in corpus.files]
        self.starts = np.array([s["offset"] for s in spans], np.int64)
        self.ends = self.starts + np.array([s["length"] for s in spans], np.int64)
        hashes = ngram_hashes(self.tokens, cfg.ngram)
        position = np.arange(hashes.size)
        file_of = np.searchsorted(self.starts, position, side="right") - 1
        inside = position + cfg.ngram <= self.ends[file_of]  # n-grams that cross into the next file are not music
        order = np.argsort(hashes[inside], kind="stable")
        self.hashes = hashes[inside][order]
        self.positions = position[inside][order]

    def matches(self, generated: np.ndarray) -> list[Match]:
        """Longest tolerant match of `generated` (T,) against each training file, longest first."""
        cfg = self.cfg
        query = ngram_hashes(generated, cfg.ngram)
        lo = np.searchsorted(self.hashes, query, side="left")
        hi = np.searchsorted(self.hashes, query, side="right")
        useful = (hi > lo) & (hi - lo <= cfg.max_occurrences)
        lengths = (hi - lo)[useful]
        seeds_g = np.repeat(np.flatnonzero(useful), lengths)  # generated position of every seed
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        seeds_c = self.positions[np.repeat(lo[useful], lengths) + within]  # its corpus position
        diagonals, counts = np.unique(seeds_c - seeds_g, return_counts=True)  # alignments: corpus − generated
        strongest = np.argsort(-counts, kind="stable")[: cfg.max_alignments]
        diagonals = diagonals[strongest][counts[strongest] >= cfg.min_seeds]

        hop, sr = self.corpus.hop_lengths[cfg.level], self.corpus.sample_rate
        best: dict[int, Match] = {}
        for diagonal in diagonals.tolist():
            anchor = seeds_c[seeds_c - seeds_g == diagonal][0]
            file = int(np.searchsorted(self.starts, anchor, side="right") - 1)
            g0 = max(0, int(self.starts[file]) - diagonal)
            g1 = min(generated.size, int(self.ends[file]) - diagonal)
            equal = generated[g0:g1] == self.tokens[g0 + diagonal : g1 + diagonal]
            start, end = trim_fringes(equal, *longest_tolerant_run(equal, cfg.tolerance), cfg.ngram, cfg.tolerance)
            seconds = (end - start) * hop / sr
            if seconds < cfg.report_seconds or (file in best and best[file].seconds >= seconds):
                continue
            entry = self.corpus.files[file]
            best[file] = Match(
                file_id=entry["id"],
                source=entry.get("source", entry["id"]),
                offset_seconds=round((g0 + start) * hop / sr, 3),
                training_offset_seconds=round((g0 + start + diagonal - int(self.starts[file])) * hop / sr, 3),
                seconds=round(seconds, 3),
                score=round(float(equal[start:end].mean()), 3),
            )
        return sorted(best.values(), key=lambda m: -m.seconds)
