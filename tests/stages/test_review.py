"""The listening-review page: executed headlessly, self-contained, showing what the run holds."""

import csv
import json
import re
from html import escape as html_escape

import numpy as np
import pytest
import soundfile as sf
from torch.utils.tensorboard import SummaryWriter

from data_prep import ingest
from jukebox_lite.runs import Run
from jukebox_lite.stages import review
from jukebox_lite.cli import main
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


def test_page_is_self_contained_and_shows_corpus_samples_and_curves(run):
    sample = run / "samples" / "s001"
    sample.mkdir(parents=True)
    for stage in ("level2", "refined"):
        sf.write(sample / f"{stage}.wav", synth_music(3.0, 22050, seed=7, channels=1)[0], 22050)
    (sample / "meta.json").write_text('{"seed": 7}')
    match = {"seconds": 9.5, "source": "deep/x/t0.wav", "sample_start": 1.0, "corpus_start": 2.0, "agreement": 0.9}
    (sample / "copies.json").write_text(json.dumps({"flagged": True, "longest_seconds": 9.5, "matches": [match]}))
    with SummaryWriter(run / "vqvae" / "tb") as writer:
        for step in range(5):
            writer.add_scalar("loss/total", 1.0 / (step + 1), step)

    assert main(["review", "--run", str(run)]) == 0
    html = (run / "review.html").read_text()
    assert not re.search(r'(src|href)="https?:', html), "the page must not load anything from the network"
    players = re.findall(r'<audio controls="" preload="none" src="data:audio/wav;base64,UklGR', html)  # RIFF
    assert len(players) == 2 + 2 * 2  # two samples' stages + two vocal-removal pairs
    assert "deep" in html and "tech" in html and "silent: nothing louder than" in html
    assert "s001" in html and "No samples in this run yet" not in html
    assert "<b>FLAGGED</b>" in html and "deep/x/t0.wav" in html
    assert "vqvae: loss/total" not in html  # titles are drawn into the PNG, not HTML...
    assert html.count("data:image/png;base64,") >= 4  # ...so count the figures: 2 pairs, 1 sample, 1 curve set


def test_training_curves_and_samples_readers(run):
    with SummaryWriter(run / "prior_level2" / "tb") as writer:
        for step in range(3):
            writer.add_scalar("loss", 3.0 - step, step)
    assert review.training_curves(Run(run)) == {"prior_level2": {"loss": [(0, 3.0), (1, 2.0), (2, 1.0)]}}
    assert review.samples(Run(run)) == []


def test_curve_panels_draw_validation_over_training():
    tags = {"train/loss": [(1, 2.0)], "valid/loss": [(1, 2.5)], "valid/gap": [(1, 0.5)], "train/lr": [(1, 0.1)], "media/x": [(1, 1.0)]}
    assert review.curve_panels(tags) == {
        "loss": {"train": [(1, 2.0)], "valid": [(1, 2.5)]}, "valid/gap": {"valid/gap": [(1, 0.5)]},
        "lr": {"train": [(1, 0.1)]}, "media/x": {"media/x": [(1, 1.0)]},
    }


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


def test_clip_picks_the_loudest_stretch():
    sr = 100
    x = np.zeros(20 * sr, np.float32)
    x[12 * sr : 14 * sr] = 0.5
    excerpt = review.clip(x, sr, seconds=4)
    assert excerpt.size == 4 * sr and np.abs(excerpt).max() == 0.5


def test_review_before_the_data_stage_is_one_clear_error(tmp_path, capsys):
    assert main(["review", "--run", str(tmp_path)]) == 2
    assert "run make data" in capsys.readouterr().err


HOSTILE = {
    "file": "<svg onload=alert(2)>",
    "genre": "<script>alert(1)</script>",
    "artist": "<b onmouseover=alert(4)>x</b>",
    "sample": "<img src=x onerror=alert(3)>",
}


def test_names_from_the_corpus_and_the_run_never_become_markup(tmp_path):
    """File names, labels and sample names are data: the page shows them as text, and no element,
    script or event handler of the parsed page carries them."""
    from html.parser import HTMLParser

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
    match = {"seconds": 9.5, "source": HOSTILE["file"], "sample_start": 1.0, "corpus_start": 2.0, "agreement": 0.9}
    (sample / "copies.json").write_text(json.dumps({"flagged": True, "longest_seconds": 9.5, "matches": [match]}))
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
