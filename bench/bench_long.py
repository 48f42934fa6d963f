"""Does a long track hold together? Long top-level samples against held-out recordings, segment by segment.

Jukebox's users asked for long generation that holds together; this puts numbers on it. The top prior
of a run (default: the run bench/real_music.py trains on an hour of recorded music) samples tracks of
`--seconds` at level 2, window after window as `sample` does (same seed for every kind):
  - "sampled": `--n` tracks with the recipe's hop fraction, each new window keeping the last
    (1 − hop) · n_ctx tokens as its context (what `sample` does);
  - "no context": the same with hop 1.0, every window sampled without the tokens before it: the
    control, a track that cannot hold together beyond one window;
  - "continued": each held-out track's first `--segment-seconds` as the prime, continued to
    `--seconds` (what `sample --prime` does).
The generated codes and the held-out tracks' own codes ("held-out": RUN/codes, valid split, each
from `--skip-seconds` on, past intros) are decoded by the same VQ-VAE at level 2, so the codec's loss
is on every side, cut into `--segment-seconds` segments and measured by
jukebox_lite.algorithms.coherence: per kind and description (loudness, timbre, harmony, rhythm),
identity (adjacent segments of a track over two tracks' segments: 1 = no character of its own; the
held-out recordings give real music's value), drift (away from the first segment) and memory (a
continuation against the recording it was primed with: 1 = forgotten); per kind, the longest run
of one token and the share of repeated spans (loops, a stuck sampler).

    python bench/bench_long.py [--run ~/.cache/jukebox-lite/real_music/run] [--seconds 90] [--n 8]

Results go to bench/results/long-<host>-<time>.json (layout: bench/common.py): one row per kind and
description.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from jukebox_lite import Run
from jukebox_lite.algorithms.coherence import DESCRIPTIONS, LOOP_TOKENS, coherence, degeneration, describe_segments
from jukebox_lite.algorithms.sampling import sample_codes
from jukebox_lite.core.config import SampleConfig
from jukebox_lite.core.errors import UserError

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, machine_line, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--run", type=Path, default=Path.home() / ".cache" / "jukebox-lite" / "real_music" / "run",
                        help="a run with a VQ-VAE, codes and a top prior (default: bench/real_music.py's)")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each track")
    parser.add_argument("--n", type=int, default=8, help="tracks generated per kind")
    parser.add_argument("--segment-seconds", type=float, default=6.0)
    parser.add_argument("--skip-seconds", type=float, default=20.0, help="held-out tracks are taken from here (past intros)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="best")
    parser.add_argument("--temperature", type=float, default=SampleConfig().temperature, help="sampling temperature (default: the recipes')")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (device, *_) = devices(args)
    apply_threads(args)
    run = Run(args.run)
    if not run.path.is_dir():
        raise SystemExit(f"no run at {args.run}: run bench/real_music.py first (or pass --run RUN)")
    vqvae = run.load_vqvae(device)
    top = run.load_prior(2, device, vqvae.fingerprint(), args.checkpoint).prior.eval()
    corpus = run.codes_corpus(vqvae.fingerprint())
    sr, hop = vqvae.sample_rate, vqvae.hop_lengths[2]
    tokens = int(args.seconds * sr / hop)
    skip = int(args.skip_seconds * sr / hop)
    held_out = [corpus.file_codes(i, 2)[skip:skip + tokens] for i in corpus.split_files("valid")]  # (tokens,) each
    held_out = [np.asarray(codes, dtype=np.int64) for codes in held_out if len(codes) == tokens]
    if len(held_out) < 2:
        raise SystemExit(f"'{run.codes.path}' has {len(held_out)} held-out tracks of {args.skip_seconds + args.seconds} s; "
                         "two are needed (shorten --seconds or --skip-seconds).")
    print(machine_line())
    print(f"{args.run}: top prior {top.cfg.width} wide, {top.cfg.depth} deep, n_ctx {top.cfg.n_ctx} "
          f"({top.cfg.n_ctx * hop / sr:.2f} s); {len(held_out)} held-out tracks; {args.seconds:.0f} s each")

    kinds: dict[str, list[np.ndarray]] = {"held-out": held_out}
    timings = {}
    prime = torch.as_tensor(np.stack([codes[:int(args.segment_seconds * sr / hop)] for codes in held_out]))
    recipe_hop = SampleConfig().hop_fraction(2)
    cases = {"sampled": (args.n, recipe_hop, None), "no context": (args.n, 1.0, None), "continued": (len(held_out), recipe_hop, prime)}
    for kind, (n, hop_fraction, primed) in cases.items():
        clock = time.perf_counter()
        codes = sample_codes(top, n, tokens, labels=label_rows(top, n, tokens * hop), prime=primed, hop_fraction=hop_fraction,
                             temperature=args.temperature, generator=torch.Generator(device).manual_seed(args.seed), progress=True)  # (n, tokens)
        timings[kind] = time.perf_counter() - clock
        kinds[kind] = [row.cpu().numpy() for row in codes]
        print(f"{kind}: {n} tracks, hop fraction {hop_fraction}, temperature {args.temperature}, {timings[kind]:.1f} s")

    described = {}
    for kind, tracks in kinds.items():
        audio = vqvae.decode_long(torch.as_tensor(np.stack(tracks)), level=2)[:, 0].numpy()  # (tracks, T)
        described[kind] = [describe_segments(a, sr, args.segment_seconds) for a in audio]
    rows = []
    for kind, tracks in kinds.items():
        broken = [degeneration(codes, hop / sr) for codes in tracks]
        for key in DESCRIPTIONS:
            measured = coherence(described[kind], key, described["held-out"] if kind in ("held-out", "continued") else None)
            rows.append({"device": device.type, "kind": kind, "description": key, **measured, "tracks": len(tracks),
                         "longest_run_s": max(b["longest_run_s"] for b in broken),
                         "loop_share": float(np.mean([b["loop_share"] for b in broken])), "sample_s": timings.get(kind)})  # None: held-out, not sampled
    print(f"\n{'kind':<11} {'description':<11} {'within':>8} {'across':>8} {'identity':>8} {'drift':>6} {'memory':>6}")
    for row in rows:
        print(f"{row['kind']:<11} {row['description']:<11} {row['within']:8.3f} {row['across']:8.3f} {row['identity']:8.2f} "
              f"{row['drift']:6.2f} {row['memory']:6.2f}")
    print("\nidentity: within / across (1: a track's next segment is as far as another track's); drift: from the first "
          "segment, over within; memory: to its own held-out track's first segment, over to the others'")
    print(f"longest run of one token (s), share of {LOOP_TOKENS}-token spans repeating an earlier one:")
    for kind in kinds:
        row = next(r for r in rows if r["kind"] == kind)
        print(f"  {kind:<11} {row['longest_run_s']:.2f} s, {row['loop_share']:.3f}")
    write_results("long", args, rows, args.out)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a run without codes, a top prior or held-out files: one line
        raise SystemExit(str(e)) from None
