"""Does a long track hold together? Long top-level samples against held-out recordings, segment by segment.

Jukebox's users asked for long generation that holds together; this puts numbers on it. The top prior
of a run (default: the run bench/real_music.py trains on an hour of recorded music) samples tracks of
`--seconds` at level 2, window after window as `sample` does (same seed for every kind):
  - "sampled": `--n` tracks with the recipe's hop fraction, each new window keeping the last
    (1 − hop) · n_ctx tokens as its context (what `sample` does);
  - "no context": the same with hop 1.0, every window sampled without the tokens before it: the
    control, a track that cannot hold together beyond one window;
  - "continued": each held-out track's first `--segment-seconds` as the prime, continued to
    `--seconds` (what `sample --prime` does);
  - with a track character (prior_level2.character_tokens): "sampled" and "no context" draw each
    track's character from the corpus's distribution (what `sample` does by default), "continued"
    takes the prime's own, and "like held-out" samples one track per held-out recording with that
    recording's character (`sample --like`), its memory measured against that recording.
Several runs (`--run A B`, the same VQ-VAE: e.g. today's prior and one with a track character, trained
on the same codes) are measured side by side with the same seed; the first run's codes give the
held-out tracks for all. Every generated track is checked for copies of the training files with the
token detector of `check-copies` (`algorithms.copies`, the recipe default's flag length).
The generated codes and the held-out tracks' own codes ("held-out": RUN/codes, valid split, each
from `--skip-seconds` on, past intros) are decoded by the same VQ-VAE at level 2, so the codec's loss
is on every side, cut into `--segment-seconds` segments and measured by
jukebox_lite.algorithms.coherence: per kind and description (loudness, timbre, harmony, rhythm),
identity (adjacent segments of a track over two tracks' segments: 1 = no character of its own; the
held-out recordings give real music's value), drift (away from the first segment) and memory (a
continuation against the recording it was primed with: 1 = forgotten); per kind, the longest run
of one token and the share of repeated spans (loops, a stuck sampler).

    python bench/bench_long.py [--run ~/.cache/jukebox-lite/real_music/run [RUN2 ...]] [--seconds 90] [--n 8]

Results go to bench/results/long-<host>-<time>.json (layout: bench/common.py): one row per kind and
description (and run).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from jukebox_lite import Run
from jukebox_lite.algorithms.coherence import DESCRIPTIONS, LOOP_TOKENS, coherence, degeneration, describe_segments
from jukebox_lite.algorithms.copies import CorpusIndex
from jukebox_lite.algorithms.sampling import sample_codes
from jukebox_lite.core.checkpoint import load_checkpoint
from jukebox_lite.core.config import CopiesConfig, SampleConfig
from jukebox_lite.core.errors import UserError

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, machine_line, write_results


def sample_kinds(top, held_out: list[np.ndarray], args, tokens: int, hop: int) -> tuple[dict, dict, dict]:
    """One prior's generated kinds (see the module docstring) → (codes per kind, seconds per kind, the
    track-character source per kind). The same seed for every kind and every prior."""
    sr = top.cfg.sample_rate
    n_held = len(held_out)
    prime = torch.as_tensor(np.stack([codes[:int(args.segment_seconds * sr / hop)] for codes in held_out]))
    recipe_hop = SampleConfig().hop_fraction(2)
    cases = {"sampled": (args.n, recipe_hop, None), "no context": (args.n, 1.0, None), "continued": (n_held, recipe_hop, prime)}
    characters: dict[str, torch.Tensor | None] = {kind: None for kind in cases}
    sources = {kind: "none" for kind in cases}
    if top.cfg.character_tokens:  # drawn for the sampled kinds, the prime's own when continued, a recording's for "like"
        drawn = top.character.draw(args.n, torch.Generator(top.device).manual_seed(args.seed))
        characters.update({"sampled": drawn, "no context": drawn, "continued": top.describe(prime)})
        sources.update({"sampled": "drawn", "no context": "drawn", "continued": "prime's own"})
        cases["like held-out"] = (n_held, recipe_hop, None)
        characters["like held-out"] = top.describe(torch.as_tensor(np.stack(held_out)))  # each held-out track's own
        sources["like held-out"] = "held-out track's"
    kinds, timings = {}, {}
    for kind, (n, hop_fraction, primed) in cases.items():
        clock = time.perf_counter()
        character = characters[kind]
        guidance = {} if character is None else dict(character=character, guidance=args.guidance)
        codes = sample_codes(top, n, tokens, labels=label_rows(top, n, tokens * hop), prime=primed, hop_fraction=hop_fraction,
                             temperature=args.temperature, generator=torch.Generator(top.device).manual_seed(args.seed),
                             progress=True, **guidance)  # (n, tokens)
        timings[kind] = time.perf_counter() - clock
        kinds[kind] = [row.cpu().numpy() for row in codes]
        print(f"{kind}: {n} tracks, hop fraction {hop_fraction}, character {sources[kind]}, {timings[kind]:.1f} s")
    return kinds, timings, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--run", type=Path, nargs="+", default=[Path.home() / ".cache" / "jukebox-lite" / "real_music" / "run"],
                        help="runs with a VQ-VAE, codes and a top prior (default: bench/real_music.py's); several runs "
                             "(the same VQ-VAE) are measured side by side, the first one's held-out codes for all")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each track")
    parser.add_argument("--n", type=int, default=8, help="tracks generated per kind")
    parser.add_argument("--segment-seconds", type=float, default=6.0)
    parser.add_argument("--skip-seconds", type=float, default=20.0, help="held-out tracks are taken from here (past intros)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="best")
    parser.add_argument("--temperature", type=float, default=SampleConfig().temperature, help="sampling temperature (default: the recipes')")
    parser.add_argument("--guidance", type=float, default=SampleConfig().character_guidance,
                        help="track-character guidance of a prior with one (default: the recipes')")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (device, *_) = devices(args)
    apply_threads(args)
    runs = [Run(path) for path in args.run]
    for run in runs:
        if not run.path.is_dir():
            raise SystemExit(f"no run at {run.path}: run bench/real_music.py first (or pass --run RUN)")
    vqvae = runs[0].load_vqvae(device)
    fingerprint = vqvae.fingerprint()
    corpus = runs[0].codes_corpus(fingerprint)
    tops = [run.load_prior(2, device, fingerprint, args.checkpoint) for run in runs]  # another VQ-VAE's prior: refused
    sr, hop = vqvae.sample_rate, vqvae.hop_lengths[2]
    tokens = int(args.seconds * sr / hop)
    skip = int(args.skip_seconds * sr / hop)
    held_out = [corpus.file_codes(i, 2)[skip:skip + tokens] for i in corpus.split_files("valid")]  # (tokens,) each
    held_out = [np.asarray(codes, dtype=np.int64) for codes in held_out if len(codes) == tokens]
    if len(held_out) < 2:
        raise SystemExit(f"'{corpus.dir}' has {len(held_out)} held-out tracks of {args.skip_seconds + args.seconds} s; "
                         "two are needed (shorten --seconds or --skip-seconds).")
    copies_config = CopiesConfig()
    copies = CorpusIndex(corpus, copies_config)
    training = {corpus.files[i]["id"] for i in corpus.split_files("train")}
    print(machine_line())

    def describe_tracks(tracks: list[np.ndarray]) -> list:
        audio = vqvae.decode_long(torch.as_tensor(np.stack(tracks)), level=2)[:, 0].numpy()  # (tracks, T)
        return [describe_segments(a, sr, args.segment_seconds) for a in audio]

    recordings = describe_tracks(held_out)
    rows = []
    for run, loaded in zip(runs, tops):
        top = loaded.prior.eval()
        valid = load_checkpoint(loaded.path, "prior", mmap=True).get("valid_loss")
        bits = None if valid is None else valid / math.log(2)
        print(f"\n{run.path}: top prior {top.cfg.width} wide, {top.cfg.depth} deep, n_ctx {top.cfg.n_ctx} "
              f"({top.cfg.n_ctx * hop / sr:.2f} s), track character {top.cfg.character_tokens or 'none'}, "
              f"{bits if bits is None else f'{bits:.3f}'} bits per token on held-out windows ({loaded.path.name}, step {loaded.step}); "
              f"{len(held_out)} held-out tracks; {args.seconds:.0f} s each")
        kinds, timings, sources = sample_kinds(top, held_out, args, tokens, hop)
        kinds = {"held-out": held_out, **kinds}
        for kind, tracks in kinds.items():
            described = recordings if kind == "held-out" else describe_tracks(tracks)
            broken = [degeneration(codes, hop / sr) for codes in tracks]
            flagged = [any(m.seconds >= copies_config.flag_seconds and m.file_id in training for m in copies.matches(codes))
                       for codes in tracks]  # a copy of a training file (the held-out ones are what continuations begin from)
            primed_by = recordings if kind in ("held-out", "continued", "like held-out") else None
            for key in DESCRIPTIONS:
                measured = coherence(described, key, primed_by)
                rows.append({"device": device.type, "run": str(run.path), "prior": loaded.path.name, "valid_bits_per_token": bits,
                             "character": sources.get(kind, "—"), "kind": kind, "description": key, **measured,
                             "tracks": len(tracks), "flagged_share": float(np.mean(flagged)),
                             "longest_run_s": max(b["longest_run_s"] for b in broken),
                             "loop_share": float(np.mean([b["loop_share"] for b in broken])),
                             "sample_s": timings.get(kind)})  # None: held-out, not sampled
    print(f"\n{'run':<14} {'kind':<13} {'description':<11} {'within':>8} {'across':>8} {'identity':>8} {'drift':>6} {'memory':>6}")
    for row in rows:
        print(f"{Path(row['run']).name[:14]:<14} {row['kind']:<13} {row['description']:<11} {row['within']:8.3f} {row['across']:8.3f} "
              f"{row['identity']:8.2f} {row['drift']:6.2f} {row['memory']:6.2f}")
    print("\nidentity: within / across (1: a track's next segment is as far as another track's); drift: from the first "
          "segment, over within; memory: to its own held-out track's first segment, over to the others' (continued: the "
          "prime's recording; like held-out: the recording whose character it took)")
    print(f"longest run of one token (s), share of {LOOP_TOKENS}-token spans repeating an earlier one, share of tracks "
          f"flagged as copies (a token match of {copies_config.flag_seconds:g} s or more):")
    for row in rows[::len(DESCRIPTIONS)]:
        print(f"  {Path(row['run']).name[:14]:<14} {row['kind']:<13} {row['longest_run_s']:.2f} s, {row['loop_share']:.3f}, "
              f"{row['flagged_share']:.2f}")
    write_results("long", args, rows, args.out)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a run without codes, a top prior or held-out files: one line
        raise SystemExit(str(e)) from None
