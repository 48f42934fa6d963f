"""The prior: a sparse transformer over one level's VQ-VAE codes, in OpenAI Jukebox's key layout.

Read top to bottom: the token model that OpenAI calls `prior` (embeddings, the transformer of
`nn.transformer`, tied output), the two conditioners (labels for the top level, codes of the level
above for the upsamplers), our track-character encoder (a top prior's optional third), then `Prior`,
which ties them together. Loading is `models.checkpoints`' (ours) and `algorithms.openai_import`'s
(OpenAI's).

Teacher forcing: the input at position t is the code at t-1 (the start token at t = 0), so the
logits at t predict codes[:, t]. A lyrics prior (OpenAI's 1b_lyrics: `n_tokens`, `n_vocab`) puts the
lyric characters before the codes in the same window and vocabulary (codes shifted by n_vocab); its
logits are the codes' at the codes' positions. Conditioning (`cond`, one vector per position: timing embeddings
on the top level, the upsampled upper codes on the upsamplers; the track character, the same at every
position) is added to the input embeddings and again to the transformer's output, as in OpenAI's code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from jukebox_lite.core.config import LoRAConfig, PriorConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.nn.lora import add_adapters
from jukebox_lite.nn.transformer import Transformer
from jukebox_lite.nn.conv import DecoderConvBlock


# ----------------------------------------------------------------------------------------------
# Token model


class PositionEmbedding(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(cfg.context, cfg.width) * (0.01 * cfg.init_scale))


class TokenModel(nn.Module):
    """Embeddings → transformer → logits over the codebook (OpenAI's `ConditionalAutoregressive2D`)."""

    def __init__(self, cfg: PriorConfig, learned_start: bool):
        super().__init__()
        if learned_start:  # registered first, as in OpenAI's state dicts
            self.start_token = nn.Parameter(torch.randn(1, cfg.width) * (0.01 * cfg.init_scale))
        vocabulary = cfg.n_vocab + cfg.bins  # lyric characters (1b_lyrics), then the codes
        self.x_emb = nn.Embedding(vocabulary, cfg.width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * cfg.init_scale)
        self.pos_emb = PositionEmbedding(cfg)
        self.transformer = Transformer(cfg)
        self.x_out = nn.Linear(cfg.width, vocabulary, bias=False)
        self.tied = not cfg.merged_decoder
        if self.tied:
            self.x_out.weight = self.x_emb.weight

    def forward(
        self, h: torch.Tensor, start: int, cond: torch.Tensor | None, caches=None
    ) -> torch.Tensor:
        """h: (B, L, W) input embeddings at positions start..start+L-1, cond: (B, L, W) or None → logits (B, L, bins)."""
        h = h + self.pos_emb.pos_emb[start : start + h.shape[1]]
        if cond is not None:
            h = h + cond
        h = self.transformer(h, start, caches)
        if cond is not None and self.tied:  # OpenAI's merged decoder does not add it again
            h = h + cond
        return self.x_out(h)

    def step(self, h: torch.Tensor, t: int, cond: torch.Tensor | None, caches, out_weight: torch.Tensor) -> torch.Tensor:
        """forward for one position t through the caches: h, cond: (B, W) → logits (B, bins).

        out_weight: x_out's weight as (W, bins), which the caller lays out once per window (see
        `output_weight`).
        """
        h = h + self.pos_emb.pos_emb[t]
        if cond is not None:
            h = h + cond
        h = self.transformer.step(h, t, caches)
        if cond is not None and self.tied:
            h = h + cond
        return torch.mm(h, out_weight)

    def output_weight(self) -> torch.Tensor:
        """x_out's weight (bins, W) as the (W, bins) matrix `step` multiplies by: a contiguous copy on CPU,
        where MKL reads a transposed weight from memory at a third of the speed (measured: 118 vs 311 µs
        for 2048 × 128), a view elsewhere."""
        weight = self.x_out.weight.t()
        return weight.contiguous() if weight.device.type == "cpu" else weight


# ----------------------------------------------------------------------------------------------
# Label conditioning (y_emb): genre/artist start token, timing embeddings


class SimpleEmbedding(nn.Module):
    def __init__(self, bins: int, width: int, init_scale: float):
        super().__init__()
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)


