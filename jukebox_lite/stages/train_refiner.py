"""Refiner stage: train the refiner on the run's VQ-VAE audio → RUN/refiner/{last.pt, tb/, config.yaml}.

    jukebox-lite train-refiner --config pipelines/demo.yaml --run runs/demo [refiner.train.steps=2000 ...]

Each step reads windows of `refiner.segment_length` clean samples from the training split of RUN/data,
sends them through the run's trained VQ-VAE (RUN/vqvae, EMA weights, frozen) at `refiner.cond_level`
to make their coarse versions, and trains both networks of `models.refiner` at once: the estimator on
the MR-STFT distance and squared error of its residual estimate, the detail model (`refiner.detail`)
on the v-objective for what the estimate leaves. Nothing is stored: the pairs are made on the fly.

The detail model's noise levels t are stratified over a rank's batch (one uniform draw in each of B
equal slices of [0, 1)): every item still sees a uniform t, the loss has less variance, and each
quarter of noise levels gets the same share of the batch, so TensorBoard shows its loss per quarter
(`train/detail_loss_t0.00_0.25` ...) beside `train/estimate_loss` and the total. Every
`train.media_every` steps a fixed validation window is logged as original / coarse / refined audio
and spectrograms, refined with the recipe's sampling settings by the EMA weights (what sampling uses).

A fresh run first measures the VQ-VAE's error on RESIDUAL_WINDOWS training windows of their own random
stream (the same on every rank): the estimator's equalizer starts as the least-squares linear filter
from decoded to original audio (`matched_filter`), and with `refiner.residual_scale: null` the scale
is the RMS of (clean − coarse) / envelope, recorded in the checkpoint's config and in
RUN/refiner/config.yaml; a resumed run reads it back.

The checkpoint (kind "refiner") holds the VQ-VAE's fingerprint, so `refiner.load_refiner` reads it,
prefers its EMA weights, and refuses to refine another VQ-VAE's audio. Refused before training, each
in one sentence: no VQ-VAE yet, a VQ-VAE without the conditioning level,
a window that is not a multiple of that level's hop, and a checkpoint in RUN/refiner of another
architecture or trained on another VQ-VAE. A refiner checkpoint there that is not a training run
(saved by `save_refiner`) is fine-tuned rather than overwritten. Resume, the finished-run no-op and
non-finite steps are the shared loop's (`jukebox_lite.algorithms.training`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jukebox_lite.core import distributed
from jukebox_lite.algorithms import metrics
from jukebox_lite.core.checkpoint import load_checkpoint, load_state_checked
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe
from jukebox_lite.core.config import RecipeConfig, RefinerConfig
from jukebox_lite.algorithms.datasets import RESIDUAL_STREAM, AudioWindows, AudioWindowTask
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.models.refiner import EQUALIZER_TAPS, Refiner, envelope
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae
from jukebox_lite.algorithms.refining import make_training_pair, matched_filter, refine
from jukebox_lite.stages.train_vqvae import spectrogram_image
from jukebox_lite.algorithms.training import TrainResult, train
from jukebox_lite.models.vqvae import VQVAE

log = logging.getLogger(__name__)

NOISE_BANDS = 4  # the loss is also logged per quarter of noise levels t
RESIDUAL_WINDOWS = 32  # training windows a fresh run measures (residual_scale, the equalizer's first filter)
# settings a checkpoint in RUN/refiner must share with the recipe: they shape the weights or what they learned
ARCHITECTURE = (
    "sample_rate", "cond_level", "channels", "factors", "res_blocks", "attention_levels", "attention_heads",
    "attention_window", "kernel_size", "embedding_dim", "envelope_window", "residual_scale", "detail",
)


def check_vqvae(cfg: RefinerConfig, vqvae: VQVAE, path: Path) -> None:
    """The run's VQ-VAE must make coarse audio this refiner can learn from."""
    if cfg.cond_level >= vqvae.levels:
        raise UserError(f"refiner.cond_level is {cfg.cond_level}; the VQ-VAE '{path}' has levels 0 to {vqvae.levels - 1}.")
    hop = vqvae.hop_lengths[cfg.cond_level]
    if cfg.segment_length % hop:
        raise UserError(
            f"refiner.segment_length is {cfg.segment_length}; use a multiple of both the VQ-VAE's level-{cfg.cond_level} "
            f"hop {hop} and the U-Net's stride {cfg.stride}."
        )


