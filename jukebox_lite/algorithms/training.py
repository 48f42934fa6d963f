"""The one training loop every stage uses: the VQ-VAE, the priors and the diffusion refiner.

A stage says *what* to train as a `Task` (model, data, loss, media); `train` does the rest the same
way for all of them: device and bf16 autocast (on CUDA, or anywhere with `precision: bf16`), DDP
across ranks (or FSDP with `sharding: fsdp`), micro-batches whose gradients add up, AdamW with
warm-up and linear annealing to zero, gradient clipping, an EMA of the trainable weights (what
sampling uses), skipping non-finite steps, TensorBoard and a progress bar on rank 0, and atomic
checkpoints that resume the run exactly where it stopped (model, EMA, optimizer, step and every
rank's RNG state; under FSDP in shards, on any number of ranks: `sharding`, imported only by a
sharded run). A model whose base is frozen (LoRA) is saved without it.

The schedule is a function of the step and of the *current* config, so a finished run can be
extended or annealed by rerunning with new `train.*` values; rerunning it unchanged does nothing.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from jukebox_lite.core import distributed
from jukebox_lite.core.atomic import remove_stale_temporaries
from jukebox_lite.core.checkpoint import load_checkpoint, load_state_checked, save_checkpoint
from jukebox_lite.core.config import PlateauConfig, RecipeConfig, TrainingConfig, save_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.core.precision import autocast, uses_bf16

log = logging.getLogger(__name__)


class OutputFolder(Protocol):
    """Where a stage's training writes (`runs.StageFolder` is one): the folder and the files in it."""

    path: Path
    checkpoint: Path  # the training checkpoint, resumed from when it is there
    best: Path  # the EMA weights of the best validation loss
    config: Path  # the resolved recipe
    tensorboard: Path


class Task(abc.ABC):
    """What one stage trains. `train` calls these; everything else is the loop's business.

    Under DDP only the model's forward synchronises gradients, so `loss` must go through
    `model(...)`; `model` there may be the DDP wrapper, elsewhere it is always the bare model.
    """

    kind: str  # checkpoint kind ("vqvae", "prior", ...): a checkpoint of another kind is refused
    section: str  # recipe section, for messages ("vqvae", "prior_level2", ...)
    # config fields that shape the weights or what they mean: a checkpoint resumed or fine-tuned must share them
    architecture: tuple[str, ...] = ()
    # the VQ-VAE whose codes or audio the model learns from (`VQVAE.fingerprint`), for a model that has one;
    # a checkpoint that records another is refused
    vqvae_fingerprint: str | None = None

    @abc.abstractmethod
    def config_dict(self) -> dict:
        """The stage's config section as saved in every checkpoint: enough to rebuild the model."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A new model on the CPU (the loop seeds torch identically on every rank first). A task that
        fine-tunes through adapters returns it with its frozen base loaded and the adapters added: the
        loop trains, averages and saves only the parameters that require gradients."""

    def start(self, model: nn.Module, env: distributed.DistEnv, init: Path | None) -> None:
        """Prepare a fresh run before its first step (not called on resume): when `init` is a checkpoint,
        take its weights (fine-tuning, see `train`); then any data statistics."""
        if init is not None:
            raise UserError(f"{self.section} cannot start from another checkpoint ('{init}'); move it away to train afresh.")

    @abc.abstractmethod
    def batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[Any]:
        """Endless batches for this rank, from step `start_step` on (each rank gets batch_size / world_size items)."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to minimise, scalar metrics for TensorBoard)."""

    def eval_batches(self, split: str, count: int, batch_size: int) -> list[Any] | None:
        """`count` fixed items of `split` ("valid" or "train") in batches of `batch_size`: the same items
        at every call, from a random stream training never uses. A UserError if the split has none;
        None if the task has no validation."""
        return None

    def log_media(self, model: nn.Module, writer: Any, step: int) -> None:
        """Audio or images for TensorBoard, on rank 0 alone every `media_every` steps, so no collectives here.
        `model` holds the EMA weights meanwhile (what sampling uses; the training weights come back after),
        and random numbers drawn here are given back: the run continues as if this had not run."""

    def checkpoint_extra(self) -> dict:
        """Further entries for the checkpoint."""
        return {}

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """Under `train.sharding: fsdp`, the submodules sharded on their own (gathered only while each runs):
        a prior's transformer layers. The rest of the model is sharded as one unit."""
        return []


