"""End to end through the command line, as `make demo` runs it: demo corpus → data stage (real Spleeter).

Grows with the pipeline: each stage that lands adds its step here with the demo recipe.
"""

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from jukebox_lite import audio
from jukebox_lite.cli import main

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_demo_corpus_through_the_data_stage(tmp_path):
    corpus, run = tmp_path / "demo", tmp_path / "run"
    assert main(["demo-corpus", "--out", str(corpus), "--tracks", "4", "--seconds", "8"]) == 0
    assert main(["prepare", "--config", str(DEMO), "--run", str(run), "--audio", str(corpus)]) == 0

    manifest = [json.loads(line) for line in (run / "data/manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 5 and not (run / "data/rejected.jsonl").exists()
    assert {row["labels"]["genre"] for row in manifest} == {"deep_house", "tech_house", "example_song"}
    for row in manifest:
        prepared, sr = sf.read(run / "data" / row["path"], dtype="float32")
        assert sr == 22050 and prepared.ndim == 1
        source, source_sr = audio.load_audio(corpus / row["source"])
        mixture = audio.resample(audio.to_mono(source), source_sr, sr)
        start, end = audio.nonsilent_span(mixture, sr, -50.0)
        similarity = correlation(mixture[0, start:end], prepared)
        if row["labels"]["genre"] == "example_song":
            assert similarity < 0.95, "Spleeter should have taken the vocals out of the pop excerpt"
        else:
            assert similarity > 0.99, "an instrumental should pass through vocal removal nearly unchanged"
