"""Low-rank adapters (LoRA, Hu et al. 2021) on the transformer's Conv1D projections.

Fine-tuning a released 1B or 5B prior in full needs the weights, their gradients and two Adam
moments in memory: 16 bytes per parameter. With adapters the base weight W (in, out) stays frozen
and a layer computes x W + b + (alpha / rank) · (x A) B, where A is (in, rank) and B (rank, out):
B starts at zero, so training starts from the base model's function exactly, and only A and B (a
few MB) get gradients, optimizer state and a place in the checkpoint. For sampling the adapters are
merged into W (`merge_adapters`), which leaves a plain model as fast as the base.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from jukebox_lite.nn.transformer import Conv1D


class LoRAConv1D(Conv1D):
    """A Conv1D whose frozen weight `w` (and bias `b`) carries a trainable low-rank update."""

    def __init__(self, base: Conv1D, rank: int, alpha: float):
        nn.Module.__init__(self)  # the base's own parameters, not new random ones
        self.w, self.b = base.w, base.b
        n_in, n_out = base.w.shape
        self.scale = alpha / rank
        # A as a linear layer's default initialisation would draw it; B zero: the update starts at zero
        bound = 1 / math.sqrt(n_in)
        self.lora_a = nn.Parameter(torch.empty(n_in, rank, device=base.w.device).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(rank, n_out, device=base.w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in) → (..., rank) → (..., out): the full-size update A·B is never formed
        return super().forward(x) + (x @ self.lora_a.to(x.dtype)) @ self.lora_b.to(x.dtype) * self.scale

    def merged(self) -> Conv1D:
        """A plain Conv1D computing the same function: W + (alpha / rank) · A B, the same bias."""
        with torch.no_grad():
            w = self.w + (self.lora_a @ self.lora_b).to(self.w.dtype) * self.scale
        return Conv1D.from_weights(nn.Parameter(w, requires_grad=self.w.requires_grad), self.b)


def add_adapters(model: nn.Module, targets: list[str], rank: int, alpha: float) -> int:
    """Put adapters on every Conv1D whose name ends with one of `targets` (e.g. "attn.c_attn") and
    freeze every other parameter of the model; returns the number of adapted projections."""
    found = [
        (name, module) for name, module in model.named_modules()
        if type(module) is Conv1D and any(name == t or name.endswith("." + t) for t in targets)
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in found:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, LoRAConv1D(module, rank, alpha))
    return len(found)


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAConv1D) for m in model.modules())


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapted projection by its merged Conv1D, in place; returns the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRAConv1D):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.merged())
    return model
