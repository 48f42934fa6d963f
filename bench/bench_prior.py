"""Benchmark the sparse-transformer prior: training throughput and sampling with and without the KV cache.

Measures, on one unlabelled top-level prior (default: n_ctx 2048, width 256, depth 6, attn_order 2
with blocks of 64 tokens, 2048 codes; ~2.3 M parameters, a couple of minutes on 2 CPU cores):
  train      tokens per second of one step (forward + backward + AdamW) on batch × n_ctx tokens
  cached     sampling tokens per second with the KV cache (jukebox_lite.algorithms.sampling.IncrementalDecoder)
  uncached   the same without it: the full teacher-forced forward recomputed for every new token
Sampling is timed token by token over the last tokens of a window (context ≈ n_ctx), where the
cost of recomputing is the largest and the cache reads the most, and each rate is batch / the
median step time (robust to other jobs on a shared machine); the prefill of the cache is not counted.
Batches 1 and 16. On CUDA (bf16 autocast) it also reports how close batch-1 cached decoding comes
to the memory-bandwidth limit: bytes of weights read per token × tokens/s, against the bandwidth
of a device-to-device copy measured here.

    python bench/bench_prior.py                       # CPU (and CUDA when present), prints a table
    python bench/bench_prior.py --device cpu --width 128 --depth 4

Results go to bench/results/prior-<host>-<time>.json (git-ignored; --out to change the folder), one
row per device and sampling batch (layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from jukebox_lite.core.config import PriorConfig
from jukebox_lite.algorithms.sampling import IncrementalDecoder, draw
from jukebox_lite.core.precision import autocast
from jukebox_lite.models.prior import Prior

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, wall_times, write_results


def train_tokens_per_s(cfg: PriorConfig, args: argparse.Namespace, device: torch.device) -> float:
    """Best of `repeats` full training steps (under the caller's autocast: bf16 on CUDA, see `bench_device`)."""
    torch.manual_seed(0)
    model = Prior(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    tokens = torch.randint(0, cfg.bins, (args.train_batch, cfg.n_ctx), device=device)

    def step():
        loss = model(tokens)[1]["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # warmup=1: allocations, FlexAttention compilation on CUDA
    return args.train_batch * cfg.n_ctx / min(wall_times({"step": step}, device, warmup=1, repeats=args.repeats)["step"])


@torch.no_grad()
def cached_tokens_per_s(prior: Prior, batch: int, new: int, device: torch.device) -> float:
    """batch / median time of one step (draw a token, feed it through the cache) over `new` steps."""
    n_ctx, gen = prior.cfg.n_ctx, torch.Generator(device).manual_seed(0)
    prefix = torch.randint(0, prior.cfg.bins, (batch, n_ctx - new - 1), device=device)
    decoder = IncrementalDecoder(prior, prior.conditioning(batch, n_ctx))
    decoder.start()
    logits = decoder.feed(prefix)[:, -1]  # prefill: the cache now holds n_ctx - new positions

    def step():
        nonlocal logits
        code = draw(logits, 1.0, 0, 0.0, gen)
        logits = decoder.feed(code[:, None])[:, 0]

    return batch / statistics.median(wall_times({"step": step}, device, warmup=0, repeats=new)["step"])


@torch.no_grad()
def uncached_tokens_per_s(prior: Prior, batch: int, new: int, device: torch.device) -> float:
    """batch / median time of one step that recomputes the whole window's forward to get the next token."""
    n_ctx, gen = prior.cfg.n_ctx, torch.Generator(device).manual_seed(0)
    tokens = torch.randint(0, prior.cfg.bins, (batch, n_ctx - new), device=device)
    slot = torch.zeros(batch, 1, dtype=torch.long, device=device)  # input of the position being predicted

    def step():
        nonlocal tokens
        logits = prior.logits(torch.cat([tokens, slot], 1))[:, -1]
        tokens = torch.cat([tokens, draw(logits, 1.0, 0, 0.0, gen)[:, None]], 1)

    return batch / statistics.median(wall_times({"step": step}, device, warmup=0, repeats=new)["step"])


def copy_bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """Bytes per second of a device-to-device copy (read + write), best of 5."""
    src = torch.empty(int(gib * 2**30) // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / min(wall_times({"copy": lambda: dst.copy_(src)}, device, warmup=1, repeats=5)["copy"])


def weight_bytes_per_step(prior: Prior) -> int:
    """Weights one decoding step reads: every layer and the (tied) output projection; one pos_emb row is negligible."""
    params = list(prior.prior.transformer.parameters()) + [prior.prior.x_emb.weight]
    return sum(p.numel() * p.element_size() for p in params)


def bench_device(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One row per sampling batch; the training rate and, on CUDA, the bandwidth figures (batch-1 row) ride along."""
    cfg = PriorConfig(
        n_ctx=args.n_ctx, width=args.width, depth=args.depth, heads=args.heads, attn_order=2, blocks=args.blocks,
        bins=args.bins, labels=False,
    )
    with autocast(device):  # "auto": bf16 on CUDA, float32 on CPU, as the stages sample and train
        model_figures = {
            "device": device.type,
            "precision": "bf16 autocast" if device.type == "cuda" else "float32",
            "parameters": sum(p.numel() for p in Prior(cfg).parameters()),
            "train_tokens_per_s": train_tokens_per_s(cfg, args, device),
        }
        torch.manual_seed(0)
        prior = Prior(cfg).to(device).eval()
        rows = []
        for batch in args.batches:
            cached = cached_tokens_per_s(prior, batch, args.new_cached, device)
            uncached = uncached_tokens_per_s(prior, batch, args.new_uncached, device)
            rows.append({**model_figures, "batch": batch, "cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached,
                         "cached_over_uncached": cached / uncached})
    if device.type == "cuda":
        one = next((row for row in rows if row["batch"] == 1), None)
        if one is not None:
            achieved = weight_bytes_per_step(prior) * one["cached_tokens_per_s"]
            peak = copy_bandwidth(device)
            one.update(weight_bytes_per_token=weight_bytes_per_step(prior), achieved_bytes_per_s=achieved,
                       copy_bytes_per_s=peak, fraction_of_copy_bandwidth=achieved / peak)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=32, help="rows of the factorized attention (n_ctx / blocks per row)")
    parser.add_argument("--bins", type=int, default=2048, help="codebook size")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed training steps (best is kept)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="sampling batch sizes")
    parser.add_argument("--new-cached", type=int, default=64, help="tokens timed with the KV cache")
    parser.add_argument("--new-uncached", type=int, default=3, help="tokens timed without it")
    args = parser.parse_args()
    if args.n_ctx % args.blocks or max(args.new_cached, args.new_uncached) >= args.n_ctx:
        parser.error("--n-ctx must be a multiple of --blocks and longer than the timed tokens")
    chosen = devices(args)
    apply_threads(args)

    rows_per_device = [bench_device(args, device) for device in chosen]
    print(f"prior: n_ctx {args.n_ctx}, width {args.width}, depth {args.depth}, heads {args.heads}, "
          f"blocks {args.blocks}, bins {args.bins}")
    print(f"{'device':6} {'params':>9} {'train tok/s':>12} {'batch':>6} {'cached tok/s':>13} {'uncached tok/s':>15} {'speed-up':>9}")
    for rows in rows_per_device:
        for i, r in enumerate(rows):
            head = f"{r['device']:6} {r['parameters']:9d} {r['train_tokens_per_s']:12.0f}" if i == 0 else " " * 29
            print(f"{head} {r['batch']:6d} {r['cached_tokens_per_s']:13.1f} {r['uncached_tokens_per_s']:15.2f} "
                  f"{r['cached_over_uncached']:8.1f}×")
        for b in (r for r in rows if "fraction_of_copy_bandwidth" in r):
            print(f"{b['device']}: batch-1 decoding reads {b['weight_bytes_per_token'] / 2**20:.1f} MiB of weights per token = "
                  f"{b['achieved_bytes_per_s'] / 1e9:.0f} GB/s, {100 * b['fraction_of_copy_bandwidth']:.1f}% of the measured "
                  f"copy bandwidth ({b['copy_bytes_per_s'] / 1e9:.0f} GB/s)")
    write_results("prior", args, [row for rows in rows_per_device for row in rows], args.out)


if __name__ == "__main__":
    main()
