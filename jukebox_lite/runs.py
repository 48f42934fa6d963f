"""A run folder and everything in it: the one module that spells the run layout.

    RUN/data/        audio/*.flac, manifest.jsonl, rejected.jsonl, config.yaml   (prepare)
    RUN/vqvae/       last.pt, tb/, config.yaml, eval.json                         (train-vqvae, eval-vqvae)
    RUN/codes/       level{0,1,2}.bin, index.json, config.yaml                    (encode)
    RUN/prior_levelN/ last.pt, tb/, config.yaml                                   (train-prior --level N)
    RUN/refiner/     last.pt, tb/, config.yaml, eval.json                         (train-refiner, eval-refiner)
    RUN/samples/<name>/ level2.wav, level1.wav, level0.wav, refined.wav, meta.json, codes, copies.json
    RUN/review.html, RUN/ratings.csv                                              (review)

Stages ask a `Run` for paths and models; the algorithms below take plain paths and objects, so
they never need to know this layout. A model that is not there yet is one clear sentence naming the
stage to run first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from jukebox_lite.algorithms.codes import INDEX_NAME, CodesCorpus
from jukebox_lite.algorithms.vocabulary import PriorVocabulary
from jukebox_lite.algorithms.datasets import read_manifest
from jukebox_lite.core.checkpoint import CHECKPOINT_NAME, load_checkpoint
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.prior import Prior
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae, prior_from_checkpoint
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.models.vqvae import VQVAE

# the Make target (and stage) that writes each stage folder, for "run this first" messages
MAKE_TARGETS = {
    "data": "make data", "vqvae": "jukebox-lite train-vqvae, or make vqvae", "refiner": "jukebox-lite train-refiner, or make refiner",
}
PRIOR_TARGETS = {2: "jukebox-lite train-prior --level 2, or make prior", 1: "make upsamplers", 0: "make upsamplers"}


@dataclass(frozen=True)
class StageFolder:
    """One stage's output folder and the files every training stage keeps in it."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def best(self) -> Path:
        """The EMA weights of the step with the lowest validation loss (training writes it beside last.pt)."""
        return self.path / "best.pt"

    @property
    def base(self) -> Path:
        """The frozen weights a LoRA fine-tune adapts: the imported last.pt, moved here when the fine-tune starts."""
        return self.path / "base.pt"

    def weights(self, which: str) -> Path:
        """`which` is "last" (the checkpoint) or "best"."""
        return self.best if which == "best" else self.checkpoint

    @property
    def config(self) -> Path:
        """The resolved recipe the stage ran with."""
        return self.path / "config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def eval_report(self) -> Path:
        return self.path / "eval.json"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()


@dataclass(frozen=True)
class SampleFolder:
    """One generated track's folder: its audio at every stage, its top-level codes, metadata, copy report."""

    path: Path

    STAGES = ("level2", "level1", "level0", "refined")  # the audio files, in pipeline order

    def audio(self, stage: str) -> Path:
        return self.path / f"{stage}.wav"

    def most_finished(self) -> Path | None:
        """The audio of the last stage this sample reached (refined, else level0, level1, level2), or None."""
        return next((self.audio(s) for s in reversed(self.STAGES) if self.audio(s).is_file()), None)

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def codes(self) -> Path:
        """The top-level codes (int32 .npy) that the token copy detector compares with the corpus."""
        return self.path / "codes_level2.npy"

    @property
    def copies(self) -> Path:
        return self.path / "copies.json"


@dataclass
class LoadedPrior:
    """A prior as the sample stage needs it: the model, its label names, where it came from and its step."""

    prior: Prior
    vocab: PriorVocabulary
    path: Path
    step: int


