"""End to end, as a user runs it: `make data` then `make all` on the demo corpus with the demo recipe,
every training stage cut to a few steps (ARGS overrides), every stage's output checked.

This is `make demo` in miniature: real Spleeter, real training loops, real sampling through every
level, the refiner, the copy detector and the review page.
"""

import json
import os
import subprocess

import numpy as np
import soundfile as sf

from jukebox_lite.models.checkpoints import load_vqvae
from jukebox_lite.runs import Run
from jukebox_lite.stages import review
from jukebox_lite.cli import main
from tests.helpers import ROOT, fake_venv, scalars

FEW_STEPS = [
    f"{section}.train.{key}={value}"
    for section in ("vqvae", "prior_level2", "prior_level1", "prior_level0", "refiner")
    for key, value in (("steps", 12), ("warmup_steps", 2), ("checkpoint_every", 6), ("log_every", 3), ("media_every", 6))
] + ["vqvae.train.batch_size=2", "refiner.train.batch_size=4", "prior_level2.min_duration=2.0", "sample.checkpoint=best"]


def make(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_demo_pipeline_through_make(tmp_path):
    corpus, run = tmp_path / "demo", tmp_path / "run"
    assert main(["demo-corpus", "--out", str(corpus), "--tracks", "4", "--seconds", "8"]) == 0
    variables = [f"CONFIG={ROOT / 'pipelines/demo.yaml'}", f"RUN={run}", f"VENV={fake_venv(tmp_path)}", f"ARGS={' '.join(FEW_STEPS)}"]
    make("data", f"AUDIO={corpus}", *variables)

    manifest = [json.loads(line) for line in (run / "data/manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 5 and not (run / "data/rejected.jsonl").exists()
    assert {row["labels"]["genre"] for row in manifest} == {"deep_house", "tech_house", "example_song"}
    # Vocal removal at work: the pop excerpt loses its voice, instrumentals pass nearly unchanged.
    change = {pair["id"]: pair["change"] for pair in review.separation_pairs(Run(run), limit=len(manifest))}
    for row in manifest:
        limit_ok = change[row["id"]] > 0.05 if row["labels"]["genre"] == "example_song" else change[row["id"]] < 0.01
        assert limit_ok, (row["source"], change[row["id"]])

    make("all", "GENRE=deep_house", "SECONDS=3", "N=1", "SAMPLE_ARGS=--refine-steps 2 --name e2e", *variables)

    for stage in ("vqvae", "prior_level2", "prior_level1", "prior_level0", "refiner"):
        assert (run / stage / "last.pt").is_file() and (run / stage / ".done").is_file(), stage
        assert list((run / stage / "tb").iterdir()), f"{stage} logged nothing to TensorBoard"
        assert (run / stage / "best.pt").is_file() and scalars(run / stage, "valid/loss"), f"{stage} was not validated"
    vqvae_report = json.loads((run / "vqvae/eval.json").read_text())
    assert vqvae_report["vqvae_fingerprint"] == load_vqvae(run / "vqvae").fingerprint()  # the trained VQ-VAE was judged
    assert vqvae_report["source"] == "valid" and vqvae_report["files"] == sum(row["split"] == "valid" for row in manifest)
    assert [level["level"] for level in vqvae_report["levels"]] == [0, 1, 2] and vqvae_report["segments"] > 0
    verdict = json.loads((run / "refiner/eval.json").read_text())
    assert (run / "codes/index.json").is_file()
    sample = run / "samples" / "e2e_0"
    # a refiner that hurts is skipped, unless its estimate alone helped: then the estimate alone refines
    estimate_helps = all(verdict["estimate_closer"][m] for m in verdict["verdict_metrics"])
    estimate_chosen = estimate_helps and (not verdict["helpful"] or sum(verdict["estimate_closer"].values()) > sum(verdict["closer"].values()))
    refined = verdict["helpful"] or estimate_helps
    stages = ["level2", "level1", "level0"] + (["refined"] if refined else [])
    for stage in stages:
        info = sf.info(sample / f"{stage}.wav")
        assert (info.samplerate, info.frames) == (22050, 3 * 22050), stage
    meta = json.loads((sample / "meta.json").read_text())
    assert (sample / "refined.wav").exists() == refined
    assert meta["refined"].startswith("eval-refiner found the refiner")
    assert ("refining with the estimate alone" in meta["refined"]) == estimate_chosen
    assert ("helps" in meta["refined"]) == (verdict["helpful"] and not estimate_chosen)
    assert meta["genre"] == "deep_house" and meta["checkpoints"]["prior_level2"]["path"].endswith("best.pt")
    copies = json.loads((sample / "copies.json").read_text())
    assert copies["input"] == str(sample / f"{stages[-1]}.wav") and not copies["flagged"]  # 3 s: under the 8-s flag
    html = (run / "review.html").read_text()
    assert html.count('src="data:audio/ogg;base64,') == 3 * 2 + len(stages)  # vocal-removal pairs + the sample's stages
    assert "e2e_0" in html and "Copy check" in html
    assert "VQ-VAE reconstruction" in html and "Refiner vs decoded level-0 audio" in html
    assert "No training logs" not in html

    rerun = make("all", "GENRE=deep_house", "SECONDS=3", "N=1", *variables)
    assert "train-" not in rerun.stdout  # every stage is done: only the cheap page and copy check run again

    # the copy check on this corpus finds a replayed training file: its first 3 s of codes as a sample
    corpus = Run(run).codes_corpus()
    planted = Run(run).sample("planted")
    planted.path.mkdir()
    np.save(planted.codes, np.asarray(corpus.file_codes(0, 2))[: 3 * 22050 // 128].astype(np.int16))
    assert main(["check-copies", "--run", str(run), "copies.flag_seconds=2"]) == 0
    replayed = json.loads(planted.copies.read_text())
    assert replayed["flagged"] and replayed["matches"][0]["training_file"]["id"] == corpus.files[0]["id"]
    assert not json.loads((sample / "copies.json").read_text())["flagged"]
