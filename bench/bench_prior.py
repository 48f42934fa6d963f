"""Benchmark the sparse-transformer prior: training per attention kernel, sampling per decoding path.

Every figure is compared with the path it replaced, timed in the same run (ratios):
  train      tokens/s of one step (forward + backward + AdamW) on train_batch × n_ctx tokens, at each
             --train-n-ctx, with the blocked factorized attention against the masked dense window
             (`nn.attention.attention_kernel`; on CUDA also FlexAttention, the kernel training uses there)
  fused      sampling tokens/s with the KV cache through the fused one-position step (`TokenModel.step`)
  reference  the same through the teacher-forced blocks and the caches' masked path (the step before)
  uncached   the whole teacher-forced forward recomputed for every new token
  draw       microseconds of drawing one code per row: the inverse-CDF draw against torch.multinomial
Sampling is timed token by token over the last tokens of a window (context ≈ n_ctx), each rate
batch / the median step time (robust to other jobs on a shared machine); the prefill is not counted.
The default sizes are the small top prior the fast-sampling issue measured against OpenAI's sampler
(width 128, depth 6, n_ctx 512, blocks of 32, attn_order 2, 2048 codes); training uses the same
width and depth. On CUDA (bf16 autocast) it also reports how close batch-1 decoding comes to the
memory-bandwidth limit: bytes of weights read per token × tokens/s, against a measured copy.

    python bench/bench_prior.py                       # CPU (and CUDA when present), prints tables
    python bench/bench_prior.py --device cpu --threads 1 --train-n-ctx 2048

Results go to bench/results/prior-<host>-<time>.json (git-ignored; --out to change the folder): one
"train" row per device and n_ctx, one "sample" row per device and batch (layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from jukebox_lite.core.config import PriorConfig
from jukebox_lite.algorithms.sampling import IncrementalDecoder, draw
from jukebox_lite.core.precision import autocast
from jukebox_lite.models.prior import Prior
from jukebox_lite.nn.attention import attention_kernel

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, machine_line, wall_times, write_results


def train_tokens_per_s(cfg: PriorConfig, args: argparse.Namespace, device: torch.device, kernels: list[str]) -> dict[str, float]:
    """kernel → best tokens/s of `repeats` full training steps (under the caller's autocast: bf16 on CUDA)."""
    torch.manual_seed(0)
    model = Prior(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    tokens = torch.randint(0, cfg.bins, (args.train_batch, cfg.n_ctx), device=device)

    def step_with(kernel: str):
        def step():
            with attention_kernel(kernel):
                loss = model(tokens)[1]["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    # warmup=1: allocations, FlexAttention compilation on CUDA
    times = wall_times({kernel: step_with(kernel) for kernel in kernels}, device, warmup=1, repeats=args.repeats)
    return {kernel: args.train_batch * cfg.n_ctx / min(t) for kernel, t in times.items()}


@torch.no_grad()
def cached_tokens_per_s(prior: Prior, batch: int, new: int, device: torch.device, run: int = 16) -> dict[str, float]:
    """path → batch / median time of one step (draw a token, feed it through the cache) over `new` steps.

    The paths take turns in runs of `run` consecutive steps: both see the same machine load, and each
    step but a run's first finds the caches of the CPU warm, as in real sampling, where one path runs.
    """
    n_ctx = prior.cfg.n_ctx
    prefix = torch.randint(0, prior.cfg.bins, (batch, n_ctx - new - 1), device=device)
    steps = {}
    for path in ("fused", "reference"):
        gen = torch.Generator(device).manual_seed(0)
        decoder = IncrementalDecoder(prior, prior.conditioning(batch, n_ctx), reference=path == "reference")
        decoder.start()
        logits = decoder.feed(prefix)[:, -1]  # prefill: the cache now holds n_ctx - new positions

        def step(decoder=decoder, gen=gen, state=[logits]):
            code = draw(state[0], 1.0, 0, 0.0, gen)
            state[0] = decoder.feed(code[:, None])[:, 0]

        steps[path] = step
    times = {path: [] for path in steps}
    for _ in range(-(-new // run)):
        for path, step in steps.items():
            times[path] += wall_times({path: step}, device, warmup=0, repeats=min(run, new - len(times[path])))[path]
    return {path: batch / statistics.median(t) for path, t in times.items()}


def draw_microseconds(bins: int, batch: int, device: torch.device) -> dict[str, float]:
    """Median µs of one draw per row from (batch, bins) logits: ours, and torch.multinomial as it was."""
    logits = torch.randn(batch, bins, device=device)
    gen = torch.Generator(device).manual_seed(0)
    draws = {
        "icdf": lambda: draw(logits, 1.0, 0, 0.0, gen),
        "multinomial": lambda: torch.multinomial(torch.softmax(logits, -1), 1, generator=gen),
    }
    return {name: 1e6 * statistics.median(t) for name, t in wall_times(draws, device, warmup=5, repeats=200).items()}


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


def prior_config(args: argparse.Namespace, n_ctx: int) -> PriorConfig:
    return PriorConfig(
        n_ctx=n_ctx, width=args.width, depth=args.depth, heads=args.heads, attn_order=2, blocks=n_ctx // args.block_ctx,
        bins=args.bins, labels=False,
    )


def bench_device(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The train rows (one per n_ctx) and the sample rows (one per batch); on CUDA the batch-1 row
    also carries the bandwidth figures."""
    kernels = ["masked", "blocked"] + (["flex"] if device.type == "cuda" else [])
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    rows = []
    with autocast(device):  # "auto": bf16 on CUDA, float32 on CPU, as the stages sample and train
        for n_ctx in args.train_n_ctx:
            rates = train_tokens_per_s(prior_config(args, n_ctx), args, device, kernels)
            rows.append({"case": "train", "device": device.type, "precision": precision, "n_ctx": n_ctx,
                         **{f"train_tokens_per_s_{k}": v for k, v in rates.items()},
                         "blocked_over_masked": rates["blocked"] / rates["masked"]})
        torch.manual_seed(0)
        prior = Prior(prior_config(args, args.n_ctx)).to(device).eval()
        parameters = sum(p.numel() for p in prior.parameters())
        for batch in args.batches:
            cached = cached_tokens_per_s(prior, batch, args.new_cached, device)
            uncached = uncached_tokens_per_s(prior, batch, args.new_uncached, device)
            draws = draw_microseconds(args.bins, batch, device)
            rows.append({"case": "sample", "device": device.type, "precision": precision, "n_ctx": args.n_ctx,
                         "parameters": parameters, "batch": batch,
                         "fused_tokens_per_s": cached["fused"], "reference_tokens_per_s": cached["reference"],
                         "uncached_tokens_per_s": uncached, "fused_over_reference": cached["fused"] / cached["reference"],
                         "fused_over_uncached": cached["fused"] / uncached,
                         "draw_us_icdf": draws["icdf"], "draw_us_multinomial": draws["multinomial"]})
    if device.type == "cuda":
        one = next((row for row in rows if row.get("batch") == 1), None)
        if one is not None:
            achieved = weight_bytes_per_step(prior) * one["fused_tokens_per_s"]
            peak = copy_bandwidth(device)
            one.update(weight_bytes_per_token=weight_bytes_per_step(prior), achieved_bytes_per_s=achieved,
                       copy_bytes_per_s=peak, fraction_of_copy_bandwidth=achieved / peak)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--n-ctx", type=int, default=512, help="window of the sampled prior")
    parser.add_argument("--train-n-ctx", type=int, nargs="+", default=[512, 2048, 8192], help="windows timed in training")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--block-ctx", type=int, default=32, help="tokens per row of the factorized attention")
    parser.add_argument("--bins", type=int, default=2048, help="codebook size")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed training steps per kernel (best is kept)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="sampling batch sizes")
    parser.add_argument("--new-cached", type=int, default=64, help="tokens timed with the KV cache, per path")
    parser.add_argument("--new-uncached", type=int, default=3, help="tokens timed without it")
    args = parser.parse_args()
    if any(n % args.block_ctx for n in [args.n_ctx, *args.train_n_ctx]) or max(args.new_cached, args.new_uncached) >= args.n_ctx:
        parser.error("every n_ctx must be a multiple of --block-ctx, and --n-ctx longer than the timed tokens")
    chosen = devices(args)
    apply_threads(args)

    rows = [row for device in chosen for row in bench_device(args, device)]
    print(f"prior: width {args.width}, depth {args.depth}, heads {args.heads}, rows of {args.block_ctx}, "
          f"bins {args.bins}; {machine_line()}")
    print(f"{'device':6} {'n_ctx':>6} {'masked tok/s':>13} {'blocked tok/s':>14} {'blocked ÷ masked':>17}")
    for r in (r for r in rows if r["case"] == "train"):
        flex = f"   flex {r['train_tokens_per_s_flex']:.0f} tok/s" if "train_tokens_per_s_flex" in r else ""
        print(f"{r['device']:6} {r['n_ctx']:6d} {r['train_tokens_per_s_masked']:13.0f} {r['train_tokens_per_s_blocked']:14.0f} "
              f"{r['blocked_over_masked']:16.2f}×{flex}")
    print(f"\nsampling at n_ctx {args.n_ctx}:")
    print(f"{'device':6} {'batch':>5} {'fused tok/s':>12} {'reference tok/s':>16} {'fused ÷ ref':>12} "
          f"{'uncached tok/s':>15} {'draw µs (multinomial)':>22}")
    for r in (r for r in rows if r["case"] == "sample"):
        print(f"{r['device']:6} {r['batch']:5d} {r['fused_tokens_per_s']:12.0f} {r['reference_tokens_per_s']:16.0f} "
              f"{r['fused_over_reference']:11.2f}× {r['uncached_tokens_per_s']:15.1f} "
              f"{r['draw_us_icdf']:9.0f} ({r['draw_us_multinomial']:.0f})")
    for b in (r for r in rows if "fraction_of_copy_bandwidth" in r):
        print(f"{b['device']}: batch-1 decoding reads {b['weight_bytes_per_token'] / 2**20:.1f} MiB of weights per token = "
              f"{b['achieved_bytes_per_s'] / 1e9:.0f} GB/s, {100 * b['fraction_of_copy_bandwidth']:.1f}% of the measured "
              f"copy bandwidth ({b['copy_bytes_per_s'] / 1e9:.0f} GB/s)")
    write_results("prior", args, rows, args.out)


if __name__ == "__main__":
    main()
