"""The listening-review page: executed headlessly, self-contained, showing what the run holds."""

import base64
import csv
import io
import json
import re
import urllib.parse
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import av

import numpy as np
import pytest
import soundfile as sf
from torch.utils.tensorboard import SummaryWriter

from data_prep import ingest
from jukebox_lite.runs import Run
from jukebox_lite.stages import review
from jukebox_lite.cli import main
from jukebox_lite.core.config import ReviewConfig
from jukebox_lite.core.errors import UserError
from tests.helpers import synth_music, write_audio

FAST = ["data.separation.backend=none", "data.workers=1", "data.min_seconds=2", "data.sample_rate=22050"]


@pytest.fixture
def run(tmp_path):
    music = tmp_path / "music"
    for i, genre in enumerate(("deep", "tech")):
        write_audio(music / genre / "x" / f"t{i}.wav", synth_music(4.0, 44100, seed=i), 44100)
    write_audio(music / "silent.wav", np.zeros((1, 44100), np.float32), 44100)
    ingest.prepare(None, FAST, music, tmp_path / "run", labels_from_folders=True)
    return tmp_path / "run"


class Players(HTMLParser):
    """The src of every <audio> element of a page, as the browser's parser sees them."""

    def __init__(self, page: str):
        super().__init__()
        self.sources: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "audio":
            self.sources.append(dict(attrs)["src"])


def decoded_seconds(src: str, page_folder: Path) -> float:
    """Decode one player's source with FFmpeg (a data URI's bytes, or the file a relative link names)."""
    if src.startswith("data:"):
        header, _, data = src.partition(",")
        assert header.endswith(";base64")
        source = io.BytesIO(base64.b64decode(data, validate=True))
    else:
        source = str(page_folder / urllib.parse.unquote(src))
    with av.open(source) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


def add_sample(run: Path, name: str, seconds: float, sr: int, stages=("level2", "refined"), meta=None) -> Path:
    sample = run / "samples" / name
    sample.mkdir(parents=True)
    for k, stage in enumerate(stages):
        sf.write(sample / f"{stage}.wav", synth_music(seconds, sr, seed=k, channels=1)[0], sr)
    (sample / "meta.json").write_text(json.dumps(meta or {"seed": 7}))
    return sample


def test_page_is_self_contained_and_shows_corpus_samples_and_curves(run):
    sample = run / "samples" / "s001"
    sample.mkdir(parents=True)
    for stage in ("level2", "refined"):
        sf.write(sample / f"{stage}.wav", synth_music(3.0, 22050, seed=7, channels=1)[0], 22050)
    (sample / "meta.json").write_text('{"seed": 7}')
    t0 = next(row for row in Run(run).manifest_rows() if row["source"] == "deep/x/t0.wav")
    match = {"detector": "audio", "training_file": {"source": "deep/x/t0.wav", "id": t0["id"]}, "seconds": 2.5,
             "training_offset_seconds": 0.5, "offset_seconds": 0.2, "score": 20.0}
    (sample / "copies.json").write_text(json.dumps({"input": "x", "flagged": True, "matches": [match]}))
    with SummaryWriter(run / "vqvae" / "tb") as writer:
        for step in range(5):
            writer.add_scalar("loss/total", 1.0 / (step + 1), step)

    assert main(["review", "--run", str(run)]) == 0
    html = (run / "review.html").read_text()
    assert not re.search(r'(src|href)="https?:', html), "the page must not load anything from the network"
    players = re.findall(r'<audio controls="" preload="none" src="data:audio/ogg;base64,T2dnUw', html)  # OggS: Opus
    assert len(players) == 2 + 2 * 2 + 2  # two samples' stages, two vocal-removal pairs, the copy and its source
    assert re.search(r"the sample(&#x27;|')s passage", html) and "the training excerpt" in html
    assert "deep" in html and "tech" in html and "silent: nothing louder than" in html
    assert "s001" in html and "No samples in this run yet" not in html
    assert "<b>FLAGGED</b>" in html and "deep/x/t0.wav" in html and "longest match 2.5 s" in html
    assert "vqvae: loss/total" not in html  # titles are drawn into the PNG, not HTML...
    assert html.count("data:image/png;base64,") >= 5  # ...so count the figures: 2 pairs, 2 sample stages, 1 curve set


