"""Benchmark the data stage: seconds of music ingested per second of wall time.

Writes a corpus of synthesized house tracks (the demo corpus's synthesizer; 44.1 kHz stereo FLAC), runs
`prepare` on it once per device (--device, default: CPU, and CUDA when present; it sets
data.separation.device) and separation backend, and prints a table. Each figure is one end-to-end
run, worker start-up included. --threads sets this process's torch threads, which separate with
--workers 1; more workers are processes that each take their share of the cores. Run it on a quiet
machine.

    python bench/bench_ingest.py [--files 8] [--seconds 30] [--workers 2] [--backends none torch]
                                 [--device cpu|cuda|all] [--threads N] [--out FOLDER]

Results go to bench/results/ingest-<host>-<time>.json (git-ignored), one row per device and backend
(layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_prep.demo_corpus import write_demo_corpus
from data_prep.ingest import prepare

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, machine_line, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample-rate", type=int, default=44100, help="target rate of the corpus")
    parser.add_argument("--backends", nargs="+", default=["none", "torch"])
    add_common_arguments(parser)
    args = parser.parse_args()
    chosen = devices(args)
    apply_threads(args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music"
        write_demo_corpus(music, n_tracks=args.files, seconds=args.seconds, sample_rate=44100, example_song=False)
        for device in chosen:
            for backend in args.backends:
                overrides = [
                    f"data.separation.backend={backend}",
                    f"data.separation.device={device.type}",
                    f"data.workers={args.workers}",
                    f"data.sample_rate={args.sample_rate}",
                    "data.min_seconds=1",
                ]
                # one run, timed end to end: prepare returns when every file is written
                start = time.perf_counter()
                summary = prepare(None, overrides, music, Path(tmp) / f"run_{device.type}_{backend}")
                wall = time.perf_counter() - start
                rows.append(
                    {
                        "device": device.type,
                        "backend": backend,
                        "workers": args.workers,
                        "files": summary.accepted,
                        "audio_seconds": round(summary.seconds, 1),
                        "wall_seconds": round(wall, 2),
                        "x_realtime": round(summary.seconds / wall, 1),
                    }
                )

    print(f"ingestion throughput ({machine_line()}; worker start-up included)")
    print(f"{'device':<8}{'backend':<10}{'workers':>8}{'files':>7}{'audio s':>10}{'wall s':>9}{'x real time':>13}")
    for r in rows:
        print(f"{r['device']:<8}{r['backend']:<10}{r['workers']:>8}{r['files']:>7}{r['audio_seconds']:>10}{r['wall_seconds']:>9}{r['x_realtime']:>13}")
    write_results("ingest", args, rows, args.out)


if __name__ == "__main__":
    main()
