"""The fast path (`sample --fast`) against the full one: time, and distance to the original audio.

Both paths start from the same level-1 codes, those of held-out recordings (the validation split),
so the only difference is what each does after level 1:
  full   the level-0 upsampler samples level-0 codes (in segments, as `sample` does), the VQ-VAE
         decodes them, and the run's level-0 refiner refines that
  fast   the VQ-VAE decodes level 1 directly, and a refiner trained on level-1 audio refines that
Each output is compared with the original recording (eval-refiner's metrics: multi-resolution STFT
and log-mel distance, high-band energy error, spectral convergence, SI-SDR), and each path is timed.
The level-0 re-encoding (the original's own level-0 codes, decoded) is the full path's ceiling.

The level-1 refiner is trained here, once, by the pipeline's own command (`train-refiner
refiner.cond_level=1 refiner.residual_scale=null`) in a copy of the run under --work: the run itself
is not touched, and a rerun reuses the copy.

    python bench/bench_fast_path.py --run runs/demo --config pipelines/demo.yaml

Results go to bench/results/fast_path-<host>-<time>.json (layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from jukebox_lite import Run
from jukebox_lite.algorithms import metrics
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.algorithms.sampling import auto_segments, sample_codes
from jukebox_lite.core.config import load_config
from jukebox_lite.core.precision import autocast
from jukebox_lite.stages.evaluation import evaluation_clips

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, machine_line, write_results


def level1_refiner_run(run: Run, config: Path, work: Path, steps: int | None) -> Run:
    """A copy of `run` whose refiner refines level-1 audio, trained by train-refiner the first time
    (for `steps` steps, annealed over the second half; None: the recipe's schedule)."""
    copy = Run(work / "run")
    if not copy.path.exists():
        shutil.copytree(run.path, copy.path, ignore=shutil.ignore_patterns("samples", "copies", "refiner", "review.html", ".*.lock"))
    if not copy.refiner.has_checkpoint():
        argv = [sys.executable, "-m", "jukebox_lite", "train-refiner", "--config", str(config), "--run", str(copy.path),
                "refiner.cond_level=1", "refiner.residual_scale=null"]
        if steps is not None:
            argv += [f"refiner.train.steps={steps}", f"refiner.train.anneal_start={steps // 2}",
                     f"refiner.train.anneal_steps={steps - steps // 2 + 1}"]
        print("training the level-1 refiner:", " ".join(argv), flush=True)
        subprocess.run(argv, check=True)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with vqvae, level-0 upsampler and refiner")
    parser.add_argument("--config", type=Path, default=Path("pipelines/demo.yaml"), help="the run's recipe")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "jukebox-lite" / "fast_path")
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--max-segments", type=int, default=2, help="held-out clips per file at most")
    parser.add_argument("--refiner-steps", type=int, help="train the level-1 refiner this long (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (device, *_) = devices(args)
    apply_threads(args)
    run = Run(args.run)
    fast_run = level1_refiner_run(run, args.config, args.work, args.refiner_steps)
    vqvae = run.load_vqvae(device)
    upsampler = run.load_prior(0, device, vqvae.fingerprint()).prior
    refiners = {0: run.load_refiner(device, vqvae.fingerprint()), 1: fast_run.load_refiner(device, vqvae.fingerprint())}
    assert refiners[1].config.cond_level == 1 and refiners[0].config.cond_level == 0
    sr, hops = vqvae.sample_rate, vqvae.hop_lengths
    clips, files, source, seconds = evaluation_clips(run, None, sr, args.segment_seconds, args.max_segments, hops[2])
    length = min(c.shape[-1] for c in clips)
    x = torch.stack([c[..., :length] for c in clips])  # (B, 1, T)
    B = x.shape[0]
    print(f"{B} held-out clips of {length / sr:.2f} s from {files} files of {source}", flush=True)

    outputs: dict[str, torch.Tensor] = {}
    times: dict[str, float] = {}
    generator = torch.Generator(device).manual_seed(args.seed)
    with torch.no_grad(), autocast(device):
        codes1 = vqvae.encode(x.to(device), levels=[1])[1]  # (B, T / hop_1)
        outputs["level-0 re-encoded (ceiling)"] = vqvae.decode(vqvae.encode(x.to(device), levels=[0]), 0).float().cpu()
        clock = time.perf_counter()
        outputs["fast: level 1 decoded"] = vqvae.decode_long(codes1, 1)
        times["fast: level 1 decoded"] = time.perf_counter() - clock
        clock = time.perf_counter()
        length0 = codes1.shape[1] * upsampler.cfg.cond_downsample
        codes0 = sample_codes(upsampler, B, length0, upper_codes=codes1, labels=label_rows(upsampler, B, length0 * hops[0]),
                              generator=generator, segments=auto_segments(B, length0, upsampler.cfg.n_ctx, device),
                              overlap=load_config(args.config).sample.upsampler_overlap)  # as `sample` runs it
        outputs["full: level 0 upsampled, decoded"] = vqvae.decode_long(codes0, 0)
        times["full: level 0 upsampled, decoded"] = time.perf_counter() - clock
    for level, name, source_name in ((1, "fast: + level-1 refiner", "fast: level 1 decoded"),
                                     (0, "full: + level-0 refiner", "full: level 0 upsampled, decoded")):
        clock = time.perf_counter()
        outputs[name] = refine(refiners[level], outputs[source_name], seed=args.seed)
        times[name] = times[source_name] + time.perf_counter() - clock

    rows = []
    for name, audio in outputs.items():
        values = metrics.audio_metrics(x, audio[..., :length], sr)
        rows.append({"device": device.type, "path": name, "clips": B, "seconds_of_audio": B * length / sr,
                     **{metric: statistics.mean(v.tolist()) for metric, v in values.items()},
                     "seconds": times.get(name)})
    print(f"{B} × {length / sr:.2f} s, {machine_line()}")
    keys = [k for k in rows[0] if k not in ("device", "path", "clips", "seconds_of_audio", "seconds")]
    print(f"{'path':36}" + "".join(f"{k:>22}" for k in keys) + f"{'seconds':>9}")
    for r in rows:
        took = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        print(f"{r['path']:36}" + "".join(f"{r[k]:22.3f}" for k in keys) + f"{took:>9}")
    write_results("fast_path", args, rows, args.out)


if __name__ == "__main__":
    main()