def test_training_curves_and_samples_readers(run):
    with SummaryWriter(run / "prior_level2" / "tb") as writer:
        for step in range(3):
            writer.add_scalar("loss", 3.0 - step, step)
    assert review.training_curves(Run(run)) == {"prior_level2": {"loss": [(0, 3.0), (1, 2.0), (2, 1.0)]}}
    assert review.samples(Run(run)) == []


def test_curve_panels_draw_validation_over_training():
    tags = {"train/loss": [(1, 2.0)], "valid/loss": [(1, 2.5)], "valid/gap": [(1, 0.5)], "train/lr": [(1, 0.1)], "media/x": [(1, 1.0)]}
    assert review.curve_panels(tags) == {
        "loss": {("train", ""): [(1, 2.0)], ("valid", ""): [(1, 2.5)]}, "valid/gap": {("", "valid/gap"): [(1, 0.5)]},
        "lr": {("train", ""): [(1, 0.1)]}, "media/x": {("", "media/x"): [(1, 1.0)]},
    }


def test_curve_panels_put_a_metrics_levels_on_one_panel():
    point = [(1, 1.0)]
    tags = {
        "train/recons_l0": point, "train/recons_l1": point, "valid/recons_l0": point, "media/sc_l2": point,
        "train/loss_t0.00_0.25": point, "valid/loss_t0.75_1.00": point, "train/loss": point, "train/used_curr_l1": point,
        "media/distance_coarse": point, "media/distance_refined": point,
    }
    assert {panel: sorted(lines) for panel, lines in review.curve_panels(tags).items()} == {
        "recons": [("train", "l0"), ("train", "l1"), ("valid", "l0")], "media/sc": [("", "l2")],
        "loss": [("train", ""), ("train", "t0.00_0.25"), ("valid", "t0.75_1.00")], "used_curr": [("train", "l1")],
        "media/distance": [("", "coarse"), ("", "refined")],
    }
    fig = review.curves_figure("vqvae", tags)
    lines = {ax.get_title(): [(line.get_label(), line.get_color(), line.get_linestyle()) for line in ax.get_lines()] for ax in fig.axes}
    assert sorted(lines["vqvae: recons"]) == [("train l0", "C0", "-"), ("train l1", "C1", "-"), ("valid l0", "C0", "--")]
    assert lines["vqvae: media/distance"] == [("coarse", "C0", "-"), ("refined", "C1", "-")]
    assert len(fig.axes) == 6 and sum(ax.axison for ax in fig.axes) == 5  # five panels, the sixth blank


def test_ratings_are_appended_never_rewritten(run):
    review.rate(Run(run), "s1", 4, listener="ana", note="groove holds")
    review.rate(Run(run), "s2", 2)
    with open(run / "ratings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sample"], r["score"], r["listener"]) for r in rows] == [("s1", "4", "ana"), ("s2", "2", "")]
    with pytest.raises(UserError, match="1 to 5"):
        review.rate(Run(run), "s3", 9)


def test_objective_figures_show_both_evaluations(run):
    assert "No evaluations" in review.objective_html(Run(run))
    (run / "vqvae").mkdir(exist_ok=True)
    (run / "vqvae" / "eval.json").write_text(json.dumps({
        "source": "valid", "segments": 3, "levels": [{"level": 0, "hop_length": 8, "si_sdr_db": 12.3456}],
    }))
    (run / "refiner").mkdir()
    metrics = {"mr_stft_distance": (1.2, 1.4, False), "high_band_abs_error_db": (14.0, 5.0, True)}
    (run / "refiner" / "eval.json").write_text(json.dumps({
        "cond_level": 0, "helpful": False,
        "decoded": {m: v[0] for m, v in metrics.items()}, "refined": {m: v[1] for m, v in metrics.items()},
        "closer": {m: v[2] for m, v in metrics.items()}, "segment_win_rate": {m: 0.5 for m in metrics},
    }))
    html = review.objective_html(Run(run))
    assert "12.346" in html and "3 segments of the valid audio" in html
    assert "does <b>not</b> help yet" in html and "high_band_abs_error_db" in html and "50%" in html
    assert "estimate alone" not in html
    report = json.loads((run / "refiner" / "eval.json").read_text())
    report.update(estimate={"mr_stft_distance": 1.1234, "high_band_abs_error_db": 9.8765},
                  estimate_closer={"mr_stft_distance": True, "high_band_abs_error_db": True})
    (run / "refiner" / "eval.json").write_text(json.dumps(report))
    html = review.objective_html(Run(run))  # a refiner with a detail model: its estimate alone is shown too
    assert "estimate alone" in html and "1.123" in html and "9.877" in html


