"""Listening review: what the notebook shows, and the `review` stage that renders it to one HTML page.

`notebooks/listening_review.ipynb` stays short: it calls the functions here, which are tested like
the rest of the library. `jukebox-lite review --run RUN` executes the notebook headlessly (nbclient)
on that run folder and writes `RUN/review.html`, self-contained: audio and images are embedded, so
the page plays offline and can be mailed around. Opened live in Jupyter, the notebook also offers
`rate(...)`, which appends a listener's rating to `RUN/ratings.csv`.
"""

from __future__ import annotations

import argparse
import base64
import html
import csv
import datetime
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from jukebox_lite.core.atomic import atomic_path, read_jsonl
from jukebox_lite.core.audio import AudioError, load_audio, resample, to_mono
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.stages.common import add_run_arguments

log = logging.getLogger(__name__)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "listening_review.ipynb"
RUN_ENV = "JUKEBOX_LITE_RUN"  # how the stage tells the notebook which run folder to show
CLIP_SECONDS = 10.0  # excerpts keep the page small: a minute of 22 kHz audio is ~3 MB of base64
RATING_FIELDS = ("time", "sample", "listener", "score", "note")


def run_folder() -> Run:
    """The run the notebook reviews: $JUKEBOX_LITE_RUN, or runs/demo when opened by hand."""
    return Run(os.environ.get(RUN_ENV, Path(__file__).resolve().parents[2] / "runs" / "demo"))


# ----------------------------------------------------------------------------------------------
# What the page shows


def corpus_table(run: Run) -> list[dict]:
    """One row per (genre, split): files and minutes of audio, from the data stage's manifest."""
    rows: dict[tuple, dict] = {}
    for entry in run.manifest_rows():
        key = (entry["labels"].get("genre", "(none)"), entry["split"])
        row = rows.setdefault(key, {"genre": key[0], "split": key[1], "files": 0, "minutes": 0.0})
        row["files"] += 1
        row["minutes"] += entry["duration"] / 60
    return [{**r, "minutes": round(r["minutes"], 1)} for _, r in sorted(rows.items())]


def rejected_table(run: Run) -> list[dict]:
    return [{"source": r["source"], "reason": r["reason"]} for r in read_jsonl(run.rejected)]


def separation_pairs(run: Run, limit: int = 3) -> list[dict]:
    """Files where vocal removal changed the audio most, with the source mixture and the prepared file.

    Change = 1 − correlation of the (mono, resampled, equally trimmed) source with the prepared file:
    songs with vocals rank first, instrumentals (which pass nearly unchanged) last. Sources that have
    moved since the data stage ran are skipped.
    """
    pairs = []
    for entry in run.manifest_rows():
        try:
            source, source_sr = load_audio(entry["source_path"])
        except AudioError:
            continue
        prepared, sr = sf.read(run.data.path / entry["path"], dtype="float32")  # (time,) mono
        start = round(entry["trimmed_start"] * sr)
        mixture = resample(to_mono(source), source_sr, sr)[0, start : start + prepared.size]
        n = min(mixture.size, prepared.size)
        correlation = float(mixture[:n] @ prepared[:n]) / (np.linalg.norm(mixture[:n]) * np.linalg.norm(prepared[:n]) or 1.0)
        pairs.append({"id": entry["id"], "sr": sr, "mixture": mixture, "accompaniment": prepared, "change": 1 - correlation})
    return sorted(pairs, key=lambda p: -p["change"])[:limit]


def samples(run: Run) -> list[dict]:
    """Generated samples (RUN/samples/<id>/: a wav per stage, meta.json, copies.json), newest first."""
    found = []
    for folder in run.sample_folders():
        meta = json.loads(folder.meta.read_text()) if folder.meta.exists() else {}
        copies = json.loads(folder.copies.read_text()) if folder.copies.exists() else None
        stages = {stage: folder.audio(stage) for stage in folder.STAGES if folder.audio(stage).exists()}
        if stages:
            found.append({"id": folder.path.name, "meta": meta, "stages": stages, "copies": copies})
    return found


def training_curves(run: Run) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Scalars from every stage's TensorBoard folder: {stage: {tag: [(step, value), ...]}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = {}
    for name, folder in run.training_folders():
        if not folder.tensorboard.is_dir():
            continue
        events = EventAccumulator(str(folder.tensorboard), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags().get("scalars", [])
        if tags:
            curves[name] = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}
    return curves


