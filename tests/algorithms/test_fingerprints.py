"""Audio copy detector: landmark fingerprints find planted training excerpts under every transformation
a re-rendered copy goes through, and nothing in novel audio."""

import io

import av
import numpy as np
import pytest

from jukebox_lite.algorithms import fingerprints
from jukebox_lite.core.audio import compress, resample
from tests.helpers import melody

SR = 16000


def mp3_round_trip(x: np.ndarray) -> np.ndarray:
    data, _ = compress(x[0], SR, "mp3", 64)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    return resample(decoded[None].astype(np.float32), stream.rate, SR)


def upper_band_invented(x: np.ndarray) -> np.ndarray:
    """What a coarse VQ-VAE level does to music (the real-music run's level 1 keeps most peaks below
    600 Hz, few above): the band below 400 Hz comes back, the band above is other music (another
    melody's). Landmarks of the full band alone miss every such copy."""
    spectrum, other = np.fft.rfft(x), np.fft.rfft(melody(x.shape[1] / SR, SR, seed=77))
    upper = np.fft.rfftfreq(x.shape[1], 1 / SR) > 400
    spectrum[:, upper] = other[:, upper]
    return np.fft.irfft(spectrum, n=x.shape[1]).astype(np.float32)


TRANSFORMATIONS = {
    "as is": lambda x: x,
    "gain -12 dB": lambda x: x * 0.25,
    "noise at 20 dB SNR": lambda x: x + np.random.default_rng(9).standard_normal(x.shape).astype(np.float32) * np.sqrt(np.mean(x**2) / 100),
    "shifted 37 samples": lambda x: np.concatenate([np.zeros((1, 37), np.float32), x[:, :-37]], axis=1),
    "resampled to 11.025 kHz and back": lambda x: resample(resample(x, SR, 11025), 11025, SR),
    "MP3 64 kb/s": mp3_round_trip,
    "upper band invented": upper_band_invented,
}


@pytest.fixture(scope="module")
def corpus():
    tracks = {f"track{k}": melody(40.0, SR, seed=k) for k in range(3)}
    index = fingerprints.FingerprintIndex.build((name, fingerprints.landmarks(x, SR)) for name, x in tracks.items())
    return tracks, index


@pytest.mark.parametrize("transformation", TRANSFORMATIONS)
def test_a_planted_excerpt_is_found_with_its_file_and_offsets(corpus, transformation):
    tracks, index = corpus
    query = melody(20.0, SR, seed=100)
    source, start, at, seconds = "track1", int(17.3 * SR), int(6.1 * SR), 4.0
    query[:, at : at + int(seconds * SR)] = tracks[source][:, start : start + int(seconds * SR)]
    found = index.query(fingerprints.landmarks(TRANSFORMATIONS[transformation](query), SR), min_seconds=2.0)
    assert found, "missed"
    best = found[0]
    assert index.ids[best.file] == source
    assert best.offset_seconds == pytest.approx(6.1, abs=0.3)
    assert best.training_offset_seconds - best.offset_seconds == pytest.approx(17.3 - 6.1, abs=0.1)
    assert 2.5 <= best.seconds <= 4.5


def test_novel_audio_matches_nothing_longer_than_a_chance_bass_line(corpus):
    """The full band matches nothing in novel audio. The low band alone can: this synthetic bass is one
    of 12 notes every half second, so four in a row recur by chance (real novel music, bench_copies:
    at most 2.7 s); nothing of 3 s."""
    _, index = corpus
    for seed in range(200, 210):
        marks = fingerprints.landmarks(melody(20.0, SR, seed), SR)
        full_band = (marks.hashes & fingerprints.LOW_BAND_FLAG) == 0
        assert index.query(fingerprints.Landmarks(marks.hashes[full_band], marks.frames[full_band]), min_seconds=2.0) == []
        assert index.query(marks, min_seconds=3.0) == []


def test_silence_has_no_landmarks_and_gain_changes_none():
    assert fingerprints.landmarks(np.zeros((1, SR * 3), np.float32), SR).hashes.size == 0
    x = melody(5.0, SR, seed=3)
    loud, quiet = fingerprints.landmarks(x, SR), fingerprints.landmarks(x * 0.01, SR)
    assert np.array_equal(loud.hashes, quiet.hashes) and np.array_equal(loud.frames, quiet.frames)


def test_the_index_round_trips_and_one_built_otherwise_is_not_used(corpus, tmp_path, monkeypatch):
    _, index = corpus
    path = tmp_path / "index.npz"
    index.save(path, {"files": 3})
    loaded, meta = fingerprints.FingerprintIndex.load(path)
    assert loaded.ids == index.ids and np.array_equal(loaded.hashes, index.hashes) and meta["files"] == 3
    grown = fingerprints.FingerprintIndex.build([("track9", fingerprints.landmarks(melody(5.0, SR, 9), SR))], base=loaded)
    assert grown.ids == [*index.ids, "track9"] and np.all(np.diff(grown.hashes.astype(np.int64)) >= 0)
    monkeypatch.setitem(fingerprints.SETTINGS, "hop", 128)  # another fingerprint layout: not comparable
    assert fingerprints.FingerprintIndex.load(path) is None
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04 not an archive")
    assert fingerprints.FingerprintIndex.load(tmp_path / "damaged.npz") is None
