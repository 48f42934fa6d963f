"""Numeric precision is the caller's choice: one autocast helper, and no model opens autocast itself.

`precision` is a recipe's `train.precision` (or a command's own): "auto" means bf16 autocast on CUDA
and float32 elsewhere, "bf16" asks for bf16 autocast on any device (CPU too), "float32" turns it off.
Spectral losses and the codebook search switch autocast off around themselves, so they stay float32.
"""

from __future__ import annotations

import torch

from jukebox_lite.core.config import PRECISIONS


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether `precision` means bf16 autocast on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision is '{precision}'; use one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The autocast context for `precision` on `device` (a disabled one for float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def float32_region(device: torch.device) -> torch.autocast:
    """Autocast switched off on `device` (for spectra and codebook distances); on a device autocast does
    not know (the meta device `plan` builds models on) a no-op of the same kind."""
    return torch.autocast(device.type if device.type in ("cpu", "cuda") else "cpu", enabled=False)
