"""Spleeter 2-stem port: weight loading, the maths, the segmenting, the backends, and real separation."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from jukebox_lite.models import spleeter
from jukebox_lite.core.audio import resample
from jukebox_lite.cli import main as cli_main
from jukebox_lite.core.config import SeparationConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.spleeter import HOP, MODEL_BINS, SAMPLE_RATE, Spleeter2Stems, UNet, load_unet_weights, spleeter_asset
from jukebox_lite.algorithms.separation import make_separator, separate_in_segments

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def model() -> Spleeter2Stems:
    return Spleeter2Stems.pretrained("cpu")


@pytest.fixture(scope="module")
def torch_separator():
    return make_separator(SeparationConfig(backend="torch", device="cpu"))


def synth_instrumental(seconds: float, seed: int = 0) -> np.ndarray:
    """A stereo groove with no voice: kick, saw bass, a pad chord and a band-passed shaker at 120 bpm.

    Everything stays below 11 kHz, the band Spleeter's 2stems model keeps.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros((2, n))
    beat = 0.5

    def place(start_s: float, dur_s: float) -> tuple[slice, np.ndarray]:
        i = int(start_s * SR)
        m = min(n - i, int(dur_s * SR))
        return slice(i, i + m), np.arange(m) / SR

    for k in np.arange(0, seconds, beat):  # kick: a falling sine chirp
        span, t = place(k, 0.3)
        out[:, span] += 0.8 * np.sin(2 * np.pi * (50 * t + 2 * (1 - np.exp(-30 * t)))) * np.exp(-8 * t)
    for bar, k in enumerate(np.arange(0, seconds, 4 * beat)):
        root = (45, 45, 41, 43)[bar % 4]
        span, t = place(k, 4 * beat)
        f = 440 * 2 ** ((root - 81) / 12)
        out[:, span] += 0.35 * sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 12)) * np.minimum(1, 50 * t)
        for step, pan in ((12, 0.3), (16, 0.7), (19, 0.5), (24, 0.4)):
            fc = 440 * 2 ** ((root + step - 69) / 12)
            tone = sum(np.sin(2 * np.pi * fc * h * t + rng.uniform(0, 6)) / h**1.5 for h in range(1, 6))
            out[0, span] += 0.08 * (1 - pan) * tone
            out[1, span] += 0.08 * pan * tone
    b, a = scipy.signal.butter(4, [3000, 8000], btype="band", fs=SR)
    for k in np.arange(beat / 2, seconds, beat):  # shaker on the off-beats
        span, t = place(k, 0.08)
        out[:, span] += 0.15 * scipy.signal.lfilter(b, a, rng.standard_normal((2, t.size))) * np.exp(-40 * t)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


VOWEL_FORMANTS = np.array([  # F1-F4 (Hz) of sung a, e, i, o, u
    [800, 1150, 2900, 3900], [400, 1600, 2700, 3300], [300, 2200, 3000, 3700], [450, 800, 2830, 3500], [325, 700, 2530, 3500],
])


