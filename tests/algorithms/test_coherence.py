"""The long-track measures tell tracks that keep a character of their own from tracks that do not."""

from __future__ import annotations

import numpy as np
import pytest

from jukebox_lite.algorithms.coherence import DESCRIPTIONS, coherence, degeneration, describe_segments

SR = 22050
SEGMENT = 2.0  # seconds


def character(k: int, seconds: float, seed: int) -> np.ndarray:
    """Track k's sound: a tone of its own pitch and level, pulsed at its own tempo, with a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    pulse = (np.sin(2 * np.pi * (1.5 + k) * t) > 0.6).astype(np.float64)  # 1.5, 2.5, 3.5 Hz
    tone = np.sin(2 * np.pi * 220 * 2 ** (k * 5 / 12) * t) * (0.3 + 0.6 * pulse) * 10 ** (-6 * k / 20)
    return (tone + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def tracks(order) -> list[list[dict]]:
    """Tracks of 4 segments, segment i of track j with the character order(j, i)."""
    return [[describe_segments(character(order(j, i), SEGMENT, 10 * j + i), SR, SEGMENT)[0] for i in range(4)] for j in range(3)]


@pytest.fixture(scope="module")
def kept():
    return tracks(lambda j, i: j)  # every track keeps one character


@pytest.fixture(scope="module")
def shuffled():
    return tracks(lambda j, i: (i + j) % 3)  # each segment another character, every position all three


def test_a_segment_is_described_by_four_vectors():
    (segment,) = describe_segments(character(0, 2.5, 0), SR, 2.0)  # the last half second is not a whole segment
    assert {key: v.shape for key, v in segment.items()} == {"loudness": (1,), "timbre": (19,), "harmony": (12,), "rhythm": segment["rhythm"].shape}
    assert segment["rhythm"].size > 10 and np.isclose(np.linalg.norm(segment["harmony"]), 1.0)
    assert -20 < segment["loudness"][0] < -5


@pytest.mark.parametrize("key", DESCRIPTIONS)
def test_identity_is_low_where_tracks_keep_a_character_and_about_one_where_they_do_not(kept, shuffled, key):
    assert coherence(kept, key)["identity"] < 0.3
    assert coherence(shuffled, key)["identity"] > 0.9


@pytest.mark.parametrize("key", DESCRIPTIONS)
def test_memory_tells_a_continuation_that_keeps_its_prime_from_one_that_forgets_it(kept, shuffled, key):
    assert coherence(kept, key, primes=kept)["memory"] < 0.3
    forgot = [[kept[j][0]] + [kept[(j + 1) % 3][i] for i in range(1, 4)] for j in range(3)]  # primed by j, then j + 1
    assert coherence(forgot, key, primes=kept)["memory"] > 1.5
    assert np.isnan(coherence(kept, key)["memory"])


def test_drift_is_above_one_where_tracks_wander_away_from_their_start(kept):
    wander = [[kept[j][0], kept[j][1], kept[j + 1][2], kept[j + 1][3]] for j in (0, 1)]  # one change, half-way
    assert coherence(wander, "timbre")["drift"] > 1.5
    assert coherence(kept, "timbre")["drift"] < 1.5
    assert np.isnan(coherence([kept[0], kept[0]], "timbre")["identity"])  # identical tracks: nothing to compare against


def test_coherence_needs_two_tracks_of_two_segments(kept):
    with pytest.raises(ValueError, match="at least two tracks"):
        coherence(kept[:1], "timbre")
    with pytest.raises(ValueError, match="at least two tracks"):
        coherence([t[:1] for t in kept], "timbre")


def test_degeneration_finds_the_longest_run_and_the_loops():
    looped = np.concatenate([np.arange(32), np.arange(32)])  # 49 spans of 16, the 17 starting in the repeat seen before
    assert degeneration(looped, 0.01) == {"longest_run_s": 0.01, "loop_share": 17 / 49}
    stuck = np.array([3] * 50 + [1, 2])
    assert degeneration(stuck, 0.01)["longest_run_s"] == pytest.approx(0.5)
    assert degeneration(np.arange(10), 0.01)["loop_share"] == 0.0  # shorter than a span: nothing repeats
