"""train-refiner on a tiny run: the loss falls, the checkpoint ties the refiner to its VQ-VAE, clear refusals."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import soundfile as sf
import torch

from jukebox_lite import cli
from jukebox_lite.core.checkpoint import load_checkpoint
from jukebox_lite.algorithms.datasets import MEDIA_STREAM, RESIDUAL_STREAM, AudioWindows
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.models.refiner import EQUALIZER_TAPS, Refiner, envelope
from jukebox_lite.algorithms.refining import matched_filter
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae, save_refiner
from jukebox_lite.models.losses import multi_resolution_stft_distance
from jukebox_lite.stages.train_refiner import RESIDUAL_WINDOWS, stratified_times, train_refiner
from tests.helpers import REFINER_RECIPE, TINY_SR, make_run, refiner_recipe, save_vqvae, scalars, tiny_model

BANDS = [f"train/detail_loss_t{a}_{b}" for a, b in (("0.00", "0.25"), ("0.25", "0.50"), ("0.50", "0.75"), ("0.75", "1.00"))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (16 kHz corpus, a tiny VQ-VAE) with a refiner trained for 40 steps, and the training result."""
    tmp = tmp_path_factory.mktemp("refiner")
    run = make_run(tmp, seconds=(1.3, 0.7, 2.1, 0.9))
    return run, train_refiner(refiner_recipe(tmp), run)


def test_stage_learns_and_logs_losses_per_noise_level_and_media(trained):
    run, result = trained
    assert result.step == 40 and result.skipped == 0 and len(result.losses) == 40
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    # v-MSE starts near E[v²] = 1 (zero output layer, unit-variance residual); the untrained tiny VQ-VAE
    # loses most of the audio, and the part of the residual its output cannot predict stays in the loss
    assert last < 0.7 * first, (first, last)
    out = run / "refiner"
    assert (out / "config.yaml").is_file() and (out / "last.pt").is_file()
    overall, estimate, detail = (scalars(out, f"train/{name}") for name in ("loss", "estimate_loss", "detail_loss"))
    bands = [scalars(out, tag) for tag in BANDS]
    assert all(len(b) == 40 for b in bands)
    for step in range(40):  # each quarter holds one of the 4 items: the detail loss is their mean
        assert detail[step] == pytest.approx(sum(b[step] for b in bands) / 4, rel=1e-4)
        assert overall[step] == pytest.approx(estimate[step] + detail[step], rel=1e-4)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    for name in ("original", "coarse", "refined"):
        assert len(events.Audio(f"audio/{name}")) == 2 and len(events.Images(f"spectrogram/{name}")) == 2
    # the media clip is the validation window, the coarse one its level-0 decoding, the distance theirs
    clean = AudioWindows(Run(run).manifest, TINY_SR, 2048, 1, "valid").window(0, MEDIA_STREAM)[None]  # (1, 1, 2048)
    vqvae = load_vqvae(run / "vqvae")
    coarse = vqvae.decode(vqvae.encode(clean, levels=[0]), level=0)  # (1, 1, 2048)
    for name, audio in (("original", clean), ("coarse", coarse)):
        for event in events.Audio(f"audio/{name}"):
            logged = sf.read(io.BytesIO(event.encoded_audio_string), dtype="float32")[0]  # 16-bit wav
            assert abs(logged - audio[0, 0].numpy()).max() < 1e-4, name
    expected = float(multi_resolution_stft_distance(clean, coarse))
    assert scalars(out, "media/mr_stft_distance_coarse") == pytest.approx([expected] * 2, rel=1e-5)
    refined = scalars(out, "media/mr_stft_distance_refined")
    assert len(refined) == 2 and refined != pytest.approx([expected] * 2)
    for tag in ("valid/loss", "valid/gap", "valid/estimate_loss", *(f"valid/{band[6:]}" for band in BANDS)):  # per noise quarter too
        assert len(scalars(out, tag)) == 2, tag
    assert load_refiner(out / "best.pt").vqvae_fingerprint == load_refiner(out / "last.pt").vqvae_fingerprint


def test_checkpoint_records_the_vqvae_and_load_refiner_checks_it(trained, tmp_path):
    run, _ = trained
    fingerprint = load_vqvae(run / "vqvae").fingerprint()
    state = load_checkpoint(run / "refiner", "refiner")
    assert state["vqvae_fingerprint"] == fingerprint and state["step"] == 40 and "optimizer" in state
    model = load_refiner(run / "refiner", vqvae=fingerprint)  # accepted with its own VQ-VAE, EMA weights loaded
    assert model.vqvae_fingerprint == fingerprint and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["ema"].items())
    assert not all(torch.equal(state["model"][k], v) for k, v in state["ema"].items())
    with pytest.raises(UserError, match="another VQ-VAE"):
        load_refiner(run / "refiner", vqvae=tiny_model(seed=5).fingerprint())