def synth_voice(seconds: float, seed: int = 0) -> np.ndarray:
    """A centred sung line, independent of the model: notes of 1/4 to 3/4 s gliding into each other, each
    on a vowel (harmonics under 10 kHz shaped by its formants), with a 5.5 Hz vibrato.

    Spleeter takes it for a voice (about 20 dB of it removed); without the vibrato it removes none of it,
    as it removes none of a plain sine melody.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    note, vowel, level = np.zeros(n), np.zeros(n, int), np.zeros(n)
    start = 0.0
    while start < seconds:
        length = min(rng.choice([0.25, 0.375, 0.5, 0.75]), seconds - start)
        i, m = int(start * SR), int(length * SR)
        note[i:], vowel[i:] = rng.choice([57, 59, 60, 62, 64, 65, 67, 69]), rng.integers(len(VOWEL_FORMANTS))
        local = np.arange(m) / SR
        level[i : i + m] = np.minimum(1, local / 0.04) * np.minimum(1, (length - local) / 0.08)
        start += length + 0.02  # a short breath between notes
    pitch = scipy.signal.filtfilt(*scipy.signal.butter(2, 12, fs=SR), note) + 0.4 * np.sin(2 * np.pi * 5.5 * t)
    f0 = 440 * 2 ** ((pitch - 69) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    hop = 256  # the formants move slowly: computed every `hop` samples, interpolated between
    formants = scipy.signal.filtfilt(*scipy.signal.butter(2, 15, fs=SR / hop), VOWEL_FORMANTS[vowel[::hop]], axis=0)
    harmonics = np.arange(1, int(10000 / f0.min()) + 1)[:, None]
    hz = harmonics * f0[::hop]  # (harmonic, frame)
    gain = (0.8 ** np.arange(4) / (1 + ((hz[..., None] - formants) / 50) ** 2)).sum(-1) * (hz < 10000) / harmonics
    voice = level * sum(np.interp(t, t[::hop], g) * np.sin(k * phase) for k, g in zip(harmonics[:, 0], gain))
    return np.stack([voice, voice]).astype(np.float32)


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-distortion ratio in dB (plain, not scale-invariant: a wrong gain counts as error)."""
    return float(10 * np.log10((reference**2).sum() / max(((reference - estimate) ** 2).sum(), 1e-20)))


# ----------------------------------------------------------------------------------------------
# Weights


def test_weights_load_into_every_parameter(model):
    """Each U-Net holds its own trained weights (no parameter left at its initial value)."""
    vocals, accompaniment = model.unets["vocals"], model.unets["accompaniment"]
    fresh = UNet().state_dict()
    for name, value in vocals.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            continue  # Spleeter's released statistics are 0 and 1, the same as fresh ones
        assert not torch.equal(value, fresh[name]), name
        assert not torch.equal(value, accompaniment.state_dict()[name]), name


def test_weights_with_a_wrong_key_or_shape_are_refused(tmp_path):
    with torch.serialization.safe_globals(
        [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
         np.dtypes.Float32DType]
    ):
        arrays = torch.load(spleeter_asset("testcheckpoint1.ckpt"), weights_only=True)
    for name, edit in {
        "missing": lambda d: d.pop("up3.0.bias"),
        "unexpected": lambda d: d.__setitem__("up8.0.weight", np.zeros(3, np.float32)),
        "misshapen": lambda d: d.__setitem__("up3.0.bias", np.zeros(65, np.float32)),
    }.items():
        bad = dict(arrays)
        edit(bad)
        path = tmp_path / f"{name}.ckpt"
        torch.save(bad, path)
        with pytest.raises(UserError, match="up3.0.bias|up8.0.weight"):
            load_unet_weights(UNet(), path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_that_would_run_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"down1_conv.1.weight": _RunsCode()}, path)
    with pytest.raises(UserError, match="cannot be read safely"):
        load_unet_weights(UNet(), path)
    assert "this must never run" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# The maths


def test_stft_round_trip_is_exact(model):
    wave = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 2, 3 * HOP + 777)).astype(np.float32))
    back = model.istft(model.stft(wave), wave.shape[-1])
    torch.testing.assert_close(back, wave, atol=1e-5, rtol=0)


def test_ratio_masks_sum_to_one_in_the_model_band():
    rng = np.random.default_rng(2)
    estimates = {s: torch.from_numpy(rng.uniform(0.1, 1, (1, 2, MODEL_BINS, 7)).astype(np.float32)) for s in spleeter.STEMS}
    estimates["vocals"][..., 3] = 0  # where both stems are silent the masks share equally
    estimates["accompaniment"][..., 3] = 0
    masks = Spleeter2Stems("zeros").ratio_masks(estimates)
    total = masks["vocals"] + masks["accompaniment"]
    assert total.shape == (1, 2, 2049, 7)
    torch.testing.assert_close(total[:, :, :MODEL_BINS], torch.ones(1, 2, MODEL_BINS, 7))
    assert total[:, :, MODEL_BINS:].abs().max() == 0  # Spleeter's 2stems drops the bins above 11 kHz
    ratio = masks["vocals"][:, :, :MODEL_BINS] / masks["accompaniment"][:, :, :MODEL_BINS]
    torch.testing.assert_close(ratio[..., :3], (estimates["vocals"] / estimates["accompaniment"]).square()[..., :3])
    averaged = Spleeter2Stems("average").ratio_masks(estimates)
    torch.testing.assert_close(averaged["vocals"] + averaged["accompaniment"], torch.ones(1, 2, 2049, 7))


