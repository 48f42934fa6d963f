"""Where every benchmark writes what it measured: bench/results/<name>-<host>-<UTC time>.json.

Each file names the machine (host, processor, torch threads, GPU, torch version), so a figure can
always be traced to where it was taken. bench/results/ is git-ignored: quote figures in docs/.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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


def write_results(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write {"machine": ..., **payload} to `path` or a new file under bench/results/; returns the path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = path or RESULTS / f"{name}-{platform.node() or 'host'}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "utc": stamp, **payload}, indent=1, default=str))
    print(f"wrote {path}")
    return path