def test_finished_run_is_a_no_op(trained, tmp_path, caplog):
    run, _ = trained
    before = (run / "refiner" / "last.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        result = train_refiner(refiner_recipe(tmp_path), run)
    assert result.step == 40 and result.losses == [] and "nothing to do" in caplog.text
    assert (run / "refiner" / "last.pt").stat().st_mtime_ns == before


def test_statistics_are_measured_recorded_and_kept_on_resume(tmp_path, caplog):
    """A fresh run measures residual_scale (when null) and starts its equalizer as the least-squares filter,
    both from the VQ-VAE's error on the residual stream's windows; a resumed run measures nothing."""
    run = make_run(tmp_path)
    frozen = ("refiner.residual_scale=null", "refiner.train.steps=2", "refiner.train.media_every=0", "refiner.train.lr=1e-12")
    with caplog.at_level(logging.INFO):
        train_refiner(refiner_recipe(tmp_path, *frozen), run)
    state = load_checkpoint(run / "refiner", "refiner")
    scale = state["config"]["residual_scale"]
    vqvae = load_vqvae(run / "vqvae")
    windows = AudioWindows(Run(run).manifest, TINY_SR, 2048, seed=1)
    clean = torch.stack([windows.window(i, RESIDUAL_STREAM) for i in range(RESIDUAL_WINDOWS)])
    coarse = vqvae.decode(vqvae.encode(clean, levels=[0]), level=0)
    residual = (clean - coarse) / envelope(coarse, refiner_recipe(tmp_path).refiner.envelope_window)
    assert scale == pytest.approx(float(residual.pow(2).mean().sqrt()), rel=1e-4)
    assert 0.1 < scale < 10  # the envelope takes the loudness out: the error relative to the local level
    torch.testing.assert_close(state["model"]["equalizer.weight"], matched_filter(coarse, clean, EQUALIZER_TAPS), atol=1e-6, rtol=0)
    assert state["model"]["equalizer.weight"].abs().max() > 0.01
    assert f"envelope {scale:.4f}) and the equalizer set" in caplog.text
    assert f"residual_scale: {scale}" in (run / "refiner" / "config.yaml").read_text()
    assert load_refiner(run / "refiner").config.residual_scale == scale
    result = train_refiner(refiner_recipe(tmp_path, "refiner.residual_scale=null", "refiner.train.steps=3", "refiner.train.media_every=0"), run)
    assert result.step == 3 and load_checkpoint(run / "refiner", "refiner")["config"]["residual_scale"] == scale
    with pytest.raises(ValueError, match="residual_scale is not set"):
        Refiner(refiner_recipe(tmp_path, "refiner.residual_scale=null").refiner)


def test_times_are_stratified_and_uniform():
    torch.manual_seed(0)
    t = torch.cat([stratified_times(8, torch.device("cpu")) for _ in range(2000)]).view(2000, 8)
    assert ((t >= torch.arange(8) / 8) & (t < (torch.arange(8) + 1) / 8)).all()
    histogram = torch.histc(t.flatten(), bins=10, min=0, max=1) / t.numel()
    assert torch.allclose(histogram, torch.full((10,), 0.1), atol=0.01)


def test_a_saved_refiner_in_the_run_is_fine_tuned_not_overwritten(tmp_path, caplog):
    run = make_run(tmp_path)
    cfg = refiner_recipe(tmp_path).refiner
    torch.manual_seed(123)
    saved = Refiner(cfg, vqvae_fingerprint=load_vqvae(run / "vqvae").fingerprint())
    for p in saved.parameters():  # not the zero-initialised layers a fresh model has
        p.data.normal_(std=0.05)
    save_refiner(run / "refiner" / "last.pt", saved)
    with caplog.at_level(logging.INFO):
        train_refiner(refiner_recipe(tmp_path, "refiner.train.steps=1", "refiner.train.lr=1e-9"), run)
    assert "fine-tuning" in caplog.text
    state = load_checkpoint(run / "refiner", "refiner")
    assert state["step"] == 1
    for key, value in saved.state_dict().items():
        assert torch.allclose(state["model"][key], value, atol=1e-6), key


def test_missing_vqvae_other_rate_and_mismatched_checkpoints_are_one_line_errors(trained, tmp_path, capsys):
    path = tmp_path / "tiny_refiner.yaml"
    path.write_text(REFINER_RECIPE)

    def stage(run: Path, *overrides: str) -> str:
        assert cli.main(["train-refiner", "--config", str(path), "--run", str(run), *overrides]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    assert "No VQ-VAE at" in stage(tmp_path / "empty") and "train-vqvae" in stage(tmp_path / "empty")
    run, _ = trained
    assert "'refiner.sample_rate', which follows from data.sample_rate" in stage(run, "refiner.sample_rate=8000")
    assert "not used by jukebox-lite train-refiner" in stage(run, "data.sample_rate=8000")
    assert "cond_level is 3" in stage(run, "refiner.cond_level=3")
    assert "refiner.channels is [8, 16, 64]" in stage(run, "refiner.channels=[8, 16, 64]", "refiner.train.steps=50")
    assert "refiner.detail is False" in stage(run, "refiner.detail=false", "refiner.train.steps=50")

    other = make_run(tmp_path / "other")
    (other / "refiner").mkdir()
    (other / "refiner" / "last.pt").write_bytes((run / "refiner" / "last.pt").read_bytes())
    save_vqvae(other, tiny_model(seed=7))  # the run's VQ-VAE was retrained since
    assert "trained on data of another VQ-VAE" in stage(other, "refiner.train.steps=50")


def test_empty_training_split_is_a_clear_error(tmp_path):
    run = make_run(tmp_path, seconds=(0.1, 0.1))  # shorter than one 2048-sample window
    with pytest.raises(UserError, match="no train file is at least 2048 samples long"):
        train_refiner(refiner_recipe(tmp_path), run)
