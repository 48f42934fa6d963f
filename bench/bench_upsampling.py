"""Upsampling in segments side by side against one window after another: time, and what the seams cost.

On a run with a VQ-VAE, encoded codes and both upsamplers (default: the demo run of `make demo`), it
takes `--seconds` of the corpus's own level-2 codes for each of `--n` tracks (the training files,
joined, from a different file for each track) and upsamples them to level 1 and level 0, once
sequentially (segments 1, as Jukebox does) and once per `--segments` value, with the same seed. Then:
  - time: seconds and tokens/s of each level, and the ratio to the sequential sampler;
  - seam NLL: the upsampler's own negative log-likelihood (nats per token, teacher-forced with a
    full window of context) of the `--seam-tokens` tokens after each seam, against the same positions
    of the sequential result and against the track's mean; a seam that hurts stands out here;
  - spectral jump: decoded at level 0, the log-mel distance between the 46 ms before and after each
    seam's time, divided by the median of the same distance at every other 46 ms of the track:
    about 1 where nothing happens, larger at a click or a change of texture. The sequential result,
    at the same times, is the baseline.

    python bench/bench_upsampling.py --run runs/demo --seconds 20 --n 2 --segments 8 --overlap 0.25 0.5 1

Results go to bench/results/upsampling-<host>-<time>.json (layout: bench/common.py): one row per
level and segment count.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jukebox_lite import Run
from jukebox_lite.algorithms.metrics import log_mel
from jukebox_lite.algorithms.sampling import auto_segments, plan_segments, sample_codes
from jukebox_lite.core.precision import autocast

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, machine_line, write_results


def corpus_tracks(run: Run, level: int, tokens: int, n: int) -> torch.Tensor:
    """(n, tokens) codes of `level` from the training files, joined end to end, each track from another file on."""
    corpus = run.codes_corpus()
    files = corpus.split_files("train")
    pieces = [corpus.file_codes(f, level) for f in files]
    joined = np.concatenate(pieces)
    if joined.size < tokens:
        joined = np.tile(joined, math.ceil(tokens / joined.size))
    starts = np.cumsum([0] + [p.size for p in pieces])[:n] % max(1, joined.size - tokens + 1)
    return torch.from_numpy(np.stack([joined[s : s + tokens] for s in starts]).astype(np.int64))


@torch.no_grad()
def nll_after(prior, codes: torch.Tensor, upper: torch.Tensor, labels, position: int, count: int) -> float:
    """Mean NLL (nats) of codes[:, position:position+count] with a full window of context before them."""
    cfg, s = prior.cfg, prior.cfg.cond_downsample
    start = max(0, min(position + count - cfg.n_ctx, codes.shape[1] - cfg.n_ctx)) // s * s
    window = codes[:, start : start + cfg.n_ctx]
    y = None if labels is None else labels.clone()
    if y is not None:
        y[:, 1] += start * cfg.hop_length
    logits = prior.logits(window, upper_codes=upper[:, start // s : (start + window.shape[1]) // s], labels=y)
    picked = slice(position - start, position - start + count)
    return F.cross_entropy(logits[:, picked].flatten(0, 1), window[:, picked].flatten()).item()


def mean_nll(prior, codes, upper, labels) -> float:
    n_ctx = prior.cfg.n_ctx
    return statistics.mean(nll_after(prior, codes, upper, labels, a, n_ctx // 2) for a in range(n_ctx // 2, codes.shape[1] - n_ctx // 2 + 1, n_ctx))


def spectral_jumps(audio: torch.Tensor, sr: int, times_s: list[float]) -> list[float]:
    """Log-mel distance between the frames just before and after each time, over its median elsewhere."""
    hop = 2 ** round(math.log2(0.046 * sr))
    frames = log_mel(audio, sr, 2 * hop, hop, 64)  # (n, 64, F)
    step = (frames[:, :, 1:] - frames[:, :, :-1]).pow(2).mean(1).sqrt()  # (n, F-1): change between neighbours
    typical = step.median().item()
    return [step[:, min(step.shape[1] - 1, int(t * sr / hop))].mean().item() / typical for t in times_s]


def upsample(run_priors, top_codes, n, generator_seed, segments, overlap, device):
    """Level 1 then level 0 from the level-2 codes; → codes per level, seconds per level, the seams per level."""
    codes, seconds, seams = {2: top_codes.to(device)}, {}, {}
    for level in (1, 0):
        prior = run_priors[level]
        length = codes[level + 1].shape[1] * prior.cfg.cond_downsample
        asked = auto_segments(n, length, prior.cfg.n_ctx, device) if segments == "auto" else segments
        starts, seg_len = plan_segments(prior, length, asked, overlap)
        seams[level] = [starts[k - 1] + seg_len for k in range(1, len(starts))]
        labels = label_rows(prior, n, length * prior.cfg.hop_length)
        generator = torch.Generator(device).manual_seed(generator_seed)
        clock = time.perf_counter()
        with autocast(device):
            codes[level] = sample_codes(prior, n, length, labels=labels, upper_codes=codes[level + 1],
                                        generator=generator, segments=asked, overlap=overlap)
        seconds[level] = time.perf_counter() - clock
    return codes, seconds, seams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with vqvae, codes and both upsamplers")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--n", type=int, default=2, help="tracks, sampled as one batch")
    parser.add_argument("--segments", nargs="+", default=["auto"], help="segment counts to compare with 1 (or auto)")
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.5], help="warm-ups of each segment to compare, fractions of n_ctx")
    parser.add_argument("--seam-tokens", type=int, default=32, help="tokens after each seam whose NLL is measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (device, *_) = devices(args)
    apply_threads(args)
    run = Run(args.run)
    vqvae = run.load_vqvae(device)
    priors = {level: run.load_prior(level, device, vqvae.fingerprint()).prior for level in (1, 0)}
    sr = vqvae.sample_rate
    tokens = math.ceil(args.seconds * sr / vqvae.hop_lengths[2])
    top = corpus_tracks(run, 2, tokens, args.n)

    variants = [(1, 1.0)] + [(s if s == "auto" else int(s), o) for s in args.segments for o in args.overlap]
    results = {v: upsample(priors, top, args.n, args.seed, *v, device) for v in variants}
    audio = {v: vqvae.decode_long(r[0][0], 0)[:, 0] for v, r in results.items()}
    rows = []
    sequential_codes, sequential_seconds, _ = results[variants[0]]
    for v in variants[1:]:
        codes, seconds, seams = results[v]
        for level in (1, 0):
            prior, upper = priors[level], codes[level + 1]
            labels = label_rows(prior, args.n, codes[level].shape[1] * prior.cfg.hop_length)
            seam_nll = [nll_after(prior, codes[level], upper, labels, p, args.seam_tokens) for p in seams[level]]
            same_place = [nll_after(prior, sequential_codes[level], sequential_codes[level + 1], labels, p, args.seam_tokens)
                          for p in seams[level]]
            times = [p * vqvae.hop_lengths[level] / sr for p in seams[level]]
            rows.append({
                "device": device.type, "level": level, "segments": len(seams[level]) + 1, "overlap": v[1], "tracks": args.n,
                "tokens": codes[level].shape[1], "seconds_sequential": sequential_seconds[level],
                "seconds_segmented": seconds[level], "speed_up": sequential_seconds[level] / seconds[level],
                "seam_nll": statistics.mean(seam_nll) if seam_nll else None,
                "sequential_nll_same_positions": statistics.mean(same_place) if same_place else None,
                "mean_nll_segmented": mean_nll(prior, codes[level], upper, labels),
                "mean_nll_sequential": mean_nll(prior, sequential_codes[level], sequential_codes[level + 1], labels),
                "spectral_jump_segmented": statistics.mean(spectral_jumps(audio[v], sr, times)) if times else None,
                "spectral_jump_sequential": statistics.mean(spectral_jumps(audio[variants[0]], sr, times)) if times else None,
            })
    print(f"{args.n} × {args.seconds:g} s upsampled on {args.run}; {machine_line()}")
    print(f"{'level':>5} {'segments':>8} {'overlap':>7} {'sequential s':>13} {'segmented s':>12} {'speed-up':>9} "
          f"{'seam NLL':>9} {'seq. NLL there':>15} {'mean NLL seg/seq':>17} {'jump seg/seq':>13}")
    for r in rows:
        nll = "-" if r["seam_nll"] is None else f"{r['seam_nll']:.3f}"
        there = "-" if r["sequential_nll_same_positions"] is None else f"{r['sequential_nll_same_positions']:.3f}"
        jump = "-" if r["spectral_jump_segmented"] is None else f"{r['spectral_jump_segmented']:.2f}/{r['spectral_jump_sequential']:.2f}"
        print(f"{r['level']:5d} {r['segments']:8d} {r['overlap']:7.2f} {r['seconds_sequential']:13.1f} {r['seconds_segmented']:12.1f} "
              f"{r['speed_up']:8.2f}× {nll:>9} {there:>15} {r['mean_nll_segmented']:8.3f}/{r['mean_nll_sequential']:.3f} {jump:>13}")
    write_results("upsampling", args, rows, args.out)


if __name__ == "__main__":
    main()