def test_clip_picks_the_loudest_stretch():
    sr = 100
    x = np.zeros(20 * sr, np.float32)
    x[12 * sr : 14 * sr] = 0.5
    excerpt = review.clip(x, sr, seconds=4)
    assert excerpt.size == 4 * sr and np.abs(excerpt).max() == 0.5


def test_review_before_the_data_stage_is_one_clear_error(tmp_path, capsys):
    assert main(["review", "--run", str(tmp_path)]) == 2
    assert "run make data" in capsys.readouterr().err
    assert main(["review", "--run", str(tmp_path), "review.audio_codec=flac"]) == 2
    assert "review.audio_codec is 'flac'; use opus, mp3, wav." in capsys.readouterr().err
    assert main(["review", "--run", str(tmp_path), "review.bitrate_kbps=1000"]) == 2
    assert "review.bitrate_kbps is 1000; use 8 to 320." in capsys.readouterr().err


HOSTILE = {
    "file": "<svg onload=alert(2)>",
    "genre": "<script>alert(1)</script>",
    "artist": "<b onmouseover=alert(4)>x</b>",
    "sample": "<img src=x onerror=alert(3)>",
}


def test_names_from_the_corpus_and_the_run_never_become_markup(tmp_path):
    """File names, labels and sample names are data: the page shows them as text, and no element,
    script or event handler of the parsed page carries them."""
    music = tmp_path / "music"
    write_audio(music / f"{HOSTILE['file']}.wav", synth_music(4.0, 44100, seed=1), 44100)
    with open(music / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "genre", "artist"], [f"{HOSTILE['file']}.wav", HOSTILE["genre"], HOSTILE["artist"]]])
    ingest.prepare(None, FAST, music, tmp_path / "run", labels_file=music / "labels.csv")
    run = tmp_path / "run"
    sample = run / "samples" / HOSTILE["sample"]
    sample.mkdir(parents=True)
    sf.write(sample / "level2.wav", synth_music(1.0, 22050, seed=7, channels=1)[0], 22050)
    (sample / "meta.json").write_text(json.dumps({"genre": HOSTILE["genre"], "prime": HOSTILE["file"]}))
    match = {"detector": "audio", "training_file": {"source": HOSTILE["file"], "id": HOSTILE["file"]}, "seconds": 9.5,
             "training_offset_seconds": 2.0, "offset_seconds": 1.0, "score": 0.9}
    (sample / "copies.json").write_text(json.dumps({"input": HOSTILE["sample"], "flagged": True, "matches": [match]}))
    (run / "vqvae").mkdir()
    (run / "vqvae" / "eval.json").write_text(json.dumps({"segments": 1, "source": HOSTILE["genre"], "levels": []}))
    assert main(["review", "--run", str(run)]) == 0
    page = (run / "review.html").read_text()

    class Elements(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found, self.scripts, self.in_script = [], [], False

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, dict(attrs)))
            self.in_script = tag == "script"

        def handle_data(self, data):
            if self.in_script:
                self.scripts.append(data)

    parsed = Elements()
    parsed.feed(page)
    injected = [
        (tag, attrs) for tag, attrs in parsed.found
        if tag == "svg" or any(k.startswith("on") for k in attrs)
        or (tag == "img" and not (attrs.get("src") or "").startswith("data:image/png;base64,"))  # only our figures
    ]
    assert not injected
    assert not [s for s in parsed.scripts if "alert(" in s]
    for value in HOSTILE.values():
        assert value not in page  # never raw...
    for value in (HOSTILE["genre"], HOSTILE["sample"]):
        assert html_escape(value) in page  # ...but shown, as text


