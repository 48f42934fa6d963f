"""Listening review: what the notebook shows, and the `review` stage that renders it to one HTML page.

`notebooks/listening_review.ipynb` stays short: it calls the functions here, which are tested like
the rest of the library. `jukebox-lite review --run RUN` executes the notebook headlessly (nbclient)
on that run folder and writes `RUN/review.html`, self-contained: audio (compressed, the recipe's
`review` section) and images are embedded, so the page plays offline and can be mailed around.
`--link-audio` makes the sample players link the run's WAVs instead (a small page that must stay
where it can reach them). Opened live in Jupyter, the notebook also offers `rate(...)`, which appends
a listener's rating to `RUN/ratings.csv`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import datetime
import html
import io
import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from jukebox_lite.core.atomic import atomic_path, read_jsonl
from jukebox_lite.core.audio import AudioError, compress, load_audio, resample, to_mono
from jukebox_lite.core.config import ReviewConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe

log = logging.getLogger(__name__)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "listening_review.ipynb"
RUN_ENV = "JUKEBOX_LITE_RUN"  # how the stage tells the notebook which run folder to show
OPTIONS_ENV = "JUKEBOX_LITE_REVIEW"  # ... and how the page carries audio (PageOptions as JSON)
CLIP_SECONDS = 20.0  # vocal-removal excerpts: the loudest stretch of each source song
RATING_FIELDS = ("time", "sample", "listener", "score", "note")
# a metric's share of one level, of one quarter of noise levels, or before/after the refiner
CURVE_PART = re.compile(r"(?P<base>.+)_(?P<suffix>l\d|t\d\.\d+_\d\.\d+|coarse|refined)")


@dataclass
class PageOptions:
    """How the page carries audio: the recipe's review section, and, when the sample players link the
    run's WAVs instead of embedding them, the folder the page is written to (links are relative to it)."""

    review: ReviewConfig = field(default_factory=ReviewConfig)
    link_from: Path | None = None

    def to_json(self) -> str:
        return json.dumps({"review": dataclasses.asdict(self.review), "link_from": self.link_from and str(self.link_from)})

    @classmethod
    def from_json(cls, text: str) -> PageOptions:
        fields = json.loads(text)
        return cls(ReviewConfig(**fields["review"]), fields["link_from"] and Path(fields["link_from"]))


def run_folder() -> Run:
    """The run the notebook reviews: $JUKEBOX_LITE_RUN, or runs/demo when opened by hand."""
    return Run(os.environ.get(RUN_ENV, Path(__file__).resolve().parents[2] / "runs" / "demo"))


def page_options() -> PageOptions:
    """What the review stage asked for ($JUKEBOX_LITE_REVIEW); embedded Opus when opened by hand."""
    return PageOptions.from_json(os.environ[OPTIONS_ENV]) if OPTIONS_ENV in os.environ else PageOptions()


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
            found.append({"id": folder.path.name, "meta": meta, "stages": stages, "copies": copies,
                          "most_finished": folder.most_finished()})  # what check-copies heard
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


def curve_panels(
    tags: dict[str, list[tuple[int, float]]],
) -> dict[str, dict[tuple[str, str], list[tuple[int, float]]]]:
    """One stage's scalars as plot panels, {panel: {(split, part): points}}: train/X and valid/X share panel X
    (so the gap shows), and so do a metric's levels (X_l0, X_l1, X_l2) and noise-level quarters
    (X_t0.00_0.25, ...) and the refiner's before and after (X_coarse, X_refined), a line each (part "l0",
    "t0.00_0.25", "coarse"...; "" for the metric itself); any other tag is a panel of its own, split ""."""
    panels: dict[str, dict[tuple[str, str], list[tuple[int, float]]]] = {}
    for tag, points in tags.items():
        split, _, metric = tag.partition("/")
        part = CURVE_PART.fullmatch(metric)
        base, suffix = (part["base"], part["suffix"]) if part else (metric, "")
        if split in ("train", "valid") and metric != "gap":
            panels.setdefault(base, {})[split, suffix] = points
        else:
            panels.setdefault(f"{split}/{base}", {})["", suffix or tag] = points
    return panels


