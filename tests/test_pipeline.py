"""End to end through the command line, as `make demo` runs it: demo corpus → data stage (real Spleeter)
→ listening review.

Grows with the pipeline: each stage that lands adds its step here with the demo recipe.
"""

import json
from pathlib import Path

import soundfile as sf

from jukebox_lite import review
from jukebox_lite.cli import main

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"


def test_demo_pipeline(tmp_path):
    corpus, run = tmp_path / "demo", tmp_path / "run"
    assert main(["demo-corpus", "--out", str(corpus), "--tracks", "4", "--seconds", "8"]) == 0
    assert main(["prepare", "--config", str(DEMO), "--run", str(run), "--audio", str(corpus)]) == 0

    manifest = [json.loads(line) for line in (run / "data/manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 5 and not (run / "data/rejected.jsonl").exists()
    assert {row["labels"]["genre"] for row in manifest} == {"deep_house", "tech_house", "example_song"}
    for row in manifest:
        info = sf.info(run / "data" / row["path"])
        assert (info.samplerate, info.channels) == (22050, 1)

    # Vocal removal at work: the pop excerpt loses its voice, instrumentals pass nearly unchanged.
    change = {pair["id"]: pair["change"] for pair in review.separation_pairs(run, limit=len(manifest))}
    for row in manifest:
        if row["labels"]["genre"] == "example_song":
            assert change[row["id"]] > 0.05, "Spleeter should have taken the vocals out of the pop excerpt"
        else:
            assert change[row["id"]] < 0.01, "an instrumental should pass through vocal removal nearly unchanged"

    assert main(["review", "--run", str(run)]) == 0
    assert (run / "review.html").read_text().count('src="data:audio/wav;base64,') == 6
