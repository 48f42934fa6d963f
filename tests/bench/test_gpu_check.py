"""bench/gpu_check.py, the first thing to run on a GPU, runs its whole code at tiny sizes on the CPU here."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--threads", "1", "--doc", str(out / "gpu.md"), "--out", str(out),
         "--budget-seconds", "inf"],  # a slow runner must not skip a part: the timeout below bounds the run instead
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    return result, out


def test_the_tiny_check_runs_every_part_and_writes_its_report(tiny_check):
    result, out = tiny_check
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (results_file,) = out.glob("gpu_check-*.json")
    rows = json.loads(results_file.read_text())["results"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    by_case = {case: [r for r in rows if r["case"] == case] for case in ("train", "attention", "sampling", "track")}
    assert [r["stage"] for r in by_case["train"]] == ["vqvae", "prior_level2", "prior_level1", "prior_level0", "refiner"]
    assert all(r["seconds_per_step"] > 0 for r in by_case["train"])
    assert [r["attn_func"] for r in by_case["attention"]] == [1, 2, 3]  # the demo layout: row, column, previous row
    for r in by_case["attention"]:  # every kernel equals the masked reference
        assert r["max_difference_blocked"] < 1e-5 and r["max_difference_flex"] < 1e-5, r
    assert {(r["prior"], r["batch"]) for r in by_case["sampling"]} == {(p, b) for p in ("prior_level2", "prior_level1", "prior_level0") for b in (1, 16)}
    full, adapted = [r for r in rows if r["case"] == "finetune"]
    assert full["seconds_per_step"] > 0 and full["trainable"] == full["parameters"]
    assert adapted["seconds_per_step"] > 0 and 0 < adapted["trainable"] < adapted["parameters"]
    (track,) = by_case["track"]
    assert track["seconds_fast"] > 0 and track["seconds_full"] > track["seconds_level0"] > 0
    report = (out / "gpu.md").read_text()
    for title in ("(a) One training step", "(b) Window attention", "(c) KV-cache sampling", "(d) One 2 s track"):
        assert title in report
    assert "Failed" not in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_full_size_check_refuses_a_cpu_in_one_line():
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["gpu check: torch sees no CUDA device here; --tiny runs the same code at tiny sizes on the CPU"]


def test_parts_that_would_overrun_the_budget_are_skipped_and_say_so(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--threads", "1", "--budget-seconds", "1",
         "--doc", str(tmp_path / "gpu.md"), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = tmp_path.glob("gpu_check-*.json")
    rows = json.loads(results_file.read_text())["results"]
    skipped = [r for r in rows if "skipped" in r]
    assert skipped == [r for r in rows if r["case"] != "attention"]  # every row of the others: attention is short and always runs
    assert {r["case"] for r in skipped} == {"train", "sampling", "track", "finetune"}
    assert all(r["skipped"].startswith("budget") for r in skipped)
    (track,) = [r for r in rows if r["case"] == "track"]
    assert track["skipped"].startswith("budget: level 2 needs ~inf s")  # no sampling rate was measured
    report = (tmp_path / "gpu.md").read_text().splitlines()
    assert sum("| budget" in line for line in report) == len(skipped)  # the report gives each one's reason