@dataclass
class TrainResult:
    step: int  # steps done, over every run of this stage
    losses: list[float] = field(default_factory=list)  # loss of each step this call ran (NaN where skipped)
    skipped: int = 0  # non-finite steps skipped, over every run


# ----------------------------------------------------------------------------------------------
# Schedule


def learning_rate(cfg: TrainingConfig, step: int) -> float:
    """LR of update number `step` (1-based): linear warm-up, then constant, then linear annealing to 0."""
    scale = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.anneal_start is not None:
        scale *= min(1.0, max(0.0, 1.0 - (step - cfg.anneal_start) / cfg.anneal_steps))
    return cfg.lr * scale


def final_step(cfg: TrainingConfig) -> int:
    """The step a run ends at: `steps`, or earlier where annealing brings the next update's LR to zero."""
    if cfg.anneal_start is None:
        return cfg.steps
    return max(0, min(cfg.steps, cfg.anneal_start + cfg.anneal_steps - 1))


# ----------------------------------------------------------------------------------------------
# Weight EMA


def saved_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: its whole state dict or, when part of it is frozen (a LoRA
    fine-tune, whose base weights live in a file of their own: `Task.checkpoint_extra`), the trainable
    parameters and the buffers alone, so that a 5B prior's adapters take megabytes."""
    state = model.state_dict()
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}  # tied ones under each name
    return {key: value for key, value in state.items() if key not in frozen} if frozen else state


def _averaged_names(model: nn.Module) -> dict[str, str]:
    """Every parameter name → the name the EMA averages it under: a tied parameter (the prior's output layer
    is its token embedding) once, under its first name, and saved under each of them, so that loading never
    overwrites the average with the live weight."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}


class WeightEMA:
    """An exponential moving average of a model's parameters in float32: the weights sampling uses.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first n updates, so a short run (the
    demo) does not keep mostly its random initialisation. Only trainable parameters are averaged (a
    frozen base, as under LoRA, is its own average); buffers and frozen parameters come from the model
    in `state_dict`, so the EMA loads wherever the model's state does.
    """

    def __init__(self, model: nn.Module, decay: float, sharded: bool = False):
        self.decay, self.updates = decay, 0
        self.sharded = sharded  # FSDP: parameters go back to their shards before each swap
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = [p.detach().float() for _, p in model.named_parameters() if p.requires_grad]
        torch._foreach_lerp_(list(self.shadow.values()), params, 1.0 - decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        averaged = _averaged_names(model)
        return {
            key: self.shadow[averaged[key]].clone() if averaged.get(key) in self.shadow else value
            for key, value in saved_weights(model).items()
        }

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for name, value in self.shadow.items():
            value.copy_(state[name])
        self.updates = updates

    def _reshard(self, model: nn.Module) -> None:
        if self.sharded:
            from jukebox_lite.algorithms import sharding

            sharding.reshard(model)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The EMA weights in the model for the duration (what sampling will use), its own ones restored after."""
        self._reshard(model)
        params = {name: p for name, p in model.named_parameters() if name in self.shadow}
        own = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            self._reshard(model)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(own[name])


# ----------------------------------------------------------------------------------------------
# RNG state