class RangeEmbedding(nn.Module):
    """Embeds positions in [pos_min, pos_max) by cutting the range into `bins` equal bins.

    With n_time > 1 the window [start, end) is spread over n_time positions, so each token of the
    window gets the bin of its own time. Float32 arithmetic in OpenAI's order, so bins match exactly.
    """

    def __init__(self, n_time: int, bins: int, pos_range: tuple[float, float], width: int, init_scale: float, clamp=False):
        super().__init__()
        self.n_time, self.bins, self.clamp = n_time, bins, clamp
        self.pos_min, self.pos_max = pos_range
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def forward(self, start: torch.Tensor, end: torch.Tensor | None = None) -> torch.Tensor:
        """start, end: (B, 1) float → (B, n_time, W)."""
        if end is not None and self.clamp:
            end = end.clamp(self.pos_min, self.pos_max)
        position = start
        if self.n_time != 1:
            fraction = torch.arange(self.n_time, dtype=torch.float, device=start.device).view(1, -1) / self.n_time
            position = start + (end - start) * fraction
        normalised = (position - self.pos_min) / (self.pos_max - self.pos_min)
        return self.emb((self.bins * normalised).floor().long())


class LabelConditioner(nn.Module):
    """y = [total_length, offset, sample_length, artist, genre_1..genre_G] (samples; genre -1 = none)
    → start embedding (B, W) and, on the top level, timing embeddings (B, n_ctx, W)."""

    def __init__(self, cfg: PriorConfig, timing: bool):
        super().__init__()
        self.cfg, self.timing = cfg, timing
        self.bow_genre_emb = SimpleEmbedding(cfg.n_genres, cfg.width, cfg.init_scale)
        self.artist_emb = SimpleEmbedding(cfg.n_artists, cfg.width, cfg.init_scale)
        if timing:
            sr, t_bins, W, s = cfg.sample_rate, cfg.t_bins, cfg.width, cfg.init_scale
            self.total_length_emb = RangeEmbedding(1, t_bins, (cfg.min_duration * sr, cfg.max_duration * sr), W, s)
            self.absolute_pos_emb = RangeEmbedding(cfg.n_ctx, t_bins, (0.0, cfg.max_duration * sr), W, s)
            self.relative_pos_emb = RangeEmbedding(cfg.n_ctx, t_bins, (0.0, 1.0), W, s, clamp=True)

    def check(self, y: torch.Tensor) -> None:
        """One clear UserError for a label vector the embeddings cannot take."""
        cfg = self.cfg
        if y.dim() != 2 or y.shape[1] != 4 + cfg.max_bow_genre_size:
            raise UserError(
                f"Labels have shape {tuple(y.shape)}; expected (batch, {4 + cfg.max_bow_genre_size}) = "
                "[total_length, offset, sample_length, artist, genres...] with max_bow_genre_size genres."
            )
        artist, genre = y[:, 3], y[:, 4:]
        if ((artist < 0) | (artist >= cfg.n_artists)).any():
            raise UserError(f"Artist index {artist.tolist()} is unknown; this prior knows artists 0..{cfg.n_artists - 1}.")
        if ((genre < -1) | (genre >= cfg.n_genres)).any():
            raise UserError(
                f"Genre index {genre.tolist()} is unknown; this prior knows genres 0..{cfg.n_genres - 1} (-1 = empty slot)."
            )
        if self.timing:
            sr = cfg.sample_rate
            total, offset, end = y[:, 0], y[:, 1], y[:, 1] + y[:, 2]
            if ((total < cfg.min_duration * sr) | (total >= cfg.max_duration * sr)).any():
                lengths = ", ".join(sorted({f"{t:.1f}" for t in (total / sr).tolist()}))
                raise UserError(
                    f"A track of {lengths} s is outside this prior's timing range "
                    f"[{cfg.min_duration:g}, {cfg.max_duration:g}) s; ask for a length inside it."
                )
            if ((offset < 0) | (offset >= total) | (end > cfg.max_duration * sr)).any():
                raise UserError(
                    f"Window offset {(offset / sr).tolist()} s (+ {(y[:, 2] / sr).tolist()} s) lies beyond the track "
                    f"or the timing embeddings ({cfg.max_duration} s); shorten the track."
                )

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        artist, genre = y[:, 3:4], y[:, 4:]
        present = (genre >= 0).unsqueeze(-1).float()
        start = (self.bow_genre_emb.emb(genre.clamp(min=0)) * present).sum(1) + self.artist_emb.emb(artist)[:, 0]
        if not self.timing:
            return start, None
        total, begin = y[:, 0:1].float(), y[:, 1:2].float()
        end = (y[:, 1:2] + y[:, 2:3]).float()
        timing = (
            self.total_length_emb(total)
            + self.absolute_pos_emb(begin, end)
            + self.relative_pos_emb(begin / total, end / total)
        )
        return start, timing  # (B, W), (B, n_ctx, W)


