"""Benchmark the data stage: seconds of music ingested per second of wall time.

Writes a corpus of synthesized house tracks (the demo corpus's synthesizer; 44.1 kHz stereo FLAC), runs
`prepare` on it with each separation backend, and prints a table; the JSON goes to
bench/results/. Run it on a quiet machine.

    python bench/bench_ingest.py [--files 8] [--seconds 30] [--workers 2] [--backends none torch]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


from data_prep.demo_corpus import write_demo_corpus
from data_prep.ingest import prepare

from results_file import machine_line, write_results  # bench/ is on sys.path when a script here runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample-rate", type=int, default=44100, help="target rate of the corpus")
    parser.add_argument("--backends", nargs="+", default=["none", "torch"])
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music"
        write_demo_corpus(music, n_tracks=args.files, seconds=args.seconds, sample_rate=44100, example_song=False)
        for backend in args.backends:
            overrides = [
                f"data.separation.backend={backend}",
                f"data.workers={args.workers}",
                f"data.sample_rate={args.sample_rate}",
                "data.min_seconds=1",
            ]
            start = time.perf_counter()
            summary = prepare(None, overrides, music, Path(tmp) / f"run_{backend}")
            wall = time.perf_counter() - start
            rows.append(
                {
                    "backend": backend,
                    "workers": args.workers,
                    "files": summary.accepted,
                    "audio_seconds": round(summary.seconds, 1),
                    "wall_seconds": round(wall, 2),
                    "x_realtime": round(summary.seconds / wall, 1),
                }
            )

    print(f"ingestion throughput ({machine_line()}; worker start-up included)")
    print(f"{'backend':<10}{'workers':>8}{'files':>7}{'audio s':>10}{'wall s':>9}{'x real time':>13}")
    for r in rows:
        print(f"{r['backend']:<10}{r['workers']:>8}{r['files']:>7}{r['audio_seconds']:>10}{r['wall_seconds']:>9}{r['x_realtime']:>13}")
    write_results("ingest", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
