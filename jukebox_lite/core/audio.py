"""Audio I/O and signal helpers: decode, resample, downmix, loudness, trim, write, compress.

No torchaudio (it does not import on CPU machines): soundfile reads wav/flac/ogg/opus/mp3, PyAV
(FFmpeg inside its wheel) reads whatever soundfile cannot (m4a, odd mp3s), soxr resamples.
Arrays here are numpy float32 shaped (channels, time).
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from jukebox_lite.core.atomic import atomic_path

MIN_SOURCE_RATE = 4000  # below this a file is not music we can use
MAX_SOURCE_RATE = 768000
MAX_CHANNELS = 16  # more is not a music file (a damaged header would otherwise be averaged into "silence")
MAX_PEAK = 1000.0  # +60 dBFS: float files may pass 1.0 a little, never by this much
FFMPEG_SUFFIXES = {".mp3", ".m4a"}  # FFmpeg decodes these gaplessly; libsndfile cannot read m4a at all


class AudioError(Exception):
    """A file that cannot be used as audio; the message is the readable reason stored in rejects."""


def scan(audio_dir: Path, extensions: list[str]) -> list[Path]:
    """Every file below `audio_dir` with a supported extension, hidden files and folders skipped, sorted."""
    suffixes = {"." + e.lower() for e in extensions}
    found = []
    for path in audio_dir.rglob("*"):
        rel_parts = path.relative_to(audio_dir).parts
        if any(p.startswith(".") for p in rel_parts) or path.is_dir():
            continue
        if path.suffix.lower() in suffixes:
            found.append(path)
    return sorted(found)


def load_audio(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any supported file to float32 (channels, time) and its sample rate, or raise AudioError.

    Only regular files are opened (a FIFO or a device such as /dev/zero, even behind a symlink, would
    block or never end). With `max_seconds`, a longer file is refused from its header when the header
    knows its length, else while decoding, so memory stays bounded by that length.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise AudioError(f"cannot read file ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise AudioError("not a regular file (a FIFO, device or socket); only regular files are read")
    if info.st_size == 0:
        raise AudioError("file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError("cannot read file (permission denied)")
    handle = None
    if path.suffix.lower() not in FFMPEG_SUFFIXES:
        try:
            handle = sf.SoundFile(path)
        except Exception:  # a format libsndfile does not know: let FFmpeg try
            pass
    audio, sr = _read_soundfile(handle, max_seconds) if handle is not None else _load_pyav(path, max_seconds)
    if not MIN_SOURCE_RATE <= sr <= MAX_SOURCE_RATE:
        raise AudioError(f"sample rate {sr} Hz is outside {MIN_SOURCE_RATE}-{MAX_SOURCE_RATE} Hz")
    if audio.shape[1] == 0:
        raise AudioError("file holds no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError("audio contains NaN or infinite samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_PEAK:
        raise AudioError(f"samples reach {peak:.3g}, far outside [-1, 1]: a damaged or mis-scaled float file")
    return audio, sr


def _too_long(seconds: float, max_seconds: float) -> AudioError:
    return AudioError(f"too long: {seconds:.0f} s or more, over data.max_seconds ({max_seconds:g} s); split it first")


def _read_soundfile(handle: sf.SoundFile, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Read an opened file; a read error or fewer frames than the header promises means corrupt/truncated."""
    with handle:
        expected, sr = handle.frames, handle.samplerate
        if handle.channels > MAX_CHANNELS:
            raise AudioError(f"the header claims {handle.channels} channels; music has 1 to {MAX_CHANNELS}")
        limit = None if max_seconds is None or not sr else math.floor(max_seconds * sr)
        if limit is not None and expected > limit:
            raise _too_long(expected / sr, max_seconds)
        try:
            data = handle.read(frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True)
        except Exception as e:
            raise AudioError(f"corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if limit is not None and data.shape[0] > limit:  # a header that did not know (or lied about) the length
            raise _too_long(data.shape[0] / sr, max_seconds)
        # libsndfile quietly shortens a WAV/AIFF whose data chunk runs past the end of the file; its log says so.
        torn = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", handle.extra_info, re.MULTILINE)
    if torn and int(torn.group(1)) not in (0, 0xFFFFFFFF):  # 0 / 0xFFFFFFFF: streamed files, size unknown
        present = data.shape[0] / sr
        promised = present * int(torn.group(1)) / max(1, int(torn.group(2)))
        raise AudioError(f"truncated: the header promises {promised:.1f} s but only {present:.1f} s are present")
    if expected > 0 and data.shape[0] < expected:
        raise AudioError(
            f"truncated: the header promises {expected / sr:.1f} s but only {data.shape[0] / sr:.1f} s are present"
        )
    return np.ascontiguousarray(data.T), sr


def _load_pyav(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import av  # imported lazily: only files soundfile cannot read need FFmpeg

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError("file has no audio stream")
            stream = container.streams.audio[0]
            sr = stream.rate
            if stream.channels > MAX_CHANNELS:
                raise AudioError(f"the header claims {stream.channels} channels; music has 1 to {MAX_CHANNELS}")
            if max_seconds is not None and container.duration and container.duration / av.time_base > max_seconds:
                raise _too_long(container.duration / av.time_base, max_seconds)
            resampler = av.AudioResampler(format="fltp")  # planar float → (channels, samples)
            chunks, decoded = [], 0
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
                decoded += frame.samples
                if max_seconds is not None and sr and decoded > max_seconds * sr:
                    raise _too_long(decoded / sr, max_seconds)
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except AudioError:
        raise
    except Exception as e:  # FFmpeg's errors are many; the first line says enough
        reason = str(e).splitlines()[0].replace(f": '{path}'", "") if str(e) else type(e).__name__
        raise AudioError(f"not decodable as audio ({reason})") from None
    if not chunks or not sr:
        raise AudioError("not decodable as audio (no audio frames)")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32), int(sr)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(channels, time) → (1, time) by averaging the channels."""
    return audio.mean(axis=0, keepdims=True, dtype=np.float32)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality (soxr VHQ) resampling of (channels, time)."""
    if sr_in == sr_out:
        return audio
    out = soxr.resample(audio.T, sr_in, sr_out, quality="VHQ")  # soxr wants (time, channels)
    return np.ascontiguousarray(out.T, dtype=np.float32)


def integrated_loudness(audio: np.ndarray, sr: int) -> float:
    """Gated integrated loudness in LUFS (ITU-R BS.1770-4, via pyloudnorm) of (channels, time); -inf for silence."""
    import pyloudnorm  # here, not at the top: it imports scipy.signal (~2 s), which most commands never need

    x = audio.astype(np.float64).T  # pyloudnorm wants (time, channels)
    block = min(0.4, x.shape[0] / sr)  # the standard's 400 ms blocks; a shorter file is one block
    # De Man's K-weighting design reproduces the standard's 48 kHz biquads at any rate: the reference
    # tone reads -3.01 LKFS (pyloudnorm's default design reads about -3.05 to -3.08)
    meter = pyloudnorm.Meter(sr, filter_class="DeMan", block_size=block)
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyloudnorm warns about clipping; peaks are handled by the caller
        return float(meter.integrated_loudness(x))


def normalize_loudness(audio: np.ndarray, sr: int, target_lufs: float, peak_dbfs: float) -> np.ndarray:
    """Scale to `target_lufs`, then down again if the peak would exceed `peak_dbfs`."""
    loudness = integrated_loudness(audio, sr)
    if not math.isfinite(loudness):
        return audio
    gain = 10 ** ((target_lufs - loudness) / 20)
    peak = float(np.abs(audio).max()) * gain
    ceiling = 10 ** (peak_dbfs / 20)
    if peak > ceiling:
        gain *= ceiling / peak
    return (audio * gain).astype(np.float32)


def nonsilent_span(audio: np.ndarray, sr: int, threshold_dbfs: float, frame_seconds: float = 0.05) -> tuple[int, int]:
    """Sample range [start, end) from the first to the last frame louder (RMS) than the threshold.

    Returns (0, 0) when every frame is quieter: the file is silent.
    """
    frame = max(1, int(frame_seconds * sr))
    n = audio.shape[1] // frame
    if n == 0:
        return (0, 0)
    frames = audio[:, : n * frame].reshape(audio.shape[0], n, frame)  # (channels, frames, frame)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=(0, 2)))
    loud = np.flatnonzero(rms > 10 ** (threshold_dbfs / 20))
    if loud.size == 0:
        return (0, 0)
    return int(loud[0] * frame), int(min(audio.shape[1], (loud[-1] + 1) * frame))


def write_flac(path: str | os.PathLike, audio: np.ndarray, sr: int) -> None:
    """Write (channels, time) as 24-bit FLAC, atomically (a killed write leaves no file)."""
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0).T, sr, subtype="PCM_24", format="FLAC")


# codec → (FFmpeg encoder, container, MIME type); what `compress` writes
COMPRESSED = {"opus": ("libopus", "ogg", "audio/ogg"), "mp3": ("libmp3lame", "mp3", "audio/mpeg")}


def compress(audio: np.ndarray, sr: int, codec: str, kbps: int) -> tuple[bytes, str]:
    """Mono (time,) float audio → (the bytes of an Opus-in-Ogg or MP3 file, its MIME type), via PyAV.

    Opus at 64 kb/s is about 1/11 of 16-bit 44.1 kHz WAV: what lets a page carry many long tracks.
    """
    import av

    encoder, container_format, mime = COMPRESSED[codec]
    rates = av.codec.Codec(encoder, "w").audio_rates  # Opus: 48 kHz and below only; MP3: the MPEG rates
    rate = sr if not rates or sr in rates else max(rates)
    samples = np.clip(resample(audio[None], sr, rate), -1, 1).astype(np.float32)  # (1, time)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=rate, layout="mono")
        stream.bit_rate = kbps * 1000
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # PyAV cuts the codec's frame sizes
            container.mux(packet)
    return buffer.getvalue(), mime
