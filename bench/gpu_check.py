"""The GPU check: every CUDA path exercised and every GPU figure taken, in minutes. Run it first on a GPU.

    make gpu-check      # python bench/gpu_check.py --recipe pipelines/deep_house.yaml --doc docs/gpu.md

  (a) train: one training step (bf16 autocast on CUDA: forward, backward, AdamW) of every stage at
      the recipe's sizes and batch, timed after a warm-up step: seconds and peak memory
  (b) attention: the top prior's window attention per kernel (FlexAttention compiled, blocked,
      masked SDPA): the largest difference from the masked reference and the forward + backward time
  (c) sampling: fused KV-cache decoding of each prior at batch 1 and 16 (random weights: the speed
      does not depend on them): tokens/s, and at batch 1 the weight bytes read per second
  (d) track: one --track-seconds track through the sample path, level by level (top prior, upsamplers
      in segments, VQ-VAE decoding, refiner): the full path and the fast one (--fast: level 1 decoded
      and refined, no level-0 upsampler) added up from the same stage times
  (e) fine-tune: one training step, one window, layer checkpointing, of OpenAI's released top priors
      at their real sizes (random weights): 1b_lyrics in full (6528 positions, what
      `pipelines/jukebox_1b_finetune.yaml` does) and 5b with LoRA rank 16 (the frozen base in bf16,
      `pipelines/jukebox_5b_lora.yaml`): seconds and peak memory; --tiny: the demo prior both ways
  (f) docs: everything into --doc (Markdown, with the device, torch, date and commit) and a results
      file in --out

With random weights at the real sizes the times are real and the audio is noise. Parts that would run
past --budget-seconds are skipped and say so. `--tiny` runs the same code on the demo recipe shrunk
to seconds on a CPU: the tests run it, so the check cannot rot before a GPU is lent.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import statistics
import subprocess
import time
import traceback
import warnings
from pathlib import Path

import torch

from jukebox_lite.algorithms.refining import refine
from jukebox_lite.algorithms.sampling import IncrementalDecoder, auto_segments, draw, plan_segments, sample_codes
from jukebox_lite.algorithms.openai_import import RELEASED_PRIORS
from jukebox_lite.core.config import LoRAConfig, PriorConfig, RecipeConfig, load_config
from jukebox_lite.core.precision import autocast
from jukebox_lite.models.prior import Prior
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.nn.attention import ATTN_ORDERS, attention_kernel, window_attention

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, label_rows, machine, machine_line, wall_times, write_results

ROOT = Path(__file__).resolve().parent.parent
PRIORS = ("prior_level2", "prior_level1", "prior_level0")
# --tiny: the demo recipe with priors and refiner small enough for seconds on a CPU
TINY = [
    *(f"{p}.{k}={v}" for p in PRIORS for k, v in (("n_ctx", 64), ("width", 32), ("depth", 2), ("blocks", 4))),
    *(f"{p}.train.batch_size=2" for p in PRIORS),
    "vqvae.train.batch_size=2", "refiner.train.batch_size=2", "refiner.segment_length=16384",
    "refiner.chunk_length=32768", "refiner.overlap_length=1024",
]


class Clock:
    """The budget: parts that would not finish in it are skipped (and reported) instead of run."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_cases(recipe: RecipeConfig, device: torch.device):
    """stage → (model, loss function of the model) at the recipe's sizes and batch, inputs drawn once."""
    def vqvae_case():
        cfg = recipe.vqvae
        audio = 0.1 * torch.randn(cfg.train.batch_size, 1, cfg.sample_length, device=device)
        return VQVAE(cfg), lambda m: m(audio)[1]["loss"]

    def prior_case(section: str):
        def case():
            model = Prior(getattr(recipe, section)).to(device)
            cfg, batch = model.cfg, getattr(recipe, section).train.batch_size
            codes = torch.randint(0, cfg.bins, (batch, cfg.n_ctx), device=device)
            upper = torch.randint(0, cfg.bins, (batch, cfg.n_ctx // cfg.cond_downsample), device=device) if cfg.is_upsampler else None
            labels = label_rows(model, batch, 2 * cfg.n_ctx * cfg.hop_length)
            return model, lambda m: m(codes, upper, labels)[1]["loss"]
        return case

    def refiner_case():
        cfg = recipe.refiner
        shape = (cfg.train.batch_size, 1, cfg.segment_length)
        clean, coarse, noise = (0.1 * torch.randn(shape, device=device) for _ in range(3))
        t = torch.rand(shape[0], device=device)
        return Refiner(cfg), lambda m: m(coarse, clean, t, noise)[1]["loss"]

    return {"vqvae": vqvae_case, **{p: prior_case(p) for p in PRIORS}, "refiner": refiner_case}


def check_training(recipe: RecipeConfig, device: torch.device, clock: Clock) -> list[dict]:
    rows = []
    for stage, case in training_cases(recipe, device).items():
        if clock.left() < 30:
            rows.append({"case": "train", "device": device.type, "stage": stage, "skipped": "budget"})
            continue
        reset_peak(device)
        model, loss_of = case()
        model = model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = training_step(stage, model, optimizer, loss_of, device)
        seconds = min(wall_times({"step": step}, device, warmup=1, repeats=1)["step"])
        rows.append({"case": "train", "device": device.type, "stage": stage, "seconds_per_step": seconds,
                     "peak_gib": peak_gib(device), "parameters": sum(p.numel() for p in model.parameters())})
        del model, optimizer, step  # before the next stage's model is built: each peak is its own
    return rows


def training_step(stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_of, device: torch.device):
    def step():
        with autocast(device):
            loss = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{stage}: the loss is {loss.item()}")
    return step


def check_finetune(recipe: RecipeConfig, device: torch.device, clock: Clock, tiny: bool) -> list[dict]:
    """One fine-tuning step of each released top prior's layout (the demo prior with --tiny), built on the
    meta device and filled with random numbers on `device`: billions of numbers never sit on the CPU."""
    cases = []
    for layout, lora in (("prior_1b_lyrics", None), ("prior_5b", LoRAConfig(rank=16))):
        if tiny:
            cfg = dataclasses.replace(recipe.prior_level2, checkpoint_layers=True)
            lora = None if lora is None else LoRAConfig(rank=4)
        else:
            registered = {k: v for k, v in RELEASED_PRIORS[layout].items() if k not in ("use_tokens", "single_enc_dec")}
            labels = dict(n_genres=604, n_artists=7898, t_bins=64) if layout == "prior_1b_lyrics" else dict(n_genres=120, n_artists=4111, t_bins=128)
            cfg = PriorConfig(**registered, **labels, bins=recipe.vqvae.l_bins, hop_length=128,
                              sample_rate=recipe.data.sample_rate, checkpoint_layers=True)
        cases.append((layout if not tiny else f"demo top prior ({'LoRA' if lora else 'full'})", cfg, lora))
    rows = []
    for layout, cfg, lora in cases:
        if clock.left() < 60:
            rows.append({"case": "finetune", "device": device.type, "layout": layout, "skipped": "budget"})
            continue
        rows.append(finetune_step(layout, cfg, lora, device))
    return rows


def finetune_step(layout: str, cfg: PriorConfig, lora: LoRAConfig | None, device: torch.device) -> dict:
    reset_peak(device)
    with torch.device("meta"):
        model = Prior(cfg)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    if lora is not None:
        model.add_adapters(lora)
        for p in model.parameters():  # as training keeps a frozen base under bf16 autocast
            if not p.requires_grad and p.dim() >= 2 and device.type == "cuda":
                p.data = p.data.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    codes = torch.randint(0, cfg.bins, (1, cfg.n_ctx), device=device)
    labels = label_rows(model, 1, 2 * cfg.n_ctx * cfg.hop_length)
    step = training_step("finetune", model, optimizer, lambda m: m(codes, None, labels)[1]["loss"], device)
    seconds = min(wall_times({"step": step}, device, warmup=1, repeats=1)["step"])
    row = {"case": "finetune", "device": device.type, "layout": layout, "lora_rank": None if lora is None else lora.rank,
           "positions": cfg.context, "seconds_per_step": seconds, "peak_gib": peak_gib(device),
           "parameters": sum(p.numel() for p in model.parameters()),
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    del model, optimizer, step
    return row


def check_attention(recipe: RecipeConfig, device: torch.device) -> list[dict]:
    """Every pattern of the top prior's layout, each kernel against the masked reference (fp32 inputs,
    then bf16 autocast timing of forward + backward; on a CPU FlexAttention runs eagerly, forward only)."""
    cfg = recipe.prior_level2
    heads, head_dim = cfg.heads, int(cfg.m_attn * cfg.width) // cfg.heads
    kernels = ["masked", "blocked", "flex"]
    rows = []
    g = torch.Generator(device).manual_seed(0)
    for attn_func in sorted(set(ATTN_ORDERS[cfg.attn_order])):
        q, k, v = (torch.randn(1, heads, cfg.n_ctx, head_dim, device=device, generator=g) for _ in range(3))
        outputs = {}
        for kernel in kernels:
            with attention_kernel(kernel):
                outputs[kernel] = window_attention(q, k, v, attn_func, cfg.block_ctx, cfg.n_ctx)
        row = {"case": "attention", "device": device.type, "attn_func": attn_func, "n_ctx": cfg.n_ctx, "head_dim": head_dim}
        for kernel in kernels:
            row[f"max_difference_{kernel}"] = (outputs[kernel] - outputs["masked"]).abs().max().item()
        qs = [t.clone().requires_grad_() for t in (q, k, v)]

        def timed(kernel):
            def run():
                with attention_kernel(kernel), autocast(device):
                    window_attention(*qs, attn_func, cfg.block_ctx, cfg.n_ctx).float().square().mean().backward()
            return run

        timed_kernels = kernels if device.type == "cuda" else kernels[:2]  # FlexAttention has no backward on CPU
        times = wall_times({kernel: timed(kernel) for kernel in timed_kernels}, device, warmup=1, repeats=3)
        row.update({f"ms_{kernel}": 1e3 * min(t) for kernel, t in times.items()})
        rows.append(row)
    return rows


@torch.no_grad()
def check_sampling(recipe: RecipeConfig, device: torch.device, clock: Clock, steps: int) -> list[dict]:
    rows = []
    for section in PRIORS:
        torch.manual_seed(0)
        prior = Prior(getattr(recipe, section)).to(device).eval()
        cfg = prior.cfg
        weight_bytes = sum(p.numel() * 2 if device.type == "cuda" else p.numel() * 4 for p in prior.prior.transformer.parameters())
        for batch in (1, 16):
            if clock.left() < 20:
                rows.append({"case": "sampling", "device": device.type, "prior": section, "batch": batch, "skipped": "budget"})
                continue
            with autocast(device):
                upper = torch.randint(0, cfg.bins, (batch, cfg.n_ctx // cfg.cond_downsample), device=device) if cfg.is_upsampler else None
                conditioning = prior.conditioning(batch, cfg.n_ctx, upper, label_rows(prior, batch, 60 * prior.cfg.sample_rate))
                decoder = IncrementalDecoder(prior, conditioning)
                decoder.start()
                logits = decoder.feed(torch.randint(0, cfg.bins, (batch, cfg.n_ctx - steps - 3), device=device))[:, -1]  # room for 2 warm-up steps
                gen = torch.Generator(device).manual_seed(0)

                def step(state=[logits]):
                    state[0] = decoder.feed(draw(state[0], 1.0, 0, 0.0, gen)[:, None])[:, 0]

                median = statistics.median(wall_times({"step": step}, device, warmup=2, repeats=steps)["step"])
            row = {"case": "sampling", "device": device.type, "prior": section, "batch": batch, "tokens_per_s": batch / median}
            if batch == 1:
                row["weight_gb_per_s"] = weight_bytes / median / 1e9
            rows.append(row)
        del prior
    return rows


@torch.no_grad()
def check_track(recipe: RecipeConfig, device: torch.device, clock: Clock, seconds: float, rates: dict[str, float]) -> list[dict]:
    """One track of `seconds` through every level, as the sample stage runs it; full and fast totals.

    rates: each prior's batch-1 tokens/s from (c). A level whose sequential steps (the longest
    segment's tokens) would not finish in the budget at that rate is skipped, not started."""
    torch.manual_seed(0)
    vqvae = VQVAE(recipe.vqvae).to(device).eval()
    sr, hops = vqvae.sample_rate, vqvae.hop_lengths
    tokens = math.ceil(seconds * sr / hops[2])
    generator = torch.Generator(device).manual_seed(0)
    times: dict[str, float] = {}
    codes: dict[int, torch.Tensor] = {}
    segments: dict[str, int] = {}
    for level, section in zip((2, 1, 0), PRIORS):
        prior = Prior(getattr(recipe, section)).to(device).eval()
        length = tokens * hops[2] // hops[level]
        options = {}
        steps = length
        if prior.cfg.is_upsampler:  # in segments, as `sample` runs it with the recipe's overlap
            overlap = recipe.sample.upsampler_overlap
            options.update(upper_codes=codes[level + 1], segments=auto_segments(1, length, prior.cfg.n_ctx, device), overlap=overlap)
            starts, steps = plan_segments(prior, length, options["segments"], overlap)
            segments[f"segments_level{level}"] = len(starts)
        needed = 1.2 * steps / rates[section] if section in rates else math.inf
        if needed > clock.left() - 20:
            reason = f"budget: level {level} needs ~{needed:.0f} s, {clock.left():.0f} s left"
            return [{"case": "track", "device": device.type, "seconds_of_audio": seconds, "skipped": reason, **times, **segments}]
        start = time.perf_counter()
        with autocast(device):
            codes[level] = sample_codes(prior, 1, length, labels=label_rows(prior, 1, round(seconds * sr)), generator=generator,
                                        hop_fraction=recipe.sample.hop_fraction(level), **options)
        times[f"seconds_level{level}"] = time.perf_counter() - start
        del prior
    audio = {}
    for level in (1, 0):
        start = time.perf_counter()
        audio[level] = vqvae.decode_long(codes[level], level)
        times[f"seconds_decode_level{level}"] = time.perf_counter() - start
    refiner = Refiner(recipe.refiner).to(device).eval()
    start = time.perf_counter()
    refine(refiner, audio[0][:, :, : round(seconds * sr)], steps=recipe.refiner.steps)
    times["seconds_refine"] = time.perf_counter() - start
    shared = times["seconds_level2"] + times["seconds_level1"] + times["seconds_refine"]
    return [{
        "case": "track", "device": device.type, "seconds_of_audio": seconds, **times, **segments,
        "seconds_full": shared + times["seconds_level0"] + times["seconds_decode_level0"],
        "seconds_fast": shared + times["seconds_decode_level1"],
    }]


def batch1_rates(rows: list[dict]) -> dict[str, float]:
    return {r["prior"]: r["tokens_per_s"] for r in rows if r["case"] == "sampling" and r.get("batch") == 1 and "tokens_per_s" in r}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(rows: list[dict], args: argparse.Namespace, recipe_name: str) -> str:
    m = machine()
    lines = [
        "# The GPU check (`make gpu-check`, bench/gpu_check.py)", "",
        f"Device: **{m['cuda'] or 'CPU (' + m['processor'] + ')'}**; torch {m['torch']}; recipe {recipe_name}"
        f"{' (--tiny)' if args.tiny else ''}; {datetime.date.today()}; commit {commit()}. Written by the script.", "",
    ]

    def table(case: str, title: str, columns: list[str]) -> None:
        chosen = [r for r in rows if r["case"] == case]
        lines.extend([f"## {title}", ""])
        lines.extend(f"**Failed**: `{r['error']}`" for r in chosen if "error" in r)
        lines.extend(["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)])
        for r in (r for r in chosen if "error" not in r):
            cells = [r.get(c) for c in columns]
            lines.append("| " + " | ".join("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells) + " |")
        lines.append("")

    table("train", "(a) One training step per stage", ["stage", "seconds_per_step", "peak_gib", "parameters", "skipped"])
    table("attention", "(b) Window attention: kernels against the masked reference",
          ["attn_func", "n_ctx", "max_difference_blocked", "max_difference_flex", "ms_masked", "ms_blocked", "ms_flex"])
    table("sampling", "(c) KV-cache sampling (fused step)", ["prior", "batch", "tokens_per_s", "weight_gb_per_s", "skipped"])
    table("track", f"(d) One {args.track_seconds:g} s track, every level",
          ["seconds_level2", "seconds_level1", "seconds_level0", "seconds_decode_level0", "seconds_refine", "seconds_full",
           "seconds_fast", "skipped"])
    table("finetune", "(e) One fine-tuning step of a released top prior (one window, layer checkpointing; LoRA: frozen base in bf16)",
          ["layout", "lora_rank", "positions", "seconds_per_step", "peak_gib", "parameters", "trainable", "skipped"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--recipe", type=Path, default=ROOT / "pipelines" / "deep_house.yaml")
    parser.add_argument("--tiny", action="store_true", help="the demo recipe shrunk to seconds on a CPU (what the tests run)")
    parser.add_argument("--track-seconds", type=float, default=90.0)
    parser.add_argument("--sampling-steps", type=int, default=32, help="timed tokens per prior and batch")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="parts that would run past it are skipped")
    parser.add_argument("--doc", type=Path, help="write the Markdown report here (make gpu-check: docs/gpu.md)")
    args = parser.parse_args()
    if args.tiny:
        args.recipe, args.track_seconds, args.sampling_steps = ROOT / "pipelines" / "demo.yaml", min(args.track_seconds, 2.0), 4
    (device, *_) = reversed(devices(args))  # CUDA when there is one
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("gpu check: torch sees no CUDA device here; --tiny runs the same code at tiny sizes on the CPU")
    if device.type == "cpu":  # eager FlexAttention (the equality check) warns that it is unfused: that is the point
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    apply_threads(args)
    # residual_scale is a statistic train-refiner measures on the data (every recipe leaves it null): any value times the same
    recipe = load_config(args.recipe, ["refiner.residual_scale=0.1", *(TINY if args.tiny else [])])
    clock = Clock(args.budget_seconds)
    print(f"GPU check on {machine_line()}, recipe {recipe.name}{' (tiny)' if args.tiny else ''}")
    parts = {
        "train": lambda: check_training(recipe, device, clock),
        "attention": lambda: check_attention(recipe, device),
        "sampling": lambda: check_sampling(recipe, device, clock, args.sampling_steps),
        "track": lambda: check_track(recipe, device, clock, args.track_seconds, batch1_rates(rows)),
        "finetune": lambda: check_finetune(recipe, device, clock, args.tiny),
    }
    rows = []
    for case, part in parts.items():  # a part that fails is reported, and the others still run
        try:
            rows += part()
        except Exception as e:  # noqa: BLE001 - whatever breaks on a new device is what this check is for
            traceback.print_exc()
            rows.append({"case": case, "device": device.type, "error": f"{type(e).__name__}: {e}"[:300]})
        report = markdown(rows, args, recipe.name)
        if args.doc:  # after every part: a run stopped from outside still leaves what it measured
            args.doc.write_text(report + "\n")
    print(report)
    if args.doc:
        print(f"wrote {args.doc}")
    write_results("gpu_check", args, rows, args.out)
    failed = [r["case"] for r in rows if "error" in r]
    if failed:
        raise SystemExit(f"gpu check: {', '.join(failed)} failed (see above and the report)")


if __name__ == "__main__":
    main()