@dataclasses.dataclass
class Statistics:
    """What a fresh run measures on RESIDUAL_WINDOWS training windows before its first step."""

    residual_scale: float  # RMS of (clean − coarse) / envelope: the scale that gives the residual unit variance
    equalizer: torch.Tensor  # (1, 1, EQUALIZER_TAPS): the least-squares filter from coarse audio to its error


@torch.no_grad()
def measure_statistics(
    cfg: RefinerConfig, vqvae: VQVAE, windows: AudioWindows, device: torch.device, n_windows: int = RESIDUAL_WINDOWS
) -> Statistics:
    """The VQ-VAE's level-`cond_level` error on `n_windows` windows of the residual stream (the same on every rank)."""
    vqvae.to(device)
    pairs = []
    for first in range(0, n_windows, 8):
        clean = torch.stack([windows.window(i, RESIDUAL_STREAM) for i in range(first, min(first + 8, n_windows))])
        coarse, clean = make_training_pair(vqvae, clean.to(device), cfg.cond_level)  # (B, 1, T) each
        pairs.append((coarse.float().cpu(), clean.float().cpu()))
    coarse, clean = (torch.cat(side) for side in zip(*pairs))  # (n_windows, 1, T)
    scale = float(((clean - coarse) / envelope(coarse, cfg.envelope_window)).double().pow(2).mean().sqrt())
    if not scale > 0:
        raise UserError("The VQ-VAE reconstructs the training windows exactly (or they are silent); set refiner.residual_scale.")
    return Statistics(scale, matched_filter(coarse, clean, EQUALIZER_TAPS))


def stratified_times(batch: int, device: torch.device) -> torch.Tensor:
    """t (batch,) ascending, item i uniform in [i / batch, (i + 1) / batch): uniform marginals, fewer gaps."""
    return (torch.arange(batch, device=device) + torch.rand(batch, device=device)) / batch


