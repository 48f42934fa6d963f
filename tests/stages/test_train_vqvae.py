"""The VQ-VAE stage end to end on a tiny synthesized corpus: learning, resume, fine-tuning, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from jukebox_lite.core.checkpoint import load_checkpoint, save_checkpoint
from jukebox_lite.cli import main
from jukebox_lite.algorithms.datasets import AudioWindows, data_bandwidth
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.stages.train_vqvae import train_vqvae
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.models.checkpoints import load_vqvae
from tests.helpers import TINY_SR, make_corpus, scalars, vqvae_recipe

@pytest.fixture
def run(tmp_path) -> Path:
    make_corpus(tmp_path / "run")
    return tmp_path / "run"


def test_stage_learns_to_reconstruct_and_logs_media(run, tmp_path):
    cfg = vqvae_recipe(tmp_path, "vqvae.train.steps=80", "vqvae.train.media_every=80", "vqvae.train.checkpoint_every=80")
    result = train_vqvae(cfg, run)
    assert result.step == 80
    l2 = scalars(run / "vqvae", "train/l2_l0")  # bandwidth-normalised squared error, one per step
    assert np.mean(l2[-10:]) < 0.25 * np.mean(l2[:5]), (l2[:5], l2[-10:])

    model = load_vqvae(run / "vqvae")  # the EMA weights
    assert model.bandwidth["l2"] == pytest.approx(
        data_bandwidth(AudioWindows(Run(run).manifest, TINY_SR, 1024, seed=3), 256)["l2"], rel=1e-6
    )
    x = AudioWindows(Run(run).manifest, TINY_SR, 1024, seed=99, split="valid").window(0)[None]
    with torch.no_grad():
        recon = model.decode(model.encode(x), level=0)
    assert ((recon - x) ** 2).mean() < 0.3 * (x**2).mean()  # far better than silence

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "vqvae" / "tb"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    assert {"audio/original", "audio/level0", "audio/level2"} <= set(events.Tags()["audio"])
    assert {"spectrogram/level0", "spectrogram/level2"} <= set(events.Tags()["images"])
    assert (run / "vqvae" / "config.yaml").read_text().startswith("name: tiny")

    # validation every 4 steps on the held-out file: per-level terms, the gap, and the best weights
    valid = scalars(run / "vqvae", "valid/l2_l0")
    assert len(valid) == 20 and valid[-1] < 0.5 * valid[0], (valid[0], valid[-1])
    assert len(scalars(run / "vqvae", "valid/spectral_convergence_l2")) == len(scalars(run / "vqvae", "valid/gap")) == 20
    best = load_vqvae(run / "vqvae" / "best.pt")
    assert best.config == model.config and load_checkpoint(run / "vqvae" / "best.pt", "vqvae")["step"] >= 40


def test_bf16_precision_trains_on_cpu(run, tmp_path):
    """`precision: bf16` runs the step under bf16 autocast on the CPU too, and the model still learns."""
    cfg = vqvae_recipe(tmp_path, "vqvae.train.steps=60", "vqvae.train.media_every=0", "vqvae.train.precision=bf16")
    result = train_vqvae(cfg, run)
    assert result.step == 60 and all(np.isfinite(result.losses))
    l2 = scalars(run / "vqvae", "train/l2_l0")
    assert np.mean(l2[-10:]) < 0.35 * np.mean(l2[:5]), (l2[:5], l2[-10:])


def test_resume_equals_uninterrupted_training(tmp_path):
    """Codebook restarts draw random numbers: this also checks the RNG state travels in the checkpoint."""
    for name in ("whole", "split"):
        make_corpus(tmp_path / name)
    cfg = vqvae_recipe(tmp_path, "vqvae.revival_threshold=3.0", "vqvae.train.media_every=0")
    whole = train_vqvae(cfg, tmp_path / "whole")
    first = train_vqvae(vqvae_recipe(tmp_path, "vqvae.revival_threshold=3.0", "vqvae.train.steps=3"), tmp_path / "split")
    second = train_vqvae(cfg, tmp_path / "split")
    assert first.losses + second.losses == whole.losses
    assert sum(scalars(tmp_path / "whole" / "vqvae", "train/restarts_l0")) > 0
    a, b = (load_checkpoint(tmp_path / name / "vqvae", "vqvae") for name in ("whole", "split"))
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert train_vqvae(cfg, tmp_path / "whole").losses == []  # finished: nothing to do


def test_fine_tuning_starts_from_an_imported_checkpoint_with_reset_codebook_statistics(run, tmp_path):
    cfg = vqvae_recipe(tmp_path, "vqvae.train.steps=1", "vqvae.train.lr=0.0000001", "vqvae.train.media_every=0")
    torch.manual_seed(123)
    source = VQVAE(cfg.vqvae)
    with torch.no_grad():
        for block in source.bottleneck.level_blocks:
            block.k.normal_()
    # an import-jukebox result: weights, no optimizer state, step 0
    save_checkpoint(run / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(cfg.vqvae), source.state_dict(), step=0)
    train_vqvae(cfg, run)
    state = load_checkpoint(run / "vqvae", "vqvae")
    assert state["step"] == 1 and "optimizer" in state
    weight = "encoders.0.level_blocks.0.model.0.0.weight"
    torch.testing.assert_close(state["model"][weight], source.state_dict()[weight], atol=1e-5, rtol=0)
    # reset_ema: every code counted batch·tokens/l_bins times; one EMA step (mu 0.99) moves it 1 % of the way
    expected = 4 * 1024 // 2 / 16
    k_elem = state["model"]["bottleneck.level_blocks.0.k_elem"]
    assert k_elem.sum() == pytest.approx(4 * 1024 // 2, rel=1e-4)  # the EMA of counts keeps their total
    assert k_elem.min() >= 0.99 * expected - 1e-3  # without the reset it would be the first batch's counts


def test_init_with_another_architecture_names_the_setting(run, tmp_path):
    other = vqvae_recipe(tmp_path, "vqvae.width=4")
    save_checkpoint(tmp_path / "other.pt", "vqvae", dataclasses.asdict(other.vqvae), VQVAE(other.vqvae).state_dict(), step=0)
    with pytest.raises(UserError, match="vqvae.width is 8 in the recipe but 4"):
        train_vqvae(vqvae_recipe(tmp_path), run, init=tmp_path / "other.pt")


def test_cli_runs_the_stage_and_reports_errors_in_one_line(run, tmp_path, capsys):
    vqvae_recipe(tmp_path)  # writes tiny.yaml
    args = ["train-vqvae", "--config", str(tmp_path / "tiny.yaml"), "--run", str(run), "vqvae.train.steps=2"]
    assert main(args) == 0
    assert load_checkpoint(run / "vqvae", "vqvae")["step"] == 2
    assert main(args[:-1] + ["vqvae.sample_length=1004"]) == 2
    assert "multiple of the top hop 8" in capsys.readouterr().err
    assert main(["train-vqvae", "--config", str(tmp_path / "tiny.yaml"), "--run", str(tmp_path / "nothing")]) == 2
    assert "manifest.jsonl' does not exist" in capsys.readouterr().err


def test_empty_or_unusable_corpus_is_one_clear_error(tmp_path):
    make_corpus(tmp_path / "valid_only", splits=("valid",) * 4)
    with pytest.raises(UserError, match="no train files"):
        train_vqvae(vqvae_recipe(tmp_path), tmp_path / "valid_only")
    make_corpus(tmp_path / "short", seconds=(0.03, 0.05, 0.05, 0.05))  # 480-800 samples < one window of 1024
    with pytest.raises(UserError, match="no train file is at least 1024 samples long"):
        train_vqvae(vqvae_recipe(tmp_path), tmp_path / "short")
    make_corpus(tmp_path / "rate", sr=8000)
    with pytest.raises(UserError, match="8000 Hz audio but the model runs at 16000 Hz"):
        train_vqvae(vqvae_recipe(tmp_path), tmp_path / "rate")


def test_short_files_are_skipped_with_a_warning(tmp_path, caplog):
    make_corpus(tmp_path, seconds=(0.05, 2.0, 2.0, 2.0))
    with caplog.at_level("WARNING"):
        windows = AudioWindows(Run(tmp_path).manifest, TINY_SR, 1024, seed=0)
    assert "skipping 1 train file" in caplog.text and len(windows.paths) == 2
    first, again, other = windows.window(5), windows.window(5), windows.window(6)
    assert first.shape == (1, 1024) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_step_settings_are_config_errors(tmp_path):
    with pytest.raises(UserError, match="vqvae.train.batch_size"):
        vqvae_recipe(tmp_path, "vqvae.train.batch_size=0")
    with pytest.raises(UserError, match="vqvae.train.precision is 'fp16'; use one of auto, bf16, float32"):
        vqvae_recipe(tmp_path, "vqvae.train.precision=fp16")
    with pytest.raises(UserError, match="vqvae.sample_length is 1004; use a positive multiple of the top hop 8"):
        vqvae_recipe(tmp_path, "vqvae.sample_length=1004")
