"""Command-line pieces every stage shares: the recipe and its overrides, --run and --device.

Light on purpose (no torch): `jukebox-lite recipe`, which the Makefile runs before each stage to check
ARGS, starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from jukebox_lite.core.config import RecipeConfig, load_config, reads_key
from jukebox_lite.core.errors import UserError

MAKE_OVERRIDES = "JUKEBOX_LITE_ARGS"  # the Makefile exports its ARGS here


def add_recipe_arguments(parser: argparse.ArgumentParser, reads: tuple[str, ...] | None, positional: bool = True) -> None:
    """--config and key=value overrides, for a command that reads the recipe keys under `reads`
    (None: the stage decides from its other arguments, see `load_recipe`). A command that also takes
    positional audio passes positional=False and sorts its positionals with `split_overrides`."""
    parser.add_argument("--config", "-c", help="recipe YAML in pipelines/ (defaults if omitted)")
    if positional:
        shown = f"keys under {', '.join(reads)}" if reads else "recipe keys"
        parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"override {shown}, e.g. data.workers=4")
    parser.set_defaults(recipe_reads=reads, overrides=[])


def split_overrides(items: list[str]) -> tuple[list[Path], list[str]]:
    """Positionals → (audio files, key=value overrides): an existing file is audio, whatever its name."""
    audio = [Path(i) for i in items if Path(i).exists() or "=" not in i]
    return audio, [i for i in items if not Path(i).exists() and "=" in i]


def add_run_arguments(parser: argparse.ArgumentParser, what: str, computes: bool = True) -> None:
    """--run (the run folder; `what` says what the command reads and writes there) and, for a command
    that computes, --device."""
    parser.add_argument("--run", required=True, type=Path, help=f"run folder: {what}")
    if computes:
        parser.add_argument(
            "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to compute (auto: CUDA when present)"
        )


def make_overrides(reads: tuple[str, ...] | None) -> list[str]:
    """The Makefile's ARGS (shell-quoted key=value words, in $JUKEBOX_LITE_ARGS) naming keys under
    `reads`: ARGS serve every stage a make run starts, so each takes its own and leaves the others."""
    try:
        words = shlex.split(os.environ.get(MAKE_OVERRIDES, ""))
    except ValueError as e:
        raise UserError(f"ARGS cannot be split into key=value words ({e}); check its quotes.") from None
    return [w for w in words if reads is None or reads_key(w.partition("=")[0].strip(), reads)]


def load_recipe(args: argparse.Namespace, reads: tuple[str, ...] | None = None) -> RecipeConfig:
    """The command's recipe with the make run's overrides for it and its own key=value arguments; one of
    those naming a key the command does not read is refused, naming it."""
    reads = reads or args.recipe_reads
    overrides = [*make_overrides(reads), *args.overrides]
    return load_config(args.config, overrides, reads, f"jukebox-lite {args.stage}")
