"""Two ranks on the CPU (gloo), launched by mpiexec and by torchrun, train exactly like one process.

Each launch runs the real `jukebox-lite train-vqvae` command. With the same global batch, the two
ranks read the same windows between them as the one process does (`datasets.StepSampler`), DDP
averages their gradients and the VQ-VAE sums its codebook statistics over them, so losses and
weights agree to float tolerance. The runs start from one checkpoint with initialised codebooks:
fresh codebooks are drawn from the first rank's batch alone, which differs between the two set-ups.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jukebox_lite.core import distributed
from jukebox_lite.core.checkpoint import load_checkpoint, save_checkpoint
from jukebox_lite.stages.train_vqvae import train_vqvae
from jukebox_lite.models.vqvae import VQVAE
from tests.helpers import make_corpus, scalars, vqvae_recipe

BIN = Path(sys.executable).parent
OVERRIDES = ["vqvae.train.steps=3", "vqvae.train.media_every=0", "vqvae.train.checkpoint_every=100"]


def launch(launcher: list[str], tmp: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [*launcher, str(BIN / "jukebox-lite"), "train-vqvae", "--config", str(tmp / "tiny.yaml"), "--run", str(run),
               "--init", str(tmp / "init.pt"), *OVERRIDES, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def setup(tmp_path) -> Path:
    cfg = vqvae_recipe(tmp_path)  # writes tiny.yaml
    torch.manual_seed(5)
    model = VQVAE(cfg.vqvae)
    with torch.no_grad():
        for block in model.bottleneck.level_blocks:
            block.k.normal_(0.0, 0.1)
    save_checkpoint(tmp_path / "init.pt", "vqvae", dataclasses.asdict(cfg.vqvae), model.state_dict(), step=0)
    return tmp_path


def test_two_ranks_under_mpiexec_and_torchrun_match_one_process(setup):
    tmp = setup
    runs = {name: tmp / name for name in ("single", "mpiexec", "torchrun")}
    for run in runs.values():
        make_corpus(run)
    train_vqvae(vqvae_recipe(tmp, *OVERRIDES), runs["single"], init=tmp / "init.pt")
    launchers = {
        "mpiexec": [str(BIN / "mpiexec"), "-n", "2"],
        # `--` ends torchrun's options: else it takes our --run for an abbreviation of its --run-path
        "torchrun": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--"],
    }
    for name, launcher in launchers.items():
        done = launch(launcher, tmp, runs[name])
        assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"

    initial = torch.load(tmp / "init.pt")["model"]
    reference = load_checkpoint(runs["single"] / "vqvae", "vqvae")["model"]
    single_losses = scalars(runs["single"] / "vqvae", "train/loss")
    assert len(single_losses) == 3
    weights = [name for name, _ in VQVAE(vqvae_recipe(tmp).vqvae).named_parameters()]
    buffers = [key for key in reference if key not in weights and reference[key].is_floating_point()]
    for name in launchers:
        state = load_checkpoint(runs[name] / "vqvae", "vqvae")
        assert state["step"] == 3 and len(state["rng"]) == 2  # both ranks' random states are kept
        torch.testing.assert_close(scalars(runs[name] / "vqvae", "train/loss"), single_losses, rtol=1e-4, atol=1e-6)
        # Adam turns summation-order noise in near-zero gradients into differences of up to lr per weight,
        # so the weights are compared as a whole: their difference against how far training moved them
        difference = torch.cat([(state["model"][k] - reference[k]).flatten() for k in weights]).norm()
        moved = torch.cat([(reference[k] - initial[k]).flatten() for k in weights]).norm()
        assert difference < 1e-2 * moved, (name, float(difference), float(moved))
        for key in buffers:  # codebooks, their EMA statistics, the data bandwidth
            torch.testing.assert_close(state["model"][key], reference[key], rtol=1e-4, atol=1e-3, msg=f"{name}: {key}")


def test_helpers_are_no_ops_in_one_process():
    env = distributed.init()
    assert (env.rank, env.world_size, env.is_main, env.is_distributed) == (0, 1, True, False)
    value = torch.tensor([1.0, 2.0])
    reduced = distributed.all_reduce_mean(value)
    assert torch.equal(reduced, value) and reduced is not value
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    assert distributed.any_rank(True, env.device) and not distributed.any_rank(False, env.device)