def _seed_rank(seed: int, rank: int) -> None:
    """Give each rank its own random streams (python, numpy, torch and CUDA), derived from the recipe seed."""
    value = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _rng_state(device: torch.device) -> dict:
    """This process's RNG states, as plain data a weights-only checkpoint can hold."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------------------------
# Batches and the optimizer


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW; as in nanoGPT only matrices and kernels (dim ≥ 2) decay, biases and gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


# ----------------------------------------------------------------------------------------------
# Validation


EVAL_SEED = 1234  # the random numbers a validation pass draws (the refiner's t and noise) are the same every time


@dataclass
class Validation:
    """Where a run's validation stands: kept in its checkpoint, so a resumed run goes on with it."""

    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    gaps: list[float] = field(default_factory=list)  # validation − train-window loss at each evaluation
    best_step: int | None = None
    best_loss: float = math.inf
    plateau_loss: float = math.inf  # the loss the plateau rule last counted as progress
    since_progress: int = 0  # evaluations since then
    anneal_start: int | None = None  # the step where a plateau started annealing

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> "Validation":
        if not state:
            return cls()
        values = dict(state)
        values["history"] = [tuple(h) for h in values.get("history", [])]
        return cls(**values)

    def record(self, step: int, loss: float, gap: float | None, plateau: PlateauConfig | None) -> tuple[bool, bool]:
        """Note one evaluation; returns (a new best, the plateau rule starts annealing now)."""
        self.history.append((step, loss))
        if gap is not None:
            self.gaps.append(gap)
        best = loss < self.best_loss
        if best:
            self.best_step, self.best_loss = step, loss
        if plateau is None or self.anneal_start is not None:
            return best, False
        if loss < self.plateau_loss - plateau.min_delta:
            self.plateau_loss, self.since_progress = loss, 0
            return best, False
        self.since_progress += 1
        if self.since_progress >= plateau.patience:
            self.anneal_start = step
            return best, True
        return best, False

    def overfitting(self, patience: int) -> bool:
        """The gap grew at each of the last `patience` evaluations and none of them was a new best. A gap that
        grows while the validation loss still improves is the training windows being learned faster, not yet
        a reason to stop."""
        recent = self.gaps[-(patience + 1):]
        growing = len(recent) == patience + 1 and all(b > a for a, b in zip(recent, recent[1:]))
        return growing and self.best_step not in [step for step, _ in self.history[-patience:]]


def schedule(cfg: TrainingConfig, validation: Validation) -> TrainingConfig:
    """The config the LR follows: the recipe's, with the plateau's annealing start where it set one."""
    if validation.anneal_start is None or cfg.anneal_start is not None:
        return cfg
    return dataclasses.replace(cfg, anneal_start=validation.anneal_start)


class _EvalSets:
    """The fixed validation batches of a run, this rank's share, drawn once on first use."""

    def __init__(self, task: Task, cfg: TrainingConfig, env: distributed.DistEnv):
        per_rank = cfg.batch_size // env.world_size
        per_pass = per_rank * env.world_size
        count = -(-cfg.eval_windows // per_pass) * per_pass  # a whole number of batches on every rank
        self.fallback = False
        try:
            valid = task.eval_batches("valid", count, per_rank)
        except UserError as e:
            log.warning(
                "%s: %s; validating on train-split windows of a stream training does not draw instead (no held-out "
                "data: the generalisation gap is not measured)", task.section, str(e).rstrip("."),
            )
            valid, self.fallback = task.eval_batches("train", count, per_rank), True
        self.valid = None if valid is None else valid[env.rank :: env.world_size]
        train = None if self.fallback or valid is None else task.eval_batches("train", count, per_rank)
        self.train = None if train is None else train[env.rank :: env.world_size]


@torch.no_grad()
def _mean_loss(task: Task, trainee: "_Trainee", batches: list, env: distributed.DistEnv, precision: str) -> dict[str, float]:
    """The loss and metrics of the EMA weights (what sampling uses) in eval mode, averaged over every
    rank's batches; the random numbers drawn are the same at every evaluation, then given back."""
    model, device = trainee.model, env.device
    weights = trainee.ema.applied(model) if trainee.ema is not None else contextlib.nullcontext()
    sums: dict[str, torch.Tensor] = {}
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), weights:
            torch.manual_seed(EVAL_SEED)
            for batch in batches:
                with autocast(device, precision):
                    loss, metrics = task.loss(model, _to_device(batch, device))
                for name, value in {"loss": loss, **metrics}.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float().mean()
    finally:
        model.train()
    names = sorted(sums)
    values = distributed.all_reduce_mean(torch.stack([sums[n] for n in names]) / len(batches))
    return dict(zip(names, values.tolist()))


