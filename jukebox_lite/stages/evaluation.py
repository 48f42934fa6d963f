"""What both evaluation commands (eval-vqvae, eval-refiner) evaluate on: segments of the validation
split or of a folder of audio, the options that cut them, and the table they log."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from jukebox_lite.core import audio as audio_io
from jukebox_lite.core.config import AUDIO_EXTENSIONS
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run

log = logging.getLogger(__name__)


def validation_files(run: Run) -> tuple[list[Path], str]:
    """The data stage's validation files, or its training files (with a warning) when there are none."""
    data_dir = run.data.path
    manifest = run.manifest_rows()
    if not manifest:
        raise UserError(f"'{run.manifest}' lists no audio; run the data stage or pass --audio DIR.")
    split = "valid"
    rows = [r for r in manifest if r.get("split") == split]
    if not rows:
        split = "train"
        log.warning("the validation split is empty; evaluating on the training files, which flatters the VQ-VAE")
        rows = manifest
    return [data_dir / r["path"] for r in rows], split


def folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"Audio folder '{folder}' does not exist.")
    paths = audio_io.scan(folder, list(AUDIO_EXTENSIONS))  # the data stage's scanner: hidden files skipped
    if not paths:
        raise UserError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) found in '{folder}'.")
    return paths


def segments_of(waveform: torch.Tensor, segment: int, max_segments: int, top_hop: int) -> list[torch.Tensor]:
    """Up to `max_segments` non-overlapping (1, segment) pieces spread over (time,); a shorter file is
    one piece cut to a multiple of the top hop (none if it is shorter than one hop)."""
    length = waveform.shape[-1]
    if length < segment:
        usable = length // top_hop * top_hop
        return [waveform[None, :usable]] if usable else []
    count = min(max_segments, length // segment)
    starts = torch.linspace(0, length - segment, count).round().long().tolist() if count > 1 else [0]
    return [waveform[None, s : s + segment] for s in starts]


def load_clips(
    paths: list[Path], source: str, from_corpus: bool, sample_rate: int, segment: int, max_segments: int, hop: int
) -> list[torch.Tensor]:
    """Mono segments (1, ≤ segment) at `sample_rate` from every file (see `segments_of`).

    An unreadable corpus file means the data stage's output is damaged (an error); in a user's
    folder it is skipped with a warning.
    """
    clips = []
    for path in paths:
        try:
            audio, sr = audio_io.load_audio(path)
        except audio_io.AudioError as e:
            if from_corpus:
                raise UserError(f"Corpus file '{path}' cannot be read ({e}); rerun the data stage.") from None
            log.warning("skipping %s: %s", path, e)
            continue
        mono = audio_io.resample(audio_io.to_mono(audio), sr, sample_rate)[0]
        clips += segments_of(torch.from_numpy(mono.copy()), segment, max_segments, hop)
    if not clips:
        raise UserError(f"No usable audio to evaluate in {source}; every file was unreadable or shorter than {hop} samples.")
    return clips


def evaluation_clips(
    run: Run, audio_dir: Path | None, sample_rate: int, segment_seconds: float, max_segments: int, hop: int
) -> tuple[list[torch.Tensor], int, str, float]:
    """What both evaluation commands evaluate: segments (1, ≤ segment) of the validation split, or of
    `audio_dir`, cut to multiples of `hop`. → (clips, files, where they came from, seconds)."""
    paths, source = (folder_files(audio_dir), str(audio_dir)) if audio_dir else validation_files(run)
    segment = max(hop, round(segment_seconds * sample_rate) // hop * hop)
    clips = load_clips(paths, source, audio_dir is None, sample_rate, segment, max_segments, hop)
    return clips, len(paths), source, sum(c.shape[-1] for c in clips) / sample_rate


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns for the log: the evaluation commands' tables."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def add_segment_arguments(parser: argparse.ArgumentParser, segment_seconds: float, max_segments: int, batch_help: str) -> None:
    """What both evaluation commands are evaluated on and how it is cut: --audio and the segment options."""
    parser.add_argument("--audio", type=Path, help="evaluate on this folder of audio instead of the validation split")
    parser.add_argument("--segment-seconds", type=float, default=segment_seconds, help="length of each evaluated segment")
    parser.add_argument("--max-segments", type=int, default=max_segments, help="segments per file at most, spread over it")
    parser.add_argument("--batch-size", type=int, default=4, help=batch_help)


def check_segment_arguments(args: argparse.Namespace) -> None:
    if args.segment_seconds <= 0 or args.max_segments < 1 or args.batch_size < 1:
        raise UserError("--segment-seconds must be positive, --max-segments and --batch-size at least 1.")
