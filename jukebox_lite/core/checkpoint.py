"""Our checkpoint file: one `.pt` per stage, written atomically, read with `weights_only=True`.

Layout (a plain dict of tensors, numbers, strings, lists and dicts, so no code is unpickled):
    format_version  int     bumped when the layout changes
    kind            str     "vqvae", "prior", "refiner", ... (a checkpoint of another kind is refused)
    config          dict    the stage's config section, enough to rebuild the model
    model           dict    state_dict
    ...             any further entries the stage keeps (ema, optimizer, step, rng, ...)
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.errors import UserError

FORMAT_VERSION = 1
CHECKPOINT_NAME = "last.pt"


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (holding last.pt) or a .pt file → the .pt file, or a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"Checkpoint '{path}' does not exist; run the stage that makes it first.")
    return path


def save_checkpoint(path: str | os.PathLike, kind: str, config: dict, model: dict, **extra: Any) -> None:
    """Write atomically: if the disk fills or the process dies, the previous file survives intact."""
    state = {"format_version": FORMAT_VERSION, "kind": kind, "config": config, "model": model, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location: str = "cpu", mmap: bool = False) -> dict:
    """Load safely (no code runs) and check format and kind; any problem is one UserError naming the file.

    mmap: tensors stay in the file until touched, for a caller that reads a checkpoint's names and
    config only (a released prior's checkpoint is gigabytes)."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"Checkpoint '{path}' is corrupt or not a jukebox-lite checkpoint ({reason}).") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"Checkpoint '{path}' is not a jukebox-lite checkpoint; import foreign weights with import-jukebox.")
    if state["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"Checkpoint '{path}' has format {state['format_version']}, newer than this jukebox-lite "
            f"understands ({FORMAT_VERSION}); upgrade jukebox-lite."
        )
    if kind is not None and state.get("kind") != kind:
        raise UserError(f"Checkpoint '{path}' holds a {state.get('kind')} model, not a {kind}.")
    return state


def load_state_checked(model: nn.Module, state: dict, source: str, strict: bool = True) -> None:
    """`load_state_dict`, but a missing, unexpected or wrongly shaped key is one UserError naming it."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise UserError(f"'{source}' has the key '{key}', which this model does not have; is it a checkpoint of this kind of model?")
        if tuple(own[key].shape) != tuple(value.shape):
            raise UserError(
                f"'{source}' holds '{key}' with shape {tuple(value.shape)}, but the config gives "
                f"{tuple(own[key].shape)}; the checkpoint and its config disagree."
            )
    if strict:
        missing = [key for key in own if key not in state]
        if missing:
            raise UserError(f"'{source}' lacks the key '{missing[0]}'; the file is incomplete.")
    model.load_state_dict(state, strict=strict)


def named_shards(path: str | os.PathLike, state: dict, remedy: str) -> Path:
    """The shard folder a sharded checkpoint (`state`, read from `path`) names; refused, with `remedy`, when missing."""
    folder = Path(path).parent / state["sharded"]
    if not folder.is_dir():
        raise UserError(f"'{path}' keeps its weights in '{folder}', which is missing; {remedy}.")
    return folder


def read_shards(path: str | os.PathLike, state: dict, target: dict) -> None:
    """Fill `target` ({"model": state dict, "ema": {name: tensor}}: whole tensors of the right shapes) from
    the shards a checkpoint trained with `train.sharding: fsdp` names, in this one process."""
    import torch.distributed.checkpoint as dcp

    folder = named_shards(path, state, "put it back")
    try:
        with single_process_shards():
            dcp.load(target, checkpoint_id=folder, no_dist=True)
    except Exception as e:
        raise UserError(f"The shards in '{folder}' cannot be read ({str(e).splitlines()[0][:200]}).") from None


@contextlib.contextmanager
def single_process_shards():
    """torch.distributed.checkpoint in one process: without the warning that it assumes so (it is meant)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
