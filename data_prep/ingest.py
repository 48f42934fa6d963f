"""Data stage: turn a folder of music into the corpus every later stage reads.

    AUDIO/**/*.{wav,flac,ogg,opus,mp3,m4a}
        → decode → Spleeter vocal removal (keep accompaniment) → mono → resample → trim silence
        → loudness-normalise → RUN/data/audio/<id>.flac
    RUN/data/manifest.jsonl   one line per accepted file (id, source, hash, duration, labels, split)
    RUN/data/rejected.jsonl   one line per unusable file (source, reason)

Resumable: a file whose content hash is already in the manifest (or already rejected) is skipped, every
FLAC is written atomically and every manifest line is flushed, so a killed run loses at most the files
in flight. Bad files never stop the run; it fails only when nothing at all was accepted.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import csv
import json
import logging
import multiprocessing
import os
import re
import signal
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from jukebox_lite.core import audio
from jukebox_lite.core.atomic import append_line, atomic_path, file_sha256, read_jsonl, remove_stale_temporaries
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, make_overrides
from jukebox_lite.core.config import DataConfig, load_config, save_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.core.processes import die_with_parent, stop_by_interrupt
from jukebox_lite.runs import Run, StageFolder

log = logging.getLogger(__name__)

SIDECAR_NAMES = ("labels.csv", "labels.json")
LABEL_KEYS = ("genre", "artist")


@dataclass
class Source:
    """One input file and what we know about it before decoding."""

    path: Path
    rel: str  # path relative to the input folder, forward slashes: the key for labels and reports
    sha256: str
    labels: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        stem = re.sub(r"[^a-z0-9]+", "_", Path(self.rel).stem.lower()).strip("_")[:40] or "track"
        return f"{stem}-{self.sha256[:10]}"


# ----------------------------------------------------------------------------------------------
# Scanning and labels


MAX_LABEL_CHARS = 200  # a genre or artist name; longer is a damaged or hostile label file


def read_sidecar(path: Path) -> dict[str, dict]:
    """labels.csv (columns path, genre, artist) or labels.json ({path: {genre, artist}}) → {rel: labels}."""
    try:
        if path.suffix == ".json":
            table = json.loads(path.read_text())
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise ValueError("expected an object mapping each path to {genre, artist}")
            rows = [{"path": k, **v} for k, v in table.items()]
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if rows and "path" not in rows[0]:
                raise ValueError("the first row must name the columns: path, genre, artist")
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"Label file '{path}' cannot be read ({str(e)[:200]}); fix it or remove it.") from None
    table = {}
    for row in rows:
        labels = {}
        for key in LABEL_KEYS:
            value = row.get(key)
            if value in (None, ""):
                continue
            if not isinstance(value, str) or not 0 < len(value.strip()) <= MAX_LABEL_CHARS:
                shown = repr(value)[:60]
                raise UserError(
                    f"Label file '{path}': the {key} of '{str(row.get('path'))[:200]}' is {shown}; a label is text "
                    f"of 1 to {MAX_LABEL_CHARS} characters."
                )
            labels[key] = value.strip()
        written = str(row["path"]).strip()
        table[written] = labels
        table.setdefault(written.replace("\\", "/"), labels)  # Windows separators, unless a name holds a real backslash
    return table


def folder_labels(rel: str) -> dict:
    """AUDIO/<genre>/<artist>/<file> (or AUDIO/<genre>/<file>) → labels from the folder names."""
    parts = rel.split("/")[:-1]
    return dict(zip(LABEL_KEYS, parts[:2]))


def split_for(sha256: str, valid_fraction: float) -> str:
    """Deterministic split from the content hash: the same file always lands in the same split."""
    return "valid" if int(sha256[:8], 16) / 2**32 < valid_fraction else "train"


# ----------------------------------------------------------------------------------------------
# Processing one file (runs in worker processes)

_separator = None  # one separator per worker process, built on first use


def _worker_init(threads: int, parent: int) -> None:
    import torch

    die_with_parent(parent)
    signal.signal(signal.SIGTERM, stop_by_interrupt)  # a stopped worker discards its file (atomic_path)
    torch.set_num_threads(threads)


def process(source: Source, cfg: DataConfig, out_path: Path) -> dict:
    """Decode, separate, downmix, resample, trim, normalise, write. Returns a manifest entry or a rejection."""
    global _separator
    try:
        wav, sr = audio.load_audio(source.path, cfg.max_seconds)
        if audio.nonsilent_span(wav, sr, cfg.silence_dbfs) == (0, 0):
            raise audio.AudioError(f"silent: nothing louder than {cfg.silence_dbfs:.0f} dBFS")
        if cfg.separation.backend != "none":
            if _separator is None:
                from jukebox_lite.algorithms.separation import make_separator

                _separator = make_separator(cfg.separation)
            wav = _separator(wav, sr)
        wav = audio.resample(audio.to_mono(wav), sr, cfg.sample_rate)  # (1, time) at the recipe's rate
        start, end = audio.nonsilent_span(wav, cfg.sample_rate, cfg.silence_dbfs)
        if end == 0:
            raise audio.AudioError("silent after vocal removal: the file seems to hold vocals only")
        wav = wav[:, start:end]
        seconds = wav.shape[1] / cfg.sample_rate
        if seconds < cfg.min_seconds:
            raise audio.AudioError(
                f"too short: {seconds:.1f} s of non-silent audio, one training window needs {cfg.min_seconds:g} s"
            )
        wav = audio.normalize_loudness(wav, cfg.sample_rate, cfg.loudness_lufs, cfg.peak_dbfs)
        audio.write_flac(out_path, wav, cfg.sample_rate)
    except audio.AudioError as e:
        return {"source": source.rel, "sha256": source.sha256, "reason": str(e)}
    return {
        "id": source.id,
        "path": f"audio/{out_path.name}",
        "source": source.rel,
        "source_path": str(source.path.resolve()),
        "sha256": source.sha256,
        "trimmed_start": round(start / cfg.sample_rate, 4),  # seconds of leading silence cut off
        "duration": round(seconds, 4),
        "sample_rate": cfg.sample_rate,
        "source_sample_rate": sr,
        "labels": source.labels,
        "split": split_for(source.sha256, cfg.valid_fraction),
    }


# ----------------------------------------------------------------------------------------------
# The stage


@dataclass
class Summary:
    accepted_new: int = 0
    accepted_before: int = 0
    rejected_new: int = 0
    seconds: float = 0.0  # audio in the whole manifest

    @property
    def accepted(self) -> int:
        return self.accepted_new + self.accepted_before


def _check_settings(data: StageFolder, cfg: DataConfig) -> None:
    """Refuse to mix files prepared with other settings into one corpus."""
    data_dir, saved = data.path, data.config
    if not saved.exists():
        return
    before = (yaml.safe_load(saved.read_text()) or {}).get("data", {})
    now = asdict(cfg)
    changed = [k for k in ("sample_rate", "loudness_lufs", "min_seconds", "valid_fraction") if before.get(k) != now[k]]
    changed += ["separation.backend"] if before.get("separation", {}).get("backend") != cfg.separation.backend else []
    if changed:
        raise UserError(
            f"'{data_dir}' was prepared with other settings ({', '.join(changed)} differ); "
            "use a new RUN folder or delete that one to start over."
        )


def prepare(
    cfg_path: str | None,
    overrides: list[str],
    audio_dir: Path,
    run_dir: Path,
    cli_labels: dict | None = None,
    labels_file: Path | None = None,
    labels_from_folders: bool = False,
    device: str | None = None,
) -> Summary:
    recipe = load_config(cfg_path, overrides, reads=("data",), command="jukebox-lite prepare")
    cfg = recipe.data
    cfg.separation.device = device or cfg.separation.device
    if not audio_dir.is_dir():
        raise UserError(f"Input folder '{audio_dir}' does not exist; pass AUDIO=<folder of music>.")
    paths = audio.scan(audio_dir, cfg.extensions)
    if not paths:
        raise UserError(f"No audio files ({', '.join(cfg.extensions)}) found in '{audio_dir}'.")

    run = Run(run_dir)
    data_dir = run.data.path
    _check_settings(run.data, cfg)
    run.audio.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run.audio)
    save_config(recipe, run.data.config)
    manifest_path, rejected_path = run.manifest, run.rejected
    manifest = run.manifest_rows()
    done_hashes = {row["sha256"]: row["source"] for row in manifest}
    rejected_before = {(row["source"], row.get("sha256")) for row in read_jsonl(rejected_path)}

    if labels_file is None:
        labels_file = next((audio_dir / n for n in SIDECAR_NAMES if (audio_dir / n).is_file()), None)
    sidecar = read_sidecar(labels_file) if labels_file else {}

    summary = Summary(accepted_before=len(manifest))
    todo: dict[str, Source] = {}  # hash → the file to prepare
    given: dict[str, dict] = {}  # hash → the labels this run's sources give it (they win over earlier ones)
    seen: dict[str, str] = dict(done_hashes)  # hash → source that holds that content
    for path in paths:
        rel = path.relative_to(audio_dir).as_posix()
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # hashing a FIFO or /dev/zero would never end
                _reject(rejected_path, rejected_before, summary, rel, None, "not a regular file (a FIFO, device or socket)")
                continue
            sha = file_sha256(path)
        except OSError as e:
            _reject(rejected_path, rejected_before, summary, rel, None, f"cannot read file ({e.strerror})")
            continue
        labels = folder_labels(rel) if labels_from_folders else {}
        labels.update(sidecar.get(rel, {}))
        labels.update({k: v for k, v in (cli_labels or {}).items() if v})
        if sha in seen:
            if seen[sha] != rel:  # a twin: the kept file takes the labels it lacks from it
                _reject(rejected_path, rejected_before, summary, rel, sha, f"duplicate: same content as {seen[sha]}")
                given[sha] = {**labels, **given.get(sha, {})}
            else:  # the prepared file itself: its own labels win over a twin's
                given[sha] = {**given.get(sha, {}), **labels}
            continue
        seen[sha] = rel
        if (rel, sha) in rejected_before:
            continue
        given[sha] = labels
        todo[sha] = Source(path, rel, sha)
    for sha, source in todo.items():
        source.labels = given[sha]
    _relabel(run, manifest, given)

    log.info(
        "%d audio files in %s: %d already prepared, %d to process",
        len(paths), audio_dir, len(done_hashes), len(todo),
    )
    jobs = [(s, cfg, run.audio / f"{s.id}.flac") for s in todo.values()]
    for result in tqdm(_run_jobs(jobs, cfg.workers), total=len(jobs), desc="prepare", unit="file"):
        if "reason" in result:
            _reject(rejected_path, rejected_before, summary, result["source"], result["sha256"], result["reason"])
        else:
            append_line(manifest_path, json.dumps(result))
            manifest.append(result)
            summary.accepted_new += 1
    summary.seconds = sum(row["duration"] for row in manifest)

    hours = summary.seconds / 3600
    amount = f"{hours:.2f} h" if hours >= 1 else f"{summary.seconds / 60:.1f} min"
    log.info(
        "accepted %d files (%d new), rejected %d new, %s of audio in %s",
        summary.accepted, summary.accepted_new, summary.rejected_new, amount, data_dir,
    )
    if summary.accepted == 0:
        raise UserError(f"No usable audio in '{audio_dir}': every file was rejected (reasons in {rejected_path}).")
    return summary


def _relabel(run: Run, manifest: list[dict], given: dict[str, dict]) -> None:
    """Prepared files whose labels this run changes (--genre, a label file, folders) get them: labels
    are cheap to rewrite, audio is not redone. The manifest is rewritten atomically."""
    changed = 0
    for row in manifest:
        labels = {**row["labels"], **given.get(row["sha256"], {})}
        if labels != row["labels"]:
            row["labels"], changed = labels, changed + 1
    if changed:
        with atomic_path(run.manifest) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in manifest), encoding="utf-8")
        log.warning("relabelled %d prepared file(s); rerun the codes stage and the priors to train on the new labels", changed)


def _reject(path: Path, before: set, summary: Summary, source: str, sha: str | None, reason: str) -> None:
    if (source, sha) in before:
        return
    before.add((source, sha))
    append_line(path, json.dumps({"source": source, "sha256": sha, "reason": reason}))
    summary.rejected_new += 1
    log.warning("rejected %s: %s", source, reason)


def _run_jobs(jobs: list[tuple], workers: int):
    """Yield results in job order: in this process for one worker, else in spawned worker processes."""
    if workers == 1 or len(jobs) <= 1:
        yield from (process(*job) for job in jobs)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up can deadlock
    pool = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads, os.getpid()))
    try:
        yield from pool.map(process, *zip(*jobs))
    finally:  # on an interrupt: no queued file starts; the files in progress end (or are discarded by their workers)
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("data",))
    parser.add_argument("--audio", required=True, type=Path, help="folder of music (searched recursively)")
    add_run_arguments(parser, "the corpus goes to RUN/data", computes=False)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides data.separation.device")
    parser.add_argument("--genre", help="genre label for every file (overrides sidecar and folder labels)")
    parser.add_argument("--artist", help="artist label for every file (overrides sidecar and folder labels)")
    parser.add_argument(
        "--labels", type=Path, help="CSV (path,genre,artist) or JSON sidecar; default AUDIO/labels.csv|json if present"
    )
    parser.add_argument(
        "--labels-from-folders", action="store_true", help="read labels from AUDIO/<genre>/<artist>/<file> folders"
    )


def run(args: argparse.Namespace) -> int:
    if args.labels is not None and not args.labels.is_file():
        raise UserError(f"Label file '{args.labels}' does not exist.")
    prepare(
        args.config,
        [*make_overrides(("data",)), *args.overrides],
        args.audio,
        args.run,
        cli_labels={"genre": args.genre, "artist": args.artist},
        labels_file=args.labels,
        labels_from_folders=args.labels_from_folders,
        device=args.device,
    )
    return 0
