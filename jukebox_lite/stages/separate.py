"""`jukebox-lite separate IN OUT`: remove the vocals from one file (Spleeter 2 stems), keep the accompaniment."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.audio import AudioError, load_audio
from jukebox_lite.stages.common import add_recipe_arguments
from jukebox_lite.core.config import load_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.algorithms.separation import make_separator

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# CLI: jukebox-lite separate IN OUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="audio file to remove the vocals from")
    parser.add_argument("output", type=Path, help="where to write the accompaniment (.wav or .flac)")
    parser.add_argument("--backend", choices=("torch", "spleeter-cli", "none"), help="overrides data.separation.backend")
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.output.suffix.lower() not in (".wav", ".flac"):
        raise UserError(f"Output '{args.output}' must end in .wav or .flac.")
    cfg = load_config(args.config, args.overrides).data.separation
    if args.backend:
        cfg.backend = args.backend
    try:
        audio, sr = load_audio(args.input)
    except AudioError as e:
        raise UserError(f"Input '{args.input}' cannot be used: {e}.") from None
    accompaniment = make_separator(cfg)(audio, sr)
    with atomic_path(args.output) as tmp:
        sf.write(tmp, np.clip(accompaniment, -1.0, 1.0).T, sr, subtype="PCM_24")
    log.info("wrote %s (%.1f s, backend %s)", args.output, audio.shape[1] / sr, cfg.backend)
    return 0
