"""Typed recipe configs: YAML in `pipelines/` → nested dataclasses, strictly checked.

A recipe is one YAML file with a section per stage. Every key maps to a dataclass field; an unknown
key, a value of the wrong type, or a bad `key=value` override is a `UserError` naming the key. The
resolved config (recipe + overrides) is saved beside each stage's outputs so a run can be repeated.

Recipes compose: `extends: deep_house.yaml` reads that recipe first (relative to this one's folder)
and this file then says only what differs, section by section. Values that follow from an earlier
stage (`DERIVED`: sample rates, codebook size, hop lengths) are not written in a recipe at all;
`RecipeConfig` fills them in. Each command reads only some sections (`load_config(..., reads=)`), and
an override it would not read is refused, so `key=value` never silently does nothing.

Each stage adds its own section dataclass here, so one file shows everything a recipe can set.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.errors import UserError

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3", "m4a")
SEPARATION_BACKENDS = ("torch", "spleeter-cli", "none")
PRECISIONS = ("auto", "bf16", "float32")  # train.precision: see core.precision


@dataclass
class SeparationConfig:
    """Vocal removal with Spleeter's 2-stem model; the accompaniment stem is kept."""

    backend: str = "torch"  # torch (our port, in-process) | spleeter-cli (official, own env) | none
    device: str = "auto"  # auto | cpu | cuda
    segment_seconds: float = 30.0  # audio is separated in overlapping segments to bound memory
    overlap_seconds: float = 2.0
    batch_size: int = 4  # segments per forward pass
    spleeter_command: str = "spleeter"  # executable of the official CLI, for backend spleeter-cli
    # Above 11 kHz Spleeter's U-Nets see nothing. "zeros" (official 2stems) silences that band in both stems;
    # "average" gives it the mean of the band's masks, which keeps the hats and air a music model needs.
    mask_extension: str = "average"

    def validate(self) -> None:
        if self.backend not in SEPARATION_BACKENDS:
            raise UserError(
                f"separation.backend is '{self.backend}'; choose one of {', '.join(SEPARATION_BACKENDS)}."
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"separation.device is '{self.device}'; choose auto, cpu or cuda.")
        if not 0 <= self.overlap_seconds < self.segment_seconds / 2:
            raise UserError("separation.overlap_seconds must be at least 0 and under half of segment_seconds.")
        if self.batch_size < 1:
            raise UserError("separation.batch_size must be at least 1.")
        if self.mask_extension not in ("zeros", "average"):
            raise UserError(f"separation.mask_extension is '{self.mask_extension}'; choose zeros or average.")


@dataclass
class DataConfig:
    """The data stage: decode, separate, downmix, resample, normalise, trim, label, split."""

    sample_rate: int = 44100
    extensions: list[str] = field(default_factory=lambda: list(AUDIO_EXTENSIONS))
    min_seconds: float = 12.0  # a file shorter than this (after trimming) cannot fill a training window
    # a longer source is rejected before it is decoded (header) or as decoding passes this (streams):
    # one hour of 44.1 kHz stereo is 1.3 GB of float32 per worker. Split longer mixes first
    max_seconds: float = 3600.0
    loudness_lufs: float = -16.0  # integrated loudness (ITU-R BS.1770) every file is normalised to
    peak_dbfs: float = -1.0  # after loudness normalisation the peak is limited to this level
    silence_dbfs: float = -50.0  # leading/trailing audio quieter than this is trimmed; all of it → "silent"
    valid_fraction: float = 0.1  # share of files, chosen by content hash, held out for validation
    workers: int = 2  # parallel decode/separate processes
    separation: SeparationConfig = field(default_factory=SeparationConfig)

    def validate(self) -> None:
        if not 8000 <= self.sample_rate <= 192000:
            raise UserError(f"data.sample_rate is {self.sample_rate}; use a rate between 8000 and 192000 Hz.")
        unknown = sorted(set(self.extensions) - set(AUDIO_EXTENSIONS))
        if unknown:
            raise UserError(
                f"data.extensions has {', '.join(unknown)}; supported are {', '.join(AUDIO_EXTENSIONS)}."
            )
        if self.min_seconds <= 0:
            raise UserError("data.min_seconds must be positive.")
        if not self.min_seconds <= self.max_seconds < math.inf:
            raise UserError(f"data.max_seconds is {self.max_seconds:g}; it must be finite and at least data.min_seconds.")
        if not 0 <= self.valid_fraction < 1:
            raise UserError("data.valid_fraction must be in [0, 1).")
        if self.workers < 1:
            raise UserError("data.workers must be at least 1.")
        self.separation.validate()




@dataclass
class PlateauConfig:
    """Anneal when the validation loss flattens: no improvement by min_delta over `patience` evaluations."""

    patience: int = 5  # evaluations (train.eval_every steps apart) without an improvement of min_delta
    min_delta: float = 0.0  # the smallest drop of the validation loss that counts as progress

    def validate(self, section: str) -> None:
        if self.patience < 1 or not math.isfinite(self.min_delta) or self.min_delta < 0:
            raise UserError(f"{section}.anneal_on_plateau: patience must be at least 1 and min_delta a finite value ≥ 0.")


LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the projections of every transformer layer


@dataclass
class LoRAConfig:
    """Low-rank adapters (nn/lora.py) for fine-tuning an imported prior: its weights stay frozen in
    RUN/prior_levelL/base.pt and only the adapters (and what is chosen below) train."""

    rank: int = 16
    alpha: float = 32.0  # the adapters' output is scaled by alpha / rank
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # projections of every layer that get adapters
    train_embeddings: bool = True  # token, position and label embeddings train too (new genres and artists need it)
    train_norms: bool = False  # the layer norms' gains and biases

    def validate(self, section: str) -> None:
        if self.rank < 1 or not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UserError(f"{section}.lora: rank must be at least 1 and alpha a positive number.")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            raise UserError(f"{section}.lora.targets has {', '.join(unknown) or 'nothing'}; choose among {', '.join(LORA_TARGETS)}.")


