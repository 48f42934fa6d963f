"""Training data from the data stage's corpus (RUN/data): random windows of audio, batched per step.

Window i is a pure function of (seed, stream, i), and step s's global batch is windows s·B … s·B + B − 1,
of which rank r reads its own equal slice (`StepSampler`). So the data a run sees depends on the
step alone: a resumed run reads on exactly where it stopped, and N ranks together read the same
windows as one process with the same global batch. Files are read with a seek and a partial read,
never whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from jukebox_lite.core.atomic import read_jsonl
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.losses import compute_bandwidth
from jukebox_lite.algorithms.training import Task

log = logging.getLogger(__name__)

# independent random streams of windows over the same files
TRAIN_STREAM, BANDWIDTH_STREAM, MEDIA_STREAM, RESIDUAL_STREAM, EVAL_STREAM = 0, 1, 2, 3, 4


# what every line of RUN/data/manifest.jsonl holds (the data stage writes more), and its types
MANIFEST_FIELDS = {"id": str, "path": str, "source": str, "sha256": str, "duration": (int, float), "labels": dict, "split": str}


def read_manifest(manifest: Path, split: str | None = None) -> list[dict]:
    """The manifest rows (of one split, "train" / "valid", or all), each checked to hold MANIFEST_FIELDS;
    a missing manifest or a damaged line is a UserError naming it."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise UserError(f"'{manifest}' does not exist; run the data stage first (jukebox-lite prepare --run RUN ...).")
    rows = read_jsonl(manifest)
    for number, row in enumerate(rows, start=1):
        wrong = [k for k, kind in MANIFEST_FIELDS.items() if not isinstance(row.get(k), kind)]
        if wrong:
            raise UserError(
                f"'{manifest}' entry {number} lacks a valid {', '.join(wrong)}; restore the file, or delete that "
                "line and rerun the data stage to redo its file."
            )
    return rows if split is None else [row for row in rows if row["split"] == split]


class AudioWindows(Dataset):
    """Random mono windows of `length` samples from one split of the corpus: item i → float32 (1, length).

    Every possible window is equally likely (a file is picked in proportion to the windows it
    holds). Files shorter than a window are skipped with a warning; a split with no usable file is
    a UserError, as is a file at another sample rate than the model's.
    """

    def __init__(self, manifest: Path, sample_rate: int, length: int, seed: int, split: str = "train"):
        self.length, self.seed = length, seed
        data_dir = Path(manifest).parent  # the manifest names its files relative to its own folder
        rows = read_manifest(manifest, split)
        self.paths: list[Path] = []
        frames: list[int] = []
        too_short: list[str] = []
        for row in rows:
            if row.get("sample_rate") != sample_rate:
                raise UserError(
                    f"'{data_dir}' holds {row.get('sample_rate')} Hz audio but the model runs at {sample_rate} Hz; "
                    "set the model's sample_rate to the data's or prepare the data again at that rate."
                )
            path = data_dir / row["path"]
            try:
                n = sf.info(str(path)).frames
            except (RuntimeError, OSError):  # libsndfile errors are RuntimeErrors
                raise UserError(f"Corpus file '{path}' is missing or unreadable; run the data stage again to rebuild it.") from None
            if n < length:
                too_short.append(row["path"])
                continue
            self.paths.append(path)
            frames.append(n)
        if too_short:
            log.warning(
                "skipping %d %s file(s) shorter than one window of %d samples (e.g. %s)",
                len(too_short), split, length, too_short[0],
            )
        if not self.paths:
            what = f"no {split} files" if not rows else f"no {split} file is at least {length} samples long"
            raise UserError(
                f"The corpus in '{data_dir}' has {what}; add more audio, or lower the window length (sample_length)."
            )
        # window positions per file, cumulated: a uniform draw over their sum picks file and offset together
        self.cumulative = np.cumsum([n - length + 1 for n in frames])

    def window(self, index: int, stream: int = TRAIN_STREAM) -> torch.Tensor:
        """Window `index` of random stream `stream`: float32 (1, length)."""
        rng = np.random.default_rng([self.seed, stream, index])
        position = int(rng.integers(self.cumulative[-1]))
        file = int(np.searchsorted(self.cumulative, position, side="right"))
        offset = position - (int(self.cumulative[file - 1]) if file else 0)
        path = self.paths[file]
        with sf.SoundFile(str(path)) as f:
            f.seek(offset)
            audio = f.read(self.length, dtype="float32", always_2d=True)  # (length, channels)
        if audio.shape[0] != self.length:
            raise UserError(f"Corpus file '{path}' is truncated; run the data stage again to rebuild it.")
        return torch.from_numpy(audio.mean(axis=1))[None]  # (1, length)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.window(index, TRAIN_STREAM)


class StepSampler(Sampler[int]):
    """Dataset indices of this rank's share of every step's global batch, from `start_step` on, forever."""

    def __init__(self, batch_size: int, rank: int, world_size: int, start_step: int):
        self.per_rank = batch_size // world_size
        self.batch_size, self.rank, self.start_step = batch_size, rank, start_step

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            first = step * self.batch_size + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)
            step += 1


def step_batches(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, start_step: int, workers: int
) -> Iterator[torch.Tensor]:
    """Endless per-rank batches (batch_size / world_size items each) from step `start_step` on.

    The loader gets its own generator, so creating it draws nothing from the global RNG (a resumed
    run must see the same random numbers as an uninterrupted one).
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=StepSampler(batch_size, rank, world_size, start_step),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator(),
        persistent_workers=workers > 0,
    )
    return iter(loader)


def data_bandwidth(dataset: AudioWindows, n_windows: int, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """The corpus statistics that normalise the VQ-VAE losses, from `n_windows` windows of its own stream.

    Each rank reads its share; `compute_bandwidth` sums over ranks, so all get the same answer.
    """
    clips = (dataset.window(i, BANDWIDTH_STREAM)[0] for i in range(rank, n_windows, world_size))
    return compute_bandwidth(clips)


class AudioWindowTask(Task):
    """A `Task` that trains on windows of the data stage's audio: the VQ-VAE and the refiner.

    Subclasses set `cfg` (with `sample_rate` and `train`), `manifest` (the data stage's), `seed` and `window_length`.
    """

    cfg: Any
    manifest: Path
    seed: int
    window_length: int
    _media: torch.Tensor | None = None

    def windows(self, seed: int, split: str = "train") -> AudioWindows:
        return AudioWindows(self.manifest, self.cfg.sample_rate, self.window_length, seed, split)

    def batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[torch.Tensor]:
        train = self.cfg.train
        return step_batches(self.windows(seed), train.batch_size, rank, world_size, start_step, train.workers)

    def eval_batches(self, split: str, count: int, batch_size: int) -> list[torch.Tensor]:
        """`count` windows of the validation stream of `split`, in (batch_size, 1, window_length) batches."""
        dataset = self.windows(self.seed, split)
        items = [dataset.window(i, EVAL_STREAM) for i in range(count)]
        return [torch.stack(items[i : i + batch_size]) for i in range(0, count, batch_size)]

    def media_window(self) -> torch.Tensor:
        """One fixed window (1, 1, window_length), from the validation split when it has a long enough file."""
        if self._media is None:
            try:
                dataset = self.windows(self.seed, "valid")
            except UserError:
                dataset = self.windows(self.seed)
            self._media = dataset.window(0, MEDIA_STREAM)[None]
        return self._media