def _validate(
    task: Task, cfg: TrainingConfig, trainee: "_Trainee", sets: _EvalSets, validation: Validation,
    env: distributed.DistEnv, writer: Any, best_path: Path,
) -> bool:
    """One validation pass: TensorBoard's valid/*, best.pt, the overfitting warning and the plateau
    rule. Every rank takes part and decides the same. Returns whether annealing starts now."""
    step = trainee.step
    valid = _mean_loss(task, trainee, sets.valid, env, cfg.precision)
    gap = None
    if sets.train is not None:
        gap = valid["loss"] - _mean_loss(task, trainee, sets.train, env, cfg.precision)["loss"]
    best, anneal = validation.record(step, valid["loss"], gap, cfg.anneal_on_plateau)
    if writer is not None:
        for name, value in valid.items():
            writer.add_scalar(f"valid/{name}", value, step)
        if gap is not None:
            writer.add_scalar("valid/gap", gap, step)
    if best:
        _save_best(task, trainee, best_path, env, valid["loss"])
    if gap is not None and validation.overfitting(cfg.overfit_patience):
        log.warning(
            "%s: step %d: the validation loss is pulling away from the training loss (gap %.4g, grown %d evaluations "
            "in a row, no new best): over-fitting; anneal now (make anneal STEP=%d) or stop and keep best.pt (step %s).",
            task.section, step, gap, cfg.overfit_patience, step, validation.best_step,
        )
    if anneal:
        log.info(
            "%s: step %d: the validation loss has not improved by %g for %d evaluations; annealing the LR to zero "
            "over %d steps.", task.section, step, cfg.anneal_on_plateau.min_delta, cfg.anneal_on_plateau.patience,
            cfg.anneal_steps,
        )
    return anneal


def _save_best(task: Task, trainee: "_Trainee", path: Path, env: distributed.DistEnv, loss: float) -> None:
    """The EMA weights (what sampling uses) of the best validation step, loadable like any checkpoint of the kind."""
    if trainee.sharded:
        from jukebox_lite.algorithms import sharding

        weights = sharding.gathered_weights(trainee.model, trainee.ema_averages, _averaged_names(trainee.model))  # rank 0 gets them
    else:
        weights = trainee.ema.state_dict(trainee.model) if trainee.ema is not None else saved_weights(trainee.model)
    if not env.is_main:
        return
    try:
        save_checkpoint(
            path, task.kind, task.config_dict(), weights, step=trainee.step, valid_loss=loss,
            **({"vqvae_fingerprint": task.vqvae_fingerprint} if task.vqvae_fingerprint else {}),
            **task.checkpoint_extra(),
        )
    except OSError as e:
        raise UserError(f"Could not write '{path}' ({e.strerror or e}); the previous one is intact. Free disk space and rerun.") from None


# ----------------------------------------------------------------------------------------------
# The loop


def check_compatible(task: Task, state: dict, path: Path) -> None:
    """The one check of a checkpoint against the task, for resuming and fine-tuning alike: the same
    architecture and, where the task has one, the same VQ-VAE."""
    theirs = state["config"]
    ours = task.config_dict()
    for name in task.architecture:
        if theirs.get(name) != ours[name]:
            raise UserError(
                f"{task.section}.{name} is {ours[name]} in the recipe but {theirs.get(name)} in '{path}'; set the "
                "recipe's model settings to the checkpoint's, or move the checkpoint away to start afresh."
            )
    trained_on = state.get("vqvae_fingerprint")
    if task.vqvae_fingerprint is not None and trained_on is not None and trained_on != task.vqvae_fingerprint:
        raise UserError(
            f"'{path}' was trained on data of another VQ-VAE (weights {trained_on}, now {task.vqvae_fingerprint}); "
            f"move it away to train a new {task.kind} for this VQ-VAE."
        )


def is_training_run(state: dict) -> bool:
    """A checkpoint the loop wrote (it resumes); one without optimizer state (an import) starts a fine-tune."""
    return "optimizer" in state or "sharded" in state


@dataclass
class _Trainee:
    """What a run carries from step to step and into its checkpoint."""

    model: nn.Module
    optimizer: torch.optim.AdamW
    ema: WeightEMA | None
    sharded: bool  # FSDP across the ranks
    step: int = 0
    skipped: int = 0
    validation: Validation = field(default_factory=Validation)

    @property
    def ema_averages(self) -> dict[str, torch.Tensor] | None:
        """The EMA's averaged tensors by name (what a sharded checkpoint stores of it); None without an EMA."""
        return self.ema.shadow if self.ema is not None else None


