"""`jukebox-lite import-jukebox`: OpenAI Jukebox's released checkpoints (files the user brings) into a run folder.

`jukebox-lite import-jukebox --vqvae vqvae.pth.tar --prior-level-1 prior_level_1.pth.tar ... --run RUN`
writes RUN/vqvae/last.pt and RUN/prior_level<N>/last.pt. Reading OpenAI's pickles safely and
converting them is `algorithms.openai_import`'s job.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Callable

from jukebox_lite.algorithms.openai_import import RELEASED_PRIORS, load_openai_prior, load_openai_vqvae
from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run, StageFolder
from jukebox_lite.stages.common import add_run_arguments

log = logging.getLogger(__name__)


def _output_path(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = StageFolder(Path(out_dir)).checkpoint
    if out.exists() and not overwrite:
        raise UserError(f"'{out}' already exists; remove it or pass --force to replace it.")
    return out


def import_vqvae(path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """OpenAI's vqvae.pth.tar → our checkpoint `out_dir/last.pt`; returns its path."""
    source = str(path)
    out = _output_path(out_dir, overwrite)
    model, hps = load_openai_vqvae(path)
    cfg = model.config
    save_checkpoint(
        out,
        kind="vqvae",
        config=dataclasses.asdict(cfg),
        model=model.state_dict(),
        step=0,
        imported_from=os.path.abspath(source),
        openai_hps=hps,
    )
    log.info("imported %s → %s (hop lengths %s)", source, out, model.hop_lengths)
    return out


def import_prior(
    path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False, *, level: int, layout: str | None = None
) -> Path:
    """OpenAI's prior_level_N.pth.tar (an upsampler, the 5b top prior or a small_prior) → `out_dir/last.pt`.
    `layout`: the registered prior (OpenAI's name) whose settings a file without hyperparameters has."""
    out = _output_path(out_dir, overwrite)
    prior = load_openai_prior(path, level, layout)
    save_checkpoint(
        out,
        kind="prior",
        config=dataclasses.asdict(prior.cfg),
        model=prior.state_dict(),
        step=0,
        imported_from=os.path.abspath(path),
    )
    log.info("imported %s → %s (level %d)", path, out, level)
    return out


# ----------------------------------------------------------------------------------------------
# Command line

# option dest → (importer, its stage folder in a run). Importers take (path, out_dir, overwrite).
IMPORTERS: dict[str, tuple[Callable[..., Path], Callable[[Run], StageFolder]]] = {
    "vqvae": (import_vqvae, lambda run: run.vqvae),
    **{
        f"prior_level_{n}": (functools.partial(import_prior, level=n), lambda run, n=n: run.prior(n))
        for n in (2, 1, 0)
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vqvae", metavar="PATH", help="OpenAI's vqvae.pth.tar → RUN/vqvae/last.pt")
    for n, what in ((2, "the 5b top prior or a small_prior"), (1, "the level-1 upsampler"), (0, "the level-0 upsampler")):
        parser.add_argument(
            f"--prior-level-{n}", metavar="PATH", help=f"{what} (prior_level_{n}.pth.tar) → RUN/prior_level{n}/last.pt"
        )
    parser.add_argument(
        "--openai-model", metavar="NAME", action="append", choices=list(RELEASED_PRIORS), default=[],
        help="a prior file without hyperparameters whose sizes are not the released ones has this registered "
        "prior's settings (heads, attention order, ...); once per level",
    )
    add_run_arguments(parser, "the checkpoints are written into its stage folders", computes=False)
    parser.add_argument("--force", action="store_true", help="replace checkpoints that already exist")


def run(args: argparse.Namespace) -> int:
    chosen = [(dest, *IMPORTERS[dest]) for dest in IMPORTERS if getattr(args, dest, None)]
    if not chosen:
        options = ", ".join("--" + dest.replace("_", "-") for dest in IMPORTERS)
        raise UserError(f"import-jukebox was given no file to import; pass at least one of {options}.")
    layouts = {RELEASED_PRIORS[name]["level"]: name for name in args.openai_model}
    for name in args.openai_model:
        level = RELEASED_PRIORS[name]["level"]
        if not getattr(args, f"prior_level_{level}", None) or layouts[level] != name:
            raise UserError(f"--openai-model {name} describes a level-{level} prior; give it once, with --prior-level-{level}.")
    for dest, importer, folder in chosen:
        layout = {"layout": layouts.get(int(dest[-1]))} if dest.startswith("prior_level_") else {}
        importer(getattr(args, dest), folder(Run(args.run)).path, overwrite=args.force, **layout)
    return 0
