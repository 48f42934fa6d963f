"""eval-vqvae: the stage's sources, report and table, and that its numbers track reconstruction quality."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from jukebox_lite import cli
from jukebox_lite.runs import Run
from jukebox_lite.stages.evaluation import load_clips, segments_of
from jukebox_lite.stages.eval_vqvae import AUDIO_METRICS, evaluate, evaluate_run, format_table
from jukebox_lite.models.losses import compute_bandwidth
from tests.helpers import synth_music, write_audio
from tests.helpers import TINY_SR, make_run, save_vqvae, si_sdr_db, spread_segments, tiny_model


def trained_tiny_model(steps: int = 60):
    """The tiny VQ-VAE after a few Adam steps on synthesized music: clearly better than untrained."""
    model = tiny_model()
    clips = [torch.from_numpy(synth_music(0.064, TINY_SR, seed=s, channels=1)) for s in range(8)]  # (1, 1024)
    model.set_bandwidth(compute_bandwidth(clips))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = torch.stack(clips)  # (8, 1, 1024)
    for _ in range(steps):
        _, metrics = model(batch)
        optimizer.zero_grad()
        metrics["loss"].backward()
        optimizer.step()
    return model.eval()


def test_segments_are_spread_and_hop_aligned():
    wave = torch.arange(10_000, dtype=torch.float32)
    pieces = segments_of(wave, segment=1000, max_segments=3, top_hop=8)
    assert [p.shape for p in pieces] == [(1, 1000)] * 3
    assert [int(p[0, 0]) for p in pieces] == [0, 4500, 9000]
    assert [p.shape for p in segments_of(wave[:995], 1000, 3, 8)] == [(1, 992)]
    assert segments_of(wave[:5], 1000, 3, 8) == []


def test_stage_writes_json_and_logs_a_table(tmp_path, caplog):
    run = make_run(tmp_path)
    with caplog.at_level(logging.INFO):
        assert cli.main(["eval-vqvae", "--run", str(run), "--out", str(tmp_path / "reports"), "--segment-seconds", "0.2"]) == 0
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    assert report["source"] == "valid" and report["files"] == 1  # t1 is the only validation file
    assert report["segments"] == 3  # 0.7 s → three 0.2 s segments
    assert [entry["level"] for entry in report["levels"]] == [0, 1, 2]
    # the codebook figures and SI-SDR recomputed here from the model's own codes and decodings
    model = Run(run).load_vqvae("cpu")
    x = spread_segments(run / "data" / "audio" / "t1.flac", round(0.2 * TINY_SR) // 8 * 8, 3)  # (3, 1, segment)
    with torch.no_grad():
        codes = model.encode(x)
        for level, entry in enumerate(report["levels"]):
            assert all(np.isfinite(entry[name]) for name in AUDIO_METRICS)
            _, counts = np.unique(codes[level].numpy(), return_counts=True)
            share = counts / counts.sum()
            assert entry["codebook_usage"] == pytest.approx(len(counts) / 16)
            assert entry["perplexity"] == pytest.approx(np.exp(-(share * np.log(share)).sum()))
            si_sdr = si_sdr_db(x[:, 0], model.decode(codes, level)[:, 0])
            assert entry["si_sdr_db"] == pytest.approx(float(si_sdr.mean()), abs=1e-3)
    assert "SI-SDR dB" in caplog.text and "perplexity" in caplog.text


def test_falls_back_to_train_split_with_a_warning(tmp_path, caplog):
    run = make_run(tmp_path, seconds=(0.5,))
    manifest = run / "data" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"valid"', '"train"'))
    with caplog.at_level(logging.WARNING):
        report = evaluate_run(run, segment_seconds=0.2)
    assert report["source"] == "train" and "validation split is empty" in caplog.text
    assert (run / "vqvae" / "eval.json").is_file()


def test_audio_folder_is_decoded_downmixed_and_resampled(tmp_path, caplog):
    run = make_run(tmp_path, seconds=(0.5,))
    folder = tmp_path / "audio"
    write_audio(folder / "a.wav", synth_music(0.5, 32000, seed=3, channels=2), 32000)
    write_audio(folder / "sub" / "b.flac", synth_music(0.3, TINY_SR, seed=4, channels=1), TINY_SR)
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    with caplog.at_level(logging.WARNING):
        report = evaluate_run(run, tmp_path, audio_dir=folder, segment_seconds=0.2, max_segments=1)
    assert report["files"] == 3 and report["segments"] == 2 and "skipping" in caplog.text
    assert report["seconds"] == pytest.approx(0.4, abs=1e-3)


def test_clips_are_the_mean_of_the_channels_at_the_model_rate(tmp_path):
    """A stereo 32 kHz file whose channels differ: each clip is their mean, resampled to 16 kHz (channel 0
    alone, a sum, or the file's own rate all miss the tones' expected samples)."""
    def tones(sr: int, seconds: float = 0.5) -> np.ndarray:
        t = np.arange(round(seconds * sr)) / sr
        return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 1250 * t)]).astype(np.float32)

    path = write_audio(tmp_path / "a.wav", tones(32000), 32000, subtype="FLOAT")
    segment = round(0.2 * TINY_SR)
    (clip,) = load_clips([path], "a folder", False, TINY_SR, segment, max_segments=1, hop=8)
    expected = tones(TINY_SR).mean(axis=0)[:segment]
    assert clip.shape == (1, segment)
    edge = 200  # the resampling filter's start-up transient
    assert np.abs(clip[0, edge:].numpy() - expected[edge:]).max() < 1e-3


def test_user_errors(tmp_path, capsys):
    run = make_run(tmp_path, seconds=(0.5,))
    assert cli.main(["eval-vqvae", "--run", str(run), "--audio", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval-vqvae", "--run", str(run), "--audio", str(tmp_path / "empty")]) == 2
    assert "No audio files" in capsys.readouterr().err
    assert cli.main(["eval-vqvae", "--run", str(tmp_path / "norun")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_metrics_track_reconstruction_quality():
    """A briefly trained VQ-VAE must score better than the untrained one on held-out audio."""
    clips = [torch.from_numpy(synth_music(0.128, TINY_SR, seed=s, channels=1)) for s in (100, 101)]  # (1, 2048)
    before = evaluate(tiny_model(), clips)
    after = evaluate(trained_tiny_model(), clips)
    for level in range(3):
        assert after[level]["spectral_convergence_db"] < before[level]["spectral_convergence_db"] - 5
    for level in (0, 1):  # 60 steps teach the coarsest level little beyond its spectral envelope
        assert after[level]["log_mel_distance"] < before[level]["log_mel_distance"] - 0.1
        assert after[level]["si_sdr_db"] > before[level]["si_sdr_db"] + 10
        assert after[level]["codebook_usage"] > before[level]["codebook_usage"]
    assert format_table(after).count("\n") == 3


def test_report_uses_the_checkpoint_it_evaluates(tmp_path):
    run = make_run(tmp_path, seconds=(0.5, 0.5))
    first = evaluate_run(run, tmp_path / "a", segment_seconds=0.2)
    save_vqvae(run, trained_tiny_model(steps=5))
    second = evaluate_run(run, tmp_path / "b", segment_seconds=0.2)
    assert first["vqvae_fingerprint"] != second["vqvae_fingerprint"]
    assert first["levels"] != second["levels"]
