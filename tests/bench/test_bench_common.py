"""The bench scripts share bench/common.py: the same --device / --threads / --out flags and one results layout."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT

SCRIPTS = sorted(path.name for path in (ROOT / "bench").glob("*.py") if path.name != "common.py")
UNTIMED = {"estimate_gpu_hours.py", "real_music.py", "review_page.py", "bench_copies.py", "refiner_spectrograms.py", "refiner_bounds.py"}  # FLOP counts; pipeline commands timed as a user runs them: --out only
# the smallest prior bench_prior.py accepts: a couple of seconds on one thread
TINY_PRIOR = ["--n-ctx", "64", "--train-n-ctx", "64", "--width", "16", "--depth", "1", "--block-ctx", "16", "--bins", "16",
              "--train-batch", "1", "--repeats", "1", "--batches", "1", "2", "--new-cached", "2", "--new-uncached", "1"]


def load_common():
    """bench/common.py as a module; the scripts import it as `common` with bench/ on sys.path, a name not to take here."""
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def out_folders(tmp_path_factory) -> dict[str, Path]:
    return {"tiny prior": tmp_path_factory.mktemp("tiny_prior"), "cuda prior": tmp_path_factory.mktemp("cuda_prior")}


@pytest.fixture(scope="module")
def runs(out_folders) -> dict[str, subprocess.CompletedProcess]:
    """Every script run these tests look at, by name, started together: each one spends seconds of
    CPU importing torch, so they share the cores instead of waiting in line."""
    commands = {
        **{f"help {name}": [f"bench/{name}", "--help"] for name in SCRIPTS},
        "tiny prior": ["bench/bench_prior.py", "--device", "cpu", "--threads", "1", *TINY_PRIOR],
        "cuda prior": ["bench/bench_prior.py", "--device", "cuda", *TINY_PRIOR],
    }
    started = {
        name: subprocess.Popen([sys.executable, *argv, *(["--out", str(out_folders[name])] if name in out_folders else [])],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    return {name: finish(process) for name, process in started.items()}


def test_the_scripts_are_found():
    assert {"bench_prior.py", "bench_vqvae.py", "estimate_gpu_hours.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_common_flags(runs, script):
    result = runs[f"help {script}"]
    assert result.returncode == 0, result.stderr
    common = {"--out"} if script in UNTIMED else {"--device", "--threads", "--out"}
    for flag in ("--device", "--threads", "--out"):
        assert bool(re.search(rf"{flag}\b", result.stdout)) == (flag in common), f"{script} --help, {flag}:\n{result.stdout}"
    assert "--devices" not in result.stdout and "--json" not in result.stdout  # replaced by --device and --out


def test_a_tiny_prior_run_writes_one_results_file_in_the_common_layout(runs, out_folders):
    result, out = runs["tiny prior"], out_folders["tiny prior"]
    assert result.returncode == 0, result.stderr
    files = list(out.iterdir())
    assert len(files) == 1 and re.fullmatch(r"prior-.+-\d{8}T\d{6}Z\.json", files[0].name), files
    written = json.loads(files[0].read_text())
    assert set(written) == {"benchmark", "utc", "machine", "args", "results"}
    assert written["benchmark"] == "prior" and files[0].name.endswith(f"-{written['utc']}.json")
    assert written["args"]["out"] == str(out) and written["args"]["device"] == "cpu"
    assert written["machine"]["cpu_threads"] == 1  # --threads was applied before the machine was recorded
    rows = written["results"]
    assert [(row["case"], row.get("n_ctx"), row.get("batch")) for row in rows] == [("train", 64, None), ("sample", 64, 1), ("sample", 64, 2)]
    for row in rows:
        assert row["device"] == "cpu"
        assert not any(isinstance(value, dict) for value in row.values()), row
    assert rows[0]["train_tokens_per_s_masked"] > 0 and rows[0]["train_tokens_per_s_blocked"] > 0
    assert all(row["fused_tokens_per_s"] > 0 and row["reference_tokens_per_s"] > 0 for row in rows[1:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_fails_in_one_line(runs, out_folders):
    result = runs["cuda prior"]
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], result.stderr
    assert not any(out_folders["cuda prior"].iterdir())


def test_wall_times_interleaves_the_functions_after_their_warm_up():
    common = load_common()
    calls = []
    times = common.wall_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                              torch.device("cpu"), warmup=1, repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2}


@pytest.mark.parametrize("row", [{"case": "no device"}, {"device": "cpu", "nested": {"x": 1}}])
def test_write_results_refuses_a_row_outside_the_layout(tmp_path, row):
    with pytest.raises(ValueError, match="flat and name its device"):
        load_common().write_results("test", Namespace(), [row], tmp_path)
    assert not any(tmp_path.iterdir())