class Run:
    """`Run(path)`: every stage's folder and file in a run, and its models loaded with clear errors."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- folders and files ------------------------------------------------------------------------

    @property
    def data(self) -> StageFolder:
        return StageFolder(self.path / "data")

    @property
    def audio(self) -> Path:
        """The prepared corpus files; manifest rows name them relative to `data.path`."""
        return self.data.path / "audio"

    @property
    def manifest(self) -> Path:
        return self.data.path / "manifest.jsonl"

    @property
    def rejected(self) -> Path:
        return self.data.path / "rejected.jsonl"

    @property
    def vqvae(self) -> StageFolder:
        return StageFolder(self.path / "vqvae")

    @property
    def codes(self) -> StageFolder:
        return StageFolder(self.path / "codes")

    def prior(self, level: int) -> StageFolder:
        if level not in (0, 1, 2):
            raise UserError(f"There is no level-{level} prior; the levels are 2 (top), 1 and 0.")
        return StageFolder(self.path / f"prior_level{level}")

    @property
    def refiner(self) -> StageFolder:
        return StageFolder(self.path / "refiner")

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def sample(self, name: str) -> SampleFolder:
        """The folder of sample `name`, made safe to be a file name inside RUN/samples."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "sample"
        return SampleFolder(self.samples / safe)

    def sample_folders(self) -> list[SampleFolder]:
        """Every sample folder, newest first."""
        if not self.samples.is_dir():
            return []
        folders = sorted((p for p in self.samples.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        return [SampleFolder(p) for p in folders]

    @property
    def audio_index(self) -> Path:
        """The audio copy detector's fingerprints of the corpus (check-copies)."""
        return self.path / "copies" / "audio_index.npz"

    def folder_written_by(self, command: str, level: int = 2) -> Path | None:
        """The folder `jukebox-lite <command>` writes here (locked while it runs: core/locks.py)."""
        return {
            "prepare": self.data.path, "import-jukebox": self.vqvae.path, "train-vqvae": self.vqvae.path,
            "eval-vqvae": self.vqvae.path, "encode": self.codes.path, "train-prior": self.prior(level).path,
            "train-refiner": self.refiner.path, "eval-refiner": self.refiner.path, "sample": self.samples,
            "check-copies": self.audio_index.parent,
        }.get(command)

    def training_folders(self) -> list[tuple[str, StageFolder]]:
        """(name, folder) of every stage that trains a model, in pipeline order."""
        return [("vqvae", self.vqvae), *((f"prior_level{n}", self.prior(n)) for n in (2, 1, 0)), ("refiner", self.refiner)]

    @property
    def review_page(self) -> Path:
        return self.path / "review.html"

    @property
    def ratings(self) -> Path:
        return self.path / "ratings.csv"

    # -- reading --------------------------------------------------------------------------------

    def manifest_rows(self, split: str | None = None) -> list[dict]:
        """The data stage's manifest rows (all, or one split's); [] before the data stage ran."""
        return read_manifest(self.manifest, split) if self.manifest.exists() else []

    def require_manifest(self) -> list[dict]:
        rows = self.manifest_rows()
        if not rows:
            raise UserError(f"'{self.manifest}' lists no audio; run the data stage ({MAKE_TARGETS['data']}) first.")
        return rows

    def load_vqvae(self, device: torch.device | str = "cpu") -> VQVAE:
        if not self.vqvae.has_checkpoint():
            raise UserError(
                f"No VQ-VAE at '{self.vqvae.checkpoint}' (the file does not exist); train it first "
                f"({MAKE_TARGETS['vqvae']}) or import OpenAI's."
            )
        return load_vqvae(self.vqvae.path, map_location=device)

    def has_codes(self) -> bool:
        """Whether the codes stage has written its index (RUN/codes/index.json)."""
        return (self.codes.path / INDEX_NAME).is_file()

    def codes_corpus(self, vqvae_fingerprint: str | None = None) -> CodesCorpus:
        return CodesCorpus(self.codes.path, vqvae_fingerprint)

    def load_prior(
        self, level: int, device: torch.device | str = "cpu", vqvae_fingerprint: str | None = None, which: str = "last"
    ) -> LoadedPrior:
        """The level's prior (EMA weights of last.pt, or best.pt) with its vocabulary; refused if trained
        on another VQ-VAE's codes."""
        folder = self.prior(level)
        if not folder.has_checkpoint():
            raise UserError(f"No level-{level} prior at '{folder.checkpoint}'; train it first ({PRIOR_TARGETS[level]}).")
        path = self._weights(folder, which)
        state = load_checkpoint(path, kind="prior")
        if vqvae_fingerprint is not None and state.get("vqvae_fingerprint") not in (None, vqvae_fingerprint):
            raise UserError(
                f"The level-{level} prior in '{folder.path}' was trained on codes of another VQ-VAE; "
                "retrain it on this run's codes."
            )
        prior = prior_from_checkpoint(state, str(path)).to(device)
        if prior.cfg.level != level:
            raise UserError(f"'{folder.path}' holds a level-{prior.cfg.level} prior, not level {level}.")
        return LoadedPrior(prior, PriorVocabulary.from_checkpoint(state), path, int(state.get("step", 0)))

    def load_refiner(
        self, device: torch.device | str = "cpu", vqvae_fingerprint: str | None = None, which: str = "last"
    ) -> Refiner:
        if not self.refiner.has_checkpoint():
            raise UserError(f"No refiner at '{self.refiner.checkpoint}'; train one first ({MAKE_TARGETS['refiner']}).")
        return load_refiner(self._weights(self.refiner, which), map_location=device, vqvae=vqvae_fingerprint)

    @staticmethod
    def _weights(folder: StageFolder, which: str) -> Path:
        path = folder.weights(which)
        if not path.is_file():
            raise UserError(
                f"No {path.name} in '{folder.path}': that stage was trained without validation (train.eval_every); "
                "sample with sample.checkpoint=last."
            )
        return path
