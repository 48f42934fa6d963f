"""`jukebox-lite separate IN [IN ...] --out FOLDER`: remove the vocals (Spleeter 2 stems), keep the accompaniment.

Each input becomes FOLDER/<input name>.accompaniment.wav (24-bit, the input's rate and channels),
written atomically. The backend and its settings are the recipe's `data.separation`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.audio import AudioError, load_audio
from jukebox_lite.stages.common import add_recipe_arguments, load_recipe, split_overrides
from jukebox_lite.core.errors import UserError
from jukebox_lite.algorithms.separation import make_separator

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="AUDIO|key=value", help="audio files, then any recipe overrides")
    parser.add_argument("--out", type=Path, required=True, help="folder the accompaniments go to (<name>.accompaniment.wav)")
    parser.add_argument("--backend", choices=("torch", "spleeter-cli", "none"), help="overrides data.separation.backend")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides data.separation.device")
    add_recipe_arguments(parser, reads=("data.separation",), positional=False)


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out '{args.out}' is a file; give the folder the accompaniments go to.")
    audio_files, overrides = split_overrides(args.inputs)
    args.overrides = [*overrides, *args.overrides]
    if not audio_files:
        raise UserError("separate was given no audio file; pass one or more before the key=value overrides.")
    cfg = load_recipe(args).data.separation
    cfg.backend = args.backend or cfg.backend
    cfg.device = args.device or cfg.device
    separate = make_separator(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in audio_files:
        try:
            audio, sr = load_audio(path)
        except AudioError as e:
            raise UserError(f"Input '{path}' cannot be used: {e}.") from None
        accompaniment = separate(audio, sr)
        out = args.out / f"{path.stem}.accompaniment.wav"
        with atomic_path(out) as tmp:
            sf.write(tmp, np.clip(accompaniment, -1.0, 1.0).T, sr, subtype="PCM_24", format="WAV")
        log.info("wrote %s (%.1f s, backend %s)", out, audio.shape[1] / sr, cfg.backend)
    return 0
