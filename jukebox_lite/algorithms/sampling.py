"""Sampling from a prior with a KV cache: ancestral, primed, upsampling, and long tracks in windows.

Each layer's cache keeps only the keys and values its attention pattern can still use, in slots
laid out so that one decoding step reads a contiguous slice:

    pattern 0 (dense)         every position              slot = t                      reads [0, t)
    pattern 1 (row)           the current row            slot = t mod block_ctx        reads all
    pattern 2 (column)        every position, by column  slot = column·blocks + row    reads the column
    pattern 3 (previous row)  previous and current row   slot = t mod 2·block_ctx      reads all
    pattern 4 (row ends)      the last position of rows  slot = row                    reads all

Every slot remembers its position, so stale slots are masked by the same rule as in training
(`nn.attention.allowed`): the cached logits equal the teacher-forced ones up to float rounding.

Long tracks: windows of n_ctx tokens start every hop = hop_fraction·n_ctx tokens; a new window
keeps the last n_ctx - hop tokens as its context (fed through the cache in chunks) and samples the
rest. Each window's labels carry its own offset in the track (offset += start · hop_length, and
sample_length = n_ctx · hop_length, as in OpenAI's sampler); an upsampler window reads the matching
slice of the level above, cond_downsample times fewer tokens. A top prior with a track character
gets the same character vector in every window of a track; with guidance other than 1, each window
runs conditioned and unconditioned rows as one batch and draws from the logits pushed past the
unconditioned ones (classifier-free guidance).

Upsampling in segments: the level above already fixes a track's structure, so an upsampler can cut
the track into K segments and sample them side by side, as one batch of n·K rows (a sampled token
costs nearly the same at batch 16 as at batch 1 on a CPU). Each segment after the first starts at
least `overlap` tokens before the previous one ends and samples that stretch only to warm up its own
context; the joined track keeps every token of the previous segment and continues with the next
segment's tokens from where the previous one ended:

    segment 0   |================|
    segment 1               |~~~~~~=============|        ~ warm-up, dropped
    joined      |================|=============|
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from jukebox_lite.core.config import SampleConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.nn.attention import LayerCache
from jukebox_lite.nn.lora import has_adapters
from jukebox_lite.models.prior import Conditioning, LabelMix, Prior

log = logging.getLogger(__name__)


class IncrementalDecoder:
    """Runs a prior over one window a chunk at a time, keeping per-layer KV caches.

    `start()` gives the logits for position 0 (input: the start token); each `feed(codes)` takes the
    next known codes as inputs and gives the logits for the positions after them. One code at a time
    goes through the prior's fused one-position step (`TokenModel.step`); longer chunks, and every
    call when `reference` is set, go through the teacher-forced blocks and the caches' masked path:
    the reference that tests and bench/bench_prior.py hold the steps against.
    """

    def __init__(self, prior: Prior, conditioning: Conditioning, reference: bool = False):
        if has_adapters(prior):  # the fused step reads the projections' weights, which lack the adapters' update
            raise ValueError("merge the prior's LoRA adapters (nn.lora.merge_adapters) before sampling from it")
        self.prior, self.conditioning, self.reference = prior, conditioning, reference
        cfg = prior.cfg
        self.caches = [
            LayerCache(attn_func, cfg.context, cfg.block_ctx, cfg.prime_keys) for attn_func in prior.attn_funcs
        ]
        self.length = cfg.context if conditioning.cond is None else conditioning.cond.shape[1]
        self.t = 0  # next position
        self.n_vocab = cfg.n_vocab  # a lyrics prior's vocabulary: characters, then the codes
        weight = None if reference else prior.prior.output_weight()  # (W, n_vocab + bins)
        if weight is not None and self.n_vocab:  # the codes' columns only
            weight = weight[:, self.n_vocab :].contiguous() if weight.device.type == "cpu" else weight[:, self.n_vocab :]
        self.out_weight = weight

    def _run(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, L, W) inputs of positions t..t+L-1 → (B, L, bins) float logits."""
        L, t = h.shape[1], self.t
        if t + L > self.length:
            raise UserError(f"Cannot decode past position {self.length} of this window.")
        cond = None if self.conditioning.cond is None else self.conditioning.cond[:, t : t + L]
        if L == 1 and not self.reference:
            logits = self.prior.prior.step(
                h[:, 0], t, None if cond is None else cond[:, 0], self.caches, self.out_weight
            )[:, None]
        else:
            logits = self.prior.prior(h, t, cond, self.caches)[..., self.n_vocab :]
        self.t += L
        return logits.float()

    def start(self) -> torch.Tensor:
        """→ (B, bins) logits for the first code: position 0, or after a lyrics prior's lyric prefix."""
        h = self.conditioning.start[:, None]
        if self.conditioning.lyrics is not None:  # start token, then the characters: the first code comes after them
            h = torch.cat([h.to(self.prior.prior.x_emb.weight.dtype), self.prior.prior.x_emb(self.conditioning.lyrics)], dim=1)
        return self._run(h)[:, -1]

    def feed(self, codes: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
        """codes (B, L): the codes at positions t-1..t+L-2 → (B, L, bins) logits for positions t..t+L-1."""
        if self.n_vocab:
            codes = codes + self.n_vocab  # the codes follow the characters in a lyrics prior's vocabulary
        if codes.shape[1] <= chunk_size:  # every sampled token: no split, no copy
            return self._run(self.prior.prior.x_emb(codes))
        return torch.cat([self._run(self.prior.prior.x_emb(c)) for c in codes.split(chunk_size, dim=1)], dim=1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Keep the top_k most likely codes and/or the smallest set whose probability reaches top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p > 0.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > top_p  # the more likely codes already hold top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """(B, bins) logits → (B,) codes, by inverting the cumulative distribution at one uniform draw per row.

    An exact categorical draw at a tenth of torch.multinomial's cost on CPU; a code of probability
    zero (filtered out) is never drawn, since u < the total and the search takes the first cdf > u.
    """
    cdf = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1).cumsum(-1)  # (B, bins)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0]


def _paired(conditioned: Conditioning, unconditioned: Conditioning) -> Conditioning:
    """The two conditionings of guided sampling as one batch: conditioned rows, then unconditioned ones."""
    cond_u = torch.zeros_like(conditioned.cond) if unconditioned.cond is None else unconditioned.cond  # adds nothing
    lyrics = None if conditioned.lyrics is None else torch.cat([conditioned.lyrics, unconditioned.lyrics])
    return Conditioning(torch.cat([conditioned.start, unconditioned.start]), torch.cat([conditioned.cond, cond_u]), lyrics)


@torch.no_grad()
def sample_window(
    prior: Prior,
    conditioning: Conditioning,
    length: int,
    context: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    unconditioned: Conditioning | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """One window from position 0: keep `context` (B, P) and sample up to `length` → (B, length).

    With `unconditioned` (classifier-free guidance) both conditionings run as one batch of 2B rows and
    each code is drawn from unconditioned + guidance · (conditioned − unconditioned) logits."""
    guided = unconditioned is not None
    if guided:
        conditioning = _paired(conditioning, unconditioned)
    decoder = IncrementalDecoder(prior, conditioning)

    def mixed(logits: torch.Tensor) -> torch.Tensor:  # (2B or B, bins) → (B, bins)
        if not guided:
            return logits
        conditioned_logits, unconditioned_logits = logits.chunk(2)
        return torch.lerp(unconditioned_logits, conditioned_logits, guidance)

    def doubled(codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([codes, codes]) if guided else codes

    logits = mixed(decoder.start())
    tokens = [] if context is None else [context]
    P = 0 if context is None else context.shape[1]
    if 0 < P < length:
        logits = mixed(decoder.feed(doubled(context))[:, -1])
    for t in range(P, length):
        code = draw(logits, temperature, top_k, top_p, generator)
        tokens.append(code[:, None])
        if t + 1 < length:
            logits = mixed(decoder.feed(doubled(code[:, None]))[:, 0])
    return torch.cat(tokens, dim=1)[:, :length]


def window_starts(length: int, n_ctx: int, hop: int) -> list[int]:
    """Window starts covering `length` tokens; the last window ends exactly at `length`."""
    if length <= n_ctx:
        return [0]
    return [min(start, length - n_ctx) for start in range(0, length - n_ctx + hop, hop)]


def _labels_at(prior: Prior, labels, start: int):
    """The labels of the window starting at token `start`: the track's labels with its own offset."""
    if labels is None:
        return None
    if callable(labels):
        labels = labels(start)
    if isinstance(labels, LabelMix):
        return LabelMix(_labels_at(prior, labels.a, start), _labels_at(prior, labels.b, start), labels.weight)
    cfg = prior.cfg
    y = labels.clone().long()
    if y.dim() == 2 and y.shape[1] >= 3:
        y[:, 1] += start * cfg.hop_length
        y[:, 2] = cfg.n_ctx * cfg.hop_length
    return y


def morph(labels_a: torch.Tensor, labels_b: torch.Tensor, length: int) -> Callable[[int], LabelMix]:
    """Labels for a track that morphs from labels_a to labels_b: window at `start` mixes start/length of b."""
    return lambda start: LabelMix(labels_a, labels_b, min(1.0, start / max(1, length)))


@torch.no_grad()
def sample_codes(
    prior: Prior,
    n: int,
    length: int,
    labels=None,
    prime: torch.Tensor | None = None,
    upper_codes: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    hop_fraction: float | None = None,
    segments: int = 1,
    overlap: float = 0.5,
    progress: bool = False,
    character: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """(n, length) codes of one level, in windows when longer than n_ctx (see the module docstring).

    hop_fraction: a new window every hop_fraction · n_ctx tokens; None takes the recipe default of
    the prior's level (`SampleConfig.hop_fraction_level<L>`).

    segments, overlap: upsamplers only: sample the track as `segments` segments side by side, each
    warming up over overlap · n_ctx tokens (fewer segments when the track is too short for them;
    `auto_segments` picks a number for a device). A prime, a label mix or morph samples in one segment.

    labels: a label tensor for the whole track (offset = the track position of token 0), a LabelMix,
    or a function of the window's start token returning either (e.g. `morph(a, b, length)`).

    character: a top prior's track character (n, D), the same for every window; guidance other than 1
    samples every token from the logits guided away from the unconditioned prior's (twice the rows).
    """
    cfg = prior.cfg
    if n < 1 or length < 1:
        raise UserError(f"Asked for {n} samples of {length} tokens; both must be at least 1.")
    if temperature <= 0:
        raise UserError(f"Temperature is {temperature}; it must be positive.")
    device = prior.device
    tokens = torch.zeros(n, 0, dtype=torch.long, device=device)
    if prime is not None:
        if prime.dim() != 2 or prime.shape[0] != n or prime.shape[1] > length:
            raise UserError(f"Prime codes have shape {tuple(prime.shape)}; expected ({n}, P) with P <= {length}.")
        prior.check_codes(prime, f"level-{cfg.level} prime codes")
        tokens = prime.to(device, torch.long)
    s = cfg.cond_downsample
    if cfg.is_upsampler:
        if upper_codes is None or length % s or tuple(upper_codes.shape) != (n, length // s):
            shape = None if upper_codes is None else tuple(upper_codes.shape)
            raise UserError(
                f"Upper codes have shape {shape}; {n} × {length} level-{cfg.level} tokens need ({n}, {length // s}) "
                f"level-{cfg.level + 1} codes (and a length that is a multiple of {s})."
            )
        upper_codes = upper_codes.to(device, torch.long)
    elif upper_codes is not None:
        raise UserError("The top-level prior takes no upper codes; pass upper_codes only to upsamplers.")

    hop_fraction = SampleConfig().hop_fraction(cfg.level) if hop_fraction is None else hop_fraction
    if not 0 < hop_fraction <= 1:
        raise UserError(f"hop_fraction is {hop_fraction}; it must be in (0, 1].")
    if segments < 1 or not 0 < overlap <= 1:
        raise UserError(f"segments is {segments} and overlap {overlap}; segments must be at least 1, overlap in (0, 1].")
    if character is not None:
        prior.character_embedding(character, n)  # one clear error before any window
    if guidance < 0 or (guidance != 1 and character is None):
        raise UserError(f"Guidance is {guidance}; it must be at least 0, and other than 1 only with a track character.")
    window_options = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                          hop_fraction=hop_fraction, progress=progress)
    if segments > 1 and cfg.is_upsampler and prime is None and (labels is None or torch.is_tensor(labels)):
        starts, seg_len = plan_segments(prior, length, segments, overlap)
        if len(starts) > 1:
            return _sample_segments(prior, n, labels, upper_codes, starts, seg_len, window_options)
    step = s if cfg.is_upsampler else 1
    hop = max(step, int(hop_fraction * cfg.n_ctx) // step * step)
    starts = window_starts(length, cfg.n_ctx, hop)
    for start in tqdm(starts, desc=f"level {cfg.level}", unit="window", disable=not progress):
        window = min(length, cfg.n_ctx)
        if tokens.shape[1] >= start + window:
            continue  # the prime already covers this window
        upper = None if upper_codes is None else upper_codes[:, start // s : (start + window) // s]
        window_labels = _labels_at(prior, labels, start)
        conditioning = prior.conditioning(n, window, upper, window_labels, character)
        unconditioned = prior.conditioning(n, window, upper, window_labels) if guidance != 1 else None
        context = tokens[:, start:]
        log.debug("level %d: window at %d, %d context tokens, %d new", cfg.level, start, context.shape[1], start + window - tokens.shape[1])
        sampled = sample_window(prior, conditioning, window, context, temperature, top_k, top_p, generator,
                                unconditioned, guidance)
        tokens = torch.cat([tokens, sampled[:, context.shape[1] :]], dim=1)
    return tokens


def segment_layout(length: int, segments: int, overlap: int, step: int) -> tuple[list[int], int]:
    """Starts of equal segments of M tokens covering `length`, each after the first starting at least
    `overlap` tokens before the previous one ends → (starts, M). Starts and M are multiples of `step`;
    there are fewer segments than asked when each would be shorter than twice the overlap."""
    overlap = -(-max(overlap, step) // step) * step
    segments = max(1, min(segments, length // overlap - 1))
    if segments == 1:
        return [0], length
    seg_len = -(-(length + (segments - 1) * overlap) // segments)  # ceil
    seg_len = min(length, -(-seg_len // step) * step)
    starts = [min(k * (seg_len - overlap), length - seg_len) for k in range(segments)]
    return starts, seg_len


def plan_segments(prior: Prior, length: int, segments: int, overlap: float) -> tuple[list[int], int]:
    """The segments an upsampler samples `length` tokens in: overlap is a fraction of its n_ctx."""
    return segment_layout(length, segments, round(overlap * prior.cfg.n_ctx), prior.cfg.cond_downsample)


def auto_segments(n: int, length: int, n_ctx: int, device: torch.device) -> int:
    """Segments that fill a batch of 16 rows on a CPU (64 on a GPU), each at least two windows long."""
    rows = 64 if device.type == "cuda" else 16
    return max(1, min(rows // n, length // (2 * n_ctx)))


def _sample_segments(
    prior: Prior, n: int, labels: torch.Tensor | None, upper_codes: torch.Tensor, starts: list[int], seg_len: int,
    window_options: dict,
) -> torch.Tensor:
    """Sample len(starts) segments of seg_len tokens as one batch, then join them → (n, length)."""
    s, K = prior.cfg.cond_downsample, len(starts)
    log.info("level %d: %d segments of %d tokens side by side (%d rows)", prior.cfg.level, K, seg_len, K * n)
    # rows segment-major: row k·n + i is segment k of track i, with its own slice of the level above
    upper = torch.cat([upper_codes[:, a // s : (a + seg_len) // s] for a in starts])  # (K·n, seg_len / s)
    rows_labels = None if labels is None else torch.cat([_labels_at(prior, labels, a) for a in starts])
    codes = sample_codes(prior, K * n, seg_len, labels=rows_labels, upper_codes=upper, **window_options)
    codes = codes.view(K, n, seg_len)
    # segment k continues where segment k-1 ended: its tokens before that were its warm-up
    pieces = [codes[0]] + [codes[k, :, starts[k - 1] + seg_len - starts[k] :] for k in range(1, K)]
    return torch.cat(pieces, dim=1)