def _restore(
    task: Task, cfg: TrainingConfig, state: dict | None, init: Path | None, path: Path, env: distributed.DistEnv, seed: int
) -> _Trainee:
    """The model, optimizer and EMA: resumed from `state` (a training run), or fresh (from `init`'s weights)."""
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = task.build_model()
    if state is not None and "sharded" in state:
        pass  # its weights come from the shards once the model is sharded like this run's (_load_sharded)
    elif state is not None:  # a frozen base came with build_model: the checkpoint holds the rest
        missing = [key for key in saved_weights(model) if key not in state["model"]]
        if missing:
            raise UserError(f"'{path}' lacks the key '{missing[0]}'; the file is incomplete or of another kind of run.")
        load_state_checked(model, state["model"], str(path), strict=False)
    else:
        task.start(model, env, init)
    model.to(env.device)
    sharded = cfg.sharding == "fsdp" and env.is_distributed
    if sharded or (state is not None and "sharded" in state):
        from jukebox_lite.algorithms import sharding
    if sharded:
        sharding.shard(task.shard_units(model), model)
    if uses_bf16(env.device, cfg.precision):  # a frozen base is only read, under bf16 autocast: half its memory
        for p in model.parameters():  # its matrices; the norms' gains and biases are few and stay float32
            if not p.requires_grad and p.is_floating_point() and p.dim() >= 2:
                p.data = p.data.to(torch.bfloat16)
    ema = WeightEMA(model, cfg.ema, sharded) if cfg.ema > 0 else None
    trainee = _Trainee(model, _optimizer(model, cfg), ema, sharded)
    if state is None:
        _seed_rank(seed, env.rank)
        return trainee
    trainee.step, trainee.skipped = int(state["step"]), int(state.get("skipped_steps", 0))
    trainee.validation = Validation.from_state(state.get("validation"))
    if "sharded" in state:
        sharding.load(model, trainee.optimizer, trainee.ema_averages, path, state, env.is_distributed)
        if ema is not None:
            ema.updates = int(state.get("ema_updates", 0))
    else:
        trainee.optimizer.load_state_dict(state["optimizer"])
        if trainee.ema is not None and state.get("ema") is not None:
            trainee.ema.load(state["ema"], int(state.get("ema_updates", 0)))
    rng = state.get("rng") or []
    if len(rng) == env.world_size:
        _set_rng_state(rng[env.rank], env.device)
    else:
        log.warning("resuming on %d ranks a run saved on %d: random streams restart", env.world_size, len(rng))
        _seed_rank(seed + trainee.step, env.rank)
    return trainee


def _batch_slice(batch: Any, start: int, stop: int) -> Any:
    """Items start..stop-1 of a batch: a tensor, or lists, tuples and dicts of them (None stays None)."""
    if torch.is_tensor(batch):
        return batch[start:stop]
    if isinstance(batch, (list, tuple)):
        return type(batch)(_batch_slice(b, start, stop) for b in batch)
    if isinstance(batch, dict):
        return {k: _batch_slice(v, start, stop) for k, v in batch.items()}
    return batch


def _step(task: Task, cfg: TrainingConfig, trainee: _Trainee, wrapped: nn.Module, batch: Any, device: torch.device):
    """One update at the scheduled LR; a non-finite loss or gradient on any rank skips it, buffers included.
    With `micro_batch` the rank's share goes through in passes whose gradients add up (DDP averages them
    across ranks once, after the last). Returns (loss, metrics, grad_norm, lr, bad)."""
    model, optimizer = trainee.model, trainee.optimizer
    lr = learning_rate(schedule(cfg, trainee.validation), trainee.step + 1)
    for group in optimizer.param_groups:
        group["lr"] = lr
    buffers = [b.detach().clone() for b in model.buffers()]  # a skipped step must not change them either
    per_rank = cfg.batch_size // distributed.current().world_size
    size = cfg.micro_batch or per_rank
    passes = per_rank // size
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = torch.zeros((), device=device), {}
    for start in range(0, passes * size, size):
        last = start + size == passes * size
        synced = last or not isinstance(wrapped, DistributedDataParallel)
        with contextlib.nullcontext() if synced else wrapped.no_sync():
            with autocast(device, cfg.precision):
                part_loss, part_metrics = task.loss(wrapped, _batch_slice(batch, start, start + size))
            (part_loss / passes).backward()
        loss = loss + part_loss.detach().float() / passes
        for name, value in part_metrics.items():
            metrics[name] = metrics.get(name, 0.0) + value.detach().float() / passes
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    if trainee.sharded:  # a DTensor: the norm over every rank's shards
        grad_norm = grad_norm.full_tensor()
    bad = distributed.any_rank(not (torch.isfinite(loss) and torch.isfinite(grad_norm)), device)
    trainee.step += 1
    if bad:
        with torch.no_grad():
            for buffer, before in zip(model.buffers(), buffers):
                buffer.copy_(before)
        trainee.skipped += 1
    else:
        optimizer.step()
        if trainee.ema is not None:
            trainee.ema.update(model)
    return loss, metrics, grad_norm, lr, bad


