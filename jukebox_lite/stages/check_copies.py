"""check-copies: does generated audio replay the training corpus? Two detectors, one report.

    jukebox-lite check-copies --run RUN [FILE ...] [--out FOLDER]

- audio (`algorithms.fingerprints`): landmark fingerprints of the corpus's prepared audio, kept in
  RUN/copies/audio_index.npz, built when missing and extended when the corpus has grown (a run with
  only its data stage can be checked). It hears a passage re-rendered through other tokens, shifted,
  at another gain, with noise, resampled or MP3-encoded.
- tokens (`algorithms.copies`): a sample's top-level codes against RUN/codes, when both exist.

The inputs are every sample of the run (its most finished stage: refined, else level0, level1,
level2) or the given files. Each gets one entry, {"input", "flagged", "matches": [{"detector",
"training_file": {"source", "id"}, "training_offset_seconds", "offset_seconds", "seconds",
"score"}]}: the list goes to FOLDER/copies.json with --out, and a sample's entry to its own
copies.json; an input is flagged when a match reaches `copies.flag_seconds`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jukebox_lite.algorithms import fingerprints
from jukebox_lite.algorithms.copies import CorpusIndex
from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.audio import AudioError, load_audio
from jukebox_lite.core.config import CopiesConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run, SampleFolder
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe, split_overrides

log = logging.getLogger(__name__)

MAX_QUERY_SECONDS = 3600.0  # a longer query is refused (memory), like a longer corpus file


def audio_index(run: Run, rows: list[dict]) -> fingerprints.FingerprintIndex:
    """The fingerprint index of the corpus (its manifest `rows`): loaded, extended with files the corpus
    gained since, or built."""
    loaded = fingerprints.FingerprintIndex.load(run.audio_index)
    index = None if loaded is None else loaded[0]
    if index is not None:
        if not set(index.ids) <= {row["id"] for row in rows}:
            log.warning("%s indexes files the corpus no longer holds; rebuilding it", run.audio_index)
            index = None
    known = set(index.ids) if index is not None else set()
    new = [row for row in rows if row["id"] not in known]
    if new:
        log.info("fingerprinting %d corpus file(s) into %s", len(new), run.audio_index)

        def marks():
            for row in tqdm(new, desc="fingerprints", unit="file"):
                try:
                    audio, sr = load_audio(run.data.path / row["path"])
                except AudioError as e:
                    raise UserError(f"Corpus file '{run.data.path / row['path']}' cannot be read ({e}); rerun the data stage.") from None
                yield row["id"], fingerprints.landmarks(audio, sr)

        index = fingerprints.FingerprintIndex.build(marks(), base=index)
        index.save(run.audio_index, {"files": len(index.ids)})
    return index


def _sample_codes(path: Path, bins: int) -> np.ndarray:
    """A sample's top-level codes (T,), or a UserError naming the file when it is not what sample wrote."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"'{path}' is not a codes file ({str(e)[:120]}); delete that sample or sample it again.") from None
    if codes.dtype.kind not in "iu" or codes.ndim != 1 or codes.size == 0 or codes.min() < 0 or codes.max() >= bins:
        raise UserError(f"'{path}' does not hold top-level codes (integers in [0, {bins})); delete that sample or sample it again.")
    return codes.astype(np.int64)


def _entry(detector: str, source: str, file_id: str, offset: float, training_offset: float, seconds: float, score: float) -> dict:
    return {"detector": detector, "training_file": {"source": source, "id": file_id},
            "training_offset_seconds": round(training_offset, 3), "offset_seconds": round(offset, 3),
            "seconds": round(seconds, 3), "score": round(score, 3)}


