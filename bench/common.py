"""What every benchmark in bench/ shares: its common flags, its timing loop and its results file.

One module, so that the benchmarks compare: --device, --threads and --out mean the same in each
script, every figure is timed by the same loop, and every results file has the same layout, so one
reader handles them all.

Results file: <out>/<benchmark>-<host>-<UTC time>.json (out: --out, default bench/results/, which
is git-ignored: quote figures in docs/), one JSON object:

    {
      "benchmark": "prior",                  # the script's name for what it measures
      "utc": "20261121T101500Z",             # when the file was written
      "machine": {"host": ..., "processor": ..., "cpu_threads": ..., "cuda": ..., "torch": ...},
      "args": {"device": "cpu", "out": "bench/results", ...},   # every command-line argument, paths as strings
      "results": [row, ...]
    }

The machine record names where a figure was taken (host, processor, torch threads, GPU, torch
version), so that it can always be traced. Each row is one measured case, a flat object: its values
are numbers, strings, booleans, null or lists of numbers (such as the time of every repeat), never
objects. Every row has "device": "cpu" or "cuda" where it was measured, "none" where nothing ran on
a device. The other keys name the case ("variant", "recipe", "steps", "batch", ...) and the figures,
with their unit in the name ("train_samples_per_s", "encode_x_realtime", "times_s").
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """--out alone, for a script that writes results but times nothing on a device (estimate_gpu_hours.py)."""
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="FOLDER",
                        help="folder the results file is written in (default: bench/results)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --threads and --out: the same flags in every timed benchmark, so that their runs compare."""
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="where to measure (default all: CPU, and CUDA when torch sees one)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    add_out_argument(parser)


def devices(args: argparse.Namespace) -> list[torch.device]:
    """The devices --device asks for. Asking for CUDA where torch sees none stops with one line
    rather than measuring and printing a table without the rows that were asked for."""
    cuda_visible = torch.cuda.is_available()
    if args.device == "cuda" and not cuda_visible:
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine (use --device cpu)")
    chosen = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and cuda_visible:
        chosen.append(torch.device("cuda"))
    return chosen


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from --threads, before anything is timed (the machine record reports them)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def wall_times(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of every timed call of each function: first `warmup` untimed calls of each (kernel
    choice, allocations, compilation), then `repeats` rounds that call each function once in turn.

    The calls are interleaved so that variants compared with each other see the same load on a
    machine shared with other jobs. On CUDA the device is synchronised before and after each call,
    so a time covers the work and not only its launch. Callers keep the best time (the least
    disturbed) or the median (where each call is a different step, such as one sampled token).
    """
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def machine() -> dict:
    return {
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def machine_line() -> str:
    """The machine in one line, for the header of a benchmark's printed table."""
    m = machine()
    return f"{m['processor']}, {m['cpu_threads']} torch threads, torch {m['torch']}" + (f", {m['cuda']}" if m["cuda"] else "")


def _path_as_str(value: object) -> str:
    """json.dumps' fallback: paths (in the arguments) become strings; anything else is a bug in a row."""
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} in a results file: rows hold numbers, strings, booleans, null and lists")


def write_results(name: str, args: argparse.Namespace, rows: list[dict], out: Path) -> Path:
    """Write the results file (layout in the module docstring) for benchmark `name` into folder `out`; returns its path."""
    for row in rows:
        if "device" not in row or any(isinstance(value, dict) for value in row.values()):
            raise ValueError(f"{name}: a results row must be flat and name its device, not {row}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out) / f"{name}-{platform.node() or 'host'}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "utc": stamp, "machine": machine(), "args": vars(args), "results": rows}
    path.write_text(json.dumps(payload, indent=1, default=_path_as_str))
    print(f"wrote {path}")
    return path


def label_rows(prior, batch: int, total_samples: int) -> torch.Tensor | None:
    """Label rows [total_length, offset 0, one window, artist 0, genre 0, no more genres] for a track of
    `total_samples` (kept inside the prior's timing range), on the prior's device; None for an
    unlabelled prior. What a benchmark conditions a prior on when it does not care which genre."""
    cfg = prior.cfg
    if not cfg.labels:
        return None
    sr = cfg.sample_rate
    total = int(min(max(total_samples, cfg.min_duration * sr), cfg.max_duration * sr - 1))
    row = [total, 0, cfg.n_ctx * cfg.hop_length, 0, 0] + [-1] * (cfg.max_bow_genre_size - 1)
    return torch.tensor([row] * batch, device=prior.prior.x_emb.weight.device)


def debian_package(folder: Path, package: str) -> Path:
    """The files of a Debian package (recorded music for benchmarks: never committed, never in tests),
    fetched with `apt-get download` into `folder` and unpacked into folder/extracted the first time."""
    extracted = folder / "extracted"
    if extracted.is_dir() and any(extracted.iterdir()):
        return extracted
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=folder, check=True)
    deb = next(folder.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    return extracted
