"""The demo corpus: determinism, measured musical properties of the synthesized audio, files on disk.

The musical checks analyse the rendered audio itself (band energies around the beat grid, an
autocorrelation tempo estimate) and compare with what the track's plan intended.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from data_prep import demo_corpus
from data_prep.demo_corpus import ARTISTS, GENRES, plan_track, render_track, write_demo_corpus
from jukebox_lite.core.errors import UserError

SR = 44100
SECONDS = 10.0
HOP = 64  # analysis frame, 1.45 ms at 44.1 kHz
LABELS = [(genre, artist) for genre in GENRES for artist in ARTISTS[genre]]


@pytest.fixture(scope="module")
def tracks():
    """Two 10 s tracks per (genre, artist): (plan, audio) pairs."""
    out = []
    for genre, artist in LABELS:
        for seed in (0, 1):
            plan = plan_track(genre, artist, seed, SECONDS)
            out.append((plan, render_track(plan, SR)))
    return out


def band_energy(audio: np.ndarray, band: tuple[float | None, float | None]) -> np.ndarray:
    """Energy per HOP-sample frame of the mono mix inside (low, high) Hz; None leaves that side open."""
    low, high = band
    if low is None:
        sos = scipy.signal.butter(4, high, "lowpass", fs=SR, output="sos")
    elif high is None:
        sos = scipy.signal.butter(4, low, "highpass", fs=SR, output="sos")
    else:
        sos = scipy.signal.butter(4, (low, high), "bandpass", fs=SR, output="sos")
    y = scipy.signal.sosfilt(sos, audio.astype(np.float64).mean(axis=0))
    frames = y.size // HOP
    return (y[: frames * HOP].reshape(frames, HOP) ** 2).mean(axis=1)


def peak_in(energy: np.ndarray, start: float, seconds: float) -> float:
    """Largest frame energy in [start, start + seconds)."""
    i0 = max(int(round(start * SR / HOP)), 0)
    i1 = max(int(round((start + seconds) * SR / HOP)), i0 + 1)
    return float(energy[i0:i1].max())


def rise(energy: np.ndarray, t: float, after: float) -> float:
    """How much the energy jumps at t: peak just after over peak just before (an onset measure)."""
    return peak_in(energy, t, after) / max(peak_in(energy, t - 0.03, 0.025), 1e-20)


def estimate_bpm(audio: np.ndarray) -> float:
    """Tempo from the autocorrelation of the spectral-energy onset envelope, searched in 100-150 BPM."""
    fps = SR / HOP
    flux = np.maximum(np.diff(np.log(band_energy(audio, (None, 0.45 * SR)) + 1e-10)), 0)
    flux -= flux.mean()
    spectrum = np.fft.rfft(flux, 2 * flux.size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[: flux.size]
    low, high = int(fps * 60 / 150), int(fps * 60 / 100)
    beat = low + int(np.argmax(acf[low:high]))
    # Refine on the bar lag (4 beats, 4x the resolution) with parabolic interpolation.
    k = 4 * beat - 4 + int(np.argmax(acf[4 * beat - 4 : 4 * beat + 5]))
    a, b, c = acf[k - 1 : k + 2]
    return 4 * 60 * fps / (k + 0.5 * (a - c) / (a - 2 * b + c))


def sixteenth_hits(plan, audio: np.ndarray) -> np.ndarray:
    """Per 16th slot after the hats enter: does the high band (>8 kHz) start a sound there?"""
    high = band_energy(audio, (8000, None))
    beat = plan.beat_seconds
    first = 4 * plan.entry_bar["hats"]
    last = int(plan.seconds / beat) - 1
    offbeat_level = np.median([peak_in(high, (k + 0.5) * beat, 0.02) for k in range(first, last)])
    swing = GENRES[plan.genre].swing * beat / 4
    hits = []
    for slot in range(4 * first, 4 * last):
        t = slot * beat / 4 + (swing if slot % 2 else 0.0)
        hits.append(rise(high, t, 0.02) > 2 and peak_in(high, t, 0.02) > 0.05 * offbeat_level)
    return np.array(hits)


# ----------------------------------------------------------------------------------------------
# The synthesizer


def test_same_seed_same_audio_other_seed_other_audio():
    a, b, c = (render_track(plan_track("deep_house", "velvet_room", seed, 4.0), 22050) for seed in (3, 3, 4))
    assert a.dtype == np.float32 and a.shape == (2, 4 * 22050)
    np.testing.assert_array_equal(a, b)
    assert c.shape == a.shape and np.abs(a - c).mean() > 0.01


def test_level_in_range_stereo_and_not_silent(tracks):
    for plan, audio in tracks:
        assert audio.shape == (2, int(SECONDS * SR))
        assert np.isfinite(audio).all()
        peak = np.abs(audio).max()
        assert 0.5 < peak <= 1.0, plan
        rms = np.sqrt((audio.astype(np.float64) ** 2).mean())
        assert rms > 0.05, plan  # well above silence (-26 dBFS)
        side, mid = audio[0] - audio[1], audio[0] + audio[1]
        assert 0.015 < np.abs(side).mean() / np.abs(mid).mean() < 0.5, plan  # some width, still centred


def test_tempo_measured_from_audio_matches_plan(tracks):
    for plan, audio in tracks:
        low, high = GENRES[plan.genre].bpm_range
        assert 118 <= low <= plan.bpm <= high <= 128
        assert abs(estimate_bpm(audio) - plan.bpm) < 0.5, plan


def test_kick_on_every_beat(tracks):
    for plan, audio in tracks:
        low = band_energy(audio, (None, 150))
        beat = plan.beat_seconds
        n_beats = int(plan.seconds / beat)
        on_beats = np.array([rise(low, k * beat, 0.06) for k in range(1, n_beats)])
        between = np.array([rise(low, (k + j / 4) * beat, 0.06) for k in range(1, n_beats - 1) for j in (1, 2, 3)])
        assert on_beats.min() > 2.0, plan  # a low-band onset at every single beat
        assert np.median(between) < 1.5 < np.median(on_beats) / 2, plan  # and not everywhere


def test_open_hats_on_the_offbeats(tracks):
    for plan, audio in tracks:
        high = band_energy(audio, (8000, None))
        beat = plan.beat_seconds
        beats = range(4 * plan.entry_bar["hats"], int(plan.seconds / beat) - 1)
        offbeats = np.array([peak_in(high, (k + 0.5) * beat, 0.02) for k in beats])
        on_beats = np.array([peak_in(high, k * beat, 0.02) for k in beats])
        assert offbeats.min() > 2 * on_beats.max(), plan
        hits = sixteenth_hits(plan, audio).reshape(-1, 4)  # (beats, 16th within the beat)
        assert hits[:, 2].all(), plan  # an onset on every off-beat
        assert not hits[::2, 0].any(), plan  # none with the kick on beats 1 and 3 (2 and 4 have the clap)


def test_claps_on_two_and_four(tracks):
    for plan, audio in tracks:
        mid = band_energy(audio, (1000, 2500))
        beat = plan.beat_seconds
        beats = [
            k for k in range(4 * plan.entry_bar["clap"], int(plan.seconds / beat) - 1) if k // 4 != plan.breakdown_bar
        ]
        level = np.array([peak_in(mid, k * beat, 0.05) for k in beats])
        backbeat = np.array([k % 2 == 1 for k in beats])  # beats 2 and 4 of each bar
        assert level[backbeat].min() > 4 * level[~backbeat].max(), plan


def pitch_class_energy(audio: np.ndarray, start: float, stop: float) -> np.ndarray:
    """Spectral energy of the mono mix in 250-2000 Hz (the chord register), folded onto 12 pitch classes."""
    x = audio.astype(np.float64).mean(axis=0)[int(start * SR) : int(stop * SR)]
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    hz = np.fft.rfftfreq(x.size, 1 / SR)
    band = (hz > 250) & (hz < 2000)
    pitch_class = np.round(12 * np.log2(hz[band] / 440) + 69).astype(np.int64) % 12
    return np.bincount(pitch_class, weights=power[band], minlength=12)


def test_deep_house_chords_follow_the_progression_in_the_key(tracks):
    # Deep house only: tech house stabs are sparse and dry_circuit's FM bleeps are inharmonic on purpose.
    for plan, audio in tracks:
        if plan.genre != "deep_house":
            continue
        bar_seconds = 4 * plan.beat_seconds
        for bar in range(plan.entry_bar["stabs"], int(plan.seconds / bar_seconds)):
            energy = pitch_class_energy(audio, bar * bar_seconds, (bar + 1) * bar_seconds)
            root, quality = plan.progression[bar % 4]
            chord = (plan.key_root + root + np.array(quality)) % 12
            share = energy[chord].sum() / energy.sum()
            assert share > 0.5, (plan, bar, share)  # chance level for 4-5 of 12 classes is about 0.4


def test_subgenres_differ_in_tempo_and_hat_density(tracks):
    tempo = {genre: [estimate_bpm(audio) for plan, audio in tracks if plan.genre == genre] for genre in GENRES}
    density = {
        genre: [sixteenth_hits(plan, audio).mean() for plan, audio in tracks if plan.genre == genre]
        for genre in GENRES
    }
    assert max(tempo["deep_house"]) < min(tempo["tech_house"])
    assert max(density["deep_house"]) < 0.4 < 0.55 < min(density["tech_house"])  # off-beats only vs 16ths


def test_unknown_labels_are_user_errors():
    with pytest.raises(UserError, match="acid_house"):
        plan_track("acid_house", "velvet_room", 0, 5.0)
    with pytest.raises(UserError, match="nobody"):
        plan_track("deep_house", "nobody", 0, 5.0)


# ----------------------------------------------------------------------------------------------
# The corpus on disk


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_corpus_layout_labels_and_rerun(tmp_path):
    out = tmp_path / "demo"
    paths = write_demo_corpus(out, n_tracks=5, seconds=3.0, sample_rate=16000)
    assert len(paths) == 6 and all(p.is_file() for p in paths)

    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [p.relative_to(out).as_posix() for p in paths]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"labels.csv"}
    assert on_disk == {r["path"] for r in rows}  # nothing unlisted, no temporaries
    for row in rows:
        assert row["path"].split("/")[:2] == [row["genre"], row["artist"]]
    synthesized = [r for r in rows if r["genre"] != "example_song"]
    assert {r["genre"] for r in synthesized} == set(GENRES)  # round-robin reaches every genre
    for row in synthesized:
        info = sf.info(str(out / row["path"]))
        assert (info.samplerate, info.channels, info.frames, info.format) == (16000, 2, 48000, "FLAC")
    example = out / "example_song" / "spleeter_example" / "audio_example.mp3"
    assert example.read_bytes() == demo_corpus.spleeter_asset("audio_example.mp3").read_bytes()

    before = _mtimes(out)
    assert write_demo_corpus(out, n_tracks=5, seconds=3.0, sample_rate=16000) == paths
    assert _mtimes(out) == before  # nothing rewritten


def test_same_arguments_give_byte_identical_files(tmp_path):
    a = write_demo_corpus(tmp_path / "a", n_tracks=2, seconds=2.0, sample_rate=16000, example_song=False)
    b = write_demo_corpus(tmp_path / "b", n_tracks=2, seconds=2.0, sample_rate=16000, example_song=False)
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes()
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (tmp_path / "b" / "labels.csv").read_bytes()


def test_killed_run_leaves_no_partial_file_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    real_render = demo_corpus.render_track
    calls = []

    def render_then_die(plan, sample_rate):
        calls.append(plan)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(plan, sample_rate)

    monkeypatch.setattr(demo_corpus, "render_track", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_demo_corpus(out, n_tracks=4, seconds=2.0, sample_rate=16000, example_song=False)
    done = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(done) == 2 and all(sf.info(str(p)).frames == 32000 for p in done)

    # A temporary left by a writer that was killed outright (its process is gone) is cleaned up.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = done[0].with_name(f".{done[0].stem}.tmp{int(dead.stdout)}.flac")
    stale.write_bytes(b"half a flac")
    before = {p: p.stat().st_mtime_ns for p in done}
    monkeypatch.setattr(demo_corpus, "render_track", real_render)
    paths = write_demo_corpus(out, n_tracks=4, seconds=2.0, sample_rate=16000, example_song=False)
    assert len(paths) == 4 and all(p.is_file() for p in paths)
    assert {p: p.stat().st_mtime_ns for p in done} == before  # finished tracks were not redone
    assert not stale.exists()


def test_corrupt_track_is_rewritten(tmp_path):
    out = tmp_path / "demo"
    (path,) = write_demo_corpus(out, n_tracks=1, seconds=2.0, sample_rate=16000, example_song=False)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    write_demo_corpus(out, n_tracks=1, seconds=2.0, sample_rate=16000, example_song=False)
    assert path.read_bytes() == good


def test_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    demo_corpus.add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["--out", str(out), "--tracks", "2", "--seconds", "2", "--sample-rate", "16000", "--no-example-song"]
    )
    assert demo_corpus.run(args) == 0
    assert len(list(out.rglob("*.flac"))) == 2 and (out / "labels.csv").is_file()
    with pytest.raises(UserError, match="--tracks"):
        demo_corpus.run(parser.parse_args(["--out", str(out), "--tracks", "0"]))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="folder"):
        demo_corpus.run(parser.parse_args(["--out", str(tmp_path / "file")]))
    assert os.path.isfile(tmp_path / "file")