def test_every_player_decodes_and_metadata_is_a_table(run):
    meta = {"genre": "deep", "morph_to": "tech", "seconds": 6.0, "seed": 7, "settings": {"temperature": 0.98, "checkpoint": "best"},
            "checkpoints": {"vqvae": "v.pt", "prior_level2": {"path": "p", "step": 1250}, "refiner": None},
            "refined": "eval-refiner found the refiner helps", "seconds_per_stage": {"level2": 1.5, "decode": 0.2}}
    add_sample(run, "s001", 6.0, 22050, meta=meta)  # longer than the 4 s corpus files
    assert main(["review", "--run", str(run), "--out", str(run / "mp3"), "review.audio_codec=mp3"]) == 0
    page = (run / "mp3" / "review.html").read_text()
    sources = Players(page).sources
    assert len(sources) == 2 + 2 * 2 and all(src.startswith("data:audio/mpeg;base64,") for src in sources)
    seconds = sorted(decoded_seconds(src, run) for src in sources)
    assert seconds[-2:] == pytest.approx([6.0, 6.0], abs=0.06)  # the two sample stages, whole (MP3: a frame more)
    assert all(s > 1 for s in seconds)  # and the vocal-removal excerpts
    wav = review.audio_html(np.zeros(22050, np.float32), 22050, review.PageOptions(ReviewConfig(audio_codec="wav")))
    assert decoded_seconds(Players(wav).sources[0], run) == 1.0 and "data:audio/wav;base64,UklGR" in wav  # RIFF
    for cell in ("deep → tech", "0.98", "level2 1250", "level2 1.5, decode 0.2", "eval-refiner found the refiner helps"):
        assert f"<td>{html_escape(cell)}</td>" in page


def test_link_audio_points_at_the_runs_wavs_from_wherever_the_page_is(run, tmp_path):
    add_sample(run, "odd name #1 'q'", 2.0, 22050)
    for out in (None, tmp_path / "pages"):
        args = ["review", "--run", str(run), "--link-audio"] + ([] if out is None else ["--out", str(out)])
        assert main(args) == 0
        folder = out or run
        sources = Players((folder / "review.html").read_text()).sources
        linked = [src for src in sources if not src.startswith("data:")]
        assert len(linked) == 2 and len(sources) == 2 + 2 * 2  # vocal-removal excerpts stay embedded
        for src in linked:
            assert (folder / urllib.parse.unquote(src)).resolve().parent == (run / "samples" / "odd name #1 'q'").resolve()
            assert decoded_seconds(src, folder) == 2.0


def test_a_page_of_four_90_second_tracks_at_44k_stays_under_25_mb(run):
    """The issue's real size: 4 tracks x 90 s x 4 stages at 44.1 kHz, as make sample SECONDS=90 N=4 writes
    them (16-bit WAV: 127 MB of audio), in a page every player of which decodes to its whole track."""
    sr, stages = 44100, ("level2", "level1", "level0", "refined")
    track = synth_music(90.0, sr, seed=0, channels=1)[0]
    for k in range(4):
        sample = run / "samples" / f"long_{k}"
        sample.mkdir(parents=True)
        for stage in stages:
            sf.write(sample / f"{stage}.wav", np.roll(track, 1000 * k), sr, subtype="PCM_16")
        (sample / "meta.json").write_text(json.dumps({"seconds": 90.0}))
    assert main(["review", "--run", str(run)]) == 0
    page = (run / "review.html").read_text()
    assert len(page.encode()) < 25e6
    sources = Players(page).sources
    assert len(sources) == 16 + 2 * 2
    assert sorted(decoded_seconds(src, run) for src in sources)[-16:] == [90.0] * 16
