"""KV-cache sampling: cached logits equal teacher-forced ones; ancestral, primed, upsampling, long tracks."""

import pytest
import torch

from jukebox_lite.core.config import PriorConfig, PriorLevel1Config
from jukebox_lite.core.errors import UserError
from jukebox_lite.nn.attention import EMPTY_POSITION, NULL_POSITION, LayerCache, allowed
from jukebox_lite.models.prior import LabelMix, Prior
from jukebox_lite.algorithms.sampling import (
    IncrementalDecoder, _labels_at, auto_segments, draw, filter_logits, morph, sample_codes, segment_layout, window_starts,
)

SR = 44100


def top_config(attn_order=2, labels=True, **kw):
    base = dict(
        n_ctx=32, width=32, depth=3, heads=2, blocks=4, bins=16, init_scale=5.0, attn_order=attn_order, labels=labels,
        n_genres=3, n_artists=2, max_bow_genre_size=2, t_bins=8, min_duration=10.0, max_duration=100.0, hop_length=128,
    )
    return PriorConfig(**{**base, **kw})


def up_config(**kw):
    base = dict(n_ctx=32, width=32, depth=3, heads=1, blocks=4, bins=16, init_scale=5.0, labels=False, cond_width=8, cond_depth=2)
    return PriorLevel1Config(**{**base, **kw})


def labels_for(batch=2):
    return torch.tensor([[60 * SR, 5 * SR, 32 * 128, 1, 2, -1], [30 * SR, 0, 32 * 128, 0, 0, 1]])[:batch]


def cached_logits(prior, codes, cond_kwargs, chunks=None, reference=False):
    """Teacher forcing through the KV cache: one position at a time, or in the given chunk sizes."""
    B, T = codes.shape
    decoder = IncrementalDecoder(prior, prior.conditioning(B, T, **cond_kwargs), reference=reference)
    out, t = [decoder.start()[:, None]], 0
    for size in chunks or [1] * (T - 1):
        out.append(decoder.feed(codes[:, t : t + size]))
        t += size
    return torch.cat(out, dim=1)


CASES = [
    ("order0-unlabelled", lambda: top_config(0, labels=False), False),
    ("order0-labelled", lambda: top_config(0), False),
    ("order2-unlabelled", lambda: top_config(2, labels=False), False),
    ("order2-labelled", lambda: top_config(2), False),
    ("order3-labelled", lambda: top_config(3), False),
    ("upsampler-order2", lambda: up_config(), True),
    # OpenAI's 1b_lyrics layout: 8 lyric characters before the codes, layer 15 reads them (pattern 7)
    ("order12-lyrics", lambda: top_config(12, n_tokens=8, n_vocab=5, depth=16, width=16), False),
]


@pytest.mark.parametrize("reference", [False, True], ids=["fused-steps", "masked-reference"])
@pytest.mark.parametrize("name,make_config,upsampler", CASES, ids=[c[0] for c in CASES])
def test_cached_steps_equal_full_forward(name, make_config, upsampler, reference):
    torch.manual_seed(0)
    prior = Prior(make_config()).eval()
    codes = torch.randint(0, 16, (2, 32))
    kwargs = dict(upper_codes=torch.randint(0, 16, (2, 8))) if upsampler else dict(labels=labels_for())
    if not upsampler and not prior.cfg.labels:
        kwargs = {}
    if prior.cfg.n_tokens:  # the lyric character ids follow the label columns
        kwargs = dict(labels=torch.cat([labels_for(), torch.randint(1, 5, (2, prior.cfg.n_tokens))], dim=1))
    full = prior.logits(codes, **kwargs)
    assert full.std() > 0.1  # far from uniform, so a masking mistake would show
    torch.testing.assert_close(cached_logits(prior, codes, kwargs, reference=reference), full, atol=2e-5, rtol=1e-5)
    # primed in uneven chunks that straddle rows, steps between them
    chunks = [5, 11, 1, 1, 1, 12]
    torch.testing.assert_close(cached_logits(prior, codes, kwargs, chunks, reference), full, atol=2e-5, rtol=1e-5)