def curves_figure(stage: str, tags: dict[str, list[tuple[int, float]]]):
    """One stage's training curves (matplotlib Figure), six panels a row (`curve_panels`): a colour per
    level or noise quarter, validation dashed, and the points marked where they are few (a short run
    validates once or twice)."""
    import matplotlib.pyplot as plt

    panels = curve_panels(tags)
    rows = -(-len(panels) // 6)
    height = 2.6 * rows  # inches
    fig, axes = plt.subplots(rows, 6, figsize=(18, height), squeeze=False)
    # fixed margins: tight_layout measures every tick label, a third of the page's render time
    fig.subplots_adjust(left=0.03, right=0.99, top=1 - 0.3 / height, bottom=0.35 / height, wspace=0.3, hspace=0.55)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (panel, lines) in zip(axes.flat, panels.items()):
        colours = {}  # train and valid of one level share a colour
        for (split, part), points in lines.items():
            colour = colours.setdefault(part, f"C{len(colours)}")
            marker = "o" if split == "valid" or len(points) < 3 else None
            steps, values = zip(*points)
            label = f"{split} {part}".strip()
            ax.plot(steps, values, label=label, color=colour, linestyle="--" if split == "valid" else "-", marker=marker, markersize=3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.set_title(f"{stage}: {panel}", fontsize=8)
    return fig


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
        estimate = "estimate" in report  # the estimator's output alone, where the refined audio has detail on top
        rows = [
            {"metric": m, "decoded": round(report["decoded"][m], 3),
             **({"estimate alone": round(report["estimate"][m], 3), "estimate closer": report["estimate_closer"][m]} if estimate else {}),
             "refined": round(report["refined"][m], 3),
             "refined closer": report["closer"][m], "segments won": f"{report['segment_win_rate'][m]:.0%}"}
            for m in report["closer"]
        ]
        verdict = "helps" if report["helpful"] else "does <b>not</b> help yet"
        parts.append(f"<h4>Refiner vs decoded level-{text(report['cond_level'])} audio: the refiner {verdict}</h4>")
        parts.append(html_table(rows))
    return "".join(parts) or "<p><i>No evaluations in this run yet (make codes, make refiner).</i></p>"


def copies_html(run: Run, sample: dict, options: PageOptions) -> str:
    """The copy check's verdict on one sample: a sentence, its longest matches, and for the longest
    the sample's passage and the training excerpt it matches, to be heard side by side."""
    copies = sample["copies"]
    if copies is None:
        return "<p><i>Not checked for copies yet (make check-copies).</i></p>"
    matches = copies.get("matches", [])
    verdict = "<b>FLAGGED</b>: replays training audio" if copies.get("flagged") else "no long copy of the training corpus"
    longest = f" (longest match {matches[0]['seconds']:.1f} s)" if matches else ""
    rows = [{"detector": m["detector"], "seconds": m["seconds"], "training file": m["training_file"]["source"],
             "at (training file)": m["training_offset_seconds"], "at (sample)": m["offset_seconds"], "score": m["score"]}
            for m in matches[:5]]
    parts = [f"<p>Copy check: {verdict}{longest}</p>", html_table(rows) if rows else ""]
    if matches:
        parts.append(_match_players(run, sample, matches[0], options))
    return "".join(parts)


def _match_players(run: Run, sample: dict, match: dict, options: PageOptions) -> str:
    """Players of the longest match: the sample's passage, then the training file's (at most 10 s each)."""
    paths = {row["id"]: run.data.path / row["path"] for row in run.manifest_rows()}
    training = paths.get(match["training_file"]["id"])
    if training is None or not training.is_file() or sample["most_finished"] is None:
        return ""
    seconds = min(match["seconds"], 10.0)
    cells = []
    for label, path, start in (("the sample's passage", sample["most_finished"], match["offset_seconds"]),
                               ("the training excerpt", training, match["training_offset_seconds"])):
        sr = sf.info(path).samplerate
        audio, _ = sf.read(path, dtype="float32", start=int(start * sr), frames=int(seconds * sr), always_2d=True)
        cells.append(f"{text(label)} {audio_html(audio.mean(axis=1), sr, options)}")
    return "<p>" + " ".join(cells) + "</p>"


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


def audio_html(audio: np.ndarray, sr: int, options: PageOptions) -> str:
    """An <audio> player with (time,) audio embedded as a data URI in the recipe's codec (no external file)."""
    if options.review.audio_codec == "wav":
        buffer = io.BytesIO()
        sf.write(buffer, np.clip(audio, -1, 1), sr, format="WAV", subtype="PCM_16")
        data, mime = buffer.getvalue(), "audio/wav"
    else:
        data, mime = compress(audio, sr, options.review.audio_codec, options.review.bitrate_kbps)
    return f'<audio controls preload="none" src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}"></audio>'


def file_player_html(path: Path, audio: np.ndarray, sr: int, options: PageOptions) -> str:
    """The player of a run's WAV: a link relative to the page with --link-audio, else embedded."""
    if options.link_from is None:
        return audio_html(audio, sr, options)
    link = Path(os.path.relpath(path.resolve(), options.link_from.resolve())).as_posix()
    return f'<audio controls preload="none" src="{text(urllib.parse.quote(link))}"></audio>'


def spectrogram_figure(tracks: dict[str, tuple[np.ndarray, int]]):
    """Log-magnitude spectrograms side by side, one per named track (matplotlib Figure)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tracks), figsize=(4.5 * len(tracks), 3), squeeze=False)
    for ax, (name, (audio, sr)) in zip(axes[0], tracks.items()):
        _draw_spectrogram(ax, audio, sr, name)
    fig.tight_layout()
    return fig


def _draw_spectrogram(ax, audio: np.ndarray, sr: int, title: str, n_fft: int = 1024) -> None:
    """A Hann-windowed STFT of (time,) audio in dB, 100 dB of range below its peak. The hop gives about
    1000 columns whatever the length (a figure is ~400 px wide), so a 90 s track draws in a blink."""
    audio = np.pad(audio, (0, max(0, n_fft - audio.size)))
    hop = max(n_fft // 4, audio.size // 1000)
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)  # (frames, n_fft)
    power_db = 10 * np.log10(np.abs(np.fft.rfft(frames)) ** 2 + 1e-20)  # (frames, n_fft // 2 + 1)
    top = float(power_db.max())
    ax.imshow(power_db.T, origin="lower", aspect="auto", cmap="magma", vmin=top - 100, vmax=top,
              extent=(0, audio.size / sr, 0, sr / 2), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("Hz")


def spectrogram_img(audio: np.ndarray, sr: int, title: str) -> str:
    """One track's spectrogram as an embedded PNG <img> (a figure per stage, so stages sit in a row)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.6), dpi=80)
    ax = fig.add_subplot()
    _draw_spectrogram(ax, audio, sr, title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return f'<img style="width:100%" alt="spectrogram of {text(title)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode("ascii")}">'


def meta_rows(meta: dict) -> list[dict]:
    """The sample's meta.json as a small table: what was asked, with which weights, and how long it took."""
    settings, checkpoints = meta.get("settings", {}), meta.get("checkpoints", {})
    steps = {k.removeprefix("prior_"): v["step"] for k, v in checkpoints.items() if isinstance(v, dict) and "step" in v}
    rows = {
        "genre": meta.get("genre") if not meta.get("morph_to") else f"{meta.get('genre')} → {meta['morph_to']}",
        "artist": meta.get("artist"),
        "seconds": meta.get("seconds"),
        "seed": meta.get("seed"),
        "temperature": settings.get("temperature"),
        "weights": settings.get("checkpoint"),
        "prior steps": ", ".join(f"{level} {step}" for level, step in steps.items()),
        "prime": meta.get("prime"),
        "track character": meta.get("character"),
        "refined": meta.get("refined"),
        "seconds per stage": ", ".join(f"{k} {v}" for k, v in meta.get("seconds_per_stage", {}).items()),
    }
    return [{"": k, "value": v} for k, v in rows.items() if v not in (None, "")]


def sample_html(run: Run, sample: dict, options: PageOptions) -> str:
    """One generated track: its name, metadata table and copy verdict, then every stage in one row
    (a player above its spectrogram), in pipeline order, so the stages are heard and seen side by side."""
    cells = []
    for stage, path in sample["stages"].items():
        audio, sr = sf.read(path, dtype="float32")  # (time,) mono
        player = file_player_html(path, audio, sr, options).replace("<audio ", '<audio style="width:100%" ', 1)
        cells.append(
            f'<figure style="flex:1 1 0;min-width:200px;margin:0 8px 8px 0"><figcaption><b>{text(stage)}</b></figcaption>'
            f"{player}{spectrogram_img(audio, sr, stage)}</figure>"
        )
    row = '<div style="display:flex;flex-wrap:wrap">' + "".join(cells) + "</div>"  # one row on a laptop screen
    return f"<h4>{text(sample['id'])}</h4>" + html_table(meta_rows(sample["meta"])) + copies_html(run, sample, options) + row


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


def render(run: Run, out: Path, options: PageOptions | None = None, timeout: int = 600) -> Path:
    """Execute the notebook on `run` and export it, inputs hidden, to one HTML file (self-contained
    unless `options` link the samples' audio)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    if not run.manifest.exists():
        raise UserError(f"'{run}' has no data stage output yet; run make data (or make demo) first.")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ[RUN_ENV] = str(run.path.resolve())
    os.environ[OPTIONS_ENV] = (options or PageOptions()).to_json()
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
    add_recipe_arguments(parser, reads=("review",))
    add_run_arguments(parser, "reads RUN/samples and the training folders' reports", computes=False)
    parser.add_argument("--out", type=Path, help="folder the page review.html goes to (default RUN)")
    parser.add_argument(
        "--link-audio", action="store_true",
        help="the sample players link the run's WAVs (relative to the page) instead of embedding compressed audio",
    )


def run(args: argparse.Namespace) -> int:
    run = Run(args.run)
    out = run.review_page if args.out is None else args.out / run.review_page.name
    options = PageOptions(load_recipe(args).review, out.parent if args.link_audio else None)
    render(run, out, options)
    return 0
