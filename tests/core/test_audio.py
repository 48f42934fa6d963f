import av
import numpy as np
import pytest
import soundfile as sf

from jukebox_lite.core import audio
from tests.helpers import synth_music, write_audio


def correlation(x: np.ndarray, y: np.ndarray, max_lag: int = 0) -> float:
    """The best normalised correlation of decoded `y` with original `x` (channels, time) over delays up to
    `max_lag` samples (an AAC encoder's priming): 1 for the same sound, about 0 for silence or other audio."""
    best = 0.0
    for lag in range(max_lag + 1):
        n = min(x.shape[1], y.shape[1] - lag)
        a, b = x[:, :n].astype(np.float64), y[:, lag : lag + n].astype(np.float64)
        best = max(best, float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12)))
    return best


@pytest.mark.parametrize(
    "name,kwargs",
    [("a.wav", {}), ("a.flac", {}), ("a.ogg", {"format": "OGG", "subtype": "VORBIS"}), ("a.mp3", {"format": "MP3"})],
)
def test_load_formats_soundfile_writes(tmp_path, name, kwargs):
    x = synth_music(2.0, 44100, channels=2)
    path = write_audio(tmp_path / name, x, 44100, **kwargs)
    y, sr = audio.load_audio(path)
    assert sr == 44100 and y.dtype == np.float32 and y.shape == x.shape  # the codecs' padding is trimmed
    if name.endswith((".wav", ".flac")):
        assert np.abs(y - x).max() < 1e-4  # lossless: the samples, to 16-bit precision
    else:
        assert correlation(x, y) > 0.97  # lossy: the same sound, in time (measured 0.99)


