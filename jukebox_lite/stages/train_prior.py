"""Prior stage: train the top prior (level 2) or an upsampler (level 1, 0) on RUN/codes → RUN/prior_level{L}.

    jukebox-lite train-prior --level 2 --config pipelines/demo.yaml --run runs/demo [prior_level2.train.steps=500 ...]

Each step draws random windows of n_ctx tokens from the training split of the codes (a pure function
of the recipe seed and the step, so a resumed run reads on exactly where it stopped, on any number
of ranks). The top prior sees each window's labels y = [total_length, offset, sample_length, artist,
genre, -1...] in samples; an upsampler also sees the aligned window of the level above. The loss is
the cross-entropy in nats per token; bits per token and token accuracy are logged beside it, and
every `train.media_every` steps a few hundred sampled tokens are decoded with the VQ-VAE to audio.

Checks before training, each one clear sentence:
- the codes must come from RUN/vqvae (weight fingerprint) and the folder must hold codes;
- the recipe must agree with the codes (upsampling ratio, durations); codebook size, hop length and
  sample rate are taken from the codes;
- n_genres / n_artists are model sizes the recipe sets: a corpus with more names is refused rather
  than silently resizing the model, so the saved config always describes the weights;
- a checkpoint already in RUN/prior_level{L} must be of that level, of the recipe's architecture and
  trained on codes of the same VQ-VAE (the shared loop's `check_compatible`).

The genre and artist names (the corpus vocabulary) and the VQ-VAE fingerprint are stored in the
checkpoint (`genres`, `artists`, `vqvae_fingerprint`), so the sample stage can turn GENRE=deep_house
into an id (`PriorVocabulary`). A resumed run keeps its ids and appends names new to the corpus.

LR: warm-up, then constant; annealing decays it linearly to zero from `train.anneal_start` over
`train.anneal_steps`, set from the start or switched on later by rerunning with
`prior_level2.train.anneal_start=STEP`; the run ends when the LR reaches zero (`jukebox_lite.algorithms.training`).
If RUN/prior_level{L}/last.pt was imported from OpenAI (`import-jukebox`, step 0) training starts
from its weights: fine-tuning. With `train.lora` the import moves to base.pt and stays frozen while
low-rank adapters train (`lora_base`); with `styles` the corpus's genres and artists get label rows
of their own after the imported ones (`LabelGrowth`); with `train.sharding: fsdp` the prior is
sharded over the ranks (the shared loop). `prior_levelN.checkpoint_layers: true` recomputes each transformer
layer in backward: far less activation memory for about a third more compute (the GPU recipes use it).
Codes are read in-process from memory maps (`train.workers` is unused).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from jukebox_lite.core import distributed
from jukebox_lite.core.atomic import file_sha256
from jukebox_lite.core.checkpoint import load_checkpoint, load_state_checked
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe
from jukebox_lite.algorithms.codes import CodesCorpus, CodesWindows
from jukebox_lite.core.config import PriorConfig, RecipeConfig, StylesConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.core.precision import autocast
from jukebox_lite.runs import Run, StageFolder
from jukebox_lite.algorithms.vocabulary import PriorVocabulary, imported_names, style_rows
from jukebox_lite.algorithms.sampling import sample_codes
from jukebox_lite.models.prior import Prior
from jukebox_lite.algorithms.training import Task, TrainResult, check_compatible, is_training_run, train
from jukebox_lite.models.checkpoints import adapted_base
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.nn.lora import has_adapters, merge_adapters

log = logging.getLogger(__name__)

MEDIA_TOKENS = 512  # tokens sampled (and decoded to audio) for each TensorBoard media summary
MEDIA_STREAM = 1  # random stream of the fixed media window, apart from the training windows'
EVAL_STREAMS = 1000  # validation windows come from stream (seed, 1000 + level): no training step has that number
# settings a checkpoint in RUN/prior_level{L} must share with the recipe: they shape the weights or their meaning
ARCHITECTURE = (
    "level", "n_ctx", "width", "depth", "heads", "attn_order", "blocks", "m_attn", "m_mlp", "bins",
    "merged_decoder", "hop_length", "labels",
)
LABEL_ARCHITECTURE = ("n_genres", "n_artists", "max_bow_genre_size")
TIMING_ARCHITECTURE = ("t_bins", "sample_rate", "min_duration", "max_duration")
UPSAMPLER_ARCHITECTURE = (
    "cond_down_t", "cond_stride_t", "cond_width", "cond_depth", "cond_m_conv", "cond_dilation_growth_rate",
    "cond_dilation_cycle", "cond_zero_out", "cond_res_scale", "cond_c_res",
)


def section_name(level: int) -> str:
    return f"prior_level{level}"


# ----------------------------------------------------------------------------------------------
# Checks: the recipe against the codes, and against a checkpoint already in the output folder


def check_codes(cfg: PriorConfig, corpus: CodesCorpus, vocab: PriorVocabulary, section: str) -> None:
    """One clear UserError where the recipe's prior cannot train on these codes."""
    level = cfg.level
    hop = corpus.hop_lengths[level]
    if cfg.is_upsampler:
        if level + 1 >= corpus.levels:
            raise UserError(f"The VQ-VAE has no level above {level}; train level {level} as the top prior (--level 2 section).")
        ratio = corpus.hop_lengths[level + 1] // hop
        if cfg.cond_downsample != ratio:
            raise UserError(
                f"{section}: cond_stride_t**cond_down_t is {cfg.cond_downsample} but level {level + 1} has {ratio}× fewer "
                f"tokens than level {level}; choose cond_stride_t and cond_down_t whose power is {ratio}."
            )
    if cfg.labels:
        for what, names, size in (("genres", vocab.genres, cfg.n_genres), ("artists", vocab.artists, cfg.n_artists)):
            if len(names) > size:
                raise UserError(
                    f"The codes hold {len(names)} {what} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) but "
                    f"{section}.n_{what} is {size}; set {section}.n_{what}={len(names)} or more."
                )
    if cfg.labels and not cfg.is_upsampler:
        train_files = [corpus.files[i] for i in corpus.split_files("train")]
        used = [f for f in train_files if f["levels"][level]["length"] >= cfg.n_ctx]
        durations = [f["samples"] / corpus.sample_rate for f in used]
        outside = [d for d in durations if not cfg.min_duration <= d < cfg.max_duration]
        if outside:
            raise UserError(
                f"The training files last {min(durations):.1f}-{max(durations):.1f} s, outside {section}'s timing range "
                f"[{cfg.min_duration}, {cfg.max_duration}) s; set {section}.min_duration and max_duration to cover them."
            )
    # a window must fit in some training file: the reader's own error says so now rather than at step 1
    corpus.windows(level, cfg.n_ctx, 1, np.random.default_rng(0), "train", with_upper=cfg.is_upsampler,
                   reference=cfg.character_tokens)