@dataclass
class LabelMix:
    """Two label sets and a weight in [0, 1]: the label embeddings are (1 - weight)·a + weight·b.

    Changing the weight from window to window morphs a track from one genre (or artist) to another.
    `weight` is a float or a (B,) tensor.
    """

    a: torch.Tensor
    b: torch.Tensor
    weight: float | torch.Tensor


# ----------------------------------------------------------------------------------------------
# Upsampler conditioning (conditioner_blocks.0): codes of the level above


class UpperConditioner(nn.Module):
    """Upper codes (B, U) → embeddings → dilated resnet + ConvTranspose1d upsampling → LayerNorm → (B, U·s, W)."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.x_emb = nn.Embedding(cfg.bins, cfg.width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * cfg.init_scale)
        self.cond = DecoderConvBlock(
            cfg.width,
            cfg.width,
            cfg.cond_down_t,
            cfg.cond_stride_t,
            width=cfg.cond_width,
            depth=cfg.cond_depth,
            m_conv=cfg.cond_m_conv,
            dilation_growth_rate=cfg.cond_dilation_growth_rate,
            dilation_cycle=cfg.cond_dilation_cycle,
            zero_out=cfg.cond_zero_out,
            res_scale=cfg.cond_res_scale,
            checkpoint_res=bool(cfg.cond_c_res),
        )
        self.ln = nn.LayerNorm(cfg.width)

    def forward(self, upper: torch.Tensor) -> torch.Tensor:
        x = self.x_emb(upper).transpose(1, 2)  # (B, W, U)
        x = self.cond(x).transpose(1, 2)  # (B, U·s, W)
        return self.ln(x)


# ----------------------------------------------------------------------------------------------
# Track character (ours): one vector per track, from another part of the same track


class CharacterEncoder(nn.Module):
    """Codes of one part of a track (B, R) → its character vector (B, D), and that vector → (B, W).

    The vector is what a track is described by (a sample's is drawn, taken from a reference recording
    or from its prime); `project` turns it into what is added to the start token and every position.
    The projection starts at zero, so a prior with a new encoder begins as the prior without one, and
    a zero vector (a dropped condition) adds exactly nothing. In training mode the encoder keeps the
    running mean and second moment of the vectors it makes (like batch norm's statistics), which
    `draw` samples from: the corpus's distribution of characters, kept in the checkpoint.
    """

    MOMENTUM = 0.01  # of the running statistics, once more than 1 / MOMENTUM batches have been seen

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        D = cfg.character_width
        self.x_emb = nn.Embedding(cfg.bins, D)
        nn.init.normal_(self.x_emb.weight, std=0.02)
        self.convs = nn.Sequential(
            nn.Conv1d(D, D, 3, padding=1), nn.GELU(), nn.Conv1d(D, D, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(D, D, 3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(D, elementwise_affine=False)
        self.project = nn.Linear(D, cfg.width, bias=False)
        nn.init.zeros_(self.project.weight)
        self.register_buffer("running_mean", torch.zeros(D))
        self.register_buffer("running_moment", torch.eye(D))  # E[v vᵀ]
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.noise = cfg.character_noise  # what training adds to every vector, so drawn ones include it too

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, R) → character vectors (B, D), unit RMS; in training mode the running statistics follow."""
        x = self.convs(self.x_emb(codes).transpose(1, 2))  # (B, D, R / 4)
        vectors = self.norm(x.mean(-1).float())  # (B, D)
        if self.training:
            with torch.no_grad():
                v = vectors.detach()
                weight = max(self.MOMENTUM, 1.0 / float(self.batches_seen + 1))
                self.running_mean.lerp_(v.mean(0), weight)
                self.running_moment.lerp_(v.T @ v / len(v), weight)
                self.batches_seen += 1
        return vectors

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n vectors (n, D) from a Gaussian with the running mean and covariance (plus the training noise's):
        characters like those the prior was trained with, of no track in particular."""
        mean = self.running_mean.float()
        covariance = self.running_moment.float() - torch.outer(mean, mean)
        covariance = (covariance + covariance.T) / 2 + (1e-4 + self.noise**2) * torch.eye(len(mean), device=mean.device)
        scale = torch.linalg.cholesky(covariance)
        z = torch.randn(n, len(mean), generator=generator, device=mean.device)
        return mean + z @ scale.T


# ----------------------------------------------------------------------------------------------
# The prior


@dataclass
class Conditioning:
    """What a window is conditioned on: start embedding (B, W), per-position cond (B, T, W) or None and, for
    a lyrics prior, the lyric character ids (B, n_tokens) of its prefix (cond then covers the prefix too)."""

    start: torch.Tensor
    cond: torch.Tensor | None
    lyrics: torch.Tensor | None = None


class Prior(nn.Module):
    """One level's prior. Keys: `conditioner_blocks.0.*` (upsamplers), `y_emb.*` (labels), `prior.*`."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if cfg.is_upsampler:
            self.conditioner_blocks = nn.ModuleList([UpperConditioner(cfg)])
        if cfg.labels:
            self.y_emb = LabelConditioner(cfg, timing=not cfg.is_upsampler)
        if cfg.character_tokens:
            self.character = CharacterEncoder(cfg)
        self.prior = TokenModel(cfg, learned_start=not cfg.labels)

    @property
    def device(self) -> torch.device:
        return self.prior.x_emb.weight.device

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Token (tied to the output layer, or the untied output layer of a merged decoder), position, start
        and label embeddings: what a LoRA fine-tune may train beside its adapters."""
        token_model = self.prior
        found = [token_model.x_emb.weight, token_model.pos_emb.pos_emb]
        if not token_model.tied:
            found.append(token_model.x_out.weight)
        if hasattr(token_model, "start_token"):
            found.append(token_model.start_token)
        if self.cfg.labels:
            found.extend(self.y_emb.parameters())
        return found

    def add_adapters(self, lora: LoRAConfig) -> None:
        """LoRA (nn/lora.py) on the transformer's `lora.targets` projections; every other weight frozen,
        except the embeddings and layer norms the config chooses to train and a track-character encoder."""
        add_adapters(self, lora.targets, lora.rank, lora.alpha)
        trained = self.embedding_parameters() if lora.train_embeddings else []
        if self.cfg.character_tokens:  # the track-character encoder is new to an import: it trains whole
            trained += list(self.character.parameters())
        if lora.train_norms:
            trained += [p for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
        for p in trained:
            p.requires_grad_(True)

    @property
    def attn_funcs(self) -> list[int]:
        """Each layer's attention pattern (`nn.attention`), in order: what a per-layer KV cache needs."""
        return [block.attn.attn_func for block in self.prior.transformer._attn_mods]

    # -- conditioning ---------------------------------------------------------------------------

    def _label_embeddings(self, labels, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(labels, LabelMix):
            start_a, timing_a = self._label_embeddings(labels.a, batch)
            start_b, timing_b = self._label_embeddings(labels.b, batch)
            w = torch.as_tensor(labels.weight, dtype=start_a.dtype, device=start_a.device)
            if w.dim() == 0:
                w = w.expand(batch)
            if ((w < 0) | (w > 1)).any():
                raise UserError(f"Label mix weight {w.tolist()} must lie in [0, 1].")
            start = torch.lerp(start_a, start_b, w[:, None])
            timing = None if timing_a is None else torch.lerp(timing_a, timing_b, w[:, None, None])
            return start, timing
        if not torch.is_tensor(labels) or labels.dtype not in (torch.int32, torch.int64):
            raise UserError("Labels must be an integer tensor (batch, 4 + max_bow_genre_size) or a LabelMix.")
        y = labels.to(self.device, torch.long)
        if y.dim() == 2 and y.shape[0] != batch:
            raise UserError(f"Labels are given for {y.shape[0]} items but the batch has {batch}.")
        self.y_emb.check(y)
        return self.y_emb(y)

    def conditioning(self, batch: int, length: int, upper_codes=None, labels=None, character=None) -> Conditioning:
        """Everything a window of `length` tokens (from position 0) is conditioned on; `character`: the
        track's character vectors (B, D) or None (a prior with an encoder then runs as without one)."""
        cfg = self.cfg
        if length > cfg.n_ctx:
            raise UserError(f"A window of {length} tokens is longer than this prior's n_ctx ({cfg.n_ctx}).")
        labels, lyrics = self._lyrics(labels, batch)
        cond = None
        if cfg.labels:
            if labels is None:
                raise UserError(f"The level-{cfg.level} prior is labelled; pass labels (genre, artist, timing).")
            start, timing = self._label_embeddings(labels, batch)
            if timing is not None:
                cond = timing[:, :length]
        else:
            if labels is not None:
                raise UserError(f"The level-{cfg.level} prior was trained without labels; leave labels out.")
            start = self.prior.start_token.expand(batch, -1)
        if cfg.is_upsampler:
            cond = self.upper_conditioning(upper_codes, batch, length)
        elif upper_codes is not None:
            raise UserError("The top-level prior takes no upper codes; pass upper_codes only to upsamplers.")
        if lyrics is not None and cond is not None:  # the lyric positions have no timing
            cond = torch.cat([cond.new_zeros(batch, cfg.n_tokens, cond.shape[2]), cond], dim=1)
        if character is not None:  # one vector for the whole window, like the labels
            added = self.character_embedding(character, batch)  # (B, W)
            start = start + added
            positions = length + (0 if lyrics is None else cfg.n_tokens)
            cond = added[:, None].expand(batch, positions, -1) if cond is None else cond + added[:, None]
        return Conditioning(start, cond, lyrics)

    def character_encoder(self) -> CharacterEncoder:
        """The track-character encoder, or one UserError for a prior trained without one."""
        if not self.cfg.character_tokens:
            raise UserError("This prior was trained without a track character (prior_level2.character_tokens is 0); leave it out.")
        return self.character

    def character_embedding(self, character: torch.Tensor, batch: int) -> torch.Tensor:
        """Character vectors (B, D) → what is added to every input position (B, W)."""
        project = self.character_encoder().project
        width = self.cfg.character_width
        if not torch.is_tensor(character) or not character.is_floating_point() or tuple(character.shape) != (batch, width):
            shape = tuple(character.shape) if torch.is_tensor(character) else type(character).__name__
            raise UserError(f"A track character is {shape}; this prior takes ({batch}, {width}) float vectors.")
        return project(character.to(project.weight.device, project.weight.dtype))

    @torch.no_grad()
    def describe(self, codes: torch.Tensor) -> torch.Tensor:
        """Top-level codes of whole tracks (B, T) → each track's character (B, D): the mean of the vectors of
        its character_tokens-long parts (one part, all of it, when shorter)."""
        encoder = self.character_encoder()
        self.check_codes(codes, f"level-{self.cfg.level} codes")
        R = self.cfg.character_tokens
        B, T = codes.shape
        parts = max(1, T // R)
        pieces = codes[:, : parts * R].reshape(B * parts, R) if T >= R else codes  # (B·parts, R)
        training = encoder.training
        encoder.eval()  # describing a track is no training step: the running statistics stay
        try:
            vectors = encoder(pieces.to(self.device, torch.long))
        finally:
            encoder.train(training)
        return vectors.view(B, parts, -1).mean(1)

    def upper_conditioning(self, upper_codes, batch: int, length: int) -> torch.Tensor:
        cfg, s = self.cfg, self.cfg.cond_downsample
        if upper_codes is None:
            raise UserError(f"The level-{cfg.level} upsampler needs the level-{cfg.level + 1} codes (upper_codes).")
        if upper_codes.dim() != 2 or upper_codes.shape[0] != batch or not length <= upper_codes.shape[1] * s <= cfg.n_ctx:
            raise UserError(
                f"Upper codes have shape {tuple(upper_codes.shape)}; for {batch} × {length} tokens at level {cfg.level} "
                f"they must be ({batch}, U) with {length} <= {s}·U <= n_ctx ({cfg.n_ctx})."
            )
        self.check_codes(upper_codes, f"level-{cfg.level + 1} codes")
        return self.conditioner_blocks[0](upper_codes.to(self.device, torch.long))[:, :length]

    def check_codes(self, codes: torch.Tensor, what: str) -> None:
        if codes.dtype not in (torch.int32, torch.int64):
            raise UserError(f"The {what} must be an integer tensor, not {codes.dtype}.")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.bins):
            raise UserError(f"The {what} hold values outside 0..{self.cfg.bins - 1}; were they made by the same VQ-VAE?")

    # -- teacher forcing ------------------------------------------------------------------------

    def logits(self, codes: torch.Tensor, upper_codes=None, labels=None, reference=None) -> torch.Tensor:
        """codes (B, T) → float logits (B, T, bins); position t predicts codes[:, t].

        reference (B, R): for a prior with a track character, codes of another part of each window's track,
        which the encoder turns into the window's character; in training mode a share (`character_drop`) of
        the windows go without it. None: no character.

        A lyrics prior (cfg.n_tokens) reads the labels' lyric character ids after the label columns (none
        given: all 0, OpenAI's padding, i.e. no lyrics) as a prefix of the window; the logits are those of
        the codes at the codes' positions."""
        if codes.dim() != 2:
            raise UserError(f"Codes have shape {tuple(codes.shape)}; expected (batch, time).")
        self.check_codes(codes, f"level-{self.cfg.level} codes")
        B, T = codes.shape
        codes = codes.to(self.device, torch.long)
        c = self.conditioning(B, T, upper_codes, labels, self._reference_character(reference, B))
        n_vocab = self.cfg.n_vocab
        tokens = codes if c.lyrics is None else torch.cat([c.lyrics, codes + n_vocab], dim=1)  # (B, n_tokens + T)
        x = self.prior.x_emb(tokens)  # (B, n_tokens + T, W)
        h = torch.cat([c.start[:, None].to(x.dtype), x[:, :-1]], dim=1)  # shift right, start token first
        logits = self.prior(h, 0, c.cond)
        if c.lyrics is not None:
            logits = logits[:, self.cfg.n_tokens :, n_vocab:]  # (B, T, bins): the codes at the codes' positions
        return logits.float()

    def _reference_character(self, reference, batch: int) -> torch.Tensor | None:
        """Reference codes (B, R) → character vectors (B, D); in training with `character_noise` added, and zero
        for the windows dropped."""
        if reference is None:
            return None
        encoder = self.character_encoder()
        if reference.dim() != 2 or reference.shape[0] != batch:
            raise UserError(f"Reference codes have shape {tuple(reference.shape)}; expected ({batch}, R).")
        self.check_codes(reference, "reference codes")
        vectors = encoder(reference.to(self.device, torch.long))  # (B, D)
        if self.training and self.cfg.character_noise:
            vectors = vectors + self.cfg.character_noise * torch.randn_like(vectors)
        if self.training and self.cfg.character_drop:
            kept = torch.rand(batch, device=vectors.device) >= self.cfg.character_drop
            vectors = vectors * kept[:, None]
        return vectors

    def _lyrics(self, labels, batch: int) -> tuple[object, torch.Tensor | None]:
        """(labels without lyrics, lyric character ids (B, n_tokens) or None for a prior without them)."""
        cfg = self.cfg
        if not cfg.n_tokens:
            return labels, None
        columns = 4 + cfg.max_bow_genre_size
        if torch.is_tensor(labels) and labels.dim() == 2 and labels.shape[1] == columns + cfg.n_tokens:
            labels, lyrics = labels[:, :columns], labels[:, columns:].to(self.device, torch.long)
            if ((lyrics < 0) | (lyrics >= cfg.n_vocab)).any():
                raise UserError(f"Lyric character ids must lie in 0..{cfg.n_vocab - 1} (0: padding, no lyrics).")
            return labels, lyrics
        return labels, torch.zeros(batch, cfg.n_tokens, dtype=torch.long, device=self.device)

    def forward(self, codes: torch.Tensor, upper_codes=None, labels=None, reference=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """codes (B, T) → (logits (B, T, bins), metrics): the training objective, as DDP needs it in forward.

        metrics['loss'] is the mean cross-entropy in nats per token; 'bits_per_token' (OpenAI's unit)
        and 'accuracy' (of the most likely code) are detached.
        """
        logits = self.logits(codes, upper_codes, labels, reference)  # (B, T, bins) float32
        targets = codes.to(logits.device, torch.long)
        nats = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == targets).float().mean()
        return logits, {"loss": nats, "bits_per_token": nats.detach() / math.log(2), "accuracy": accuracy}