@dataclass
class TrainingConfig:
    """A stage's run of the shared training loop (`jukebox_lite.algorithms.training`): optimiser, schedule, logging.

    Every stage that trains has one as its `train` section; each stage picks its own defaults. The LR
    schedule is a function of the step and of this config only, so changing it and resuming (e.g.
    switching annealing on) takes effect at once.
    """

    batch_size: int = 4  # windows per step over all ranks; each rank takes batch_size / world size
    # windows per forward pass on a rank (null: its whole share at once): the gradients of batch_size / world
    # size / micro_batch passes add up to one update, so the effective batch stays batch_size on any number of
    # GPUs with a fraction of the activation memory (exactly the same update for the priors; the VQ-VAE's
    # codebook EMA and the refiner's stratified noise levels see each pass in turn)
    micro_batch: int | None = None
    steps: int = 100000  # the run ends here, or earlier when annealing brings the LR to zero
    lr: float = 3e-4
    warmup_steps: int = 100  # LR rises linearly from 0 over these steps
    clip: float = 1.0  # gradient-norm clipping
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    beta1: float = 0.9
    beta2: float = 0.999
    anneal_start: int | None = None  # step where the LR starts its linear decay to zero (None: no annealing)
    anneal_steps: int = 10000  # steps of that decay
    ema: float = 0.999  # EMA decay of the weights kept for sampling (0 disables)
    max_bad_steps: int = 10  # stop after this many non-finite losses in a row (each is skipped)
    log_every: int = 10  # steps between TensorBoard scalars
    checkpoint_every: int = 1000  # steps between checkpoints (one is also written at the end)
    media_every: int = 1000  # steps between audio/spectrogram summaries (0: never)
    workers: int = 2  # data-loading processes per rank (0: read in the training process)
    # "auto": bf16 autocast on CUDA, float32 on CPU; "bf16": bf16 autocast on any device (worth it on CPUs
    # with AVX512-BF16 or AMX, docs/benchmarks.md); "float32": no autocast
    precision: str = "auto"
    # validation: every eval_every steps (and at the end) the EMA weights' loss on eval_windows fixed
    # windows of the valid split, and on as many of the train split (their difference: the gap)
    eval_every: int = 1000  # 0: never
    eval_windows: int = 64
    overfit_patience: int = 3  # warn when the gap has grown for this many evaluations in a row with no new best
    # start annealing (from the step it decides) when the validation loss flattens; null: only by anneal_start
    anneal_on_plateau: PlateauConfig | None = None
    # fine-tune an imported prior through low-rank adapters (priors only); null: every weight trains
    lora: LoRAConfig | None = None
    # across ranks: "ddp" (each holds the whole model) or "fsdp" (priors only: parameters, gradients, AdamW
    # moments and EMA sharded over the ranks, each transformer layer gathered while it runs; checkpoints
    # sharded with torch.distributed.checkpoint and resumable on any number of ranks)
    sharding: str = "ddp"

    def validate(self, section: str, adapted: bool = False) -> None:
        """`adapted`: the section trains a prior, whose transformer LoRA can adapt."""
        for name in ("batch_size", "steps", "max_bad_steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{section}.{name} is {getattr(self, name)}; it must be at least 1.")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise UserError(f"{section}.micro_batch is {self.micro_batch}; it must be between 1 and batch_size ({self.batch_size}).")
        if self.lr <= 0 or self.clip <= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise UserError(f"{section}: lr and clip must be positive, warmup_steps and weight_decay not negative.")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"{section}: beta1 and beta2 must be in [0, 1).")
        if self.anneal_start is not None and (self.anneal_start < 0 or self.anneal_steps < 1):
            raise UserError(f"{section}: anneal_start must be at least 0 and anneal_steps at least 1.")
        if not 0 <= self.ema < 1:
            raise UserError(f"{section}.ema must be in [0, 1).")
        if self.media_every < 0 or self.workers < 0:
            raise UserError(f"{section}: media_every and workers must not be negative.")
        if self.precision not in PRECISIONS:
            raise UserError(f"{section}.precision is '{self.precision}'; use one of {', '.join(PRECISIONS)}.")
        if self.eval_every < 0 or self.eval_windows < 1 or self.overfit_patience < 1:
            raise UserError(f"{section}: eval_every must not be negative, eval_windows and overfit_patience at least 1.")
        if self.anneal_on_plateau is not None:
            if not self.eval_every:
                raise UserError(f"{section}.anneal_on_plateau needs validation: set {section}.eval_every above 0.")
            self.anneal_on_plateau.validate(section)
        if self.sharding not in ("ddp", "fsdp"):
            raise UserError(f"{section}.sharding is '{self.sharding}'; choose ddp or fsdp.")
        if self.sharding == "fsdp":
            if not adapted:
                raise UserError(f"{section}.sharding: fsdp shards the priors' training only; use ddp here.")
            if self.lora is not None:
                raise UserError(f"{section}: LoRA trains few weights and fits one GPU; use sharding ddp with it.")
            if self.media_every:
                raise UserError(f"{section}.media_every: sampling media needs the whole model on one rank; set it to 0 under fsdp.")
        if self.lora is not None:
            if not adapted:
                raise UserError(f"{section}.lora: low-rank adapters fine-tune the priors' transformer only; remove it here.")
            self.lora.validate(section)


def _training_section(value: TrainingConfig | dict, prefix: str) -> TrainingConfig:
    """Accept the mapping `dataclasses.asdict` makes, so `Section(**asdict(section))` round-trips."""
    return section_from_dict(TrainingConfig, value, prefix) if isinstance(value, dict) else value


