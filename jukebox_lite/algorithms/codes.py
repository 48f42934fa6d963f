"""Codes stage: encode the corpus once into tokens at every level, and read them back for the priors.

    RUN/data/manifest.jsonl + RUN/data/audio/*.flac + RUN/vqvae/last.pt
        → RUN/codes/level{0,1,2}.bin   every file's tokens at that level, concatenated (uint16 when
                                        the codebook has at most 65536 entries), read as memory maps
          RUN/codes/index.json         per file: id, split, labels, length, offset + length per level;
                                        the VQ-VAE's rate, hops, bins and weight fingerprint
          RUN/codes/config.yaml        the resolved recipe

Each file is zero-padded to a multiple of the top hop, so level L holds exactly
hop_top / hop_L tokens per top-level token and an upsampler's window of the level above is a plain
slice. Long files are encoded in chunks with enough context on both sides that the kept middle
equals what the whole file would give: memory stays bounded whatever the track length.

The index is written last and is the commit point: a killed run leaves the previous codes or none,
never an index that points into half-written arrays. A rerun with the same VQ-VAE weights and the
same manifest does nothing; new weights or new files re-encode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from jukebox_lite.core import audio as audio_io
from jukebox_lite.core.atomic import atomic_path, remove_stale_temporaries
from jukebox_lite.core.errors import UserError
from jukebox_lite.core.precision import autocast
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.models.checkpoints import load_vqvae

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_VERSION = 1
UNKNOWN_LABEL = "unknown"  # vocabulary entry for a file without a genre or artist label


# ----------------------------------------------------------------------------------------------
# The VQ-VAE side: fingerprint, receptive field, chunked encoding


# ----------------------------------------------------------------------------------------------
# Writing the codes


def token_dtype(bins: int) -> np.dtype:
    return np.dtype(np.uint16) if bins <= 65536 else np.dtype(np.int32)


def _label_vocabulary(rows: Sequence[dict], key: str) -> list[str]:
    return sorted({(row.get("labels") or {}).get(key) or UNKNOWN_LABEL for row in rows})


def _read_index(codes_dir: Path) -> dict | None:
    path = codes_dir / INDEX_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _is_current(index: dict | None, codes_dir: Path, fingerprint: str, manifest: list[dict]) -> str | None:
    """None when the codes on disk are those this run would write, else the reason to re-encode."""
    if index is None:
        return "no codes yet"
    if index.get("vqvae", {}).get("fingerprint") != fingerprint:
        return "the VQ-VAE changed"
    if [(f["id"], f.get("sha256")) for f in index.get("files", [])] != [(r["id"], r.get("sha256")) for r in manifest]:
        return "the manifest changed"
    itemsize = np.dtype(index["dtype"]).itemsize
    for level in index["levels"]:
        path = codes_dir / level["file"]
        if not path.is_file() or path.stat().st_size != level["tokens"] * itemsize:
            return f"{level['file']} is missing or incomplete"
    return None


def encode_corpus(
    manifest: list[dict], data_dir: Path, model: VQVAE, codes_dir: Path, chunk_seconds: float = 10.0, batch_size: int = 4
) -> Path:
    """Encode every manifest row's file (relative to `data_dir`) with `model` into `codes_dir`; returns the index path."""
    device = next(model.parameters()).device
    fingerprint = model.fingerprint()
    reason = _is_current(_read_index(codes_dir), codes_dir, fingerprint, manifest)
    if reason is None:
        log.info("codes in %s are up to date (VQ-VAE %s, %d files)", codes_dir, fingerprint, len(manifest))
        return codes_dir / INDEX_NAME
    log.info("encoding %d files into %s on %s (%s)", len(manifest), codes_dir, device.type, reason)

    codes_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(codes_dir)
    cfg = model.config
    dtype = token_dtype(cfg.l_bins)
    chunk_samples = max(1, round(chunk_seconds * cfg.sample_rate))
    genres, artists = _label_vocabulary(manifest, "genre"), _label_vocabulary(manifest, "artist")
    files, totals = [], [0] * model.levels
    names = [f"level{level}.bin" for level in range(model.levels)]
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(codes_dir / name)) for name in names]
        outs = [stack.enter_context(open(tmp, "wb")) for tmp in tmps]
        for row in tqdm(manifest, desc="encode", unit="file"):
            waveform, samples = _load_for_vqvae(data_dir / row["path"], cfg.sample_rate)
            with autocast(device):
                codes = model.encode_long(waveform, chunk_samples, batch_size)
            entry = {
                "id": row["id"],
                "sha256": row.get("sha256"),
                "split": row.get("split", "train"),
                "labels": row.get("labels") or {},
                "duration": samples / cfg.sample_rate,
                "samples": samples,
                "levels": [],
            }
            for level, (out, tokens) in enumerate(zip(outs, codes)):
                out.write(tokens.numpy().astype(dtype).tobytes())
                entry["levels"].append({"offset": totals[level], "length": int(tokens.numel())})
                totals[level] += int(tokens.numel())
            files.append(entry)
        for out in outs:
            out.close()
        # From here the arrays are renamed into place: drop the old index first, so no index ever
        # describes arrays it was not written with (a kill in between leaves no codes, and a rerun).
        (codes_dir / INDEX_NAME).unlink(missing_ok=True)

    index = {
        "format_version": INDEX_VERSION,
        "vqvae": {
            "fingerprint": fingerprint,
            "sample_rate": cfg.sample_rate,
            "hop_lengths": list(model.hop_lengths),
            "bins": cfg.l_bins,
        },
        "dtype": dtype.name,
        "levels": [
            {"file": name, "hop_length": hop, "tokens": total}
            for name, hop, total in zip(names, model.hop_lengths, totals)
        ],
        "genres": genres,
        "artists": artists,
        "files": files,
    }
    with atomic_path(codes_dir / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    seconds = sum(f["duration"] for f in files)
    log.info(
        "wrote %s tokens per level for %.2f h of audio to %s",
        " / ".join(str(t) for t in totals), seconds / 3600, codes_dir,
    )
    return codes_dir / INDEX_NAME


def _load_for_vqvae(path: Path, sample_rate: int) -> tuple[torch.Tensor, int]:
    """A corpus file → mono float32 (time,) at the VQ-VAE's rate, and its length in samples."""
    try:
        audio, sr = audio_io.load_audio(path)
    except audio_io.AudioError as e:
        raise UserError(f"Corpus file '{path}' cannot be read ({e}); rerun the data stage to rebuild it.") from None
    mono = audio_io.resample(audio_io.to_mono(audio), sr, sample_rate)[0]
    return torch.from_numpy(np.ascontiguousarray(mono)), int(mono.shape[0])


# ----------------------------------------------------------------------------------------------
# Reading the codes (the priors' side)


@dataclasses.dataclass
class CodesWindows:
    """A batch of training windows drawn from the corpus at one level.

    tokens (B, n_ctx) and, for upsamplers, upper (B, n_ctx / ratio): the same stretch of audio at the
    level above. Offsets and lengths are in samples at the VQ-VAE's rate, as the prior's labels want.
    """

    level: int
    tokens: torch.Tensor  # (B, n_ctx) int64
    upper: torch.Tensor | None  # (B, n_ctx / ratio) int64, or None
    file_ids: list[str]
    genres: list[str]
    artists: list[str]
    genre_ids: torch.Tensor  # (B,) index into CodesCorpus.genres
    artist_ids: torch.Tensor  # (B,) index into CodesCorpus.artists
    total_length: torch.Tensor  # (B,) samples in the whole file
    offset: torch.Tensor  # (B,) samples before the window
    sample_length: int  # samples a window covers
    # with `reference`: R tokens of another part of the same file, disjoint from the window, and where they start
    reference: torch.Tensor | None = None  # (B, R) int64
    reference_offset: torch.Tensor | None = None  # (B,) samples

    def labels(self, max_bow_genre_size: int = 1) -> torch.Tensor:
        """The prior's label rows [total_length, offset, sample_length, artist, genre, -1...] (B, 4 + G)."""
        batch = self.tokens.shape[0]
        genres = torch.full((batch, max_bow_genre_size), -1, dtype=torch.long)
        genres[:, 0] = self.genre_ids
        head = torch.stack(
            [self.total_length, self.offset, torch.full((batch,), self.sample_length), self.artist_ids], dim=1
        )
        return torch.cat([head, genres], dim=1)


class CodesCorpus:
    """The codes stage's output, memory-mapped: `.level(L)`, `.files`, `.windows(...)`.

    Pass `vqvae_fingerprint` (see `vqvae_fingerprint`, or `check_vqvae`) to refuse codes made with
    another VQ-VAE than the one a prior will be decoded with.
    """

    def __init__(self, codes_dir: str | os.PathLike, vqvae_fingerprint: str | None = None):
        self.dir = Path(codes_dir)
        index = _read_index(self.dir)
        if index is None or not index.get("files"):
            raise UserError(f"'{self.dir}' holds no codes; run the codes stage (jukebox-lite encode) first.")
        self.index = index
        self.files: list[dict] = index["files"]
        self.fingerprint: str = index["vqvae"]["fingerprint"]
        self.sample_rate: int = index["vqvae"]["sample_rate"]
        self.hop_lengths: list[int] = index["vqvae"]["hop_lengths"]
        self.bins: int = index["vqvae"]["bins"]
        self.genres: list[str] = index["genres"]
        self.artists: list[str] = index["artists"]
        self.dtype = np.dtype(index["dtype"])
        self._maps: dict[int, np.ndarray] = {}
        if vqvae_fingerprint is not None:
            self.check_fingerprint(vqvae_fingerprint)

    @property
    def levels(self) -> int:
        return len(self.hop_lengths)

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise UserError(
                f"The codes in '{self.dir}' were made with another VQ-VAE (weights {self.fingerprint}, "
                f"not {fingerprint}); rerun the codes stage (jukebox-lite encode)."
            )

    def check_vqvae(self, vqvae: VQVAE | str | os.PathLike) -> None:
        """Refuse unless these codes were made with this VQ-VAE (a model, a run folder or a .pt)."""
        model = vqvae if isinstance(vqvae, VQVAE) else load_vqvae(vqvae)
        self.check_fingerprint(model.fingerprint())

    def level(self, level: int) -> np.ndarray:
        """All files' tokens at `level`, concatenated: a read-only memory map (tokens,)."""
        if not 0 <= level < self.levels:
            raise ValueError(f"level {level} does not exist; the codes have levels 0..{self.levels - 1}")
        if level not in self._maps:
            entry = self.index["levels"][level]
            path = self.dir / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["tokens"] * self.dtype.itemsize:
                raise UserError(f"'{path}' is missing or incomplete; rerun the codes stage (jukebox-lite encode).")
            self._maps[level] = np.memmap(path, dtype=self.dtype, mode="r", shape=(entry["tokens"],))
        return self._maps[level]

    def file_codes(self, file: int | str, level: int) -> np.ndarray:
        """One file's tokens at `level` (a view of the memory map), by position in `.files` or by id."""
        if isinstance(file, str):
            matches = [i for i, f in enumerate(self.files) if f["id"] == file]
            if not matches:
                raise KeyError(file)
            file = matches[0]
        span = self.files[file]["levels"][level]
        return self.level(level)[span["offset"] : span["offset"] + span["length"]]

    def split_files(self, split: str) -> list[int]:
        return [i for i, f in enumerate(self.files) if f["split"] == split]

    def windows(
        self,
        level: int,
        n_ctx: int,
        batch_size: int,
        generator: np.random.Generator,
        split: str = "train",
        with_upper: bool = False,
        reference: int = 0,
    ) -> CodesWindows:
        """`batch_size` random windows of n_ctx tokens at `level` from `split`, uniform over positions.

        With `with_upper` (upsamplers) each window starts on a token of the level above and comes with
        that level's aligned n_ctx / ratio tokens. With `reference` (a track-character prior) each window
        comes with `reference` tokens of the same file that do not overlap it, at a uniform position among
        those that do not. Files too short for a window (and its reference) are skipped.
        """
        ratio = 1
        if with_upper:
            if level + 1 >= self.levels:
                raise ValueError(f"level {level} is the top level; it has no level above to condition on")
            ratio = self.hop_lengths[level + 1] // self.hop_lengths[level]
            if n_ctx % ratio:
                raise UserError(f"n_ctx {n_ctx} must be a multiple of {ratio} for the level-{level} upsampler.")
        if reference and with_upper:
            raise ValueError("a reference part goes with top-level windows, not an upsampler's")
        candidates = self.split_files(split)
        if not candidates:
            raise UserError(f"The codes in '{self.dir}' have no '{split}' files; check the data stage's split.")
        # start positions a window may take in each file, on multiples of `ratio`
        lengths = np.array([self.files[i]["levels"][level]["length"] for i in candidates])
        every_start = np.maximum((lengths - n_ctx) // ratio + 1, 0)  # S per file
        starts = every_start
        if reference:  # only the starts that leave room for a reference before [0, S - R) or after [R, S) the window
            starts = np.where(every_start >= 2 * reference, every_start, 2 * np.maximum(every_start - reference, 0))
        hop = self.hop_lengths[level]
        if starts.sum() == 0:
            what = f"A window of {n_ctx}" + (f" and a reference part of {reference}" if reference else "")
            raise UserError(
                f"{what} level-{level} tokens ({(n_ctx + reference) * hop / self.sample_rate:.1f} s) "
                f"{'are' if reference else 'is'} longer than every '{split}' file (the longest has {lengths.max()} tokens); "
                f"use a smaller n_ctx{' or character_tokens' if reference else ''} or longer audio."
            )
        picks = generator.choice(len(candidates), size=batch_size, p=starts / starts.sum())
        rows, uppers, offsets, chosen, references, reference_starts = [], [], [], [], [], []
        for pick in picks:
            file_index = candidates[pick]
            start = int(generator.integers(0, starts[pick])) * ratio
            if starts[pick] < every_start[pick]:  # two ranges of starts: [0, S - R), [R, S)
                room = int(starts[pick]) // 2
                start = start if start < room else reference + start - room
            rows.append(self.file_codes(file_index, level)[start : start + n_ctx])
            if reference:
                before = max(0, start - reference + 1)  # reference starts 0 .. start - reference
                after = max(0, int(lengths[pick]) - reference - (start + n_ctx) + 1)  # start + n_ctx .. length - reference
                r = int(generator.integers(0, before + after))
                r = r if r < before else start + n_ctx + (r - before)
                references.append(self.file_codes(file_index, level)[r : r + reference])
                reference_starts.append(r * hop)
            if with_upper:
                uppers.append(self.file_codes(file_index, level + 1)[start // ratio : (start + n_ctx) // ratio])
            offsets.append(start * hop)
            chosen.append(self.files[file_index])
        labels = [f["labels"] for f in chosen]
        genres = [lab.get("genre") or UNKNOWN_LABEL for lab in labels]
        artists = [lab.get("artist") or UNKNOWN_LABEL for lab in labels]
        return CodesWindows(
            level=level,
            tokens=torch.from_numpy(np.stack(rows).astype(np.int64)),
            upper=torch.from_numpy(np.stack(uppers).astype(np.int64)) if with_upper else None,
            file_ids=[f["id"] for f in chosen],
            genres=genres,
            artists=artists,
            genre_ids=torch.tensor([self.genres.index(g) for g in genres]),
            artist_ids=torch.tensor([self.artists.index(a) for a in artists]),
            total_length=torch.tensor([f["samples"] for f in chosen]),
            offset=torch.tensor(offsets),
            sample_length=n_ctx * hop,
            reference=torch.from_numpy(np.stack(references).astype(np.int64)) if reference else None,
            reference_offset=torch.tensor(reference_starts) if reference else None,
        )
