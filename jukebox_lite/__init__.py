"""jukebox-lite: teach a Jukebox-style hierarchical music model one genre.

The Python API for scripts and notebooks (outside code uses only these names):

    from jukebox_lite import load_vqvae, load_prior, load_refiner, sample_codes, refine, Run

    vq = load_vqvae("runs/demo/vqvae")           # a run's stage folder or a .pt file
    top = load_prior("runs/demo/prior_level2")
    codes = sample_codes(top, n=1, length=512, labels=...)   # (1, 512) level-2 codes
    audio = vq.decode_long(codes, level=2)                   # (1, 1, 512 · 128)

Names are imported on first use, so `import jukebox_lite` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name → the module that owns it
_API = {
    "load_vqvae": "jukebox_lite.models.checkpoints",
    "load_prior": "jukebox_lite.models.checkpoints",
    "load_refiner": "jukebox_lite.models.checkpoints",
    "sample_codes": "jukebox_lite.algorithms.sampling",
    "morph": "jukebox_lite.algorithms.sampling",
    "refine": "jukebox_lite.algorithms.refining",
    "Run": "jukebox_lite.runs",
    "UserError": "jukebox_lite.core.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'jukebox_lite' has no attribute '{name}'")
    return getattr(importlib.import_module(_API[name]), name)