@dataclass
class VQVAEConfig:
    """The 3-level VQ-VAE; the defaults are OpenAI Jukebox's released 'vqvae' hparams (hop 8/32/128)."""

    sample_rate: int = 44100  # in a recipe: data.sample_rate (DERIVED)
    sample_length: int = 262144  # training window in samples; a multiple of the top level's hop
    levels: int = 3
    downs_t: list[int] = field(default_factory=lambda: [3, 2, 2])  # downsampling steps added per level
    strides_t: list[int] = field(default_factory=lambda: [2, 2, 2])  # stride of each step, per level
    emb_width: int = 64  # codebook vector size
    l_bins: int = 2048  # codebook size per level
    width: int = 32  # conv channels (times the level's multiplier)
    depth: int = 4  # residual units per resnet (times the level's multiplier)
    m_conv: float = 1.0  # residual units' hidden width as a multiple of width
    dilation_growth_rate: int = 3
    dilation_cycle: int | None = None
    multipliers: list[int] = field(default_factory=lambda: [2, 1, 1])  # per-level width and depth factor
    reverse_decoder_dilation: bool = True
    # run the convolutions as (1, k) 2-D ones on channels-last (B, C, 1, T) tensors: the same weights
    # and function, faster on CPU (docs/benchmarks.md); false runs plain 1-D convolutions
    channels_last: bool = True
    mu: float = 0.99  # EMA decay of the codebooks
    commit: float = 0.02  # commitment loss weight
    revival_threshold: float = 1.0  # codes whose EMA count falls below this are restarted
    l2_weight: float = 1.0
    linf_weight: float = 0.02  # weight of the mean of the top linf_k squared errors
    linf_k: int = 2048
    multispectral_weight: float = 1.0
    stft_n_fft: list[int] = field(default_factory=lambda: [2048, 1024, 512])
    stft_hop_length: list[int] = field(default_factory=lambda: [240, 120, 50])
    stft_window_size: list[int] = field(default_factory=lambda: [1200, 600, 240])
    # OpenAI trained it with Adam (no weight decay), lr 3e-4, no warm-up
    train: TrainingConfig = field(default_factory=lambda: TrainingConfig(weight_decay=0.0, warmup_steps=0))

    def __post_init__(self) -> None:
        self.train = _training_section(self.train, "vqvae.train.")

    @property
    def hop_lengths(self) -> list[int]:
        hops, hop = [], 1
        for down, stride in zip(self.downs_t, self.strides_t):
            hop *= stride**down
            hops.append(hop)
        return hops

    def validate(self) -> None:
        if self.levels < 1:
            raise UserError(f"vqvae.levels is {self.levels}; use at least 1.")
        for name in ("downs_t", "strides_t", "multipliers"):
            if len(getattr(self, name)) != self.levels:
                raise UserError(f"vqvae.{name} has {len(getattr(self, name))} entries; give one per level ({self.levels}).")
        if min(self.downs_t) < 1 or min(self.strides_t) < 2 or min(self.multipliers) < 1:
            raise UserError("vqvae.downs_t and vqvae.multipliers must be at least 1 and vqvae.strides_t at least 2.")
        if any(s % 2 for s in self.strides_t):
            raise UserError(f"vqvae.strides_t is {self.strides_t}; strides must be even so each step halves exactly.")
        for name in ("emb_width", "l_bins", "width", "depth", "dilation_growth_rate", "linf_k", "sample_rate"):
            if getattr(self, name) < 1:
                raise UserError(f"vqvae.{name} is {getattr(self, name)}; it must be at least 1.")
        if self.dilation_cycle is not None and self.dilation_cycle < 1:
            raise UserError("vqvae.dilation_cycle must be at least 1, or null for no cycle.")
        top_hop = self.hop_lengths[-1]
        if self.sample_length < top_hop or self.sample_length % top_hop:
            raise UserError(
                f"vqvae.sample_length is {self.sample_length}; use a positive multiple of the top hop {top_hop} "
                f"(e.g. {max(1, round(self.sample_length / top_hop)) * top_hop})."
            )
        if self.linf_k > self.sample_length:
            raise UserError(f"vqvae.linf_k is {self.linf_k}; it cannot exceed sample_length ({self.sample_length}).")
        if not 0.0 <= self.mu < 1.0:
            raise UserError(f"vqvae.mu is {self.mu}; the EMA decay must be in [0, 1).")
        if not len(self.stft_n_fft) == len(self.stft_hop_length) == len(self.stft_window_size):
            raise UserError("vqvae.stft_n_fft, stft_hop_length and stft_window_size must have the same length.")
        for n_fft, hop, window in zip(self.stft_n_fft, self.stft_hop_length, self.stft_window_size):
            if not 0 < hop <= window <= n_fft:
                raise UserError(
                    f"vqvae STFT setting n_fft {n_fft}, hop {hop}, window {window} is invalid; "
                    "need 0 < hop <= window <= n_fft."
                )
        self.train.validate("vqvae.train")


@dataclass
class StylesConfig:
    """Fine-tuning an imported labelled prior: the corpus's genres and artists get label rows of their own
    after the imported ones (which stay, named openai_genre_<id> / openai_artist_<id>, so the imported
    styles still sample), each started from the imported style vector named here."""

    genres: dict[str, int | str] = field(default_factory=dict)  # corpus genre → imported genre id, or its name in `ids`
    artists: dict[str, int | str] = field(default_factory=dict)  # corpus artist → imported artist id or name
    # folder of OpenAI's id files (jukebox/data/ids in a Jukebox checkout you have; none ship with
    # jukebox-lite) for styles named by name; v2 files describe the 5b priors and upsamplers
    ids: str | None = None
    ids_version: str = "v2"
    # the imported row a corpus name not listed above starts from (OpenAI's 0 is "unknown")
    default: int = 0


