"""What training a model holds in accelerator memory, known before a GPU hour is spent.

The model is built on the meta device (shapes and dtypes, no numbers), so a 5B prior costs nothing to
plan on a laptop. Weights, gradients, AdamW's two moments and the EMA follow from the parameter
counts (trainable in float32; a LoRA base frozen in bf16 under bf16 autocast, as training keeps it).
Activations are what autograd saves for backward: counted with saved-tensor hooks while one
transformer layer of each attention pattern runs forward on the meta device at the micro-batch's
size, times the layers (or, with layer checkpointing, each layer's input plus one layer recomputed),
plus the output layer's logits and log-probabilities in float32 and an upsampler's conditioner.
Meta tensors take the plain (math) attention path, which saves a little more than the CPU's blocked
kernel (measured: within 10 %) and differs from CUDA's FlexAttention; allocator slack and temporaries
are not counted, so `fits` keeps 10 % of the memory free. `make gpu-check` measures the real peak.

The VQ-VAE and the refiner are small and convolutional, and their forward reads data (codebook
statistics) that meta tensors do not hold: their activations are counted with a real model on the
CPU for one item at two short lengths, in float32 (an upper bound under bf16 autocast), and
extrapolated along the length, which they grow with linearly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from jukebox_lite.core.config import PriorConfig
from jukebox_lite.models.prior import Prior
from jukebox_lite.nn.transformer import ResAttnBlock

GB = 1e9
HEADROOM = 0.9  # a plan fits when it needs at most this share of the memory


@dataclass
class TrainingMemory:
    """One stage's training memory, in bytes, for one rank."""

    stage: str
    parameters: int  # every parameter (a tied one once)
    trainable: int
    weights: int
    gradients: int
    optimizer: int  # AdamW's first and second moments
    ema: int
    activations: int | None  # None: not estimated for this model

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema + (self.activations or 0)

    def fits(self, memory_gb: float) -> bool:
        return self.total <= HEADROOM * memory_gb * GB


def static_memory(stage: str, model: nn.Module, ema: bool, bf16_base: bool) -> TrainingMemory:
    """Weights, gradients, optimizer and EMA of `model` (any device, meta included); no activations."""
    params = list(model.parameters())  # a tied parameter once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = [p for p in params if not p.requires_grad]
    weights = 4 * trainable + sum(p.numel() * (2 if bf16_base and p.dim() >= 2 else 4) for p in frozen)
    return TrainingMemory(
        stage, sum(p.numel() for p in params), trainable, weights, 4 * trainable, 8 * trainable,
        4 * trainable if ema else 0, None,
    )


def saved_bytes(forward) -> int:
    """Bytes of the tensors autograd saves for backward while `forward()` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def prior_memory(stage: str, cfg: PriorConfig, micro_batch: int, bf16: bool, gpus: int = 1) -> TrainingMemory:
    """A prior's training memory on one of `gpus` GPUs at `micro_batch` windows per pass (see the module
    docstring); under `train.sharding: fsdp` weights, gradients, AdamW moments and EMA are split over the
    GPUs (plus the largest layer gathered whole while it runs)."""
    lora = cfg.train.lora
    with torch.device("meta"):
        prior = Prior(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lora=None)))
        if lora is not None:
            prior.add_adapters(lora)
    memory = static_memory(stage, prior, cfg.train.ema > 0, bf16_base=bf16 and lora is not None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = torch.empty(micro_batch, cfg.n_ctx, cfg.width, device="meta", dtype=dtype, requires_grad=True)
    per_pattern: dict[int, int] = {}
    for block in prior.prior.transformer._attn_mods:
        if block.attn.attn_func not in per_pattern:
            layer = ResAttnBlock(cfg, block.attn.attn_func).to(device="meta", dtype=dtype)
            per_pattern[block.attn.attn_func] = saved_bytes(lambda: layer(x, 0))
    layers = [per_pattern[f] for f in prior.attn_funcs]
    if cfg.checkpoint_layers:  # each layer's input kept, one layer's insides alive during its recompute
        transformer = len(layers) * x.numel() * x.element_size() + max(layers)
    else:
        transformer = sum(layers)
    head = 2 * micro_batch * cfg.n_ctx * cfg.bins * 4  # logits and log-probabilities, float32
    conditioner = 0
    if cfg.is_upsampler:
        upper = torch.zeros(micro_batch, cfg.n_ctx // cfg.cond_downsample, dtype=torch.long, device="meta")
        conditioner = saved_bytes(lambda: prior.conditioner_blocks[0](upper))
    memory = dataclasses.replace(memory, activations=transformer + head + conditioner)
    if cfg.train.sharding == "fsdp" and gpus > 1:
        layer = max(sum(p.numel() for p in block.parameters()) for block in prior.prior.transformer._attn_mods)
        memory = dataclasses.replace(
            memory, weights=memory.weights // gpus + 2 * layer * (2 if bf16 else 4), gradients=memory.gradients // gpus,
            optimizer=memory.optimizer // gpus, ema=memory.ema // gpus,
        )
    return memory


def audio_model_memory(stage: str, model: nn.Module, forward, stride: int, length: int, batch: int, ema: bool) -> TrainingMemory:
    """A convolutional audio model's training memory at `batch` windows of `length` samples: `forward(model,
    n)` runs a training forward on one item of n samples (n a multiple of `stride`), on the CPU."""
    memory = static_memory(stage, model, ema, bf16_base=False)
    short = max(stride, (min(length, 16384) // 2) // stride * stride)
    torch.manual_seed(0)
    at_short, at_double = (saved_bytes(lambda n=n: forward(model, n)) for n in (short, 2 * short))
    per_sample = (at_double - at_short) / short
    activations = batch * max(0, round(at_short + per_sample * (length - short)))
    return dataclasses.replace(memory, activations=activations)