def test_cache_keeps_only_what_each_pattern_needs():
    n_ctx, block_ctx = 32, 8
    expected_capacity = {0: 32, 1: 8, 2: 32, 3: 16, 4: 5}  # 4: the null key + one slot per row
    for attn_func, capacity in expected_capacity.items():
        cache = LayerCache(attn_func, n_ctx, block_ctx)
        for t in range(21):  # up to the middle of row 2
            q = torch.randn(1, 1, 1, 4)
            cache.attend(q, q.clone(), q.clone(), t)
        assert cache.k.shape[2] == capacity
        held = sorted(p for p in cache.positions if p != EMPTY_POSITION)
        wanted = {
            0: list(range(21)),
            1: list(range(16, 21)),  # current row only (stale slots of row 1 are masked, then overwritten)
            2: list(range(21)),
            3: list(range(8, 21)),  # previous and current row
            4: [NULL_POSITION, 7, 15],  # row ends
        }[attn_func]
        assert set(wanted) <= set(held)
        stale = torch.tensor(sorted(set(held) - set(wanted)), dtype=torch.long)
        future = torch.arange(21, n_ctx)
        assert not allowed(attn_func, future[:, None], stale[None, :], block_ctx, n_ctx).any()


def test_sampling_is_seeded_and_batched():
    prior = Prior(top_config(labels=False)).eval()
    a = sample_codes(prior, 3, 20, generator=torch.Generator().manual_seed(1))
    b = sample_codes(prior, 3, 20, generator=torch.Generator().manual_seed(1))
    c = sample_codes(prior, 3, 20, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 20) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 16


def test_greedy_sampling_follows_teacher_forced_argmax():
    """top_k=1 must pick the argmax of the same logits the full forward gives, at every position."""
    prior = Prior(top_config()).eval()
    y = labels_for()
    codes = sample_codes(prior, 2, 32, labels=y, top_k=1)
    sampled_y = y.clone()
    sampled_y[:, 2] = 32 * 128  # the sampler sets sample_length to one window
    assert torch.equal(prior.logits(codes, labels=sampled_y).argmax(-1), codes)


def test_primed_sampling_keeps_the_prime_and_continues_from_it():
    prior = Prior(top_config(labels=False)).eval()
    prime = torch.randint(0, 16, (2, 13))
    codes = sample_codes(prior, 2, 32, prime=prime, top_k=1)
    assert torch.equal(codes[:, :13], prime)
    assert torch.equal(prior.logits(codes)[:, 13:].argmax(-1), codes[:, 13:])


def test_upsampling_reads_the_upper_codes():
    prior = Prior(up_config()).eval()
    upper = torch.randint(0, 16, (2, 8))
    codes = sample_codes(prior, 2, 32, upper_codes=upper, top_k=1)
    assert torch.equal(prior.logits(codes, upper_codes=upper).argmax(-1), codes)
    with pytest.raises(UserError, match="Upper codes have shape"):
        sample_codes(prior, 2, 32, upper_codes=upper[:, :7])
    with pytest.raises(UserError, match="Upper codes have shape"):
        sample_codes(prior, 2, 32)


