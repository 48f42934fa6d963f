"""`jukebox-lite check-copies --run RUN`: flag samples whose top-level codes replay the training corpus (`algorithms.copies`)."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe
from jukebox_lite.core.config import CopiesConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.algorithms.copies import CorpusIndex
from jukebox_lite.runs import Run

log = logging.getLogger(__name__)


def _sample_codes(path: Path, bins: int) -> np.ndarray:
    """A sample's top-level codes (T,), or a UserError naming the file when it is not what sample wrote."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"'{path}' is not a codes file ({str(e)[:120]}); delete that sample or sample it again.") from None
    if codes.dtype.kind not in "iu" or codes.ndim != 1 or codes.size == 0 or codes.min() < 0 or codes.max() >= bins:
        raise UserError(f"'{path}' does not hold top-level codes (integers in [0, {bins})); delete that sample or sample it again.")
    return codes.astype(np.int64)


def check_run(run_dir: str | Path, cfg: CopiesConfig) -> dict[str, dict]:
    """Check every sample in RUN/samples against RUN/codes; write each sample's copies.json."""
    run = Run(run_dir)
    corpus = run.codes_corpus()
    folders = sorted((f for f in run.sample_folders() if f.codes.is_file()), key=lambda f: f.path.name)
    if not folders:
        raise UserError(f"No samples with codes in '{run.samples}'; run the sample stage (make sample) first.")
    index = CorpusIndex(corpus, cfg)
    report = {}
    for folder in folders:
        generated = _sample_codes(folder.codes, corpus.bins)
        found = index.matches(generated)
        longest = found[0].seconds if found else 0.0
        name = folder.path.name
        report[name] = {
            "flagged": longest >= cfg.flag_seconds,
            "longest_seconds": longest,
            "matches": [asdict(m) for m in found],
            "settings": asdict(cfg),
        }
        with atomic_path(folder.copies) as tmp:
            tmp.write_text(json.dumps(report[name], indent=2))
        state = "FLAGGED" if longest >= cfg.flag_seconds else "ok"
        log.info("%s: %s, longest match %.1f s%s", name, state, longest, f" ({found[0].source})" if found else "")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("copies",))
    add_run_arguments(parser, "reads RUN/codes, writes RUN/samples/<name>/copies.json", computes=False)


def run(args: argparse.Namespace) -> int:
    report = check_run(args.run, load_recipe(args).copies)
    flagged = [name for name, r in report.items() if r["flagged"]]
    if flagged:
        log.warning("%d of %d samples replay training audio: %s", len(flagged), len(report), ", ".join(flagged))
    return 0
