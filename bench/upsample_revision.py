"""Time a run's upsamplers on its own corpus codes with whichever jukebox_lite is first on sys.path.

For comparing revisions on the same inputs: check the older one out beside this one and run this
script from both, alternately, e.g.

    git worktree add /tmp/before 21ac200
    PYTHONPATH=/tmp/before python bench/upsample_revision.py --run runs/demo
    python bench/upsample_revision.py --run runs/demo

It uses only what every revision since the segments has and what came before them (sample_codes;
segments when the revision has them, auto as `sample` picks), and prints and writes one row: the
revision's path, whether it sampled in segments, and the seconds of each level (CPU).
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from pathlib import Path

import numpy as np
import torch

import jukebox_lite
from jukebox_lite import Run
from jukebox_lite.algorithms import sampling

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--n", type=int, default=2)
    args = parser.parse_args()
    if devices(args)[0].type != "cpu":
        parser.error("this comparison runs on the CPU (--device cpu)")
    apply_threads(args)
    run = Run(args.run)
    vqvae = run.load_vqvae("cpu")
    priors = {level: run.load_prior(level, "cpu", vqvae.fingerprint()).prior for level in (1, 0)}
    corpus = run.codes_corpus()
    joined = np.concatenate([corpus.file_codes(f, 2) for f in corpus.split_files("train")])
    tokens = math.ceil(args.seconds * vqvae.sample_rate / vqvae.hop_lengths[2])
    joined = np.tile(joined, math.ceil(args.n * tokens / joined.size) + 1)
    codes = {2: torch.from_numpy(joined[: args.n * tokens].reshape(args.n, tokens).astype(np.int64))}
    segmented = "segments" in inspect.signature(sampling.sample_codes).parameters
    out = {"device": "cpu", "jukebox_lite": str(Path(jukebox_lite.__file__).parent), "segmented": segmented}
    for level in (1, 0):
        prior = priors[level]
        length = codes[level + 1].shape[1] * prior.cfg.cond_downsample
        options = {"segments": sampling.auto_segments(args.n, length, prior.cfg.n_ctx, torch.device("cpu"))} if segmented else {}
        labels = label_rows(prior, args.n, length * prior.cfg.hop_length)
        start = time.perf_counter()
        with torch.no_grad():
            codes[level] = sampling.sample_codes(prior, args.n, length, labels=labels, upper_codes=codes[level + 1],
                                                 generator=torch.Generator().manual_seed(0), **options)
        out[f"seconds_level{level}"] = round(time.perf_counter() - start, 2)
    print(out)
    write_results("upsample_revision", args, [out], args.out)


if __name__ == "__main__":
    main()
