"""`jukebox-lite refine`: the command end to end, and every bad input it must turn into a clear outcome."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.cli import main
from jukebox_lite.models.refiner import RefinerUNet, save_refiner
from tests.conftest import synth_music, write_audio
from tests.helpers import REFINER_SR, tiny_refiner_config, tiny_refiner_vqvae


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with a tiny VQ-VAE and a refiner made for it (random weights, nonzero output)."""
    vqvae = tiny_refiner_vqvae(seed=0)
    save_checkpoint(tmp_path / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(vqvae.config), vqvae.state_dict())
    torch.manual_seed(0)
    model = RefinerUNet(tiny_refiner_config(steps=2), vqvae_fingerprint=vqvae.fingerprint())
    torch.nn.init.normal_(model.out.weight, std=0.01)
    save_refiner(tmp_path / "refiner" / "last.pt", model)
    return tmp_path


def refine_cli(run, src, out, *extra) -> int:
    return main(["refine", "--run", str(run), "--in", str(src), "--out", str(out), *map(str, extra)])


def test_refines_a_file_deterministically(run_dir, tmp_path):
    src = write_audio(tmp_path / "coarse.wav", synth_music(0.6, REFINER_SR, seed=1, channels=1), REFINER_SR)
    assert refine_cli(run_dir, src, tmp_path / "a.wav", "--seed", 3) == 0
    assert refine_cli(run_dir, src, tmp_path / "b.flac", "--seed", 3) == 0
    assert refine_cli(run_dir, src, tmp_path / "c.wav", "--seed", 4, "--steps", 3) == 0
    a, sr = sf.read(tmp_path / "a.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "b.flac", dtype="float32")
    c, _ = sf.read(tmp_path / "c.wav", dtype="float32")
    assert sr == REFINER_SR and a.shape == (int(0.6 * REFINER_SR),) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=2**-22, rtol=0)  # same 24-bit samples; WAV and FLAC readers round apart
    assert not np.allclose(a, c, atol=1e-3)
    assert refine_cli(run_dir, src, tmp_path / "same.wav", "--strength", 0) == 0
    same, _ = sf.read(tmp_path / "same.wav", dtype="float32")
    np.testing.assert_allclose(same, sf.read(src, dtype="float32")[0], atol=2**-22)  # 24-bit rounding only


def test_other_rate_is_resampled_and_stereo_downmixed_with_warnings(run_dir, tmp_path, caplog):
    src = write_audio(tmp_path / "stereo16k.wav", synth_music(0.5, 16000, seed=2, channels=2), 16000)
    with caplog.at_level(logging.WARNING):
        assert refine_cli(run_dir, src, tmp_path / "out.wav") == 0
    assert "16000 Hz; resampling" in caplog.text and "2 channels" in caplog.text
    out, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    assert sr == REFINER_SR and out.shape == (int(0.5 * REFINER_SR),) and np.isfinite(out).all()


def test_silent_input_warns_and_gives_finite_audio(run_dir, tmp_path, caplog):
    src = write_audio(tmp_path / "silent.wav", np.zeros((1, 1234), np.float32), REFINER_SR)
    with caplog.at_level(logging.WARNING):
        assert refine_cli(run_dir, src, tmp_path / "out.wav") == 0
    assert "is silent" in caplog.text
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    assert out.shape == (1234,) and np.isfinite(out).all()


def test_nan_input_is_a_clear_error_and_keeps_the_old_output(run_dir, tmp_path, capsys):
    audio = synth_music(0.5, REFINER_SR, seed=3, channels=1)
    audio[0, 100] = np.nan
    src = write_audio(tmp_path / "nan.wav", audio, REFINER_SR, subtype="FLOAT")
    out = tmp_path / "out.wav"
    out.write_bytes(b"earlier result")
    assert refine_cli(run_dir, src, out) == 2
    err = capsys.readouterr().err
    assert "nan.wav" in err and "NaN" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"earlier result"


def test_refiner_for_another_vqvae_is_refused(run_dir, tmp_path, capsys):
    other = tiny_refiner_vqvae(seed=1)
    save_checkpoint(run_dir / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(other.config), other.state_dict())
    src = write_audio(tmp_path / "coarse.wav", synth_music(0.3, REFINER_SR, seed=1, channels=1), REFINER_SR)
    assert refine_cli(run_dir, src, tmp_path / "out.wav") == 2
    assert "another VQ-VAE" in capsys.readouterr().err
    assert not (tmp_path / "out.wav").exists()


def test_missing_checkpoint_and_bad_arguments_are_clear_errors(run_dir, tmp_path, capsys):
    src = write_audio(tmp_path / "coarse.wav", synth_music(0.3, REFINER_SR, seed=1, channels=1), REFINER_SR)
    assert refine_cli(tmp_path / "empty_run", src, tmp_path / "out.wav") == 2
    assert "No refiner at" in capsys.readouterr().err
    assert refine_cli(run_dir, src, tmp_path / "out.mp3") == 2
    assert ".wav or .flac" in capsys.readouterr().err
    assert refine_cli(run_dir, src, tmp_path / "out.wav", "--strength", 1.5) == 2
    assert "--strength" in capsys.readouterr().err
    assert refine_cli(run_dir, tmp_path / "missing.wav", tmp_path / "out.wav") == 2
    assert "missing.wav" in capsys.readouterr().err
    assert not (tmp_path / "out.wav").exists()
