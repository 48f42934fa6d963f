"""Estimate the hours each training stage of a recipe needs on one GPU, from counted FLOPs.

No GPU has measured these recipes yet, so this is an estimate, not a benchmark: FLOPs of one training
step (forward + backward) are counted exactly by torch's FlopCounterMode on the CPU, on a shorter
window where a full one would take too long to run here (transformer FLOPs grow linearly with the
window at fixed sparsity, convolution FLOPs exactly so), then divided by an assumed sustained rate.

    python bench/estimate_gpu_hours.py [--config pipelines/deep_house.yaml] [--tflops 300] [--out FOLDER]

300 TFLOP/s sustained is about 30 % of an H100's dense bf16 peak: a typical share for transformer
training; convolution-heavy models (the VQ-VAE, the refiner) usually reach less, so read those rows
as lower bounds. Layer checkpointing re-runs each layer's forward in the backward pass (+1 forward).

Results go to bench/results/gpu-hours-estimate-<host>-<time>.json (git-ignored), one row per stage
with device "none": nothing is timed on a device (layout: bench/common.py).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from jukebox_lite.core.config import load_config
from jukebox_lite.models.prior import Prior
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.models.vqvae import VQVAE

# bench/ is on sys.path when a script here runs
from common import add_out_argument, write_results


def counted(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def prior_step_flops(cfg, tokens: int) -> float:
    """FLOPs of one step on one window of `tokens` tokens (a multiple of the block length)."""
    small = type(cfg)(**{**vars(cfg), "n_ctx": tokens, "blocks": tokens // cfg.block_ctx})
    model = Prior(small)
    codes = torch.randint(0, cfg.bins, (1, tokens))
    upper = torch.randint(0, cfg.bins, (1, tokens // cfg.cond_downsample)) if cfg.is_upsampler else None
    sr = cfg.sample_rate
    labels = torch.tensor([[int(cfg.min_duration * sr) + 1, 0, tokens * cfg.hop_length, 0] + [0] * cfg.max_bow_genre_size])
    forward = counted(lambda: model.logits(codes, upper, labels if cfg.labels else None))
    step = counted(lambda: model.logits(codes, upper, labels if cfg.labels else None).logsumexp(-1).sum().backward())
    return step + (forward if cfg.checkpoint_layers else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pipelines/deep_house.yaml")
    parser.add_argument("--tflops", type=float, default=300.0, help="assumed sustained TFLOP/s on the GPU")
    parser.add_argument("--prior-tokens", type=int, default=1024, help="window counted for the priors (scaled up)")
    add_out_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    # residual_scale: null recipes measure it on their data; it does not change the FLOPs
    recipe = load_config(args.config, ["refiner.residual_scale=0.04"])
    rows = []

    vq = recipe.vqvae
    short = 8 * vq.hop_lengths[-1] * 16  # a short window, scaled to sample_length (convolutions are linear in time)
    model = VQVAE(vq)
    x = torch.randn(1, 1, short) * 0.1
    flops = counted(lambda: model(x)[1]["loss"].backward()) * vq.sample_length / short * vq.train.batch_size
    rows.append(("vqvae", flops, vq.train.steps))

    for level in (2, 1, 0):
        cfg = getattr(recipe, f"prior_level{level}")
        tokens = min(cfg.n_ctx, args.prior_tokens)
        flops = prior_step_flops(cfg, tokens) * cfg.n_ctx / tokens * cfg.train.batch_size
        rows.append((f"prior_level{level}", flops, cfg.train.steps))

    rc = recipe.refiner
    model = Refiner(rc, vqvae_fingerprint="estimate")
    clean = torch.randn(1, 1, rc.segment_length) * 0.1
    t = torch.full((1,), 0.5)
    flops = counted(lambda: model(clean, clean, t, torch.randn_like(clean))[1]["loss"].backward()) * rc.train.batch_size  # + the VQ-VAE pass, small
    rows.append(("refiner", flops, rc.train.steps))

    print(f"{args.config}: hours on one GPU at an assumed {args.tflops:g} TFLOP/s sustained (estimates, not measurements)")
    print(f"{'stage':14}{'TFLOP/step':>12}{'steps':>10}{'hours':>8}")
    results = []
    for stage, flops, steps in rows:
        hours = flops * steps / (args.tflops * 1e12) / 3600
        results.append({"device": "none", "stage": stage, "tflop_per_step": flops / 1e12, "steps": steps, "hours": hours})
        print(f"{stage:14}{flops / 1e12:12.2f}{steps:10d}{hours:8.1f}")
    write_results("gpu-hours-estimate", args, results, args.out)


if __name__ == "__main__":
    main()
