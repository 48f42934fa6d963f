"""How fast the torch Spleeter port removes vocals: seconds of audio separated per second of wall time.

Two measurements per device (--device, default: CPU, and CUDA when present):
  separator  the data stage's path: numpy (2, T) at 44.1 kHz → accompaniment (segments, cross-fade)
  model      the torch API on a (batch, 2, T) tensor, in variants: fp32, channels_last, bf16 autocast
Each is warmed up once, then timed `--repeats` times; the table shows the best and the median run.
The input is the example song shipped with the weights, tiled to `--seconds`.

    python bench/bench_separation.py [--seconds 60] [--repeats 3] [--device cpu|cuda|all] [--threads N] [--out FOLDER]

Results go to bench/results/separation-<host>-<time>.json (git-ignored), one row per device and
measure (layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import numpy as np
import torch

from jukebox_lite.core.audio import load_audio
from jukebox_lite.core.config import SeparationConfig
from jukebox_lite.models.spleeter import SAMPLE_RATE, Spleeter2Stems, spleeter_asset
from jukebox_lite.algorithms.separation import make_separator

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, machine_line, wall_times, write_results


def example_audio(seconds: float) -> np.ndarray:
    song, sr = load_audio(spleeter_asset("audio_example.mp3"))
    assert sr == SAMPLE_RATE
    length = int(seconds * SAMPLE_RATE)
    return np.ascontiguousarray(np.tile(song, (1, length // song.shape[1] + 1))[:, :length])


def bench_device(device: torch.device, audio: np.ndarray, args) -> list[dict]:
    seconds = audio.shape[1] / SAMPLE_RATE
    rows = []

    def record(name: str, audio_seconds: float, fn) -> None:
        """Time `fn` (warmup=1: oneDNN / cuDNN pick and cache their kernels on the first call) and add its row."""
        times = wall_times({name: fn}, device, warmup=1, repeats=args.repeats)[name]
        rows.append({
            "device": device.type, "measure": name, "audio_seconds": audio_seconds,
            "best_x_realtime": audio_seconds / min(times), "median_x_realtime": audio_seconds / statistics.median(times),
            "times_s": times,
        })

    cfg = SeparationConfig(device=device.type, batch_size=args.batch_size, segment_seconds=args.segment_seconds)
    separator = make_separator(cfg)
    record("separator (numpy, stereo 44.1k)", seconds, lambda: separator(audio, SAMPLE_RATE))

    model = Spleeter2Stems.pretrained(device)
    batch = torch.from_numpy(audio).to(device).unsqueeze(0).expand(args.batch_size, -1, -1).contiguous()
    variants = {
        "fp32": (torch.contiguous_format, contextlib.nullcontext),
        "channels_last": (torch.channels_last, contextlib.nullcontext),
        "bf16 autocast": (torch.contiguous_format, lambda: torch.autocast(device.type, dtype=torch.bfloat16)),
    }
    for name, (memory_format, autocast) in variants.items():
        model.to(memory_format=memory_format)

        def run():
            with torch.inference_mode(), autocast():
                model(batch)

        record(f"model {name} (batch {args.batch_size})", args.batch_size * seconds, run)
    model.to(memory_format=torch.contiguous_format)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the stereo input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="separation.batch_size, and the model batch")
    parser.add_argument("--segment-seconds", type=float, default=30.0)
    add_common_arguments(parser)
    args = parser.parse_args()
    chosen = devices(args)
    apply_threads(args)

    audio = example_audio(args.seconds)
    rows = [row for device in chosen for row in bench_device(device, audio, args)]

    print(machine_line())
    print(f"{'device':6}  {'measure':40}  {'audio s':>8}  {'best x RT':>9}  {'median x RT':>11}")
    for r in rows:
        print(f"{r['device']:6}  {r['measure']:40}  {r['audio_seconds']:8.1f}  "
              f"{r['best_x_realtime']:9.1f}  {r['median_x_realtime']:11.1f}")

    write_results("separation", args, rows, args.out)


if __name__ == "__main__":
    main()
