"""`jukebox-lite refine`: the command end to end, and every bad input it must turn into a clear outcome."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from jukebox_lite.core.audio import resample
from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.cli import main
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.models.checkpoints import load_refiner, save_refiner
from tests.helpers import synth_music, write_audio
from tests.helpers import TINY_SR, tiny_refiner_config, tiny_refiner_vqvae


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with a tiny VQ-VAE and a refiner made for it (random weights, nonzero output)."""
    vqvae = tiny_refiner_vqvae(seed=0)
    save_checkpoint(tmp_path / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(vqvae.config), vqvae.state_dict())
    torch.manual_seed(0)
    model = Refiner(tiny_refiner_config(steps=2), vqvae_fingerprint=vqvae.fingerprint())
    torch.nn.init.normal_(model.estimator.out.weight, std=0.01)
    torch.nn.init.normal_(model.detail.out.weight, std=0.01)
    save_refiner(tmp_path / "refiner" / "last.pt", model)
    return tmp_path


def refine_cli(run, sources, out, *extra) -> int:
    """`jukebox-lite refine --run RUN SOURCE... --out FOLDER EXTRA...` (one source or a list)."""
    sources = sources if isinstance(sources, list) else [sources]
    return main(["refine", "--run", str(run), *map(str, sources), "--out", str(out), *map(str, extra)])


def refined(folder, source) -> tuple[np.ndarray, int]:
    return sf.read(folder / f"{source.stem}.refined.wav", dtype="float32")


def test_refines_files_deterministically(run_dir, tmp_path):
    src = write_audio(tmp_path / "coarse.wav", synth_music(0.6, TINY_SR, seed=1, channels=1), TINY_SR)
    other = write_audio(tmp_path / "other.wav", synth_music(0.4, TINY_SR, seed=5, channels=1), TINY_SR)
    assert refine_cli(run_dir, src, tmp_path / "a", "--seed", 3) == 0
    assert refine_cli(run_dir, [other, src], tmp_path / "b", "--seed", 3) == 0  # several files, one call
    assert refine_cli(run_dir, src, tmp_path / "c", "--seed", 4, "--steps", 3) == 0
    a, sr = refined(tmp_path / "a", src)
    b, _ = refined(tmp_path / "b", src)
    c, _ = refined(tmp_path / "c", src)
    assert sr == TINY_SR and a.shape == (int(0.6 * TINY_SR),) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # a file's result does not depend on the others in the call
    assert refined(tmp_path / "b", other)[0].shape == (int(0.4 * TINY_SR),)
    assert not np.allclose(a, c, atol=1e-3)
    assert refine_cli(run_dir, src, tmp_path / "estimate", "--strength", 0) == 0  # the estimate alone: no noise, no seed
    audio = torch.from_numpy(sf.read(src, dtype="float32")[0])[None, None]
    expected = refine(load_refiner(run_dir / "refiner"), audio, strength=0.0)[0, 0].numpy()
    np.testing.assert_allclose(refined(tmp_path / "estimate", src)[0], expected, atol=2**-22)  # 24-bit
    assert not np.allclose(expected, audio[0, 0].numpy(), atol=1e-4)


def test_other_rate_is_resampled_and_stereo_downmixed_with_warnings(run_dir, tmp_path, caplog):
    stereo = synth_music(0.5, 22050, seed=2, channels=2)
    stereo[1] = synth_music(0.5, 22050, seed=7, channels=1)[0]  # the channels differ: channel 0 alone is not their mean
    src = write_audio(tmp_path / "stereo22k.wav", stereo, 22050, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        assert refine_cli(run_dir, src, tmp_path / "out", "--strength", 0) == 0  # the estimate alone: deterministic
    assert "22050 Hz; resampling" in caplog.text and "2 channels" in caplog.text
    out, sr = refined(tmp_path / "out", src)
    assert sr == TINY_SR and out.shape == (int(0.5 * TINY_SR),)
    mono = torch.from_numpy(resample(stereo.mean(axis=0, keepdims=True), 22050, TINY_SR))[None]  # (1, 1, 8000)
    expected = refine(load_refiner(run_dir / "refiner"), mono, strength=0.0)[0, 0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_silent_input_warns_and_gives_finite_audio(run_dir, tmp_path, caplog):
    src = write_audio(tmp_path / "silent.wav", np.zeros((1, 1234), np.float32), TINY_SR)
    with caplog.at_level(logging.WARNING):
        assert refine_cli(run_dir, src, tmp_path / "out") == 0
    assert "is silent" in caplog.text
    out, _ = refined(tmp_path / "out", src)
    assert out.shape == (1234,) and np.isfinite(out).all()


def test_nan_input_is_a_clear_error_and_keeps_the_old_output(run_dir, tmp_path, capsys):
    audio = synth_music(0.5, TINY_SR, seed=3, channels=1)
    audio[0, 100] = np.nan
    src = write_audio(tmp_path / "nan.wav", audio, TINY_SR, subtype="FLOAT")
    good = write_audio(tmp_path / "good.wav", synth_music(0.3, TINY_SR, seed=1, channels=1), TINY_SR)
    out = tmp_path / "out"
    out.mkdir()
    (out / "nan.refined.wav").write_bytes(b"earlier result")
    assert refine_cli(run_dir, [good, src], out) == 2  # every input is checked before any is refined
    err = capsys.readouterr().err
    assert "nan.wav" in err and "NaN" in err and len(err.strip().splitlines()) == 1
    assert (out / "nan.refined.wav").read_bytes() == b"earlier result"
    assert not (out / "good.refined.wav").exists()


def test_refiner_for_another_vqvae_is_refused(run_dir, tmp_path, capsys):
    other = tiny_refiner_vqvae(seed=1)
    save_checkpoint(run_dir / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(other.config), other.state_dict())
    src = write_audio(tmp_path / "coarse.wav", synth_music(0.3, TINY_SR, seed=1, channels=1), TINY_SR)
    assert refine_cli(run_dir, src, tmp_path / "out") == 2
    assert "another VQ-VAE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_bad_arguments_are_clear_errors(run_dir, tmp_path, capsys):
    src = write_audio(tmp_path / "coarse.wav", synth_music(0.3, TINY_SR, seed=1, channels=1), TINY_SR)
    assert refine_cli(tmp_path / "empty_run", src, tmp_path / "out") == 2
    assert "No refiner at" in capsys.readouterr().err
    assert refine_cli(run_dir, src, src) == 2  # --out is a folder, never a file to overwrite
    assert "is a file" in capsys.readouterr().err
    assert refine_cli(run_dir, src, tmp_path / "out", "--strength", 1.5) == 2
    assert "--strength" in capsys.readouterr().err
    assert refine_cli(run_dir, tmp_path / "missing.wav", tmp_path / "out") == 2
    assert "missing.wav" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