@dataclass
class PriorConfig:
    """One level's prior: a sparse transformer over that level's codes (OpenAI's names in comments).

    Level 2 (top) is conditioned on genre/artist and timing labels; levels 1 and 0 (upsamplers) on
    the codes of the level above through a conditioner (a dilated resnet that upsamples them 4×).
    Defaults are OpenAI's `small_prior` (top) and `small_upsampler` sizes (the two subclasses below).
    """

    level: int = 2  # 2 top; 1 and 0 upsamplers
    n_ctx: int = 8192  # tokens per window
    width: int = 1024  # prior_width
    depth: int = 48  # prior_depth
    heads: int = 1
    attn_order: int = 2  # 0 dense; 1 row/column; 2 row/column/previous row; 3 row/row-ends
    blocks: int = 64  # a window is `blocks` rows of n_ctx // blocks tokens
    m_attn: float = 0.25  # attention width = m_attn · width
    m_mlp: float = 1.0  # MLP width = m_mlp · width
    init_scale: float = 0.7
    bins: int = 2048  # codebook size; in a recipe: vqvae.l_bins (DERIVED)
    merged_decoder: bool = False  # OpenAI 5b top prior: untied output layer, conditioning not re-added
    # lyrics in the same transformer (OpenAI's 1b_lyrics: n_tokens 384, n_vocab 79, attn_order 12): the window is
    # [n_tokens lyric characters, n_ctx codes] over one vocabulary (characters, then codes shifted by n_vocab)
    n_tokens: int = 0
    n_vocab: int = 0
    hop_length: int = 128  # audio samples per token at this level: 8, 32, 128; in a recipe: the VQ-VAE's
    # labels (y_emb): start token = sum of genre embeddings + artist embedding
    labels: bool = True
    n_genres: int = 10  # y_bins[0]
    n_artists: int = 100  # y_bins[1]
    max_bow_genre_size: int = 1  # genre slots per label vector (-1 pads)
    # timing embeddings (top level only): total length, absolute and relative position, t_bins each
    t_bins: int = 64
    sample_rate: int = 44100  # in a recipe: data.sample_rate (DERIVED)
    min_duration: float = 60.0  # seconds; total_length must lie in [min_duration, max_duration)
    max_duration: float = 600.0
    # upsampler conditioner on the level above (conditioner_blocks.0)
    cond_down_t: int = 2  # ConvTranspose1d steps; upper codes are upsampled cond_stride_t**cond_down_t ×
    cond_stride_t: int = 2
    cond_width: int = 512
    cond_depth: int = 16
    cond_m_conv: float = 1.0
    cond_dilation_growth_rate: int = 3
    cond_dilation_cycle: int | None = 8
    cond_zero_out: bool = False
    cond_res_scale: bool = False
    cond_c_res: int = 1  # 1: resnet units kept in `blocks` (OpenAI's released key layout), recomputed in backward
    # training memory: recompute each transformer layer in backward (OpenAI's c_res), ~1/3 more compute
    checkpoint_layers: bool = False
    # track character (top level; ours, not OpenAI's): a learned vector describing a whole track, read by a
    # small encoder from `character_tokens` codes of another part of the same track and fed to every window
    # like the labels; 0: off. `character_drop`: the share of training windows that go without it;
    # `character_noise`: the std of Gaussian noise added to each (unit-RMS) vector in training, a bottleneck on
    # how much a vector can tell about its track (with few tracks, a precise one lets the prior replay them)
    character_tokens: int = 0
    character_width: int = 64
    character_drop: float = 0.2
    character_noise: float = 0.0
    # fine-tuning an imported prior: new label rows for the corpus's names (null: they take ids 0, 1, ...)
    styles: StylesConfig | None = None
    train: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        self.train = _training_section(self.train, "prior.train.")
        if isinstance(self.styles, dict):  # as `dataclasses.asdict` wrote it in a checkpoint
            self.styles = section_from_dict(StylesConfig, self.styles, "prior.styles.")

    @property
    def context(self) -> int:
        """Positions the transformer sees: the lyric prefix, if any, and the n_ctx codes."""
        return self.n_tokens + self.n_ctx

    @property
    def block_ctx(self) -> int:
        return self.context // self.blocks

    @property
    def prime_keys(self) -> int:
        """Keys of the lyric-prefix pattern (7): the prefix rounded up to a multiple of `blocks`, as OpenAI's
        code rounds it (448 for 1b_lyrics' 384 characters)."""
        return (self.n_tokens // self.blocks + 1) * self.blocks

    @property
    def is_upsampler(self) -> bool:
        return self.level < 2

    @property
    def cond_downsample(self) -> int:
        """Tokens of this level per token of the level above."""
        return self.cond_stride_t**self.cond_down_t

    def validate(self, section: str = "prior") -> None:
        if self.level not in (0, 1, 2):
            raise UserError(f"{section}.level is {self.level}; use 2 (top prior), 1 or 0 (upsamplers).")
        for name in ("n_ctx", "width", "depth", "heads", "blocks", "bins", "hop_length"):
            if getattr(self, name) < 1:
                raise UserError(f"{section}.{name} must be at least 1.")
        if self.attn_order not in (0, 1, 2, 3, 12):
            raise UserError(f"{section}.attn_order is {self.attn_order}; choose 0, 1, 2, 3 (or 12 with lyrics).")
        if (self.attn_order == 12) != (self.n_tokens > 0) or self.n_tokens < 0 or (self.n_tokens > 0) != (self.n_vocab > 0):
            raise UserError(
                f"{section}: a lyric prefix (n_tokens, n_vocab both above 0) goes with attn_order 12, OpenAI's lyrics layout, and "
                "only with it."
            )
        if self.n_tokens and (self.is_upsampler or not self.labels):
            raise UserError(f"{section}.n_tokens: lyrics condition a labelled top-level prior only.")
        if self.context % self.blocks:
            raise UserError(
                f"{section}: n_tokens + n_ctx ({self.context}) must be a multiple of {section}.blocks ({self.blocks})."
            )
        n_state = int(self.m_attn * self.width)
        if n_state < 1 or n_state % self.heads:
            raise UserError(
                f"{section}: attention width m_attn·width = {n_state} must be a positive multiple of heads ({self.heads})."
            )
        if int(self.m_mlp * self.width) < 1:
            raise UserError(f"{section}.m_mlp is too small for width {self.width}.")
        if self.labels and (self.n_genres < 1 or self.n_artists < 1 or self.max_bow_genre_size < 1):
            raise UserError(f"{section}: n_genres, n_artists and max_bow_genre_size must be at least 1 with labels on.")
        if self.labels and not self.is_upsampler and not 0 < self.min_duration < self.max_duration:
            raise UserError(f"{section}: need 0 < min_duration < max_duration (seconds).")
        if self.labels and self.t_bins < 1:
            raise UserError(f"{section}.t_bins must be at least 1.")
        if self.is_upsampler:
            if self.n_ctx % self.cond_downsample:
                raise UserError(
                    f"{section}.n_ctx ({self.n_ctx}) must be a multiple of cond_stride_t**cond_down_t ({self.cond_downsample})."
                )
            if self.cond_width < 1 or self.cond_depth < 0 or self.cond_down_t < 1 or self.cond_stride_t < 1:
                raise UserError(f"{section}: cond_width, cond_down_t, cond_stride_t must be positive, cond_depth not negative.")
        if self.character_tokens:
            if self.is_upsampler:
                raise UserError(f"{section}.character_tokens: the track character conditions the top-level prior only.")
            if self.character_tokens < 0 or self.character_width < 1 or not 0 <= self.character_drop < 1 or not 0 <= self.character_noise < math.inf:
                raise UserError(
                    f"{section}: character_tokens must be at least 0, character_width at least 1, character_drop in [0, 1), "
                    "character_noise finite and at least 0."
                )
        if self.styles is not None and not self.labels:
            raise UserError(f"{section}.styles: this prior has no labels (labels: false), so it has no style rows to add.")
        if self.styles is not None and self.train.lora is not None and not self.train.lora.train_embeddings:
            raise UserError(f"{section}.styles adds label rows, which must train and be saved: set {section}.train.lora.train_embeddings=true.")
        self.train.validate(f"{section}.train", adapted=True)
        lora = self.train.lora
        if lora is not None:
            narrowest = min(n_state, self.width, int(self.m_mlp * self.width))
            if lora.rank > narrowest:
                raise UserError(
                    f"{section}.train.lora.rank is {lora.rank}, more than the narrowest adapted projection ({narrowest}: "
                    f"width {self.width}, attention width {n_state}); a low-rank adapter needs rank ≤ {narrowest}."
                )


@dataclass
class PriorLevel1Config(PriorConfig):
    """The level-1 upsampler's section: the same fields, defaults for hop 32 (a recipe need not set level)."""

    level: int = 1
    hop_length: int = 32


@dataclass
class PriorLevel0Config(PriorConfig):
    """The level-0 upsampler's section: the same fields, defaults for hop 8."""

    level: int = 0
    hop_length: int = 8


@dataclass
class RefinerConfig:
    """The refiner: waveform U-Nets that turn VQ-VAE-decoded audio into audio closer to the original, a
    regression estimate plus diffusion detail (models.refiner).

    The defaults are the real size for 44.1 kHz; the demo recipe shrinks every width. Training
    hyper-parameters are its `train` section (the shared loop's), used by train-refiner.
    """

    sample_rate: int = 44100  # in a recipe: data.sample_rate (DERIVED)
    cond_level: int = 0  # the VQ-VAE level whose decoded audio is the condition (0 best; 1 faster sampling)
    segment_length: int = 65536  # samples per training window; a multiple of the U-Net's stride
    # sampling: samples per model call; each chunk's edges (one receptive field, ~0.6 s here: the
    # model's receptive_field) are discarded and neighbours cross-faded over overlap_length, so chunking
    # changes nothing; the model refuses a chunk too short for that
    chunk_length: int = 262144
    overlap_length: int = 4096
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256, 512])  # width per resolution level
    factors: list[int] = field(default_factory=lambda: [4, 4, 4, 2, 2])  # downsampling between levels (even)
    res_blocks: int = 2  # residual blocks per level, on the way down and on the way up
    attention_levels: int = 2  # the coarsest this-many levels (and the middle) have self-attention
    attention_heads: int = 8
    attention_window: int = 8  # positions on either side each attending position sees
    kernel_size: int = 5  # residual convolutions (odd)
    embedding_dim: int = 256  # timestep embedding width
    # the coarse audio's RMS envelope over this many samples is divided out of what the networks see
    # and multiplied back at the output (models.refiner)
    envelope_window: int = 2048
    # RMS of (original − decoded) / envelope, so the residual target has unit variance; null: train-refiner
    # measures it on the training split through the run's VQ-VAE and records it in the checkpoint
    residual_scale: float | None = None
    # a diffusion model generates detail on top of the estimator's output (false: the estimator alone)
    detail: bool = True
    # sampling defaults (the refine command can override them)
    steps: int = 8  # deterministic DDIM steps of the detail model
    strength: float = 1.0  # the detail model starts at t = strength from the estimate (1: from noise; 0: the estimate alone)
    chunk_batch: int = 4  # chunks per model call
    # train-refiner: a multiple of 4 windows per rank, so every noise-level quarter is logged each step
    train: TrainingConfig = field(default_factory=lambda: TrainingConfig(batch_size=8, lr=2e-4, warmup_steps=500))

    def __post_init__(self) -> None:
        self.train = _training_section(self.train, "refiner.train.")

    @property
    def stride(self) -> int:
        """Samples per position at the coarsest level: audio lengths the U-Net takes are multiples of this."""
        return math.prod(self.factors)

    def validate(self, section: str = "refiner") -> None:
        for name in ("sample_rate", "segment_length", "chunk_length", "overlap_length", "envelope_window", "res_blocks",
                     "attention_heads", "attention_window", "kernel_size", "embedding_dim", "steps", "chunk_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"{section}.{name} is {getattr(self, name)}; it must be at least 1.")
        if self.cond_level < 0:
            raise UserError(f"{section}.cond_level is {self.cond_level}; use a VQ-VAE level (0 finest).")
        if len(self.factors) != len(self.channels) - 1 or not self.channels:
            raise UserError(
                f"{section}.factors has {len(self.factors)} entries; give one fewer than channels ({len(self.channels)})."
            )
        if any(f < 2 or f % 2 for f in self.factors):
            raise UserError(f"{section}.factors is {self.factors}; every factor must be even and at least 2.")
        bad_width = [c for c in self.channels if c < 1 or c % self.attention_heads]
        if bad_width:
            raise UserError(
                f"{section}.channels has {bad_width[0]}; every width must be a positive multiple of "
                f"attention_heads ({self.attention_heads})."
            )
        if not 0 <= self.attention_levels <= len(self.channels):
            raise UserError(f"{section}.attention_levels must be between 0 and the number of levels ({len(self.channels)}).")
        if self.kernel_size % 2 == 0 or self.embedding_dim % 2:
            raise UserError(f"{section}: kernel_size must be odd and embedding_dim even.")
        for name in ("segment_length", "chunk_length"):
            if getattr(self, name) % self.stride:
                raise UserError(
                    f"{section}.{name} is {getattr(self, name)}; use a multiple of the U-Net's stride {self.stride} "
                    f"(e.g. {max(1, round(getattr(self, name) / self.stride)) * self.stride})."
                )
        if not 0.0 <= self.strength <= 1.0:
            raise UserError(f"{section}.strength is {self.strength}; it must be in [0, 1].")
        if self.residual_scale is not None and not self.residual_scale > 0:
            raise UserError(f"{section}.residual_scale is {self.residual_scale}; it must be positive, or null to measure it.")
        self.train.validate(f"{section}.train")


@dataclass
class CopiesConfig:
    """The copy detector: which generated passages replay the training corpus (see copies.py)."""

    level: int = 2  # compare codes at this level (the top level: what the prior wrote)
    ngram: int = 8  # tokens per seed n-gram (8 top-level tokens ≈ 23 ms at 44.1 kHz, hop 128)
    tolerance: float = 0.15  # share of differing tokens a matching passage may hold
    min_seeds: int = 3  # exact n-gram hits an alignment needs before it is examined
    max_occurrences: int = 64  # n-grams more common than this in the corpus (silence, loops) are no evidence
    max_alignments: int = 256  # strongest alignments examined per sample
    report_seconds: float = 2.0  # shorter matches are not reported
    flag_seconds: float = 8.0  # a sample with a match this long is flagged

    def validate(self) -> None:
        if self.ngram < 2 or self.min_seeds < 1 or self.max_occurrences < 1 or self.max_alignments < 1:
            raise UserError("copies: ngram must be at least 2; min_seeds, max_occurrences, max_alignments at least 1.")
        if not 0 <= self.tolerance < 0.5:
            raise UserError("copies.tolerance must be in [0, 0.5).")
        if not 0 < self.report_seconds <= self.flag_seconds:
            raise UserError("copies: need 0 < report_seconds <= flag_seconds.")


@dataclass
class SampleConfig:
    """The sample stage: windowed prior sampling at each level, then refining. Its flags override these."""

    # long tracks: a new window every hop_fraction · n_ctx tokens (1: windows do not overlap). Smaller
    # fractions give each new token more context (more coherent, slower): the top prior needs it most
    hop_fraction_level2: float = 0.125
    hop_fraction_level1: float = 0.5
    hop_fraction_level0: float = 0.5
    temperature: float = 1.0  # softmax temperature of every level's sampling
    top_k: int = 0  # keep the k likeliest codes (0: all)
    top_p: float = 0.0  # keep the likeliest codes holding this probability mass (0: all)
    refine_steps: int | None = None  # DDIM steps of the refiner (null: the refiner's own refiner.steps)
    refine_strength: float | None = None  # the detail model: 1 from noise, 0 the estimate alone (null: refiner.strength)
    refine_chunk_length: int | None = None  # samples per refiner call (null: refiner.chunk_length)
    checkpoint: str = "last"  # the priors' and refiner's weights: "last" (last.pt) or "best" (best validation loss)
    # auto: refine unless eval-refiner judged these very weights unhelpful; always; never. The decoded
    # level's own wav is written either way, so a refined track is always heard beside its source
    refine: str = "auto"
    # the upsamplers cut a track into segments sampled side by side as one batch (see
    # algorithms/sampling.py); auto: enough to fill 16 rows on a CPU, 64 on a GPU, each segment at
    # least two windows long; 1: one window after another, as Jukebox does
    upsampler_segments: int | str = "auto"
    upsampler_overlap: float = 0.5  # each segment after the first warms up over this fraction of n_ctx
    # a top prior with a track character (prior_level2.character_tokens): logits = unconditioned +
    # guidance · (conditioned − unconditioned); 1 is the plain conditioned prior (one pass per token, not two)
    character_guidance: float = 1.0

    def hop_fraction(self, level: int) -> float:
        return getattr(self, f"hop_fraction_level{level}")

    def validate(self) -> None:
        for level in (2, 1, 0):
            if not 0 < self.hop_fraction(level) <= 1:
                raise UserError(f"sample.hop_fraction_level{level} is {self.hop_fraction(level)}; it must be in (0, 1].")
        if not 0 < self.temperature < math.inf or self.top_k < 0 or not 0 <= self.top_p < 1:
            raise UserError("sample: temperature must be positive and finite, top_k at least 0 and top_p in [0, 1).")
        if self.refine_steps is not None and self.refine_steps < 1:
            raise UserError(f"sample.refine_steps is {self.refine_steps}; use at least 1, or null for the refiner's own.")
        if self.refine_strength is not None and not 0 <= self.refine_strength <= 1:
            raise UserError(f"sample.refine_strength is {self.refine_strength}; use a value in [0, 1], or null.")
        if self.checkpoint not in ("last", "best"):
            raise UserError(f"sample.checkpoint is '{self.checkpoint}'; use last or best.")
        if self.refine not in ("auto", "always", "never"):
            raise UserError(f"sample.refine is '{self.refine}'; use auto, always or never.")
        if self.upsampler_segments != "auto" and not (isinstance(self.upsampler_segments, int) and self.upsampler_segments >= 1):
            raise UserError(f"sample.upsampler_segments is {self.upsampler_segments!r}; use auto or a whole number of at least 1.")
        if not 0 < self.upsampler_overlap <= 1:
            raise UserError(f"sample.upsampler_overlap is {self.upsampler_overlap}; it must be in (0, 1].")
        if self.refine_chunk_length is not None and self.refine_chunk_length < 1:
            raise UserError(f"sample.refine_chunk_length is {self.refine_chunk_length}; use at least 1, or null.")
        if not 0 <= self.character_guidance < math.inf:
            raise UserError(f"sample.character_guidance is {self.character_guidance}; use a finite value of at least 0 (1: plain conditioning).")


@dataclass
class ReviewConfig:
    """The review page (make review): how its players carry the audio."""

    # opus (in Ogg: the smallest for its quality), mp3 (plays everywhere), or wav (16-bit, lossless, and
    # about 15x the bytes of 48 kb/s: a 4 x 90 s run at 44.1 kHz would make a page of ~170 MB)
    audio_codec: str = "opus"
    bitrate_kbps: int = 48  # per (mono) player: 4 tracks x 90 s x 4 stages of recorded music make a page of ~20 MB

    def validate(self) -> None:
        if self.audio_codec not in AUDIO_CODECS:
            raise UserError(f"review.audio_codec is '{self.audio_codec}'; use {', '.join(AUDIO_CODECS)}.")
        if not 8 <= self.bitrate_kbps <= 320:
            raise UserError(f"review.bitrate_kbps is {self.bitrate_kbps}; use 8 to 320.")


AUDIO_CODECS = ("opus", "mp3", "wav")


PRIOR_SECTIONS = ("prior_level2", "prior_level1", "prior_level0")
# Keys a recipe does not write: each follows from an earlier stage's section, and RecipeConfig sets it
# (the models keep them in their own configs, so a checkpoint still describes itself).
DERIVED = {
    "vqvae.sample_rate": "data.sample_rate",
    **{f"{p}.sample_rate": "data.sample_rate" for p in PRIOR_SECTIONS},
    **{f"{p}.bins": "vqvae.l_bins" for p in PRIOR_SECTIONS},
    **{f"{p}.hop_length": "vqvae.downs_t and strides_t (the hop of that level)" for p in PRIOR_SECTIONS},
    "refiner.sample_rate": "data.sample_rate",
}
# Keys that moved: a recipe or override still naming the old place is told the new one.
MOVED = {f"{p}.hop_fraction": f"sample.hop_fraction_level{p[-1]}" for p in PRIOR_SECTIONS}


@dataclass
class RecipeConfig:
    """A whole recipe: one section per stage, with the `DERIVED` values set from the sections they follow."""

    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    prior_level2: PriorConfig = field(default_factory=PriorConfig)
    prior_level1: PriorLevel1Config = field(default_factory=PriorLevel1Config)
    prior_level0: PriorLevel0Config = field(default_factory=PriorLevel0Config)
    copies: CopiesConfig = field(default_factory=CopiesConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)

    def __post_init__(self) -> None:
        # new section objects: a section passed in (e.g. by dataclasses.replace) may be someone else's
        sr = self.data.sample_rate
        self.vqvae = dataclasses.replace(self.vqvae, sample_rate=sr)
        self.refiner = dataclasses.replace(self.refiner, sample_rate=sr)
        hops = self.vqvae.hop_lengths
        for level in (2, 1, 0):
            name = f"prior_level{level}"
            prior = getattr(self, name)
            hop = hops[level] if level < len(hops) else prior.hop_length  # fewer levels: refused by validate
            setattr(self, name, dataclasses.replace(prior, sample_rate=sr, bins=self.vqvae.l_bins, hop_length=hop))

    def validate(self) -> None:
        self.data.validate()
        self.vqvae.validate()
        self.copies.validate()
        if self.vqvae.levels != 3:
            raise UserError(f"vqvae.levels is {self.vqvae.levels}; the recipe's priors (prior_level2/1/0) need 3.")
        for level in (2, 1, 0):
            prior = getattr(self, f"prior_level{level}")
            if prior.level != level:
                raise UserError(f"prior_level{level}.level is {prior.level}; it must be {level} (or be left out).")
            prior.validate(f"prior_level{level}")
        self.refiner.validate()
        self.sample.validate()
        self.review.validate()


# ----------------------------------------------------------------------------------------------
# Loading, overrides, saving


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


MAX_RECIPE_NODES = 100_000  # a recipe's values once YAML aliases are expanded: far above any real recipe


def _preview(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: its repr, cut short (a value can be huge)."""
    text = repr(value) if not isinstance(value, (dict, list)) or _expanded_size(value) < 1000 else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expanded_size(tree: Any, memo: dict | None = None) -> int:
    """How many values `tree` holds with YAML aliases expanded, counted without expanding them (shared
    subtrees are counted once per reference, their size computed once)."""
    memo = {} if memo is None else memo
    if not isinstance(tree, (dict, list)):
        return 1
    if id(tree) not in memo:
        memo[id(tree)] = 0  # a self-referencing alias counts as one value, and is refused by type checks
        children = tree.values() if isinstance(tree, dict) else tree
        memo[id(tree)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(tree)]


def _checked_yaml(text: str, where: str) -> Any:
    """YAML, refused when its aliases would expand it past MAX_RECIPE_NODES (an "alias bomb")."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if _expanded_size(tree) > MAX_RECIPE_NODES:
        raise UserError(f"{where} holds over {MAX_RECIPE_NODES} values once its YAML aliases are expanded; refused.")
    return tree


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses; int is accepted as float."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"Config key '{key}' must be a mapping of {tp.__name__} fields, not {_preview(value)}.")
        return section_from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise UserError(f"Config key '{key}' is {_preview(value)}; expected {_type_name(tp)}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"Config key '{key}' must be a list, not {_preview(value)}.")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"Config key '{key}' is {value}; it must be a finite number.")
    if tp in (int, float) and isinstance(value, bool):
        raise UserError(f"Config key '{key}' is {_preview(value)}; expected {tp.__name__}.")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"Config key '{key}' is {_preview(value)}; expected {tp.__name__}.")
    return value


def section_from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build a config dataclass from a mapping (a recipe section or a checkpoint's `config`), type-checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(
            f"Unknown config key '{prefix}{unknown[0]}'; known keys here are {', '.join(sorted(fields))}."
        )
    kwargs = {}
    for key, value in values.items():
        factory = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and factory is not dataclasses.MISSING:
            value = {**config_to_dict(factory()), **value}  # a partial section keeps this section's own defaults
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"Override '{dotted}' goes inside '{p}', which is not a section.")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`data.sample_rate=22050` → ('data.sample_rate', 22050); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"Override '{text}' is not of the form key=value (e.g. data.workers=4).")
    try:
        value = _checked_yaml(raw, f"Override '{_preview(text)}'") if raw.strip() else ""
    except UserError as e:
        if "aliases" in str(e):
            raise
        value = raw  # not YAML: the text itself
    return key.strip(), value


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at `path` as a tree, with the recipes it `extends` merged under it (base first)."""
    if not path.is_file():
        raise UserError(f"Recipe '{path}' does not exist; pick one from pipelines/ (e.g. pipelines/demo.yaml).")
    if path.resolve() in chain:
        raise UserError(f"Recipe '{path}' extends itself (through {' → '.join(p.name for p in chain)}).")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"Recipe '{path}' is not a text file; a recipe is YAML (see pipelines/).") from None
    tree = _checked_yaml(text, f"Recipe '{path}'") or {}
    if not isinstance(tree, dict):
        raise UserError(f"Recipe '{path}' must be a YAML mapping of sections.")
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise UserError(f"Recipe '{path}': extends must name one recipe file, e.g. extends: deep_house.yaml.")
    return _merged(_read_recipe(path.parent / base, (*chain, path.resolve())), tree)


def _merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: mappings merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _refuse_derived_and_moved(keys: list[str], where: str) -> None:
    for key in keys:
        if key in DERIVED:
            raise UserError(f"{where} sets '{key}', which follows from {DERIVED[key]}; remove it (it is set for you).")
        if key in MOVED:
            raise UserError(f"{where} sets '{key}', which is now '{MOVED[key]}'.")


def reads_key(key: str, reads: tuple[str, ...]) -> bool:
    """Whether a command that reads the sections or keys `reads` reads the dotted `key`."""
    return any(key == r or key.startswith(r + ".") for r in reads)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    reads: tuple[str, ...] | None = None,
    command: str = "this command",
) -> RecipeConfig:
    """Read a recipe (or start from the defaults), apply `key=value` overrides, build and validate it.

    `reads` lists the sections (or dotted keys) the calling command uses; an override outside them is
    refused, naming it. None (the Python API) accepts every key.
    """
    tree: dict = {} if path is None else _read_recipe(Path(path))
    _refuse_derived_and_moved(_dotted_keys(tree), f"Recipe '{path}'")
    for text in overrides:
        key, value = parse_override(text)
        _refuse_derived_and_moved([key], f"Override '{text}'")
        if reads is not None and not reads_key(key, reads):
            used = ", ".join(reads) if reads else "no recipe keys"
            raise UserError(f"Override '{text}' is not used by {command} (it reads {used}); pass it to the command that does.")
        _set_dotted(tree, key, value)
    cfg = section_from_dict(RecipeConfig, tree)
    cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def recipe_tree(cfg: RecipeConfig) -> dict:
    """The resolved recipe as a tree a recipe file can hold: every key but the DERIVED ones."""
    tree = config_to_dict(cfg)
    for key in DERIVED:
        section, name = key.split(".")
        del tree[section][name]
    return tree


def save_config(cfg: RecipeConfig, path: str | Path) -> None:
    """Save the resolved recipe (atomically) beside a stage's outputs; `load_config(path)` reads it back."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(recipe_tree(cfg), sort_keys=False))
