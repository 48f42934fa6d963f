"""How fast the refiner refines: seconds of audio refined per second of wall time.

For each recipe's `refiner` section (by default the demo and deep-house recipes), each step count of
the detail model (0: the estimate alone, strength 0, what recorded music gets) and each device
(--device, default: CPU, and CUDA when present), a model with that section's sizes (random weights:
speed does not depend on them) refines `--seconds` of synthesized audio through the chunked sampler
that `jukebox-lite refine` uses. Each case is warmed up once, then timed `--repeats` times.

    python bench/bench_refiner.py [--recipes pipelines/demo.yaml pipelines/deep_house.yaml]
                                  [--steps 0 4 8 16] [--seconds 10] [--repeats 2]
                                  [--device cpu|cuda|all] [--threads N] [--out FOLDER]

Results go to bench/results/refiner-<host>-<time>.json (git-ignored), one row per recipe, device and
step count (layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from pathlib import Path

import torch

from jukebox_lite.core.config import load_config
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.algorithms.refining import refine

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, machine_line, wall_times, write_results


def test_audio(seconds: float, sr: int) -> torch.Tensor:
    """(1, 1, T): two tones and a decaying noise burst every half second, peak below 1."""
    t = torch.arange(int(seconds * sr)) / sr
    gen = torch.Generator().manual_seed(0)
    burst = torch.exp(-30 * (t % 0.5)) * torch.randn(t.shape, generator=gen)
    audio = 0.2 * torch.sin(2 * math.pi * 110 * t) + 0.1 * torch.sin(2 * math.pi * 660 * t) + 0.1 * burst
    return audio[None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", type=Path,
                        default=[Path("pipelines/demo.yaml"), Path("pipelines/deep_house.yaml")])
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 4, 8, 16], help="detail steps; 0: the estimate alone")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the audio refined per case")
    parser.add_argument("--repeats", type=int, default=2)
    add_common_arguments(parser)
    args = parser.parse_args()
    chosen = devices(args)
    apply_threads(args)

    rows = []
    for recipe in args.recipes:
        # residual_scale: null recipes measure it on their data; any value times an untrained model the same
        recipe_cfg = load_config(recipe, ["refiner.residual_scale=0.04"])
        cfg = recipe_cfg.refiner
        torch.manual_seed(0)
        audio = test_audio(args.seconds, cfg.sample_rate)
        for device in chosen:
            model = Refiner(cfg).to(device).eval()
            params = sum(p.numel() for p in model.parameters())
            for steps in args.steps:
                run = functools.partial(refine, model, audio, steps=max(steps, 1), strength=1.0 if steps else 0.0, seed=0)
                # warmup=1: oneDNN / cuDNN pick and cache their kernels on the first call
                times = wall_times({"refine": run}, device, warmup=1, repeats=args.repeats)["refine"]
                rows.append({
                    "recipe": recipe_cfg.name, "device": device.type, "params_m": params / 1e6, "sample_rate": cfg.sample_rate,
                    "chunk_length": cfg.chunk_length, "steps": steps, "audio_seconds": args.seconds,
                    "best_x_realtime": args.seconds / min(times),
                    "median_x_realtime": args.seconds / statistics.median(times), "times_s": times,
                })

    print(machine_line())
    print(f"{'recipe':12}  {'device':6}  {'params':>7}  {'rate':>6}  {'steps':>5}  {'audio s':>7}  {'best x RT':>9}  {'median x RT':>11}")
    for r in rows:
        print(f"{r['recipe']:12}  {r['device']:6}  {r['params_m']:6.1f}M  {r['sample_rate']:6d}  {r['steps']:5d}  "
              f"{r['audio_seconds']:7.1f}  {r['best_x_realtime']:9.3f}  {r['median_x_realtime']:11.3f}")

    write_results("refiner", args, rows, args.out)


if __name__ == "__main__":
    main()
