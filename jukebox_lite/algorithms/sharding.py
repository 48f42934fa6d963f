"""Sharded training (`train.sharding: fsdp`): FSDP2 across the ranks and checkpoints as DCP shards.

The training loop imports this module only where a run is sharded: torch's FSDP and distributed
checkpointing take about 2 s to import, which every other command would pay at start-up.

A sharded checkpoint is last.pt (step, RNG, validation history) naming a folder of shards
(`last.shards-<step>/`: model, optimizer and EMA), which DCP reads back on any number of ranks.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from jukebox_lite.core.checkpoint import named_shards, single_process_shards


def shard(units: list[nn.Module], model: nn.Module) -> None:
    """FSDP2 across the ranks: each of `units` sharded on its own (gathered only while it runs), then the rest."""
    for unit in units:
        fully_shard(unit)
    fully_shard(model)


def reshard(model: nn.Module) -> None:
    """Every FSDP unit of `model` back to its shards: a forward without backward leaves the root's whole."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def shards_folder(path: Path, step: int) -> Path:
    """Where the checkpoint at `path` keeps its shards for `step`: a new folder per save, so the one that
    last.pt names is whole until last.pt names the next."""
    return path.with_name(f"{path.stem}.shards-{step:09d}")


def _content(model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None) -> dict:
    """What a sharded checkpoint holds, as the live (sharded or whole) tensors DCP writes from and reads into."""
    content = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        content["ema"] = ema
    return content


def _one_process(distributed: bool):
    return single_process_shards() if not distributed else contextlib.nullcontext()


def save(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None, path: Path, step: int,
    distributed: bool,
) -> Path:
    """Every rank writes its shards of model, optimizer and EMA (`ema`: the averaged tensors by name)."""
    folder = shards_folder(path, step)
    with _one_process(distributed):
        dcp.save(_content(model, optimizer, ema), checkpoint_id=folder, no_dist=not distributed)
    return folder


def remove_old(path: Path, step: int) -> None:
    """The shard folders of earlier saves, once last.pt names the one of `step`."""
    keep = shards_folder(path, step).name
    for old in path.parent.glob(f"{path.stem}.shards-*"):
        if old.name != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def load(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None, path: Path, state: dict,
    distributed: bool,
) -> None:
    """Model, optimizer and EMA (filled in place) from the shards last.pt (`state`, read from `path`) names,
    resharded to this run's ranks (any number)."""
    folder = named_shards(path, state, "put it back or move last.pt away")
    content = _content(model, optimizer, ema)
    with _one_process(distributed):
        dcp.load(content, checkpoint_id=folder, no_dist=not distributed)
    set_model_state_dict(model, content["model"])
    set_optimizer_state_dict(model, optimizer, content["optimizer"])


def gathered_weights(
    model: nn.Module, ema: dict[str, torch.Tensor] | None, averaged: dict[str, str]
) -> dict[str, torch.Tensor]:
    """A sharded model's whole weights on rank 0 (every rank takes part): the EMA's where there is one,
    `averaged` naming the EMA entry of each parameter (tied ones share one)."""
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ema is not None:
        shadow = {name: value.full_tensor().cpu() for name, value in ema.items()}
        weights = {key: shadow[averaged[key]] if averaged.get(key) in shadow else value for key, value in weights.items()}
    return weights
