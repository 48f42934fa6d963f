"""Shared test helpers: deterministic synthesized audio, written in any of the formats we ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch


# ../shared beside the checkout (as CI lays it out): facts about OpenAI's files, e.g. state-dict listings
JUKEBOX_FORMAT = Path(__file__).resolve().parents[2] / "shared" / "jukebox-format"


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


def write_audio(path: Path, audio: np.ndarray, sr: int, **kwargs) -> Path:
    """Write (channels, time) with soundfile; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, sr, **kwargs)
    return path


@pytest.fixture
def music():
    return synth_music


def pytest_configure(config):
    """Tests use tiny tensors: one intra-op thread is far faster than two spinning on a busy 2-core
    machine. Set for the whole session, so module-scoped fixtures that train get it too."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> Path:
    """A tiny run with data, a VQ-VAE whose codes vary, and its encoded corpus (RUN/codes); one per module."""
    from jukebox_lite.stages.encode import encode_run
    from tests.helpers import make_run, save_vqvae, varied_vqvae  # helpers import this module

    run = make_run(tmp_path_factory.mktemp("coded"))
    save_vqvae(run, varied_vqvae())
    encode_run(run, chunk_seconds=0.5)
    return run
