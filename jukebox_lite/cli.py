"""The `jukebox-lite` command: one subcommand per pipeline stage; the Makefile calls these.

Each stage module exposes `add_arguments(parser)` and `run(args)`; this file only wires them up,
sets up logging, and turns a `UserError` into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys

from jukebox_lite.core.errors import UserError
from jukebox_lite.core.locks import folder_lock, launch_rank
from jukebox_lite.core.processes import stop_by_interrupt

# subcommand → (module, one-line help). Modules are imported only when their stage runs.
STAGES = {
    "recipe": ("jukebox_lite.stages.recipe", "print the resolved recipe (extends, overrides, derived values); check ARGS"),
    "demo-corpus": ("data_prep.demo_corpus", "synthesize the built-in demo corpus (no downloads)"),
    "prepare": ("data_prep.ingest", "data stage: vocal removal, resample, label, split → RUN/data"),
    "separate": ("jukebox_lite.stages.separate", "remove vocals from one file (Spleeter 2 stems)"),
    "import-jukebox": ("jukebox_lite.stages.import_jukebox", "convert OpenAI Jukebox checkpoints into a run folder"),
    "train-vqvae": ("jukebox_lite.stages.train_vqvae", "VQ-VAE stage: train the 3-level VQ-VAE on RUN/data → RUN/vqvae"),
    "eval-vqvae": ("jukebox_lite.stages.eval_vqvae", "VQ-VAE reconstruction metrics per level on the validation audio"),
    "encode": ("jukebox_lite.stages.encode", "codes stage: encode the corpus into tokens at every level → RUN/codes"),
    "plan": ("jukebox_lite.stages.plan", "training memory of every stage on one GPU, before anything runs; what would fit"),
    "train-prior": ("jukebox_lite.stages.train_prior", "prior stage: train the top prior (--level 2) or an upsampler (1, 0) on RUN/codes"),
    "export": ("jukebox_lite.stages.export", "write one prior as a self-contained file (EMA weights, LoRA adapters merged)"),
    "refine": ("jukebox_lite.stages.refine", "diffusion refiner: turn coarse VQ-VAE audio into cleaner audio"),
    "train-refiner": ("jukebox_lite.stages.train_refiner", "refiner stage: train the diffusion refiner on the run's VQ-VAE audio → RUN/refiner"),
    "eval-refiner": ("jukebox_lite.stages.eval_refiner", "does the refiner help? decoded vs refined audio against the original"),
    "sample": ("jukebox_lite.stages.sample", "long tracks: top prior → upsamplers → VQ-VAE decoding → refiner → RUN/samples"),
    "check-copies": ("jukebox_lite.stages.check_copies", "find passages of generated tracks that replay the training corpus"),
    "review": ("jukebox_lite.stages.review", "execute the listening-review notebook into RUN/review.html"),
}


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `stage`'s module is imported, so one stage's imports never slow or break another."""
    parser = argparse.ArgumentParser(prog="jukebox-lite", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (module_name, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == stage:
            module = importlib.import_module(module_name)
            stage_parser.description = module.__doc__
            stage_parser.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(stage_parser)
            stage_parser.set_defaults(stage_main=module.run)
    return parser


def _lock_written_folder(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The lock on the run folder this command writes (rank 0 of a launch takes it for every rank)."""
    if getattr(args, "run", None) is None or launch_rank() != 0:
        return contextlib.nullcontext()
    from jukebox_lite.runs import Run  # here: a command without a run folder (recipe) starts without torch

    folder = Run(args.run).folder_written_by(args.stage, getattr(args, "level", 2))
    if folder is None:
        return contextlib.nullcontext()
    return folder_lock(folder, f"jukebox-lite {args.stage}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(stage)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # key=value after options that follow positional audio
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    signal.signal(signal.SIGTERM, stop_by_interrupt)  # a stop (kill, a scheduler) ends as Ctrl-C does
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if getattr(args, "device", None):  # a device that is not there fails before any work
            from jukebox_lite.core.distributed import resolve_device

            resolve_device(args.device)
        with _lock_written_folder(args):
            return int(args.stage_main(args) or 0)
    except UserError as e:
        print(f"jukebox-lite {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jukebox-lite {args.stage}: interrupted; finished work is kept, rerun to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