def architecture_fields(cfg: PriorConfig) -> tuple[str, ...]:
    fields = ARCHITECTURE
    if cfg.labels:
        fields += LABEL_ARCHITECTURE + (() if cfg.is_upsampler else TIMING_ARCHITECTURE)
    return fields + (UPSAMPLER_ARCHITECTURE if cfg.is_upsampler else ())


def check_character(cfg: PriorConfig, state: dict, path: Path) -> None:
    """A run resumed must have the recipe's track character (a checkpoint older than it has none). An
    imported prior is not checked: a fine-tune adds a new encoder to it."""
    theirs = {k: state["config"].get(k, 0) for k in ("character_tokens", "character_width")}
    if not theirs["character_tokens"] and not cfg.character_tokens:
        return
    if theirs != {"character_tokens": cfg.character_tokens, "character_width": cfg.character_width}:
        raise UserError(
            f"'{path}' was trained with character_tokens {theirs['character_tokens']} and character_width "
            f"{theirs['character_width']}, the recipe asks for {cfg.character_tokens} and {cfg.character_width}; set "
            f"{section_name(cfg.level)}'s to the checkpoint's to resume it, or move it away to train afresh."
        )


def check_level(cfg: PriorConfig, state: dict, path: Path) -> None:
    """A prior of another level in the output folder is named as such (the rest is `training.check_compatible`)."""
    theirs = state["config"].get("level")
    if theirs != cfg.level:
        raise UserError(
            f"'{path}' holds a level-{theirs} prior, not a level-{cfg.level} one; move it to "
            f"{path.parent.parent / section_name(theirs)} or away to train level {cfg.level} here."
        )


