"""VQ-VAE stage: train the three-level VQ-VAE on the corpus in RUN/data → RUN/vqvae/{last.pt, tb/, config.yaml}.

    jukebox-lite train-vqvae --config pipelines/demo.yaml --run runs/demo [vqvae.train.steps=500 ...]

A fresh run first measures the corpus "bandwidth" (the statistics that normalise the losses) and
stores it in the model. A rerun resumes from RUN/vqvae/last.pt; a finished run does nothing.
Fine-tuning: `--init PATH` starts from another VQ-VAE checkpoint (ours, or OpenAI's converted by
`import-jukebox`), and an imported checkpoint already at RUN/vqvae/last.pt is used the same way. Its
codebook statistics are reset to a steady state around its codebooks, as OpenAI does when it
resumes a VQ-VAE, so the first batches of the new corpus neither wipe nor freeze them.
Runs on several ranks under torchrun or mpiexec (see `jukebox_lite.core.distributed`).
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
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe
from jukebox_lite.core.config import RecipeConfig, VQVAEConfig
from jukebox_lite.algorithms.datasets import AudioWindowTask, data_bandwidth
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.algorithms.training import TrainResult, train
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.models.checkpoints import load_vqvae

log = logging.getLogger(__name__)

BANDWIDTH_WINDOWS = 256  # windows the corpus statistics are measured on
# settings a checkpoint resumed or fine-tuned from must share with the recipe (the rest may change)
ARCHITECTURE = (
    "sample_rate", "levels", "downs_t", "strides_t", "emb_width", "l_bins", "width", "depth", "m_conv",
    "dilation_growth_rate", "dilation_cycle", "multipliers", "reverse_decoder_dilation",
)


def spectrogram_image(audio: torch.Tensor, n_fft: int = 1024, floor_db: float = 80.0) -> torch.Tensor:
    """Audio (time,) → log-magnitude spectrogram as a greyscale image (1, n_fft/2 + 1, frames) in [0, 1],
    low frequencies at the bottom, the top `floor_db` decibels shown."""
    n_fft = min(n_fft, 1 << (audio.shape[-1].bit_length() - 1))  # short windows: the largest power of two that fits
    window = torch.hann_window(n_fft, device=audio.device)
    magnitude = torch.stft(audio.float(), n_fft, n_fft // 4, window=window, return_complex=True).abs()
    db = 20 * torch.log10(magnitude.clamp(min=1e-5))  # (freq, frames)
    db = db.clamp(min=db.max() - floor_db)
    image = (db - db.min()) / (db.max() - db.min()).clamp(min=1e-5)
    return image.flip(0)[None]


class VQVAETask(AudioWindowTask):
    """The VQ-VAE as a `Task`: audio windows in, the model's summed level losses out."""

    kind = "vqvae"
    section = "vqvae"
    architecture = ARCHITECTURE

    def __init__(self, cfg: VQVAEConfig, manifest: Path, seed: int):
        self.cfg, self.manifest, self.seed = cfg, Path(manifest), seed
        self.window_length = cfg.sample_length

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def build_model(self) -> nn.Module:
        return VQVAE(self.cfg)

    def start(self, model: nn.Module, env: distributed.DistEnv, init: Path | None) -> None:
        if init is not None:
            self._load_init(model, init)
        # every rank measures its share of the windows; compute_bandwidth sums them over the ranks
        bandwidth = data_bandwidth(self.windows(self.seed), BANDWIDTH_WINDOWS, env.rank, env.world_size)
        try:
            model.set_bandwidth(bandwidth)
        except ValueError:
            raise UserError(f"The training audio listed in '{self.manifest}' is silent; check the data stage's output.") from None
        log.info("data bandwidth: %s", ", ".join(f"{k} {v:.4g}" for k, v in bandwidth.items()))

    def _load_init(self, model: VQVAE, init: Path) -> None:
        """Its weights (EMA preferred), with the codebook statistics reset around its codebooks."""
        model.load_state_dict(load_vqvae(init).state_dict())
        for level, block in enumerate(model.bottleneck.level_blocks):
            block.reset_ema(self.cfg.train.batch_size * self.cfg.sample_length // model.hop_lengths[level])
        log.info("vqvae: codebook statistics of %s reset", init)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, metrics = model(batch)  # batch (B, 1, sample_length)
        return metrics["loss"], metrics

    @torch.no_grad()
    def log_media(self, model: nn.Module, writer: Any, step: int) -> None:
        x = self.media_window().to(next(model.parameters()).device)
        model.eval()
        try:
            reconstructions, metrics = model(x)
        finally:
            model.train()
        sr = self.cfg.sample_rate
        writer.add_audio("audio/original", x[0, 0].clamp(-1, 1).cpu(), step, sample_rate=sr)
        writer.add_image("spectrogram/original", spectrogram_image(x[0, 0]).cpu(), step)
        for level, recon in enumerate(reconstructions):
            audio = recon[0, 0].clamp(-1, 1).cpu()
            writer.add_audio(f"audio/level{level}", audio, step, sample_rate=sr)
            writer.add_image(f"spectrogram/level{level}", spectrogram_image(audio), step)
            writer.add_scalar(f"media/spectral_convergence_l{level}", float(metrics[f"spectral_convergence_l{level}"]), step)


def train_vqvae(recipe: RecipeConfig, run_dir: str | Path, init: str | Path | None = None) -> TrainResult:
    """The stage as a function (the CLI and the tests call it); `distributed.init()` comes first on several ranks."""
    run = Run(run_dir)
    task = VQVAETask(recipe.vqvae, run.manifest, recipe.seed)
    return train(
        task, recipe.vqvae.train, run.vqvae, seed=recipe.seed, recipe=recipe, init=Path(init) if init is not None else None
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("seed", "vqvae"))
    add_run_arguments(parser, "reads RUN/data, writes RUN/vqvae")
    parser.add_argument(
        "--init", type=Path, metavar="PATH",
        help="VQ-VAE checkpoint to fine-tune from (e.g. OpenAI's, converted by import-jukebox)",
    )


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args)
    with distributed.launched(args.device):
        train_vqvae(recipe, args.run, args.init)
    return 0
