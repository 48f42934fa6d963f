"""`jukebox-lite encode --run RUN`: the codes stage, every corpus file into tokens at every level (see `algorithms.codes`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jukebox_lite.core.errors import UserError
from jukebox_lite.stages.common import add_run_arguments
from jukebox_lite.algorithms.codes import encode_corpus
from jukebox_lite.core.distributed import resolve_device
from jukebox_lite.runs import Run


def encode_run(run_dir: str | Path, chunk_seconds: float = 10.0, batch_size: int = 4, device: str = "auto") -> Path:
    """RUN/data's corpus through RUN/vqvae into RUN/codes (nothing to do when they are current); the index path."""
    run = Run(run_dir)
    manifest = run.require_manifest()
    model = run.load_vqvae(resolve_device(device))
    return encode_corpus(manifest, run.data.path, model, run.codes.path, chunk_seconds, batch_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "reads RUN/data and RUN/vqvae, writes RUN/codes")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="audio encoded per window (bounds memory)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per encoder pass")


def run(args: argparse.Namespace) -> int:
    if args.chunk_seconds <= 0 or args.batch_size < 1:
        raise UserError("--chunk-seconds must be positive and --batch-size at least 1.")
    encode_run(args.run, args.chunk_seconds, args.batch_size, args.device)
    return 0
