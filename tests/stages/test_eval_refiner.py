"""eval-refiner: the report holds every metric for decoded and refined audio, and its verdict follows the numbers."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from jukebox_lite import cli
from jukebox_lite.core.atomic import file_sha256
from jukebox_lite.stages.eval_refiner import CLOSER_IS_HIGHER, VERDICT_METRICS, evaluate_run, verdict
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae, save_refiner
from tests.helpers import TINY_SR, make_run, refiner_recipe, si_sdr_db, spectral_convergence_db, spread_segments, tiny_model

METRICS = (*CLOSER_IS_HIGHER, "high_band_error_db")


def add_refiner(tmp_path, run, vqvae=None, randomised: bool = True) -> None:
    """A tiny refiner for the run's VQ-VAE (or `vqvae`), with random weights (the stage's plumbing is under
    test), or as built (zero output layers and equalizer: it returns its input)."""
    torch.manual_seed(0)
    fingerprint = (vqvae or load_vqvae(run / "vqvae")).fingerprint()
    model = Refiner(refiner_recipe(tmp_path).refiner, vqvae_fingerprint=fingerprint)
    for p in model.parameters() if randomised else ():
        p.data.normal_(std=0.02)
    save_refiner(run / "refiner" / "last.pt", model)


@pytest.fixture
def run(tmp_path):
    run = make_run(tmp_path)  # 16 kHz; the 0.7 s file is the validation split
    add_refiner(tmp_path, run)
    return run


def test_report_has_every_metric_and_a_verdict_that_follows_the_numbers(run, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        assert cli.main(["eval-refiner", "--run", str(run), "--out", str(tmp_path / "reports"), "--segment-seconds", "0.2"]) == 0
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    assert report["source"] == "valid" and report["files"] == 1 and report["segments"] == 3
    assert report["cond_level"] == 0 and report["steps"] == 2 and report["strength"] == 1.0
    assert report["refiner_sha256"] == file_sha256(run / "refiner" / "last.pt")  # which weights were judged
    for name in ("decoded", "refined", "estimate"):  # the estimate alone too: the refiner has a detail model
        assert set(report[name]) == set(METRICS)
    assert report["estimate"] != pytest.approx(report["refined"]) and set(report["estimate_closer"]) == set(CLOSER_IS_HIGHER)
    for metric, higher in CLOSER_IS_HIGHER.items():
        better = report["refined"][metric] > report["decoded"][metric] if higher else report["refined"][metric] < report["decoded"][metric]
        assert report["closer"][metric] == better, metric
        assert report["segment_win_rate"][metric] in (0, 1 / 3, 2 / 3, 1)
    assert report["helpful"] == all(report["closer"][m] for m in VERDICT_METRICS)
    assert report["closer_on_every_metric"] == all(report["closer"].values())
    assert abs(report["decoded"]["high_band_error_db"]) <= report["decoded"]["high_band_abs_error_db"] + 1e-4
    assert "segments won" in caplog.text and "estimate alone" in caplog.text and ("does NOT help" in caplog.text) != report["helpful"]


def test_a_refiner_that_returns_its_input_is_closer_on_nothing(run, tmp_path):
    add_refiner(tmp_path, run, randomised=False)
    report = evaluate_run(run, tmp_path, segment_seconds=0.2, strength=0.0)
    assert report["refined"] == pytest.approx(report["decoded"])
    assert not any(report["closer"].values()) and not report["helpful"]
    assert all(rate == 0 for rate in report["segment_win_rate"].values())
    add_refiner(tmp_path, run)  # random weights: the estimate alone (strength 0) already changes the audio
    estimated = evaluate_run(run, tmp_path, segment_seconds=0.2, strength=0.0)
    assert estimated["refined"] != pytest.approx(report["decoded"])
    # both values recomputed here: decoded at the refiner's level 0, and the refiner's own forward pass on it
    vqvae, refiner = load_vqvae(run / "vqvae"), load_refiner(run / "refiner")
    x = spread_segments(run / "data" / "audio" / "t1.flac", round(0.2 * TINY_SR) // 8 * 8, 3)  # (3, 1, segment)
    with torch.no_grad():
        decoded = vqvae.decode(vqvae.encode(x, levels=[0]), 0)
        estimate, _ = refiner(decoded)
    for name, audio in (("decoded", decoded), ("refined", estimate)):
        values = (report if name == "decoded" else estimated)[name]
        assert values["si_sdr_db"] == pytest.approx(float(si_sdr_db(x[:, 0], audio[:, 0]).mean()), abs=1e-3), name
        sc = spectral_convergence_db(x[:, 0], audio[:, 0])
        assert values["spectral_convergence_db"] == pytest.approx(float(sc.mean()), abs=1e-3), name


def test_verdict_directions():
    decoded = {"mr_stft_distance": [1.0, 1.0], "log_mel_distance": [0.5, 0.5], "high_band_abs_error_db": [6.0, 6.0],
               "high_band_error_db": [-6.0, -6.0], "spectral_convergence_db": [-10.0, -10.0], "si_sdr_db": [10.0, 10.0]}
    better = {"mr_stft_distance": [0.8, 1.1], "log_mel_distance": [0.4, 0.4], "high_band_abs_error_db": [1.0, 3.0],
              "high_band_error_db": [1.0, -3.0], "spectral_convergence_db": [-12.0, -11.0], "si_sdr_db": [8.0, 9.0]}
    report = verdict({"decoded": decoded, "refined": better})
    assert report["closer"] == {"mr_stft_distance": True, "log_mel_distance": True, "high_band_abs_error_db": True,
                                "spectral_convergence_db": True, "si_sdr_db": False}
    assert report["helpful"] and not report["closer_on_every_metric"]
    assert report["segment_win_rate"]["mr_stft_distance"] == 0.5 and report["segment_win_rate"]["si_sdr_db"] == 0
    assert report["refined"]["high_band_error_db"] == -1.0


def test_empty_validation_split_falls_back_to_train_with_a_warning(run, tmp_path, caplog):
    manifest = run / "data" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"valid"', '"train"'))
    with caplog.at_level(logging.WARNING):
        report = evaluate_run(run, segment_seconds=0.2, max_segments=1)
    assert report["source"] == "train" and report["files"] == 4 and "validation split is empty" in caplog.text
    assert (run / "refiner" / "eval.json").is_file()


def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    run = make_run(tmp_path)
    out = tmp_path / "reports"

    def stage(*extra: str) -> str:
        assert cli.main(["eval-refiner", "--run", str(run), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    assert "No refiner at" in stage() and "train-refiner" in stage()
    add_refiner(tmp_path, run, vqvae=tiny_model(seed=9))
    assert "another VQ-VAE's audio" in stage()
    assert "--strength is 2.0" in stage("--strength", "2")
    assert "No best.pt in" in stage("sample.checkpoint=best")  # it judges the weights sample would load
    assert "sample.refine is 'sometimes'" in stage("sample.refine=sometimes")
    (run / "vqvae" / "last.pt").unlink()
    assert "No VQ-VAE at" in stage()
    assert not out.exists()