@pytest.mark.parametrize("length", [50, 100, 101, 377, 1000])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_segmenting_an_identity_model_returns_the_input(length, batch_size):
    audio = torch.from_numpy(np.random.default_rng(length).uniform(-1, 1, (2, length)).astype(np.float32))
    calls = []

    def identity(batch):
        calls.append(batch.shape)
        return batch.clone()

    out = separate_in_segments(audio, identity, segment=100, overlap=20, batch_size=batch_size)
    torch.testing.assert_close(out, audio, atol=1e-6, rtol=0)
    assert all(shape[0] <= batch_size and shape[-1] == min(100, length) for shape in calls)


def test_segments_are_cross_faded_without_jumps():
    """Each segment returns its own constant: the joins must ramp, never step."""
    audio = torch.zeros(1, 1000)
    counter = iter(range(100))
    out = separate_in_segments(
        audio, lambda b: torch.stack([torch.full_like(x, float(next(counter))) for x in b]), 100, 40, 2
    )[0]
    assert out[0] == 0 and out[-1] > 10  # it went through every segment's value
    assert out.diff().abs().max() <= 1.0 / 40 + 1e-5  # a unit step spread over the 40-sample overlap


# ----------------------------------------------------------------------------------------------
# Real separation


@pytest.fixture(scope="module")
def vocal_over_groove():
    """A synthesized voice over a synthesized groove, at equal levels (a hard mix): both stems known."""
    voice, groove = synth_voice(6.0), synth_instrumental(6.0)
    return voice * np.sqrt((groove**2).mean() / (voice**2).mean()), groove


def separation_scores(mix, voice, groove, accompaniment) -> dict[str, float]:
    """The accompaniment judged against the stems mixed in: how much closer it is to the groove than the
    mix is (SDR gain), and how much of the voice is left in it (its projection on the voice; 0 dB in the mix).

    The port measured +21 dB and -43 dB here (the groove's own projection on the voice, the floor, is
    -50 dB); identity, silence, swapped stems and random weights gain 2 dB at most.
    """
    voice_left = abs((accompaniment * voice).sum()) / (voice**2).sum()
    return {
        "groove_gain_db": sdr(groove, accompaniment) - sdr(groove, mix),
        "voice_left_db": float(20 * np.log10(max(voice_left, 1e-20))),
    }


def separation_is_good(scores: dict[str, float], margin_db: float = 12.0) -> bool:
    return scores["groove_gain_db"] > margin_db and scores["voice_left_db"] < -margin_db


def test_separates_a_voice_from_a_groove(model, vocal_over_groove):
    voice, groove = vocal_over_groove
    mix = voice + groove
    with torch.inference_mode():
        stems = {k: v[0].numpy() for k, v in model.separate(torch.from_numpy(mix)[None]).items()}
    scores = separation_scores(mix, voice, groove, stems["accompaniment"])
    assert separation_is_good(scores), scores
    # The check can fail: a broken separator does.
    random_model = Spleeter2Stems().eval()
    torch.manual_seed(0)
    for p in random_model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.inference_mode():
        random_out = random_model(torch.from_numpy(mix)[None])[0].numpy()
    broken = {"identity": mix, "silence": np.zeros_like(mix), "swapped stems": stems["vocals"], "random weights": random_out}
    for name, accompaniment in broken.items():
        assert not separation_is_good(separation_scores(mix, voice, groove, accompaniment)), name


def test_separator_handles_mono_at_another_rate(torch_separator, vocal_over_groove):
    """The numpy path (resample → dual mono → model → back) separates as well as the torch one."""
    voice, groove = (resample(x.mean(axis=0, keepdims=True), SR, 32000) for x in vocal_over_groove)
    mix = voice + groove
    accompaniment = torch_separator(mix, 32000)
    assert accompaniment.shape == mix.shape and accompaniment.dtype == np.float32
    scores = separation_scores(mix, voice, groove, accompaniment)
    assert separation_is_good(scores), scores