# ----------------------------------------------------------------------------------------------
# The task


class PriorTask(Task):
    """One level's prior on the shared loop: random code windows in, nats per token out."""

    kind = "prior"

    def __init__(
        self,
        cfg: PriorConfig,
        corpus: CodesCorpus,
        vqvae: VQVAE,
        vocab: PriorVocabulary,
        seed: int,
        base: Path | None = None,
        base_sha256: str | None = None,
        growth: LabelGrowth | None = None,
    ):
        """`base`, `base_sha256`: the imported prior a LoRA fine-tune (cfg.train.lora) adapts and its hash
        (`lora_base`); `growth`: the label rows a fine-tune adds to an imported prior's (cfg.styles)."""
        self.cfg, self.corpus, self.vqvae, self.vocab, self.seed = cfg, corpus, vqvae, vocab, seed
        self.base, self.base_sha256, self.growth = base, base_sha256, growth
        self.level = cfg.level
        self.section = section_name(cfg.level)
        # an import with fewer label rows than the recipe grows into it
        self.architecture = tuple(f for f in architecture_fields(cfg) if growth is None or f not in ("n_genres", "n_artists"))
        self.vqvae_fingerprint = corpus.fingerprint
        # corpus label ids → this prior's label ids (equal unless a resumed run's vocabulary came first)
        self.genre_ids = torch.tensor([vocab.genres.index(g) for g in corpus.genres] if cfg.labels else [], dtype=torch.long)
        self.artist_ids = torch.tensor([vocab.artists.index(a) for a in corpus.artists] if cfg.labels else [], dtype=torch.long)
        self._media_batch: dict[str, Any] | None = None

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def build_model(self) -> nn.Module:
        prior = Prior(self.cfg)
        if self.base is not None:  # LoRA: the frozen base, then the adapters
            self._load(prior, self.base)
            prior.add_adapters(self.cfg.train.lora)
        return prior

    def start(self, model: nn.Module, env: distributed.DistEnv, init: Path | None) -> None:
        if init is not None:  # e.g. an imported OpenAI prior
            self._load(model, init)

    def _load(self, model: Prior, path: Path) -> None:
        state = load_checkpoint(path, "prior")
        weights = state.get("ema") or state["model"]
        if self.growth is not None:
            weights = self.growth.apply(weights, model)
        if not any(k.startswith("character.") for k in weights):  # an import: the track-character encoder is new
            weights = {**{k: v for k, v in model.state_dict().items() if k.startswith("character.")}, **weights}
        load_state_checked(model, weights, str(path))

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        return list(model.prior.transformer._attn_mods)

    def checkpoint_extra(self) -> dict:
        extra = {"genres": self.vocab.genres, "artists": self.vocab.artists}
        if self.base is not None:  # the checkpoint holds what trains; this names the rest
            extra["base"] = {"file": self.base.name, "sha256": self.base_sha256}
        return extra

    def batch(self, windows: CodesWindows) -> dict[str, torch.Tensor | None]:
        """Windows → the model's inputs: tokens (B, n_ctx), upper (B, n_ctx / ratio) or None, labels or None,
        reference (B, character_tokens) or None."""
        labels = None
        if self.cfg.labels:
            labels = windows.labels(self.cfg.max_bow_genre_size)  # (B, 4 + G), corpus ids
            labels[:, 3] = self.artist_ids[windows.artist_ids]
            labels[:, 4] = self.genre_ids[windows.genre_ids]
        return {"tokens": windows.tokens, "upper": windows.upper, "labels": labels, "reference": windows.reference}

    def windows(self, generator: np.random.Generator, batch_size: int, split: str = "train") -> CodesWindows:
        return self.corpus.windows(self.level, self.cfg.n_ctx, batch_size, generator, split,
                                   with_upper=self.cfg.is_upsampler, reference=self.cfg.character_tokens)

    def batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[dict]:
        """Step s's global batch is drawn from (seed, level, s); each rank keeps its slice of it."""
        size = self.cfg.train.batch_size
        per_rank = size // world_size
        for step in range(start_step, 1 << 62):
            batch = self.batch(self.windows(np.random.default_rng([seed, self.level, step]), size))
            yield {k: None if v is None else v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Nats per token; in validation a track-character prior also reports its bits per token without the
        character (`bits_per_token_without_character`): what the condition is worth on held-out music."""
        _, metrics = model(batch["tokens"], batch["upper"], batch["labels"], batch["reference"])
        if batch["reference"] is not None and not model.training:
            _, without = model(batch["tokens"], batch["upper"], batch["labels"])
            metrics["bits_per_token_without_character"] = without["bits_per_token"]
        return metrics.pop("loss"), metrics

    def eval_batches(self, split: str, count: int, batch_size: int) -> list[dict]:
        """`count` fixed windows of `split`, batched like training's."""
        batch = self.batch(self.windows(np.random.default_rng([self.seed, EVAL_STREAMS + self.level]), count, split))
        return [
            {k: None if v is None else v[i : i + batch_size] for k, v in batch.items()} for i in range(0, count, batch_size)
        ]

    # -- media

    def media_batch(self) -> dict[str, Any]:
        """One fixed window, cut to MEDIA_TOKENS, from the validation split when it has a long enough file."""
        if self._media_batch is None:
            generator = np.random.default_rng([self.seed, self.level, MEDIA_STREAM])
            try:
                windows = self.windows(generator, 1, "valid")
            except UserError:
                windows = self.windows(generator, 1)
            batch = self.batch(windows)
            length = min(MEDIA_TOKENS, self.cfg.n_ctx) // self.cfg.cond_downsample * self.cfg.cond_downsample
            if self.cfg.is_upsampler:
                batch["upper"] = batch["upper"][:, : length // self.cfg.cond_downsample]
            batch["tokens"] = batch["tokens"][:, :length]
            self._media_batch = batch
        return self._media_batch

    @torch.no_grad()
    def log_media(self, model: nn.Module, writer: Any, step: int) -> None:
        batch = self.media_batch()
        device = model.device
        self.vqvae.to(device)
        tokens = batch["tokens"].to(device)
        # under LoRA a merged copy samples (the fused step has no adapters): twice the model's memory meanwhile,
        # so set train.media_every=0 where the model fills the GPU
        sampler = merge_adapters(copy.deepcopy(model)) if has_adapters(model) else model
        model.eval()
        sampler.eval()
        try:
            generator = torch.Generator(device).manual_seed(self.seed)
            with autocast(device, self.cfg.train.precision):
                # a track-character prior samples with the character of the media window's own reference part
                character = None if batch["reference"] is None else sampler.describe(batch["reference"].to(device))
                sampled = sample_codes(
                    sampler, 1, tokens.shape[1], labels=batch["labels"], upper_codes=batch["upper"], generator=generator,
                    character=character,
                )  # (1, length)
        finally:
            model.train()
        sr = self.corpus.sample_rate
        for name, codes in (("sample", sampled), ("corpus", tokens)):
            levels: list[torch.Tensor | None] = [None] * self.vqvae.levels
            levels[self.level] = codes
            audio = self.vqvae.decode(levels, self.level)[0, 0].clamp(-1, 1).cpu()
            writer.add_audio(f"audio/{name}", audio, step, sample_rate=sr)


# ----------------------------------------------------------------------------------------------
# The stage


def train_prior(recipe: RecipeConfig, run_dir: str | Path, level: int) -> TrainResult:
    """The stage as a function (the CLI and the tests call it); `distributed.init()` comes first on several ranks."""
    if level not in (0, 1, 2):
        raise UserError(f"--level is {level}; use 2 (top prior), 1 or 0 (upsamplers).")
    run = Run(run_dir)
    section = section_name(level)
    out = run.prior(level)
    vqvae = run.load_vqvae()
    fingerprint = vqvae.fingerprint()
    corpus = run.codes_corpus(fingerprint)
    if level >= corpus.levels:
        raise UserError(f"The codes in '{corpus.dir}' have levels 0..{corpus.levels - 1}; there is no level {level}.")
    # codebook size, hop and sample rate are the codes' own
    cfg = dataclasses.replace(
        getattr(recipe, section), bins=corpus.bins, hop_length=corpus.hop_lengths[level], sample_rate=corpus.sample_rate
    )
    base, base_sha256 = lora_base(cfg, out) if cfg.train.lora is not None else (None, None)
    vocab = PriorVocabulary(list(corpus.genres), list(corpus.artists))
    named_by = out.checkpoint if out.has_checkpoint() else base
    growth = None
    if named_by is not None:  # a resumed or fine-tuned prior keeps its label ids and appends new names
        state = load_checkpoint(named_by, "prior", mmap=True)  # names and config: its tensors are not read
        check_level(cfg, state, named_by)
        if is_training_run(state):
            check_character(cfg, state, named_by)
        vocab = PriorVocabulary.from_checkpoint(state)
        imported = base or (None if is_training_run(state) else named_by)  # the weights a fine-tune starts from
        if cfg.styles is not None and imported is not None:
            vocab, growth = style_growth(load_checkpoint(imported, "prior", mmap=True)["config"], vocab)
        vocab = vocab.extended(corpus.genres, corpus.artists)
        del state
    if cfg.styles is not None and named_by is None:
        log.warning("%s.styles: nothing was imported into %s, so there are no imported styles; the prior trains from scratch", section, out.path)
    check_codes(cfg, corpus, vocab, section)
    if growth is not None:
        growth = growth.resolved(cfg.styles, vocab)
    task = PriorTask(cfg, corpus, vqvae, vocab, recipe.seed, base=base, base_sha256=base_sha256, growth=growth)
    if base is not None:
        check_compatible(task, load_checkpoint(base, "prior", mmap=True), base)
    return train(task, cfg.train, out, seed=recipe.seed, recipe=recipe)


@dataclasses.dataclass
class LabelGrowth:
    """A fine-tune's new label rows: after the imported prior's `genres` and `artists` rows, one per new
    corpus name, each a copy of the imported row in `genre_sources` / `artist_sources` (StylesConfig)."""

    genres: int
    artists: int
    genre_sources: list[int] = dataclasses.field(default_factory=list)
    artist_sources: list[int] = dataclasses.field(default_factory=list)

    def resolved(self, styles: StylesConfig, vocab: PriorVocabulary) -> LabelGrowth:
        """The source rows of the names `vocab` holds after the imported ones."""
        def rows(sources: dict, names: list[str], imported: int, what: str) -> list[int]:
            return style_rows(sources, names[imported:], imported, what, styles.ids, styles.ids_version, styles.default)

        return dataclasses.replace(
            self, genre_sources=rows(styles.genres, vocab.genres, self.genres, "genre"),
            artist_sources=rows(styles.artists, vocab.artists, self.artists, "artist"),
        )

    def apply(self, weights: dict[str, torch.Tensor], model: Prior) -> dict[str, torch.Tensor]:
        """Imported weights with the label tables grown to the model's rows; rows past the corpus's names
        keep the model's own initialisation."""
        weights = dict(weights)
        own = model.state_dict()
        for key, imported, sources in (
            ("y_emb.bow_genre_emb.emb.weight", self.genres, self.genre_sources),
            ("y_emb.artist_emb.emb.weight", self.artists, self.artist_sources),
        ):
            old = weights[key]
            if old.shape[0] != imported or own[key].shape[0] == imported:
                continue
            grown = own[key].detach().clone()  # (rows, width)
            grown[:imported] = old
            grown[imported : imported + len(sources)] = old[sources]
            weights[key] = grown
        return weights


def style_growth(imported: dict, vocab: PriorVocabulary) -> tuple[PriorVocabulary, LabelGrowth]:
    """The vocabulary of a fine-tune from an imported prior (its config `imported`): every imported row keeps
    its id under its name, or openai_genre_<id> / openai_artist_<id> where it has none; the corpus's names
    come after them (their sources are resolved once the vocabulary is complete)."""
    rows = {"genre": int(imported["n_genres"]), "artist": int(imported["n_artists"])}
    names = {"genre": list(vocab.genres), "artist": list(vocab.artists)}
    for what, count in rows.items():
        names[what] = (names[what] + imported_names(what, count)[len(names[what]):])[:max(count, len(names[what]))]
    return PriorVocabulary(names["genre"], names["artist"]), LabelGrowth(rows["genre"], rows["artist"])


def lora_base(cfg: PriorConfig, out: StageFolder) -> tuple[Path, str]:
    """The imported prior a LoRA fine-tune adapts, RUN/prior_levelL/base.pt, and its SHA-256. An import
    still at last.pt moves there first (nothing is lost: the adapters' checkpoints take last.pt); a LoRA
    run already in the folder must be adapting that very file with the recipe's adapters. On several
    ranks rank 0 alone looks, moves and hashes (a 5B base is gigabytes); the others learn the outcome."""
    outcome = None
    if distributed.current().is_main:
        try:
            outcome = ("sha256", _prepare_lora_base(cfg, out))
        except UserError as e:
            outcome = ("problem", str(e))
    kind, value = distributed.broadcast_object(outcome)
    if kind == "problem":
        raise UserError(value)
    return out.base, value


def _prepare_lora_base(cfg: PriorConfig, out: StageFolder) -> str:
    """lora_base on one rank; returns the base's SHA-256."""
    section = section_name(cfg.level)
    if out.has_checkpoint():
        state = load_checkpoint(out.checkpoint, "prior", mmap=True)
        if not is_training_run(state):  # an import: it becomes the base
            if out.base.exists():
                raise UserError(
                    f"'{out.path}' holds both an imported last.pt and a LoRA base.pt; move one of them away."
                )
            check_level(cfg, state, out.checkpoint)
            os.replace(out.checkpoint, out.base)
            log.info("%s: LoRA fine-tune: the imported prior is kept frozen in %s", section, out.base)
        elif "base" not in state:
            raise UserError(
                f"'{out.checkpoint}' holds a run that trains every weight; {section}.train.lora adapts an imported "
                "prior: remove the lora setting to resume it, or move the folder away and import a prior."
            )
        else:
            adapted_base(state, out.checkpoint)  # the base is there and unchanged: its hash is the recorded one
            trained_with = state["config"].get("train", {}).get("lora")
            if trained_with != dataclasses.asdict(cfg.train.lora):
                raise UserError(
                    f"'{out.checkpoint}' was trained with the adapters {trained_with}, the recipe asks for "
                    f"{dataclasses.asdict(cfg.train.lora)}; set {section}.train.lora back to resume, or move last.pt away."
                )
            return state["base"]["sha256"]
    if not out.base.is_file():
        raise UserError(
            f"{section}.train.lora fine-tunes an imported prior, and '{out.path}' has none; import one first "
            f"(jukebox-lite import-jukebox --prior-level-{cfg.level} FILE) or remove the lora setting to train from scratch."
        )
    return file_sha256(out.base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=None)  # seed and prior_level<L>
    parser.add_argument(
        "--level", required=True, type=int, choices=(2, 1, 0),
        help="2: the top prior (genre, artist, timing); 1 or 0: the upsampler of that level",
    )
    add_run_arguments(parser, "reads RUN/codes and RUN/vqvae, writes RUN/prior_level<L>")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args, reads=("seed", section_name(args.level)))
    with distributed.launched(args.device):
        train_prior(recipe, args.run, args.level)
    return 0