def test_draw_follows_the_filtered_distribution():
    """The inverse-CDF draw is an exact categorical draw: frequencies match, filtered codes never come."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    logits = probs.log().expand(20000, -1)
    counts = torch.bincount(draw(logits, 1.0, 0, 0.0, torch.Generator().manual_seed(0)), minlength=5).float()
    assert (counts / 20000 - probs).abs().max() < 0.015  # ~4 standard deviations of the largest cell
    kept = torch.bincount(draw(logits, 1.0, 3, 0.0, torch.Generator().manual_seed(1)), minlength=5)
    assert kept[3:].sum() == 0 and kept[:3].min() > 0
    torch.testing.assert_close(kept[:3].float() / 20000, probs[:3] / probs[:3].sum(), atol=0.015, rtol=0)
    cold = torch.bincount(draw(logits[:2000], 0.25, 0, 0.0, torch.Generator().manual_seed(2)), minlength=5)
    assert cold[0] > 0.9 * 2000  # temperature sharpens: p^4 normalised gives code 0 ~93 %


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.97)).tolist() == [[False, False, False, False]]


def test_window_starts():
    assert window_starts(20, 32, 4) == [0]
    assert window_starts(64, 32, 16) == [0, 16, 32]
    assert window_starts(70, 32, 16) == [0, 16, 32, 38]  # the last window ends at the track's end


def record_windows(prior):
    """Wrap prior.conditioning to record what each window was conditioned on."""
    seen, original = [], prior.conditioning

    def spy(batch, length, upper_codes=None, labels=None, character=None):
        seen.append((length, upper_codes, labels))
        return original(batch, length, upper_codes, labels, character)

    prior.conditioning = spy
    return seen


def test_long_top_level_track_windows_and_timing():
    prior = Prior(top_config()).eval()
    seen = record_windows(prior)
    y = labels_for(1)
    codes = sample_codes(prior, 1, 80, labels=y, top_k=1, hop_fraction=0.25)  # hop 8 tokens
    assert codes.shape == (1, 80)
    starts = window_starts(80, 32, 8)
    assert len(seen) == len(starts)
    for start, (length, _, window_labels) in zip(starts, seen):
        assert length == 32
        assert int(window_labels[0, 1]) == int(y[0, 1]) + start * 128  # offset in samples
        assert int(window_labels[0, 2]) == 32 * 128
    # each window continues its kept context greedily: check the last one against a full forward
    last = starts[-1]
    window = codes[:, last : last + 32]
    prior.conditioning = type(prior).conditioning.__get__(prior)
    assert torch.equal(prior.logits(window, labels=seen[-1][2])[:, 32 - 8 :].argmax(-1), window[:, 32 - 8 :])


def test_long_upsampled_track_reads_matching_slices():
    prior = Prior(up_config()).eval()
    seen = record_windows(prior)
    upper = torch.randint(0, 16, (2, 24))
    codes = sample_codes(prior, 2, 96, upper_codes=upper, hop_fraction=0.5)
    assert codes.shape == (2, 96)
    starts = [0, 16, 32, 48, 64]  # windows of 32 tokens, hop 16
    assert len(seen) == len(starts)  # zip alone would pass with windows missing
    for start, (length, window_upper, _) in zip(starts, seen):
        assert length == 32 and torch.equal(window_upper, upper[:, start // 4 : (start + 32) // 4])


def test_genre_morph_changes_labels_along_the_track():
    prior = Prior(top_config()).eval()
    seen = record_windows(prior)
    a, b = labels_for(1), torch.tensor([[60 * SR, 5 * SR, 32 * 128, 0, 0, 1]])
    sample_codes(prior, 1, 64, labels=morph(a, b, 64), hop_fraction=0.5)
    weights = [window_labels.weight for _, _, window_labels in seen]
    assert weights == [0.0, 0.25, 0.5]
    assert all(isinstance(w[2], LabelMix) for w in seen)
    assert int(seen[-1][2].b[0, 1]) == 5 * SR + 32 * 128  # both label sets carry the window offset


def test_track_longer_than_timing_embeddings_is_a_user_error():
    prior = Prior(top_config()).eval()
    y = torch.tensor([[int(99.99 * SR), int(99.9 * SR), 0, 1, 2, -1]])  # later windows end after 100 s
    with pytest.raises(UserError, match="timing embeddings"):
        sample_codes(prior, 1, 64, labels=y, hop_fraction=0.5)


@pytest.mark.parametrize("length,segments,overlap,step", [(1000, 4, 100, 4), (55000, 8, 256, 4), (1024, 2, 256, 4), (300, 8, 100, 4), (96, 4, 40, 4)])
def test_segment_layout_covers_the_track_with_warm_ups(length, segments, overlap, step):
    starts, seg_len = segment_layout(length, segments, overlap, step)
    assert 1 <= len(starts) <= segments and starts[0] == 0 and starts[-1] + seg_len == length
    assert all(a % step == 0 for a in starts) and seg_len % step == 0
    for previous, start in zip(starts, starts[1:]):
        assert previous + seg_len - start >= overlap  # each segment warms up over at least `overlap` tokens
        assert start > previous
    if len(starts) > 1:
        assert seg_len >= 2 * overlap
    assert segment_layout(length, 1, overlap, step) == ([0], length)


def test_segments_are_sampled_side_by_side_and_joined_where_the_previous_ended():
    """Greedy decoding is deterministic per row, so each segment equals the same segment sampled alone."""
    torch.manual_seed(0)
    prior = Prior(up_config(labels=True, n_genres=3, n_artists=2, max_bow_genre_size=1)).eval()
    length, n = 160, 2
    upper = torch.randint(0, 16, (n, length // 4))
    labels = torch.tensor([[60 * SR, 0, 0, 1, 2], [30 * SR, 0, 0, 0, 1]])
    joined = sample_codes(prior, n, length, labels=labels, upper_codes=upper, top_k=1, segments=3, overlap=0.5)
    starts, seg_len = segment_layout(length, 3, 16, 4)
    assert len(starts) == 3 and joined.shape == (n, length)
    kept_from = 0
    for k, a in enumerate(starts):
        alone = sample_codes(prior, n, seg_len, labels=_labels_at(prior, labels, a), upper_codes=upper[:, a // 4 : (a + seg_len) // 4], top_k=1)
        cut = 0 if k == 0 else starts[k - 1] + seg_len - a
        torch.testing.assert_close(joined[:, a + cut : a + seg_len], alone[:, cut:], rtol=0, atol=0)
        kept_from = a + seg_len
    assert kept_from == length
    # one segment is the sequential sampler itself
    assert torch.equal(sample_codes(prior, n, length, labels=labels, upper_codes=upper, top_k=1, segments=1),
                       sample_codes(prior, n, length, labels=labels, upper_codes=upper, top_k=1))
    with pytest.raises(UserError, match="segments"):
        sample_codes(prior, n, length, labels=labels, upper_codes=upper, segments=0)


def test_auto_segments_fill_the_batch_but_keep_segments_long():
    cpu = torch.device("cpu")
    assert auto_segments(2, 55000, 512, cpu) == 8  # 16 rows
    assert auto_segments(1, 55000, 512, cpu) == 16
    assert auto_segments(2, 3000, 512, cpu) == 2  # each segment at least two windows
    assert auto_segments(32, 55000, 512, cpu) == 1


def character_top(**kw) -> Prior:
    torch.manual_seed(0)
    prior = Prior(top_config(character_tokens=16, character_width=8, **kw))
    torch.nn.init.normal_(prior.character.project.weight, std=0.5)
    return prior.eval()


@pytest.mark.parametrize("labels", [True, False], ids=["labelled", "unlabelled"])
def test_cached_steps_with_a_track_character_equal_the_full_forward(labels):
    prior = character_top(labels=labels)
    codes, reference = torch.randint(0, 16, (2, 32)), torch.randint(0, 16, (2, 16))
    kwargs = dict(labels=labels_for()) if labels else {}
    full = prior.logits(codes, reference=reference, **kwargs)
    character = prior.character(reference)
    torch.testing.assert_close(cached_logits(prior, codes, {**kwargs, "character": character}), full, atol=2e-5, rtol=1e-5)


def test_guidance_mixes_conditioned_and_unconditioned_logits():
    prior = character_top()
    reference = torch.randint(0, 16, (2, 16))
    character = prior.character(reference)
    y = labels_for()

    def sampled(**kw):
        return sample_codes(prior, 2, 80, labels=y, generator=torch.Generator().manual_seed(5), **kw)

    unconditioned, conditioned = sampled(), sampled(character=character)
    assert not torch.equal(unconditioned, conditioned)
    assert torch.equal(sampled(character=character, guidance=0.0), unconditioned)  # the pair's second half alone
    assert torch.equal(sampled(character=character, guidance=1.0), conditioned)
    # greedy decoding at guidance 2 follows the extrapolated logits
    greedy = sample_codes(prior, 2, 32, labels=y, character=character, guidance=2.0, top_k=1)
    without, with_it = prior.logits(greedy, labels=y), prior.logits(greedy, labels=y, reference=reference)
    assert torch.equal((without + 2.0 * (with_it - without)).argmax(-1), greedy)
    with pytest.raises(UserError, match="only with a track character"):
        sampled(guidance=2.0)


def test_a_track_character_keeps_a_track_together_where_its_windows_cannot_see_each_other():
    """Synthesized tracks of four characters (each draws its codes from its own 4 of the 16), windows that
    never see each other (hop 1): with the character of a track of one kind, every window keeps to its
    kind; without it, each window picks a kind of its own."""
    torch.manual_seed(0)
    cfg = PriorConfig(n_ctx=16, width=32, depth=2, heads=1, blocks=4, bins=16, labels=False, init_scale=1.0,
                      character_tokens=16, character_width=16, character_drop=0.25)
    prior = Prior(cfg)
    generator = torch.Generator().manual_seed(0)

    def tracks(kinds: torch.Tensor, length: int) -> torch.Tensor:  # (B,) kinds → (B, length) codes
        return kinds[:, None] * 4 + torch.randint(0, 4, (len(kinds), length), generator=generator)

    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(250):
        track = tracks(torch.randint(0, 4, (32,), generator=generator), 32)  # window, then another part as reference
        _, metrics = prior(track[:, :16], reference=track[:, 16:])
        optimizer.zero_grad()
        metrics["loss"].backward()
        optimizer.step()
    prior.eval()

    def kept(character) -> float:  # the share of each track's tokens of its most common kind
        codes = sample_codes(prior, 8, 64, hop_fraction=1.0, generator=torch.Generator().manual_seed(1), character=character)
        counts = torch.stack([torch.bincount(row // 4, minlength=4) for row in codes])  # (8, kinds)
        return float(counts.max(1).values.sum() / codes.numel())

    like = prior.describe(tracks(torch.arange(8) % 4, 64))  # each sample takes the character of a track of one kind
    assert kept(like) > 0.95
    assert kept(None) < 0.8  # no character: about 4 windows' worth of independent kinds
