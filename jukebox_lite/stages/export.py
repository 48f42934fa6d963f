"""`jukebox-lite export --run RUN --level L --out FOLDER [--which last|best] [--force]`: one prior, one file
(FOLDER/<run folder's name>-prior-level<L>.pt).

Writes the level's prior as a self-contained checkpoint of our format, ready for `load_prior` and to
share: the EMA weights (what sampling uses), with a LoRA fine-tune's adapters merged into its base
(so the file needs no base.pt and samples as fast as the base), its genre and artist names and the
fingerprint of the VQ-VAE whose codes it models; no optimizer state.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from jukebox_lite.core.checkpoint import load_checkpoint, save_checkpoint
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.stages.common import add_run_arguments

log = logging.getLogger(__name__)


def export_prior(run_dir: str | Path, level: int, folder: str | Path, which: str = "last", overwrite: bool = False) -> Path:
    """The stage as a function; returns the file written (folder/<run name>-prior-level<L>.pt)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out '{folder}' is a file; give the folder to write the prior into.")
    out = folder / f"{Path(run_dir).resolve().name}-prior-level{level}.pt"
    if out.exists() and not overwrite:
        raise UserError(f"'{out}' already exists; choose another --out or pass --force to replace it.")
    loaded = Run(run_dir).load_prior(level, "cpu", None, which)
    source = load_checkpoint(loaded.path, "prior", mmap=True)  # its names and fingerprint; tensors not read
    cfg = loaded.prior.cfg
    config = dataclasses.asdict(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lora=None)))
    fingerprint = {"vqvae_fingerprint": source["vqvae_fingerprint"]} if source.get("vqvae_fingerprint") else {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            out, "prior", config, loaded.prior.state_dict(), step=loaded.step, genres=loaded.vocab.genres,
            artists=loaded.vocab.artists, exported_from=str(loaded.path.resolve()), **fingerprint,
        )
    except OSError as e:
        raise UserError(f"Could not write '{out}' ({e.strerror or e}); nothing was replaced.") from None
    log.info("exported the level-%d prior of %s (step %d) → %s", level, loaded.path, loaded.step, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "reads RUN/prior_level<L>", computes=False)
    parser.add_argument("--level", type=int, choices=(2, 1, 0), default=2, help="which prior (default 2, the top)")
    parser.add_argument("--which", choices=("last", "best"), default="last", help="last.pt (default) or best.pt")
    parser.add_argument("--out", required=True, type=Path, help="folder to write <run name>-prior-level<L>.pt into (our checkpoint format)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    export_prior(args.run, args.level, args.out, args.which, args.force)
    return 0
