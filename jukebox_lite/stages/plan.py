"""`jukebox-lite plan --config RECIPE [--gpu-memory GB] [--gpus N] [key=value ...]`: memory before money.

For every training stage of the recipe, what one GPU holds while it trains (`algorithms.memory`:
weights, gradients, AdamW moments, EMA, activations, from a meta-device model of the exact size), and
whether that fits in --gpu-memory. For a prior that does not fit, the first of these that does is
suggested: layer checkpointing, smaller micro-batches (the same effective batch), LoRA. Assumes CUDA's
bf16 autocast; under DDP each GPU holds the whole model, under `train.sharding: fsdp` a prior's
weights, gradients, AdamW moments and EMA are split over --gpus (plus two layers gathered whole). The VQ-VAE and the
refiner are small: a real model of each is built on the CPU to count its activations.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from jukebox_lite.algorithms.memory import GB, HEADROOM, TrainingMemory, audio_model_memory, prior_memory
from jukebox_lite.core.config import LoRAConfig, PriorConfig, RecipeConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.stages.common import add_recipe_arguments, load_recipe

PRIORS = ("prior_level2", "prior_level1", "prior_level0")


def plan(recipe: RecipeConfig, gpus: int = 1) -> list[TrainingMemory]:
    """Each training stage's memory on one of `gpus` GPUs (bf16 autocast)."""
    vq, ref = recipe.vqvae, dataclasses.replace(recipe.refiner, residual_scale=1.0)  # a data statistic: any value will do
    rows = [audio_model_memory("vqvae", VQVAE(vq), vqvae_forward, vq.hop_lengths[-1], vq.sample_length,
                               micro_batch(vq, gpus), vq.train.ema > 0)]
    for section in PRIORS:
        cfg = getattr(recipe, section)
        rows.append(prior_memory(section, cfg, micro_batch(cfg, gpus), bf16=True, gpus=gpus))
    rows.append(audio_model_memory("refiner", Refiner(ref), refiner_forward, ref.stride, ref.segment_length,
                                   micro_batch(ref, gpus), ref.train.ema > 0))
    return rows


def vqvae_forward(model: VQVAE, samples: int) -> None:
    model.train()(torch.randn(1, 1, samples) * 0.1)


def refiner_forward(model: Refiner, samples: int) -> None:
    audio = torch.randn(1, 1, samples) * 0.1
    model(audio, audio, torch.rand(1), torch.randn_like(audio))


def micro_batch(cfg, gpus: int) -> int:
    """Windows per forward pass on one GPU of a stage (its config section): train.micro_batch, or the
    GPU's whole share of the batch."""
    if cfg.train.batch_size % gpus:
        raise UserError(f"train.batch_size ({cfg.train.batch_size}) is not a multiple of --gpus ({gpus}).")
    return cfg.train.micro_batch or cfg.train.batch_size // gpus


def suggestion(section: str, cfg: PriorConfig, gpus: int, memory_gb: float) -> str | None:
    """The first change, in order of what it costs, that makes a prior fit; None when nothing tried does."""
    per_gpu = cfg.train.batch_size // gpus
    changes: list[tuple[str, PriorConfig]] = []
    if not cfg.checkpoint_layers:
        cfg = dataclasses.replace(cfg, checkpoint_layers=True)
        changes.append((f"{section}.checkpoint_layers=true", cfg))
    for size in sorted({d for d in range(1, per_gpu + 1) if per_gpu % d == 0}, reverse=True):
        if size < micro_batch(cfg, gpus):
            changes.append((f"{section}.train.micro_batch={size}", dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch=size))))
    if cfg.train.lora is None:
        smallest = changes[-1][1] if changes else cfg
        for rank in (64, 16, 4):
            adapted = dataclasses.replace(smallest, train=dataclasses.replace(smallest.train, lora=LoRAConfig(rank=rank)))
            changes.append((f"{section}.train.lora.rank={rank} (fine-tunes an imported prior)", adapted))
    applied = []
    for text, changed in changes:
        applied = [t for t in applied if not t.startswith(text.split("=")[0])] + [text]
        if prior_memory(section, changed, micro_batch(changed, gpus), bf16=True, gpus=gpus).fits(memory_gb):
            return " ".join(applied)
    return None


def audio_suggestion(row: TrainingMemory, section, gpus: int, memory_gb: float) -> str | None:
    """The largest micro-batch that makes the VQ-VAE or refiner fit (their activations grow with it linearly)."""
    size = micro_batch(section, gpus)
    per_item = row.activations / size
    per_gpu = section.train.batch_size // gpus
    for smaller in sorted((d for d in range(1, size) if per_gpu % d == 0), reverse=True):
        if dataclasses.replace(row, activations=round(per_item * smaller)).fits(memory_gb):
            return f"{row.stage}.train.micro_batch={smaller}"
    return None


def table(rows: list[TrainingMemory], memory_gb: float) -> str:
    lines = [
        f"{'stage':<13} {'parameters':>11} {'trainable':>11} {'weights':>8} {'grads':>8} {'Adam':>8} {'EMA':>8} "
        f"{'activ.':>8} {'total':>8}  fits {memory_gb:g} GB",
    ]
    for r in rows:
        activations = f"{r.activations / GB:.2f}"
        verdict = "yes" if r.fits(memory_gb) else "NO"
        lines.append(
            f"{r.stage:<13} {r.parameters / 1e6:>10.1f}M {r.trainable / 1e6:>10.1f}M {r.weights / GB:>8.2f} "
            f"{r.gradients / GB:>8.2f} {r.optimizer / GB:>8.2f} {r.ema / GB:>8.2f} {activations:>8} {r.total / GB:>8.2f}  {verdict}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=None)
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GB", help="memory of one GPU (default 80)")
    parser.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs sharing each step's batch (DDP; default 1)")


def run(args: argparse.Namespace) -> int:
    if not args.gpu_memory > 0 or args.gpus < 1:
        raise UserError("--gpu-memory must be positive and --gpus at least 1.")
    recipe = load_recipe(args)
    rows = plan(recipe, args.gpus)
    print(f"Training memory per GPU ({args.gpus} GPU(s), bf16 autocast, GB; a stage fits when it needs at most "
          f"{HEADROOM:.0%} of {args.gpu_memory:g} GB):")
    print(table(rows, args.gpu_memory))
    for r in rows:
        if r.fits(args.gpu_memory):
            continue
        if r.stage in PRIORS:
            fix = suggestion(r.stage, getattr(recipe, r.stage), args.gpus, args.gpu_memory)
            print(f"{r.stage}: " + (f"fits with {fix}" if fix else "does not fit even with layer checkpointing, micro-batches of 1 and LoRA rank 4"))
        else:
            fix = audio_suggestion(r, getattr(recipe, r.stage), args.gpus, args.gpu_memory)
            print(f"{r.stage}: " + (f"fits with {fix}" if fix else "does not fit even with micro-batches of 1"))
    print("Estimates (activations: the tensors autograd saves; the VQ-VAE's and refiner's in float32); "
          "make gpu-check measures every stage's real peak.")
    return 0
