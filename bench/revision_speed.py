"""Time sampling with whichever jukebox_lite is first on sys.path: to compare revisions on equal terms.

Check the older revision out beside this one and run this script from both, alternately, e.g.

    git worktree add /tmp/before 21ac200
    PYTHONPATH=/tmp/before python bench/revision_speed.py --threads 1 --run runs/demo
    python bench/revision_speed.py --threads 1 --run runs/demo

It uses only what every revision since the KV cache has, and measures:
  step        tokens/s of one sampled token (draw + one cached step) of the small top prior of the
              fast-sampling issue (width 128, depth 6, n_ctx 512, attn_order 2, 2048 codes, random
              weights), at batch 1 and 16: the median of 64 steps over the end of a window
  upsampling  with --run: the seconds of the run's level-1 and level-0 upsamplers on its own corpus
              codes (--n tracks of --seconds), in segments when the revision has them (auto, as
              `sample` picks)
One row per run of the script (device cpu), printed and written to --out.
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import jukebox_lite
from jukebox_lite import Run
from jukebox_lite.core.config import PriorConfig
from jukebox_lite.models.prior import Prior
from jukebox_lite.algorithms import sampling

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, write_results


@torch.no_grad()
def step_rates(batches=(1, 16), steps: int = 64) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = PriorConfig(n_ctx=512, width=128, depth=6, heads=1, attn_order=2, blocks=16, bins=2048, labels=False)
    prior = Prior(cfg).eval()
    rates = {}
    for batch in batches:
        generator = torch.Generator().manual_seed(0)
        decoder = sampling.IncrementalDecoder(prior, prior.conditioning(batch, cfg.n_ctx))
        decoder.start()
        logits = decoder.feed(torch.randint(0, cfg.bins, (batch, cfg.n_ctx - steps - 1)))[:, -1]
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            logits = decoder.feed(sampling.draw(logits, 1.0, 0, 0.0, generator)[:, None])[:, 0]
            times.append(time.perf_counter() - start)
        rates[f"step_tokens_per_s_batch{batch}"] = batch / statistics.median(times)
    return rates


def upsampling_seconds(run_path: Path, seconds: float, n: int) -> dict:
    """Seconds of each upsampler on the run's own level-2 codes, joined end to end into n tracks."""
    run = Run(run_path)
    vqvae = run.load_vqvae("cpu")
    priors = {level: run.load_prior(level, "cpu", vqvae.fingerprint()).prior for level in (1, 0)}
    corpus = run.codes_corpus()
    joined = np.concatenate([corpus.file_codes(f, 2) for f in corpus.split_files("train")])
    tokens = math.ceil(seconds * vqvae.sample_rate / vqvae.hop_lengths[2])
    joined = np.tile(joined, math.ceil(n * tokens / joined.size) + 1)
    codes = {2: torch.from_numpy(joined[: n * tokens].reshape(n, tokens).astype(np.int64))}
    segmented = "segments" in inspect.signature(sampling.sample_codes).parameters
    out = {"segmented": segmented}
    for level in (1, 0):
        prior = priors[level]
        length = codes[level + 1].shape[1] * prior.cfg.cond_downsample
        options = {"segments": sampling.auto_segments(n, length, prior.cfg.n_ctx, torch.device("cpu"))} if segmented else {}
        labels = label_rows(prior, n, length * prior.cfg.hop_length)
        start = time.perf_counter()
        with torch.no_grad():
            codes[level] = sampling.sample_codes(prior, n, length, labels=labels, upper_codes=codes[level + 1],
                                                 generator=torch.Generator().manual_seed(0), **options)
        out[f"seconds_level{level}"] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--run", type=Path, help="also time this run's upsamplers (e.g. runs/demo)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--n", type=int, default=2)
    args = parser.parse_args()
    if devices(args)[0].type != "cpu":
        parser.error("this comparison runs on the CPU (--device cpu)")
    apply_threads(args)
    row = {"device": "cpu", "jukebox_lite": str(Path(jukebox_lite.__file__).parent), **step_rates()}
    if args.run:
        row.update(upsampling_seconds(args.run, args.seconds, args.n))
    print(row)
    write_results("revision_speed", args, [row], args.out)


if __name__ == "__main__":
    main()