class RefinerTask(AudioWindowTask):
    """The refiner on the shared loop: clean windows in, coarse versions made by the frozen VQ-VAE, its loss out."""

    kind = "refiner"
    section = "refiner"
    architecture = ARCHITECTURE

    def __init__(
        self, cfg: RefinerConfig, vqvae: VQVAE, manifest: Path, seed: int, world_size: int = 1,
        statistics: Statistics | None = None,
    ):
        self.cfg, self.vqvae, self.manifest, self.seed, self.statistics = cfg, vqvae, Path(manifest), seed, statistics
        self.window_length = cfg.segment_length
        self.vqvae_fingerprint = vqvae.fingerprint()
        per_rank = cfg.train.batch_size // world_size
        # the same on every rank: metric names must agree under DDP
        self.log_bands = cfg.detail and per_rank % NOISE_BANDS == 0
        if cfg.detail and not self.log_bands:
            log.info("refiner: %d windows per rank is not a multiple of %d; the loss per noise level is not logged", per_rank, NOISE_BANDS)

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def build_model(self) -> nn.Module:
        return Refiner(self.cfg, vqvae_fingerprint=self.vqvae_fingerprint)

    def start(self, model: nn.Module, env: distributed.DistEnv, init: Path | None) -> None:
        if init is not None:  # EMA weights where it has them
            load_state_checked(model, load_refiner(init, vqvae=self.vqvae_fingerprint).state_dict(), str(init))
        elif self.statistics is not None:  # the equalizer starts as the measured least-squares filter
            model.equalizer.weight.data.copy_(self.statistics.equalizer)

    def coarse(self, clean: torch.Tensor) -> torch.Tensor:
        """Clean (B, 1, T) → the VQ-VAE's reconstruction at cond_level (B, 1, T), on clean's device."""
        self.vqvae.to(clean.device)
        return make_training_pair(self.vqvae, clean, self.cfg.cond_level)[0]

    def loss(self, model: nn.Module, clean: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        coarse = self.coarse(clean)  # clean, coarse (B, 1, segment_length)
        t = stratified_times(clean.shape[0], clean.device)
        _, parts = model(coarse, clean, t, torch.randn_like(clean))  # `model` itself: DDP syncs in forward
        values = {"estimate_loss": parts["estimate_loss"].detach().mean()}
        if "detail_loss" in parts:
            detail = parts["detail_loss"].detach()  # (B,)
            values["detail_loss"] = detail.mean()
            if self.log_bands:
                for band, losses in enumerate(detail.view(NOISE_BANDS, -1)):  # t ascends: quarter by quarter
                    values[f"detail_loss_t{band / NOISE_BANDS:.2f}_{(band + 1) / NOISE_BANDS:.2f}"] = losses.mean()
        return parts["loss"], values

    @torch.no_grad()
    def log_media(self, model: nn.Module, writer: Any, step: int) -> None:
        clean = self.media_window().to(model.device)
        coarse = self.coarse(clean)
        model.eval()
        try:
            refined = refine(model, coarse, seed=self.seed)  # on the CPU
        finally:
            model.train()
        clean, coarse = clean.cpu(), coarse.cpu()
        sr = self.cfg.sample_rate
        for name, audio in (("original", clean), ("coarse", coarse), ("refined", refined)):
            audio = audio[0, 0].clamp(-1, 1)
            writer.add_audio(f"audio/{name}", audio, step, sample_rate=sr)
            writer.add_image(f"spectrogram/{name}", spectrogram_image(audio), step)
        for name, audio in (("coarse", coarse), ("refined", refined)):
            writer.add_scalar(f"media/mr_stft_distance_{name}", float(metrics.multi_resolution_stft_distance(clean, audio)), step)
            writer.add_scalar(f"media/log_mel_distance_{name}", float(metrics.log_mel_distance(clean, audio, sr)), step)


def train_refiner(recipe: RecipeConfig, run_dir: str | Path) -> TrainResult:
    """The stage as a function (the CLI and the tests call it); `distributed.init()` comes first on several ranks."""
    run = Run(run_dir)
    cfg = recipe.refiner
    vqvae_path = run.vqvae.checkpoint
    if not vqvae_path.is_file():
        raise UserError(
            f"No VQ-VAE at '{vqvae_path}'; the refiner learns to clean its audio, so train it first "
            f"(jukebox-lite train-vqvae --run {run.path} ...)."
        )
    vqvae = load_vqvae(vqvae_path)
    cfg = dataclasses.replace(cfg, sample_rate=vqvae.sample_rate)  # the refiner works at its VQ-VAE's rate
    check_vqvae(cfg, vqvae, vqvae_path)
    last = run.refiner.checkpoint
    state = load_checkpoint(last, "refiner") if last.exists() else None
    statistics = None
    if state is None:
        windows = AudioWindows(run.manifest, cfg.sample_rate, cfg.segment_length, recipe.seed)
        statistics = measure_statistics(cfg, vqvae, windows, distributed.current().device)
        log.info("refiner: the VQ-VAE's error measured on %d training windows (RMS of (original − decoded) / envelope "
                 "%.4f) and the equalizer set to its least-squares filter", RESIDUAL_WINDOWS, statistics.residual_scale)
    if cfg.residual_scale is None:
        scale = state["config"].get("residual_scale") if state is not None else statistics.residual_scale
        cfg = dataclasses.replace(cfg, residual_scale=scale)
        recipe = dataclasses.replace(recipe, refiner=cfg)
    task = RefinerTask(cfg, vqvae, run.manifest, recipe.seed, distributed.current().world_size, statistics)
    return train(task, cfg.train, run.refiner, seed=recipe.seed, recipe=recipe)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("seed", "refiner"))
    add_run_arguments(parser, "reads RUN/data and RUN/vqvae, writes RUN/refiner")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args)
    with distributed.launched(args.device):
        train_refiner(recipe, args.run)
    return 0
