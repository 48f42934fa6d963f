"""Tiny models, corpora, recipes and runs that several test modules build on.

What one module alone uses stays in that module; what several use lives here, so that no test
module imports another; helpers imports no test module, and conftest.py holds only the fixtures.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jukebox_lite.core.audio import write_flac
from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.core.config import RecipeConfig, RefinerConfig, VQVAEConfig, load_config
from jukebox_lite.models.vqvae import VQVAE
ROOT = Path(__file__).resolve().parents[1]  # the checkout: where the Makefile is
# ../shared beside the checkout (as CI lays it out): facts about OpenAI's files, e.g. state-dict listings
JUKEBOX_FORMAT = ROOT.parent / "shared" / "jukebox-format"
FIXTURES = ROOT / "tests" / "fixtures"  # small files recorded from OpenAI's code (docs/*_equivalence.md)
TINY_SR = 16000  # the sample rate of every tiny model, corpus and recipe here


# ----------------------------------------------------------------------------------------------
# Audio


def synth_music(seconds: float, sr: int, seed: int = 0, channels: int = 2) -> np.ndarray:
    """A few seconds of tonal + percussive audio, float32 (channels, time), peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    beat = np.exp(-30 * (t % 0.5)) * rng.standard_normal(t.size)  # a noise burst every half second
    mono = 0.3 * tone / 1.8 + 0.2 * beat
    pan = np.linspace(0.8, 1.0, channels)[:, None]
    return (pan * mono[None]).astype(np.float32)