def curve_panels(tags: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """One stage's scalars as plot panels: train/X and valid/X share panel X (so the gap shows), any
    other tag is a panel of its own. {panel: {line label: points}}."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for tag, points in tags.items():
        split, _, metric = tag.partition("/")
        if split in ("train", "valid") and metric != "gap":
            panels.setdefault(metric, {})[split] = points
        else:
            panels.setdefault(tag, {})[tag] = points
    return panels


def clip(audio: np.ndarray, sr: int, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """The loudest `seconds` of a track (by RMS over one-second hops), so excerpts are not intros."""
    n = int(seconds * sr)
    if audio.size <= n:
        return audio
    starts = np.arange(0, audio.size - n + 1, sr)
    energy = [float(np.square(audio[s : s + n]).mean()) for s in starts]
    start = int(starts[int(np.argmax(energy))])
    return audio[start : start + n]


def objective_html(run: Run) -> str:
    """The eval stages' figures: VQ-VAE reconstruction per level, and decoded vs refined audio."""
    parts = []
    vqvae_eval, refiner_eval = run.vqvae.eval_report, run.refiner.eval_report
    if vqvae_eval.exists():
        report = json.loads(vqvae_eval.read_text())
        rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in level.items()} for level in report["levels"]]
        parts.append(f"<h4>VQ-VAE reconstruction ({report['segments']} segments of the {text(report['source'])} audio)</h4>")
        parts.append(html_table(rows))
    if refiner_eval.exists():
        report = json.loads(refiner_eval.read_text())
        rows = [
            {"metric": m, "decoded": round(report["decoded"][m], 3), "refined": round(report["refined"][m], 3),
             "refined closer": report["closer"][m], "segments won": f"{report['segment_win_rate'][m]:.0%}"}
            for m in report["closer"]
        ]
        verdict = "helps" if report["helpful"] else "does <b>not</b> help yet"
        parts.append(f"<h4>Refiner vs decoded level-{text(report['cond_level'])} audio: the refiner {verdict}</h4>")
        parts.append(html_table(rows))
    return "".join(parts) or "<p><i>No evaluations in this run yet (make codes, make refiner).</i></p>"


def copies_html(copies: dict | None) -> str:
    """The copy detector's verdict on one sample, in a sentence and a table of its longest matches."""
    if copies is None:
        return "<p><i>Not checked for copies yet (make check-copies).</i></p>"
    verdict = "<b>FLAGGED</b>: replays training audio" if copies["flagged"] else "no long copy of the training corpus"
    rows = [{k: m[k] for k in ("seconds", "source", "sample_start", "corpus_start", "agreement")} for m in copies["matches"][:5]]
    return f"<p>Copy check: {verdict} (longest match {copies['longest_seconds']:.1f} s)</p>" + (html_table(rows) if rows else "")


def text(value: object) -> str:
    """Any value as HTML text: names of files, labels, samples and paths come from users' corpora and
    folders, so every one is escaped (quotes too, for attributes) and markup in them stays text."""
    return html.escape(str(value), quote=True)


def html_table(rows: list[dict]) -> str:
    """A plain HTML table of dict rows (the page needs no pandas), every key and value escaped."""
    if not rows:
        return "<p><i>none</i></p>"
    head = "".join(f"<th>{text(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{text(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def audio_html(audio: np.ndarray, sr: int) -> str:
    """An <audio> player with the clip embedded as a 16-bit WAV data URI (no external file)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), sr, format="WAV", subtype="PCM_16")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'


def spectrogram_figure(tracks: dict[str, tuple[np.ndarray, int]]):
    """Log-magnitude spectrograms side by side, one per named track (matplotlib Figure)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tracks), figsize=(4.5 * len(tracks), 3), squeeze=False)
    for ax, (name, (audio, sr)) in zip(axes[0], tracks.items()):
        ax.specgram(audio, NFFT=1024, Fs=sr, noverlap=768, cmap="magma", vmin=-120)
        ax.set_title(name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("Hz")
    fig.tight_layout()
    return fig


def rate(run: Run, sample: str, score: int, listener: str = "", note: str = "") -> None:
    """Append one rating (1–5) of a sample to RUN/ratings.csv; earlier ratings are never rewritten."""
    if not 1 <= score <= 5:
        raise UserError(f"A rating is a score from 1 to 5, not {score}.")
    path = run.ratings
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, RATING_FIELDS)
        if new:
            writer.writeheader()
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        writer.writerow({"time": now, "sample": sample, "listener": listener, "score": score, "note": note})


# ----------------------------------------------------------------------------------------------
# The stage


# nbconvert's lab template, minus the scripts it loads from CDNs (the page has no maths or widgets).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def render(run: Run, out: Path, timeout: int = 600) -> Path:
    """Execute the notebook on `run` and export it, inputs hidden, to one self-contained HTML file."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    if not run.manifest.exists():
        raise UserError(f"'{run}' has no data stage output yet; run make data (or make demo) first.")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ[RUN_ENV] = str(run.path.resolve())
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(run.path)}})
    try:
        client.execute()
    except CellExecutionError as e:
        raise UserError(f"The review notebook failed on '{run}': {str(e).strip().splitlines()[-1]}") from None
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.raw_template = OFFLINE_TEMPLATE
    html, _ = exporter.from_notebook_node(notebook)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "reads RUN/samples and the training folders' reports", computes=False)
    parser.add_argument("--out", type=Path, help="folder the page review.html goes to (default RUN)")


def run(args: argparse.Namespace) -> int:
    run = Run(args.run)
    render(run, run.review_page if args.out is None else args.out / run.review_page.name)
    return 0