def _log_scalars(writer: Any, trainee: _Trainee, loss, metrics: dict, grad_norm, lr: float, samples_per_sec: float) -> None:
    """The step's loss and metrics, averaged over the ranks (every rank takes part), to TensorBoard on rank 0."""
    names = ["loss", *(k for k in metrics if k != "loss")]
    values = torch.stack([loss.detach().float(), *(metrics[k].detach().float().mean() for k in names[1:])])
    values = distributed.all_reduce_mean(values)
    if writer is None:
        return
    step = trainee.step
    for name, value in zip(names, values.tolist()):
        writer.add_scalar(f"train/{name}", value, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/grad_norm", float(grad_norm), step)
    writer.add_scalar("train/samples_per_sec", samples_per_sec, step)
    writer.add_scalar("train/skipped_steps", trainee.skipped, step)


def _save(task: Task, cfg: TrainingConfig, trainee: _Trainee, path: Path, env: distributed.DistEnv) -> None:
    """The checkpoint that resumes this run exactly: every rank gives its RNG state, rank 0 writes atomically."""
    rng = distributed.gather_objects(_rng_state(env.device))  # every rank takes part
    ema = trainee.ema
    if cfg.sharding == "fsdp":  # every rank writes its shards; last.pt names them
        from jukebox_lite.algorithms import sharding

        folder = sharding.save(trainee.model, trainee.optimizer, trainee.ema_averages, path, trainee.step, env.is_distributed)
        weights, extra = {}, {"sharded": folder.name, **({"ema_updates": ema.updates} if ema is not None else {})}
    else:
        weights = saved_weights(trainee.model)
        extra = {"optimizer": trainee.optimizer.state_dict()}
        extra |= {"ema": ema.state_dict(trainee.model), "ema_updates": ema.updates} if ema is not None else {}
    if not env.is_main:
        return
    try:
        save_checkpoint(
            path, task.kind, task.config_dict(), weights, step=trainee.step, skipped_steps=trainee.skipped, rng=rng,
            validation=trainee.validation.to_state(),
            **({"vqvae_fingerprint": task.vqvae_fingerprint} if task.vqvae_fingerprint else {}),
            **extra, **task.checkpoint_extra(),
        )
    except OSError as e:
        raise UserError(
            f"Could not write checkpoint '{path}' ({e.strerror or e}); the previous one is intact. "
            "Free disk space and rerun to resume."
        ) from None
    if cfg.sharding == "fsdp":  # last.pt names the new shards now: the earlier ones can go
        sharding.remove_old(path, trainee.step)
    log.debug("saved %s at step %d", path, trainee.step)


def train(
    task: Task,
    cfg: TrainingConfig,
    out: OutputFolder,
    *,
    seed: int = 0,
    recipe: RecipeConfig | None = None,
    init: Path | None = None,
) -> TrainResult:
    """Train `task` into `out` (its checkpoint, TensorBoard folder and config file).

    One rule for where a run starts: a checkpoint in `out` that training wrote is resumed; one without
    optimizer state (imported from OpenAI, or saved by hand) is fine-tuned: its weights start a fresh
    run, as do `init`'s when `out` holds no checkpoint. Either is first checked against the task
    (`check_compatible`). Call `distributed.init()` first when launched on several ranks.
    """
    env = distributed.current()
    path = out.checkpoint
    if cfg.batch_size % env.world_size:
        raise UserError(
            f"{task.section}.train.batch_size is {cfg.batch_size}; it must be a multiple of the number of ranks "
            f"({env.world_size})."
        )
    if cfg.micro_batch and (cfg.batch_size // env.world_size) % cfg.micro_batch:
        raise UserError(
            f"{task.section}.train.micro_batch is {cfg.micro_batch}, which does not divide each rank's share of "
            f"batch_size ({cfg.batch_size} / {env.world_size} ranks = {cfg.batch_size // env.world_size}); choose a divisor of it."
        )
    state = load_checkpoint(path, task.kind) if path.exists() else None
    start_from = None  # the checkpoint a fine-tune starts from, once loaded
    if state is not None and is_training_run(state):
        if init is not None:
            log.warning("%s holds a training run; resuming it and ignoring %s", path, init)
        init = None
    elif state is not None:
        init, start_from, state = path, state, None
    if init is not None:
        check_compatible(task, start_from or load_checkpoint(init, task.kind), init)
        del start_from
        log.info("%s: fine-tuning the weights in %s", task.section, init)
    elif state is not None:
        check_compatible(task, state, path)
    end = final_step(schedule(cfg, Validation.from_state(state and state.get("validation"))))
    if state is not None and int(state["step"]) >= end:
        log.info(
            "%s: already trained to step %d (this config ends at step %d); nothing to do. Raise %s.train.steps "
            "or change its annealing to train on.", task.section, int(state["step"]), end, task.section,
        )
        return TrainResult(int(state["step"]), skipped=int(state.get("skipped_steps", 0)))

    trainee = _restore(task, cfg, state, init, path, env, seed)
    if state is not None:
        log.info("%s: resuming %s at step %d of %d", task.section, path, trainee.step, end)
    else:
        log.info("%s: training from %s to step %d", task.section, init or "scratch", end)
    del state
    model, device = trainee.model, env.device
    wrapped = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        if env.is_distributed and not trainee.sharded
        else model  # one process, or FSDP's own model
    )
    model.train()

    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        out.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out.path)
        if recipe is not None:
            save_config(recipe, out.config)
        writer = SummaryWriter(str(out.tensorboard))

    result = TrainResult(trainee.step)
    eval_sets = _EvalSets(task, cfg, env) if cfg.eval_every else None
    if eval_sets is not None and eval_sets.valid is None:
        eval_sets = None  # a task without validation
    batches = task.batches(env.rank, env.world_size, seed, trainee.step)
    bar = tqdm(total=end, initial=trainee.step, desc=task.section, unit="step", disable=not env.is_main, dynamic_ncols=True)
    bad_in_row, saved_at = 0, (trainee.step or None)  # the step of the checkpoint on disk
    timer, timed_steps = time.perf_counter(), 0
    try:
        while trainee.step < end:
            loss, metrics, grad_norm, lr, bad = _step(task, cfg, trainee, wrapped, _to_device(next(batches), device), device)
            step = trainee.step
            timed_steps += 1
            bad_in_row = bad_in_row + 1 if bad else 0
            if bad:
                log.warning("step %d: loss or gradient is not finite; step skipped (%d in a row)", step, bad_in_row)
                if writer is not None:
                    writer.add_scalar("train/skipped_steps", trainee.skipped, step)
                if bad_in_row >= cfg.max_bad_steps:
                    kept = f"the last good checkpoint '{path}' (step {saved_at}) is kept" if saved_at else "no checkpoint was written"
                    raise UserError(
                        f"{task.section}: the loss was not finite for {bad_in_row} steps in a row (up to step {step}); "
                        f"{kept}. Lower {task.section}.train.lr or check the data, then rerun."
                    )
            loss_value = loss.item()
            result.losses.append(loss_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            if step % cfg.log_every == 0:
                rate = cfg.batch_size * timed_steps / (time.perf_counter() - timer)
                _log_scalars(writer, trainee, loss, metrics, grad_norm, lr, rate)
                timer, timed_steps = time.perf_counter(), 0
            if writer is not None and cfg.media_every and step % cfg.media_every == 0:
                devices = [device] if device.type == "cuda" else []
                weights = trainee.ema.applied(model) if trainee.ema is not None else contextlib.nullcontext()
                with torch.random.fork_rng(devices=devices), weights:
                    task.log_media(model, writer, step)
            if eval_sets is not None and (step % cfg.eval_every == 0 or step == end):
                if _validate(task, cfg, trainee, eval_sets, trainee.validation, env, writer, out.best):
                    end = final_step(schedule(cfg, trainee.validation))
                    bar.total = end
            if step % cfg.checkpoint_every == 0 or step >= end:
                _save(task, cfg, trainee, path, env)
                saved_at = step
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    result.step, result.skipped = trainee.step, trainee.skipped
    log.info("%s: finished at step %d (%s)", task.section, trainee.step, path)
    return result