@pytest.mark.parametrize(("channels", "length", "sr"), [(2, 12345, 44100), (3, 7777, 22050), (1, 1, 44100)])
def test_separator_keeps_shape(torch_separator, channels, length, sr):
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, (channels, length)).astype(np.float32)
    out = torch_separator(audio, sr)
    assert out.shape == audio.shape and out.dtype == np.float32 and np.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# Backends and CLI


def test_none_backend_returns_the_input():
    audio = np.random.default_rng(4).uniform(-1, 1, (2, 999)).astype(np.float32)
    assert make_separator(SeparationConfig(backend="none"))(audio, 16000) is audio


def write_stand_in_spleeter(tmp_path, body: str):
    """An executable that takes the official CLI's arguments, as `spleeter` would be called."""
    script = tmp_path / "spleeter"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


def test_spleeter_cli_backend_reads_the_accompaniment_where_spleeter_writes_it(tmp_path):
    command = write_stand_in_spleeter(
        tmp_path,
        """
        import sys, pathlib, numpy as np, soundfile as sf, soxr
        args = sys.argv[1:]
        assert args[:3] == ["separate", "-p", "spleeter:2stems"] and args[3] == "-o", args
        out_dir, source = pathlib.Path(args[4]), pathlib.Path(args[5])
        audio, sr = sf.read(source, dtype="float32", always_2d=True)
        audio = soxr.resample(audio, sr, 44100)  # like the real CLI: 44.1 kHz stereo stems
        audio = np.repeat(audio, 2, axis=1) if audio.shape[1] == 1 else audio
        (out_dir / source.stem).mkdir(parents=True)
        sf.write(out_dir / source.stem / "accompaniment.wav", 0.5 * audio, 44100, subtype="FLOAT")
        sf.write(out_dir / source.stem / "vocals.wav", 0.5 * audio, 44100, subtype="FLOAT")
        """,
    )
    separator = make_separator(SeparationConfig(backend="spleeter-cli", spleeter_command=command))
    t = np.arange(22050) / 22050
    mono = (0.4 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    out = separator(mono, 22050)
    assert out.shape == mono.shape
    np.testing.assert_allclose(out[:, 100:-100], 0.5 * mono[:, 100:-100], atol=1e-3)


def test_spleeter_cli_backend_errors_are_one_clear_sentence(tmp_path):
    audio = np.zeros((2, 4410), np.float32)
    missing = SeparationConfig(backend="spleeter-cli", spleeter_command=str(tmp_path / "no-such-spleeter"))
    with pytest.raises(UserError, match="cannot be run"):
        make_separator(missing)(audio, 44100)
    failing = write_stand_in_spleeter(tmp_path, "import sys\nsys.exit('ffmpeg binary not found')\n")
    with pytest.raises(UserError, match="ffmpeg binary not found"):
        make_separator(SeparationConfig(backend="spleeter-cli", spleeter_command=failing))(audio, 44100)


def test_asking_for_cuda_without_one_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(UserError, match="cuda"):
        make_separator(SeparationConfig(device="cuda"))
    with pytest.raises(UserError, match="separation.device is cuda but no CUDA GPU"):
        make_separator(SeparationConfig(device="cuda"))


def test_cli_writes_the_accompaniment(tmp_path, capsys):
    source, out = tmp_path / "song.flac", tmp_path / "out"
    audio = np.random.default_rng(5).uniform(-0.5, 0.5, (2, 8000)).astype(np.float32)
    sf.write(source, audio.T, 16000, subtype="PCM_24")
    assert cli_main(["separate", str(source), "--out", str(out), "--backend", "none"]) == 0
    written, sr = sf.read(out / "song.accompaniment.wav", dtype="float32", always_2d=True)
    assert sr == 16000
    np.testing.assert_allclose(written.T, audio, atol=1e-6)
    assert cli_main(["separate", str(source), "--out", str(source), "data.separation.backend=none"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cli_main(["separate", str(source), "--out", str(out), "data.workers=3"]) == 2  # a key separate does not read
    assert "data.workers=3" in capsys.readouterr().err