def melody(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Music that never repeats itself: a random note every 1/8 s (three harmonics, decaying) over a
    random bass note every 1/2 s, and a noise tick on the beats. (channels, time) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros(t.size)
    for step, length, low, high, level in ((0.125, 0.125, 60, 84, 0.3), (0.5, 0.5, 36, 48, 0.4)):
        for start in np.arange(0, seconds, step):
            pitch = 440 * 2 ** ((rng.integers(low, high) - 69) / 12)
            span = (t >= start) & (t < start + length)
            local = t[span] - start
            out[span] += level * np.exp(-6 * local) * sum(np.sin(2 * np.pi * pitch * k * local) / k for k in (1, 2, 3))
    out += 0.05 * rng.standard_normal(t.size) * np.exp(-40 * (t % 0.5))
    return (0.5 * out / np.abs(out).max())[None].astype(np.float32)


def write_audio(path: Path, audio: np.ndarray, sr: int, **kwargs) -> Path:
    """Write (channels, time) with soundfile; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, sr, **kwargs)
    return path


def scalars(run_dir: Path, tag: str) -> list[float]:
    """Every value TensorBoard holds for `tag` in RUN_DIR/tb, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def si_sdr_db(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """SI-SDR (B, T) pairs → (B,) dB, written out here as the tests' own reference for the reports' values."""
    reference, estimate = reference.double(), estimate.double()
    reference, estimate = reference - reference.mean(1, keepdim=True), estimate - estimate.mean(1, keepdim=True)
    signal = (estimate * reference).sum(1, keepdim=True) / (reference**2).sum(1, keepdim=True) * reference
    return 10 * torch.log10((signal**2).sum(1) / ((estimate - signal) ** 2).sum(1))


def spectral_convergence_db(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """20·log10(‖|S(ref)| − |S(est)|‖ / ‖S(ref)‖) of (B, T) pairs → (B,), Jukebox's STFT (n_fft 2048, hop 256,
    Hann window 1536), written out here as the tests' reference for a metric that, unlike SI-SDR, sees the
    estimate's level."""
    def magnitude(x):
        window = torch.hann_window(1536, dtype=torch.float64)
        return torch.stft(x.double(), 2048, 256, win_length=1536, window=window, return_complex=True).abs()

    ref, est = magnitude(reference), magnitude(estimate)
    return 20 * torch.log10((ref - est).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1))


def spread_segments(path: Path, segment: int, count: int) -> torch.Tensor:
    """`count` pieces (count, 1, segment) spread evenly over a mono file, as the evaluation commands cut it."""
    audio, _ = sf.read(path, dtype="float32")
    starts = np.linspace(0, audio.shape[0] - segment, count).round().astype(int)
    return torch.from_numpy(np.stack([audio[s : s + segment] for s in starts]))[:, None]


def fake_venv(tmp_path: Path) -> Path:
    """A VENV for make that is the interpreter running the tests, already installed (nothing to set up)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "jukebox-lite").symlink_to(Path(sys.executable).parent / "jukebox-lite")
    (venv / ".installed").touch()
    return venv


def recipe_from_text(tmp: Path, text: str, overrides: tuple[str, ...]) -> RecipeConfig:
    """A recipe written to TMP/tiny.yaml and loaded with key=value overrides, as the CLI loads one."""
    path = tmp / "tiny.yaml"
    path.write_text(text)
    return load_config(path, list(overrides))


# ----------------------------------------------------------------------------------------------
# VQ-VAE


def tiny_vqvae_config(**changes) -> VQVAEConfig:
    """Hops 2 / 4 / 8, 16 codes of width 8 per level: trains and encodes in moments."""
    values = dict(
        sample_length=1024,
        downs_t=[1, 1, 1],
        emb_width=8,
        l_bins=16,
        width=16,
        depth=2,
        multipliers=[1, 1, 1],
        linf_k=64,
        stft_n_fft=[256, 128, 64],
        stft_hop_length=[32, 16, 8],
        stft_window_size=[128, 64, 32],
    )
    values.update(changes)
    return VQVAEConfig(**values)


# ----------------------------------------------------------------------------------------------
# A run with data and a tiny VQ-VAE, as the codes, prior, sample and refiner stages find it

PRIOR_SHAPE = dict(n_ctx=64, width=32, depth=3, blocks=4, n_genres=2, n_artists=3)  # priors on its 16 codes


def tiny_model(seed: int = 0) -> VQVAE:
    """The tiny VQ-VAE with codebooks spread so every code can win; its receptive fields
    are long enough to make chunking matter."""
    torch.manual_seed(seed)
    model = VQVAE(tiny_vqvae_config(sample_rate=TINY_SR)).eval()
    for block in model.bottleneck.level_blocks:
        block.k.normal_(std=0.5)
    return model


def varied_vqvae(seed: int = 0) -> VQVAE:
    """The tiny VQ-VAE with codebooks drawn from its encoders' outputs on music, so codes vary (random ones collapse)."""
    model = tiny_model(seed)
    torch.manual_seed(seed)
    music = torch.from_numpy(synth_music(1.0, TINY_SR, seed=7, channels=1))[None]  # (1, 1, 16000)
    with torch.no_grad():
        for level, block in enumerate(model.bottleneck.level_blocks):
            block.init_codebook(model.encoders[level](music)[0].t())
    return model


def save_vqvae(run: Path, model: VQVAE) -> None:
    save_checkpoint(run / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(model.config), model.state_dict())


def make_run(tmp_path: Path, seconds=(1.3, 0.7, 2.1, 0.9), sr: int = TINY_SR) -> Path:
    """RUN with a manifest of synthesized files (the second in the valid split) and a tiny VQ-VAE."""
    run = tmp_path / "run"
    rows = []
    for i, duration in enumerate(seconds):
        audio = synth_music(duration, sr, seed=i, channels=1)
        write_flac(run / "data" / "audio" / f"t{i}.flac", audio, sr)
        rows.append({
            "id": f"t{i}", "path": f"audio/t{i}.flac", "source": f"t{i}.wav", "sha256": f"{i:064d}",
            "duration": audio.shape[1] / sr, "sample_rate": sr,
            "labels": {"genre": "house", "artist": f"artist{i % 2}"} if i != 3 else {},
            "split": "valid" if i == 1 else "train",
        })
    (run / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_vqvae(run, tiny_model())
    return run


# ----------------------------------------------------------------------------------------------
# The VQ-VAE stage: a corpus and a recipe

VQVAE_RECIPE = f"""\
name: tiny
seed: 3
data:
  sample_rate: {TINY_SR}
vqvae:
  sample_length: 1024
  downs_t: [1, 1, 1]
  emb_width: 8
  l_bins: 16
  width: 8
  depth: 2
  multipliers: [1, 1, 1]
  linf_k: 64
  stft_n_fft: [256, 128, 64]
  stft_hop_length: [32, 16, 8]
  stft_window_size: [128, 64, 32]
  train:
    batch_size: 4
    steps: 8
    lr: 0.003
    log_every: 1
    checkpoint_every: 4
    media_every: 4
    eval_every: 4
    eval_windows: 8
    workers: 0
"""


def make_corpus(run: Path, seconds=(2.0, 2.5, 3.0, 2.0), splits=("train", "train", "train", "valid"), sr=TINY_SR) -> None:
    """RUN/data as the data stage writes it: mono FLACs and manifest.jsonl."""
    rows = []
    for i, (length, split) in enumerate(zip(seconds, splits)):
        audio = synth_music(length, sr, seed=i, channels=1)
        write_flac(run / "data" / "audio" / f"t{i}.flac", audio, sr)
        rows.append({
            "id": f"t{i}", "path": f"audio/t{i}.flac", "source": f"t{i}.wav", "sha256": f"{i:064d}",
            "duration": length, "sample_rate": sr, "labels": {"genre": "house", "artist": "a"}, "split": split,
        })
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def vqvae_recipe(tmp: Path, *overrides: str) -> RecipeConfig:
    return recipe_from_text(tmp, VQVAE_RECIPE, overrides)


# ----------------------------------------------------------------------------------------------
# The refiner

def tiny_refiner_config(**changes) -> RefinerConfig:
    values = dict(
        sample_rate=TINY_SR, segment_length=2048, chunk_length=2048, overlap_length=256, channels=[8, 16, 32],
        factors=[4, 4], res_blocks=1, attention_levels=1, attention_heads=2, attention_window=4, kernel_size=5,
        embedding_dim=32, steps=4, chunk_batch=2,
        residual_scale=0.34,  # the RMS of (clean − degrade(clean)) / envelope in test_refiner
    )
    values.update(changes)
    return RefinerConfig(**values)


def tiny_refiner_vqvae(seed: int = 0) -> VQVAE:
    """The tiny VQ-VAE, codebooks initialised from one batch of music."""
    torch.manual_seed(seed)
    model = VQVAE(tiny_vqvae_config(sample_rate=TINY_SR)).train()
    model(torch.from_numpy(synth_music(0.5, TINY_SR, seed=seed, channels=1))[None, :, :3968])
    return model.eval()


REFINER_RECIPE = f"""\
name: tiny-refiner
seed: 1
data:
  sample_rate: {TINY_SR}
refiner:
  cond_level: 0
  segment_length: 2048
  chunk_length: 2048
  overlap_length: 256
  channels: [8, 16, 32]
  factors: [4, 4]
  res_blocks: 1
  attention_levels: 1
  attention_heads: 2
  attention_window: 4
  kernel_size: 5
  embedding_dim: 32
  residual_scale: 0.3       # the untrained tiny VQ-VAE's error is about 0.29 RMS
  steps: 2
  chunk_batch: 2
  train:
    batch_size: 4
    steps: 40
    lr: 0.003
    warmup_steps: 5
    ema: 0.9
    log_every: 1
    checkpoint_every: 20
    media_every: 20
    eval_every: 20
    eval_windows: 8
    workers: 0
"""


def refiner_recipe(tmp: Path, *overrides: str) -> RecipeConfig:
    """The refiner stage's recipe, for a run made by `make_run`."""
    return recipe_from_text(tmp, REFINER_RECIPE, overrides)


def refiner_loss(model, clean: torch.Tensor, coarse: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The refiner's own training loss (its forward with the clean audio) at a uniformly drawn t per item."""
    t = torch.rand(clean.shape[0], device=clean.device, generator=generator)
    noise = torch.randn(clean.shape, device=clean.device, generator=generator)
    return model(coarse, clean, t, noise)[1]["loss"]
