"""The Make pipeline as a user drives it: bad variables fail first, and a killed stage resumes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from jukebox_lite.core.checkpoint import load_checkpoint
from tests.helpers import ROOT, VQVAE_RECIPE, fake_venv, make_corpus, synth_music, write_audio

def make(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """make in the checkout, always with a stand-in VENV: the checkout's own .venv may be missing or older
    than pyproject.toml, and make would then pip-install into the venv the other test workers run in."""
    assert any(arg.startswith("VENV=") for arg in args), "every make call here names a stand-in VENV (fake_venv)"
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize(
    "variables, complaint",
    [
        (["SECONDS=0"], "SECONDS=0 must be a positive number"),
        (["SECONDS=-5"], "SECONDS=-5 must be a positive number"),
        (["SECONDS=abc"], "SECONDS=abc must be a positive number"),
        (["N=0"], "N=0 must be a whole number"),
        (["AUDIO=/no/such/folder"], "AUDIO=/no/such/folder is not a folder"),
        (["ARGS=prior_level2.hop_fraction=0.25"], "'prior_level2.hop_fraction', which is now 'sample.hop_fraction_level2'"),
        (["ARGS=vqvae.train.steps=5 priors.width=8"], "Unknown config key 'priors'"),
        (["ARGS=prior_level2.bins=512"], "'prior_level2.bins', which follows from vqvae.l_bins"),
    ],
)
def test_bad_variables_fail_in_one_sentence_before_any_work(variables, complaint, tmp_path):
    result = make("all", f"RUN={tmp_path / 'run'}", f"VENV={fake_venv(tmp_path)}", *variables)
    assert result.returncode != 0
    assert complaint in result.stderr and result.stderr.count("\n") <= 2  # the sentence + make's own line
    assert not (tmp_path / "run").exists()


def test_a_stage_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    run, recipe = tmp_path / "run", tmp_path / "tiny.yaml"
    steps = 120  # the first checkpoint comes at step 20: 100 more steps (seconds) for the kill to land first
    recipe.write_text(VQVAE_RECIPE.replace("steps: 8", f"steps: {steps}").replace("checkpoint_every: 4", "checkpoint_every: 20")
                      .replace("eval_every: 4", "eval_every: 100"))
    make_corpus(run)
    # the venv first: its .installed is a prerequisite of data/.done, which must be the newer of the two
    # (made after it, a loaded machine's clock tick could make data look out of date)
    variables = [f"CONFIG={recipe}", f"RUN={run}", f"VENV={fake_venv(tmp_path)}"]
    (run / "data" / ".done").touch()  # the data stage is done (the corpus above is its output)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    log = tmp_path / "first.log"  # the killed run's output, shown if it ends or stalls before a checkpoint
    with open(log, "w") as out:
        first = subprocess.Popen(["make", "-s", "-C", str(ROOT), "vqvae", *variables], start_new_session=True, env=env,
                                 stdout=out, stderr=subprocess.STDOUT)
    checkpoint = run / "vqvae" / "last.pt"
    deadline = time.monotonic() + 600  # generous: a loaded 2-core machine is slow to start torch
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ended_early = first.poll()
    if ended_early is None:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended between poll and kill
            os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert ended_early is None, f"make vqvae ended (status {ended_early}) before it could be killed:\n{log.read_text()}"
    assert checkpoint.exists(), f"no checkpoint appeared before the kill:\n{log.read_text()}"
    killed_at = load_checkpoint(checkpoint, "vqvae")["step"]
    assert 0 < killed_at < steps and not (run / "vqvae" / ".done").exists()

    second = make("vqvae", *variables, env=env)
    assert second.returncode == 0, second.stderr
    assert f"at step {killed_at} of {steps}" in second.stderr  # the loop's "resuming ... at step N of M"
    assert load_checkpoint(checkpoint, "vqvae")["step"] == steps
    assert [p.name for p in (run / "vqvae").iterdir() if p.name.startswith(".") and p.name != ".done"] == []
    assert make("vqvae", *variables, "-q").returncode == 0  # finished: make has nothing left to do


def test_variables_are_data_never_shell(tmp_path):
    """Labels, folders and overrides with spaces, quotes, `;` and `&` arrive as written, and nothing in them runs."""
    music, run, canary = tmp_path / "my music", tmp_path / "run", tmp_path / "pwned"
    for i in range(2):
        write_audio(music / f"t{i}.wav", synth_music(3.0, 22050, seed=i), 22050)
    genre, artist = f"deep; touch {canary}; echo", "drum & bass $(touch x) `touch y`"
    overrides = "data.separation.backend=none data.workers=1 data.min_seconds=2 data.separation.spleeter_command='/my tools/spleeter'"
    venv = f"VENV={fake_venv(tmp_path)}"
    result = make("data", f"AUDIO={music}", f"GENRE={genre}", f"ARTIST={artist}", f"ARGS={overrides}", f"RUN={run}",
                  f"CONFIG={ROOT / 'pipelines/demo.yaml'}", venv)
    assert result.returncode == 0, result.stderr
    assert not canary.exists() and not (ROOT / "x").exists() and not (ROOT / "y").exists()
    rows = [json.loads(line) for line in (run / "data" / "manifest.jsonl").read_text().splitlines()]
    assert [row["labels"] for row in rows] == [{"genre": genre, "artist": artist}] * 2
    assert "spleeter_command: /my tools/spleeter" in (run / "data" / "config.yaml").read_text()
    bad = make("all", f"RUN={tmp_path / 'other'}", f"SECONDS=1; touch {canary}", venv)
    assert bad.returncode != 0 and "must be a positive number" in bad.stderr and not canary.exists()