def test_load_opus_and_m4a(tmp_path):
    x = synth_music(2.0, 48000, channels=1)
    y, sr = audio.load_audio(write_audio(tmp_path / "a.opus", x, 48000, format="OGG", subtype="OPUS"))
    assert sr == 48000 and y.shape == x.shape and correlation(x, y) > 0.97  # measured 0.987
    m4a = tmp_path / "a.m4a"  # AAC in MP4: soundfile cannot read it, FFmpeg (PyAV) must
    x = synth_music(2.0, 44100, channels=1)
    with av.open(str(m4a), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    y, sr = audio.load_audio(m4a)
    assert sr == 44100 and y.shape[0] == 1 and y.shape[1] >= 2 * 44100
    assert correlation(x, y, max_lag=2048) > 0.97  # measured 0.986, 1024 samples late (the encoder's priming)


def test_bad_files_raise_readable_reasons(tmp_path):
    x = synth_music(3.0, 44100, channels=1)
    wav = write_audio(tmp_path / "full.wav", x, 44100).read_bytes()
    (tmp_path / "cut.wav").write_bytes(wav[: len(wav) // 2])
    flac = write_audio(tmp_path / "full.flac", x, 44100).read_bytes()
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("these are not the samples you are looking for\n" * 20)
    write_audio(tmp_path / "slow.wav", x[:, :1000], 1000)
    (tmp_path / "gone.wav").symlink_to(tmp_path / "missing.wav")
    expected = {
        "cut.wav": "truncated",
        "cut.flac": "corrupt or truncated",
        "empty.wav": "empty",
        "text.mp3": "not decodable",
        "slow.wav": "sample rate 1000 Hz",
        "gone.wav": "cannot read",
    }
    for name, reason in expected.items():
        with pytest.raises(audio.AudioError, match=reason):
            audio.load_audio(tmp_path / name)


def test_resample_keeps_a_tone_and_length():
    sr_in, sr_out = 48000, 22050
    t = np.arange(sr_in) / sr_in
    x = np.sin(2 * np.pi * 1000 * t)[None].astype(np.float32)
    y = audio.resample(x, sr_in, sr_out)
    assert y.shape == (1, sr_out)
    spectrum = np.abs(np.fft.rfft(y[0]))
    assert abs(np.argmax(spectrum) * sr_out / y.shape[1] - 1000) < 2


def test_loudness_matches_bs1770_reference_tone():
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LKFS, at any sample rate.
    for sr in (44100, 48000, 22050):
        t = np.arange(5 * sr) / sr
        tone = np.sin(2 * np.pi * 997 * t)[None].astype(np.float32)
        assert audio.integrated_loudness(tone, sr) == pytest.approx(-3.01, abs=0.05)
        assert audio.integrated_loudness(0.1 * tone, sr) == pytest.approx(-23.01, abs=0.05)
    assert audio.integrated_loudness(np.zeros((1, 48000), np.float32), 48000) == float("-inf")


def test_normalize_loudness_hits_target_and_respects_peak():
    sr = 44100
    x = 0.01 * synth_music(5.0, sr, channels=1)
    y = audio.normalize_loudness(x, sr, target_lufs=-20.0, peak_dbfs=0.0)
    assert audio.integrated_loudness(y, sr) == pytest.approx(-20.0, abs=0.1)
    z = audio.normalize_loudness(x, sr, target_lufs=0.0, peak_dbfs=-6.0)  # unreachable without clipping
    assert np.abs(z).max() == pytest.approx(10 ** (-6 / 20), rel=1e-4)


def test_nonsilent_span_trims_edges_and_detects_silence():
    sr = 1000
    x = np.zeros((1, 5 * sr), np.float32)
    x[:, 2000:3000] = 0.5
    start, end = audio.nonsilent_span(x, sr, threshold_dbfs=-40, frame_seconds=0.05)
    assert (start, end) == (2000, 3000)
    assert audio.nonsilent_span(np.zeros((1, sr), np.float32), sr, -40) == (0, 0)


def test_write_flac_round_trips_and_is_atomic(tmp_path):
    x = synth_music(1.0, 22050, channels=1)
    path = tmp_path / "out" / "a.flac"
    audio.write_flac(path, x, 22050)
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == 22050 and np.abs(y.T - x).max() < 1e-5  # 24-bit
    assert [p.name for p in path.parent.iterdir()] == ["a.flac"]  # no temporary left behind


@pytest.mark.parametrize("codec,mime,sr", [("opus", "audio/ogg", 22050), ("mp3", "audio/mpeg", 16000), ("mp3", "audio/mpeg", 20000)])
def test_compress_keeps_the_length_and_the_sound(codec, mime, sr):
    import io

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * sr) / sr)).astype(np.float32)
    data, kind = audio.compress(tone, sr, codec, 32)
    assert kind == mime and len(data) < tone.size * 2 / 4  # well under 16-bit PCM
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        rate = stream.rate
    assert abs(decoded.size / rate - 3.0) < 0.06  # codec padding trimmed: the same 3 s (MP3 keeps a frame)
    back = audio.resample(decoded[None].astype(np.float32), rate, sr)[0]
    spectrum = np.abs(np.fft.rfft(back[sr // 2 : sr // 2 + sr]))  # one second from the middle
    assert abs(np.argmax(spectrum) - 440) <= 1 and 0.4 < np.abs(back).max() < 0.6  # the tone, at its level


def test_special_files_are_refused_without_being_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.wav")  # opening it would block until a writer comes: never, here
    (tmp_path / "zero.flac").symlink_to("/dev/zero")  # reading it would never end
    for name in ("pipe.wav", "zero.flac"):
        with pytest.raises(audio.AudioError, match="not a regular file"):
            audio.load_audio(tmp_path / name)


def test_long_files_are_refused_with_bounded_memory(tmp_path):
    """A 3-hour silent FLAC is a few hundred KB; decoding it whole would take gigabytes. Refused from the
    header, or, where a header does not know the length (MP3 without one), while decoding."""
    import tracemalloc

    sr = 8000
    with sf.SoundFile(tmp_path / "long.flac", "w", sr, 1, format="FLAC") as f:
        block = np.zeros(sr * 60, np.float32)
        for _ in range(180):  # 3 hours
            f.write(block)
    assert (tmp_path / "long.flac").stat().st_size < 2e6
    tracemalloc.start()
    with pytest.raises(audio.AudioError, match=r"too long: 10800 s or more, over data.max_seconds \(3600 s\)"):
        audio.load_audio(tmp_path / "long.flac", max_seconds=3600)
    assert tracemalloc.get_traced_memory()[1] < 50e6  # never decoded: nothing near the 345 MB it holds
    tracemalloc.stop()
    x = synth_music(3.0, 16000, channels=1)
    sf.write(tmp_path / "tune.wav", x[0], 16000)
    with pytest.raises(audio.AudioError, match="too long: 3 s or more"):
        audio.load_audio(tmp_path / "tune.wav", max_seconds=2.5)
    assert audio.load_audio(tmp_path / "tune.wav", max_seconds=3.0)[0].shape == (1, 48000)
    data, _ = audio.compress(x[0], 16000, "mp3", 64)  # PyAV's path: counted frame by frame as it decodes
    (tmp_path / "tune.mp3").write_bytes(data)
    with pytest.raises(audio.AudioError, match="too long"):
        audio.load_audio(tmp_path / "tune.mp3", max_seconds=1.0)
    assert audio.load_audio(tmp_path / "tune.mp3", max_seconds=4.0)[0].shape[1] >= 48000