def check(run_dir: str | Path, cfg: CopiesConfig, audio: list[Path] | None = None) -> list[dict]:
    """One entry per input (every sample of the run, or `audio`); samples' copies.json are written."""
    run = Run(run_dir)
    samples = [] if audio else [f for f in run.sample_folders() if f.most_finished() is not None or f.codes.is_file()]
    if not audio and not samples:
        raise UserError(f"No samples in '{run.samples}' and no audio files given; run the sample stage (make sample) first, or name files to check.")
    rows = run.require_manifest()
    coded = [f for f in samples if f.codes.is_file()] if run.has_codes() else []
    corpus = run.codes_corpus() if coded else None
    # every sample's codes read before the indexes are built: a damaged file fails at once, before slow work
    generated = {f.path: _sample_codes(f.codes, corpus.bins) for f in coded}
    index = audio_index(run, rows)
    sources = {row["id"]: row["source"] for row in rows}
    tokens = CorpusIndex(corpus, cfg) if corpus is not None else None

    report = []
    for path, folder in [(p, None) for p in audio or []] + [(f.most_finished(), f) for f in samples]:
        matches = [] if path is None else _audio_matches(index, sources, path, cfg, given=folder is None)
        path = path or folder.path  # a sample with codes only: the token detector alone
        if folder is not None and folder.path in generated:
            matches += [_entry("tokens", m.source, m.file_id, m.offset_seconds, m.training_offset_seconds, m.seconds, m.score)
                        for m in tokens.matches(generated[folder.path])]
        matches.sort(key=lambda m: -m["seconds"])
        entry = {"input": str(path), "flagged": any(m["seconds"] >= cfg.flag_seconds for m in matches), "matches": matches}
        report.append(entry)
        if folder is not None:
            with atomic_path(folder.copies) as tmp:
                tmp.write_text(json.dumps(entry, indent=2))
        longest = matches[0] if matches else None
        log.info("%s: %s%s", path, "FLAGGED" if entry["flagged"] else "ok",
                 f", longest match {longest['seconds']:.1f} s of {longest['training_file']['source']} ({longest['detector']})" if longest else "")
    return report


def _audio_matches(index: fingerprints.FingerprintIndex, sources: dict, path: Path, cfg: CopiesConfig, given: bool) -> list[dict]:
    """The audio detector's matches of one input. A given file that cannot be checked is a UserError;
    a sample that cannot (silent, too short) is reported with no matches and a warning."""
    try:
        audio, sr = load_audio(path, MAX_QUERY_SECONDS)
        if audio.shape[1] < sr * cfg.report_seconds:
            raise AudioError(f"{audio.shape[1] / sr:.1f} s long, shorter than copies.report_seconds ({cfg.report_seconds:g} s)")
        marks = fingerprints.landmarks(audio, sr)
        if marks.hashes.size == 0:
            raise AudioError("silent: it holds no spectral peaks to compare")
    except AudioError as e:
        if given:
            raise UserError(f"'{path}' cannot be checked for copies: {e}.") from None
        log.warning("%s cannot be checked for copies: %s", path, e)
        return []
    found = index.query(marks, cfg.report_seconds)
    return [_entry("audio", sources.get(index.ids[m.file], index.ids[m.file]), index.ids[m.file], m.offset_seconds,
                   m.training_offset_seconds, m.seconds, m.score) for m in found]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("copies",), positional=False)
    add_run_arguments(parser, "reads RUN/data and RUN/codes, writes RUN/copies and RUN/samples/<name>/copies.json",
                      computes=False)
    parser.add_argument("inputs", nargs="*", metavar="FILE or key=value",
                        help="audio files to check (any the data stage reads; default: the run's samples), and overrides of copies.*")
    parser.add_argument("--out", type=Path, help="folder the report copies.json (one entry per input) goes to")


def run(args: argparse.Namespace) -> int:
    files, args.overrides = split_overrides([*args.inputs, *args.overrides])
    report = check(args.run, load_recipe(args).copies, files or None)
    if args.out is not None:
        with atomic_path(SampleFolder(args.out).copies) as tmp:  # named as a sample's own report
            tmp.write_text(json.dumps(report, indent=2))
    flagged = [entry["input"] for entry in report if entry["flagged"]]
    if flagged:
        log.warning("%d of %d inputs replay training audio: %s", len(flagged), len(report), ", ".join(flagged))
    return 0
