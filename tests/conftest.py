"""Fixtures and the one hook that seeds every test; the shared tiny objects they build come from tests/helpers.py."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_run, save_vqvae, synth_music, varied_vqvae


def pytest_configure(config):
    """Tests use tiny tensors: one intra-op thread is far faster than two spinning on a busy 2-core
    machine. Set for the whole session, so module-scoped fixtures that train get it too."""
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Every test, and the fixtures set up for it, starts from the same random state: a model built
    without a seed gets the same weights whatever ran before it on the same worker."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def music():
    return synth_music


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> Path:
    """A tiny run with data, a VQ-VAE whose codes vary, and its encoded corpus (RUN/codes); one per module."""
    from jukebox_lite.stages.encode import encode_run

    run = make_run(tmp_path_factory.mktemp("coded"))
    save_vqvae(run, varied_vqvae())
    encode_run(run, chunk_seconds=0.5)
    return run
