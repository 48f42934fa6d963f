"""The prior model: OpenAI's key layout, equivalence with OpenAI's logits, labels, errors, learning."""

import dataclasses

import pytest
import torch

from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.core.config import PriorConfig, PriorLevel1Config
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.prior import LabelMix, Prior
from jukebox_lite.models.checkpoints import load_prior
from jukebox_lite.algorithms.openai_import import prior_config_from_openai, prior_from_openai
from tests.helpers import FIXTURES, JUKEBOX_FORMAT

FORMAT = JUKEBOX_FORMAT
SR = 44100


def read_tsv(name: str) -> list[tuple[str, tuple]]:
    rows = []
    for line in (FORMAT / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        if key == "key":  # a header row
            continue
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


TINY = dict(n_ctx=512, width=128, depth=6, heads=1, attn_order=2, blocks=16, bins=2048)


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("prior_top_unlabelled_small.tsv", PriorConfig(**TINY, labels=False)),
        ("prior_top_labelled_small.tsv", PriorConfig(**TINY, n_genres=10, n_artists=5, t_bins=64, max_bow_genre_size=1)),
        (
            "upsampler_level1_small.tsv",
            PriorLevel1Config(
                **TINY, n_genres=10, n_artists=5, cond_width=64, cond_depth=4,
                cond_dilation_growth_rate=3, cond_dilation_cycle=8, cond_c_res=1,
            ),
        ),
    ],
)
def test_state_dict_keys_and_shapes_match_openai(name, cfg):
    ours = [(k, tuple(v.shape)) for k, v in Prior(cfg).state_dict().items()]
    assert ours == read_tsv(name)


def load_fixture(name):
    return torch.load(FIXTURES / f"openai_prior_{name}.pt", weights_only=True)


@pytest.mark.parametrize("name", ["top_unlabelled", "top_labelled", "upsampler_level1"])
def test_logits_equal_openai(name):
    f = load_fixture(name)
    prior = prior_from_openai(f["hps"], f["state_dict"])
    assert list(prior.state_dict()) == list(f["state_dict"])
    ours = prior.logits(f["codes"], upper_codes=f["upper_codes"], labels=f["labels"])
    torch.testing.assert_close(ours, f["logits"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("lyrics", ["lyrics", "no_lyrics"])
def test_logits_equal_openai_1b_lyrics_layout(lyrics):
    """OpenAI's single_enc_dec lyrics prior: [lyric characters, codes] in one window and one vocabulary, attn_order
    12 (layer 15 attends to the lyric prefix). Without lyrics their ids are left off the labels (0: padding)."""
    f = load_fixture("1b_lyrics")[lyrics]
    prior = prior_from_openai(f["hps"], f["state_dict"])
    cfg = prior.cfg
    assert (cfg.n_tokens, cfg.n_vocab, cfg.attn_order, prior.attn_funcs[-1]) == (16, 79, 12, 7)
    labels = f["labels"] if lyrics == "lyrics" else f["labels"][:, : 4 + cfg.max_bow_genre_size]
    torch.testing.assert_close(prior.logits(f["codes"], labels=labels), f["logits"], atol=2e-5, rtol=1e-5)
    if lyrics == "lyrics":  # the lyrics matter: the same codes without them give other logits
        without = prior.logits(f["codes"], labels=labels[:, : 4 + cfg.max_bow_genre_size])
        assert not torch.allclose(without, f["logits"], atol=1e-3)


def test_1b_lyrics_layout_keys_and_attention_patterns_match_openai():
    """The reduced 1b_lyrics listing in ../shared/jukebox-format: every key's shape and every layer's attn_func."""
    cfg = PriorConfig(n_ctx=512, n_tokens=64, n_vocab=79, width=256, depth=16, heads=2, attn_order=12, blocks=64, bins=2048,
                      n_genres=604, n_artists=7898, t_bins=64, max_bow_genre_size=1)
    prior = Prior(cfg)
    assert [(k, tuple(v.shape)) for k, v in prior.state_dict().items()] == read_tsv("prior_1b_lyrics_small.tsv")
    listed = [int(line.rsplit(" ", 1)[1]) for line in (FORMAT / "prior_1b_lyrics_small.tsv").read_text().splitlines()
              if line.startswith("# layer ")]
    assert prior.attn_funcs == listed


@pytest.mark.parametrize("order", ["0", "1", "3"])
def test_logits_equal_openai_other_attention_orders(order):
    """attn_order 0, 1 (with OpenAI's untied 'merged decoder' output) and 3 (row ends, with its null key)."""
    f = load_fixture("attn_orders")[order]
    prior = prior_from_openai(f["hps"], f["state_dict"])
    assert prior.cfg.attn_order == int(order)
    torch.testing.assert_close(prior.logits(f["codes"]), f["logits"], atol=2e-5, rtol=1e-5)


def test_config_from_openai_reads_sizes_from_weights():
    f = load_fixture("upsampler_level1")
    cfg = prior_config_from_openai(f["hps"], f["state_dict"])  # load_openai_checkpoint strips "module."
    assert (cfg.level, cfg.n_ctx, cfg.width, cfg.depth, cfg.bins) == (1, 64, 32, 3, 64)
    assert (cfg.cond_width, cfg.cond_depth, cfg.cond_down_t, cfg.cond_c_res, cfg.cond_res_scale) == (16, 2, 2, 1, True)
    assert (cfg.n_genres, cfg.n_artists, cfg.labels) == (5, 4, True)


def small_top(labels=True, **kw) -> PriorConfig:
    base = dict(
        n_ctx=32, width=32, depth=3, heads=2, blocks=4, bins=16, init_scale=5.0, labels=labels, n_genres=3,
        n_artists=2, max_bow_genre_size=2, t_bins=8, min_duration=10.0, max_duration=100.0, hop_length=128,
    )
    return PriorConfig(**{**base, **kw})


def label(total_s=60, offset_s=5, artist=1, genres=(2, -1)):
    return torch.tensor([[total_s * SR, offset_s * SR, 32 * 128, artist, *genres]])


def test_checkpoint_round_trip_prefers_ema(tmp_path):
    torch.manual_seed(0)
    cfg = small_top()
    model, ema = Prior(cfg), Prior(cfg)
    save_checkpoint(tmp_path / "last.pt", "prior", dataclasses.asdict(cfg), model.state_dict(), ema=ema.state_dict())
    loaded = load_prior(tmp_path)
    codes = torch.randint(0, 16, (1, 32))
    torch.testing.assert_close(loaded.logits(codes, labels=label()), ema.eval().logits(codes, labels=label()))
    assert not torch.allclose(loaded.logits(codes, labels=label()), model.eval().logits(codes, labels=label()))


@pytest.mark.parametrize(
    "kwargs,phrase",
    [
        (dict(labels=label(artist=2)), "Artist index"),
        (dict(labels=label(genres=(3, -1))), "Genre index"),
        (dict(labels=label(total_s=200)), "A track of 200.0 s is outside"),
        (dict(labels=label(total_s=60, offset_s=61)), "beyond the track or the timing"),
        (dict(labels=None), "labelled"),
    ],
)
def test_bad_labels_are_user_errors(kwargs, phrase):
    prior = Prior(small_top()).eval()
    with pytest.raises(UserError, match=phrase):
        prior.logits(torch.zeros(1, 32, dtype=torch.long), **kwargs)


def test_bad_codes_and_lengths_are_user_errors():
    prior = Prior(small_top(labels=False)).eval()
    with pytest.raises(UserError, match="outside 0..15"):
        prior.logits(torch.full((1, 8), 16))
    with pytest.raises(UserError, match="longer than this prior's n_ctx"):
        prior.logits(torch.zeros(1, 33, dtype=torch.long))
    up = Prior(PriorLevel1Config(**{**small_top(labels=False).__dict__, "level": 1, "cond_width": 8, "cond_depth": 1})).eval()
    with pytest.raises(UserError, match="Upper codes have shape"):
        up.logits(torch.zeros(1, 32, dtype=torch.long), upper_codes=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(UserError, match="needs the level-2 codes"):
        up.logits(torch.zeros(1, 32, dtype=torch.long))


def test_upsampler_conditioning_shapes_and_effect():
    cfg = PriorLevel1Config(n_ctx=32, width=16, depth=2, blocks=4, bins=16, labels=False, cond_width=8, cond_depth=2)
    prior = Prior(cfg).eval()
    upper = torch.randint(0, 16, (3, 8))
    cond = prior.conditioning(3, 32, upper_codes=upper).cond
    assert cond.shape == (3, 32, 16)  # 4× the upper codes, at the prior's width
    part = prior.conditioning(3, 20, upper_codes=upper).cond
    assert part.shape == (3, 20, 16)
    codes = torch.randint(0, 16, (3, 32))
    other = (upper + 1) % 16
    assert not torch.allclose(prior.logits(codes, upper_codes=upper), prior.logits(codes, upper_codes=other))


def test_label_mix_interpolates_label_embeddings():
    prior = Prior(small_top()).eval()
    a, b = label(artist=0, genres=(0, -1)), label(artist=1, genres=(1, 2))
    start_a, timing_a = prior.y_emb(a)
    start_b, _ = prior.y_emb(b)
    mixed = prior.conditioning(1, 32, labels=LabelMix(a, b, 0.25))
    torch.testing.assert_close(mixed.start, 0.75 * start_a + 0.25 * start_b)
    torch.testing.assert_close(prior.conditioning(1, 32, labels=LabelMix(a, b, 0.0)).start, start_a)
    torch.testing.assert_close(mixed.cond, timing_a[:, :32])  # same timing in both label sets
    with pytest.raises(UserError, match="mix weight"):
        prior.conditioning(1, 32, labels=LabelMix(a, b, 1.5))


def test_genre_padding_is_ignored():
    prior = Prior(small_top()).eval()
    start, _ = prior.y_emb(label(genres=(2, -1)))
    expected = prior.y_emb.bow_genre_emb.emb.weight[2] + prior.y_emb.artist_emb.emb.weight[1]
    torch.testing.assert_close(start[0], expected)


def test_tiny_prior_learns_a_repeating_pattern():
    torch.manual_seed(0)
    cfg = PriorConfig(n_ctx=32, width=32, depth=2, heads=1, blocks=4, bins=8, labels=False, init_scale=1.0)
    prior = Prior(cfg)
    pattern = torch.tensor([3, 1, 4, 1, 5, 7, 2, 6]).repeat(4)[None]  # period 8
    codes = torch.cat([pattern.roll(-s, 1) for s in range(4)])  # four phases of it
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(200):
        loss = prior(codes)[1]["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    logits = prior.logits(codes)
    # everything after the first period is determined by what came before
    assert prior(codes)[1]["loss"].item() < 0.6
    accuracy = (logits[:, 8:].argmax(-1) == codes[:, 8:]).float().mean().item()
    assert accuracy == 1.0
    assert torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 8), codes[:, 8:].reshape(-1)).item() < 0.05


def test_load_openai_prior_from_a_checkpoint_file(tmp_path):
    """The import path a later `import-jukebox --prior-level-N` uses: OpenAI's file layout, DDP prefix."""
    from jukebox_lite.algorithms.openai_import import load_openai_prior

    f = load_fixture("upsampler_level1")
    path = tmp_path / "prior_level_1.pth.tar"
    torch.save({"hps": f["hps"], "model": {"module." + k: v for k, v in f["state_dict"].items()}, "step": 3}, path)
    prior = load_openai_prior(path, level=1)
    torch.testing.assert_close(prior.logits(f["codes"], f["upper_codes"], f["labels"]), f["logits"], atol=2e-5, rtol=1e-5)


def test_untied_openai_output_needs_merged_decoder():
    f = load_fixture("attn_orders")["1"]
    with pytest.raises(UserError, match="merged_decoder"):
        prior_from_openai({**f["hps"], "merged_decoder": False}, f["state_dict"])


def test_released_level_1_upsampler_without_hps_gets_openai_res_scale():
    f = load_fixture("upsampler_level1")  # recorded with cond_res_scale=True, as OpenAI's upsampler_level_1
    sizes = {"blocks": f["hps"]["blocks"]}  # the one setting this tiny fixture needs beyond the released defaults
    assert prior_config_from_openai(sizes, f["state_dict"]).cond_res_scale is True
    assert prior_config_from_openai({**sizes, "level": 0}, f["state_dict"]).cond_res_scale is False


# ----------------------------------------------------------------------------------------------
# Track character


def character_prior(labels=True, **kw) -> Prior:
    """A small top prior with a track-character encoder whose projection is not zero (as after training)."""
    torch.manual_seed(0)
    prior = Prior(small_top(labels, character_tokens=16, character_width=8, **kw))
    torch.nn.init.normal_(prior.character.project.weight, std=0.5)
    return prior.eval()


@pytest.mark.parametrize("labels", [True, False], ids=["labelled", "unlabelled"])
def test_without_its_character_a_prior_gives_the_logits_of_the_same_prior_without_an_encoder(labels):
    prior = character_prior(labels)
    plain = Prior(small_top(labels)).eval()
    weights = {k: v for k, v in prior.state_dict().items() if not k.startswith("character.")}
    plain.load_state_dict(weights)  # strict: the encoder is all the character prior adds
    codes, reference = torch.randint(0, 16, (2, 32)), torch.randint(0, 16, (2, 16))
    y = label().repeat(2, 1) if labels else None
    expected = plain.logits(codes, labels=y)
    assert torch.equal(prior.logits(codes, labels=y), expected)
    # a dropped condition (a zero vector) adds exactly nothing either
    zero = prior.conditioning(2, 32, labels=y, character=torch.zeros(2, 8))
    none = plain.conditioning(2, 32, labels=y)
    assert torch.equal(zero.start, none.start) and (none.cond is None or torch.equal(zero.cond, none.cond))
    # with it, the logits change
    assert not torch.allclose(prior.logits(codes, labels=y, reference=reference), expected, atol=1e-3)


def test_training_drops_the_character_for_a_share_of_windows():
    prior = character_prior(character_drop=0.5).train()
    codes, reference = torch.randint(0, 16, (64, 32)), torch.randint(0, 16, (64, 16))
    y = label().repeat(64, 1)
    with torch.no_grad():
        kept = prior.eval().logits(codes, labels=y, reference=reference)
        dropped = prior.logits(codes, labels=y)
        torch.manual_seed(3)
        trained = prior.train().logits(codes, labels=y, reference=reference)
    as_dropped = torch.tensor([torch.allclose(a, b, atol=1e-5) for a, b in zip(trained, dropped)])
    as_kept = torch.tensor([torch.allclose(a, b, atol=1e-5) for a, b in zip(trained, kept)])
    assert torch.all(as_dropped ^ as_kept)  # each window either has its character or none
    assert 16 < int(as_dropped.sum()) < 48


def test_character_noise_blurs_the_vector_in_training_only():
    prior = character_prior(character_drop=0.0, character_noise=1.0)
    codes, reference = torch.randint(0, 16, (4, 32)), torch.randint(0, 16, (4, 16))
    with torch.no_grad():
        clean = prior.eval().logits(codes, labels=label().repeat(4, 1), reference=reference)
        assert torch.equal(clean, prior.logits(codes, labels=label().repeat(4, 1), reference=reference))  # eval: no noise
        noisy = prior.train().logits(codes, labels=label().repeat(4, 1), reference=reference)
    assert not torch.allclose(noisy, clean, atol=1e-3)
    encoder = prior.character  # drawn vectors are like those training fed it: the statistics' variance + noise² (1)
    variance = torch.diagonal(encoder.running_moment) - encoder.running_mean**2
    drawn = encoder.draw(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.diagonal(torch.cov(drawn.T)), variance + 1.0, atol=0.1, rtol=0)


def test_the_encoder_keeps_the_corpus_distribution_of_characters_and_draws_from_it():
    prior = character_prior().train()
    encoder = prior.character
    generator = torch.Generator().manual_seed(0)
    vectors = []
    for _ in range(300):  # well past the first 1 / MOMENTUM batches, by then a moving average
        vectors.append(encoder(torch.randint(0, 4, (16, 16), generator=generator)))  # a narrow corpus: codes 0..3
    recent = torch.cat(vectors[-100:]).detach()
    torch.testing.assert_close(encoder.running_mean, recent.mean(0), atol=0.05, rtol=0)
    drawn = encoder.draw(20000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(drawn.mean(0), recent.mean(0), atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(drawn.T), torch.cov(recent.T), atol=0.06, rtol=0)
    # describing a track (eval-style) leaves the statistics as they were
    before = encoder.running_mean.clone(), encoder.batches_seen.clone()
    described = prior.describe(torch.randint(0, 16, (3, 40)))  # 2 parts of 16 tokens each (the rest unused)
    assert described.shape == (3, 8) and prior.character.training
    assert torch.equal(encoder.running_mean, before[0]) and torch.equal(encoder.batches_seen, before[1])
    codes = torch.randint(0, 16, (1, 32))
    parts = prior.eval().character(codes.view(2, 16)).mean(0, keepdim=True)
    torch.testing.assert_close(prior.describe(codes), parts)


def test_bad_characters_are_user_errors():
    prior = character_prior()
    with pytest.raises(UserError, match=r"this prior takes \(1, 8\) float vectors"):
        prior.conditioning(1, 32, labels=label(), character=torch.zeros(1, 5))
    with pytest.raises(UserError, match="trained without a track character"):
        Prior(small_top()).conditioning(1, 32, labels=label(), character=torch.zeros(1, 8))
    with pytest.raises(UserError, match="outside 0..15"):
        prior.logits(torch.zeros(1, 32, dtype=torch.long), labels=label(), reference=torch.full((1, 16), 99))
    with pytest.raises(UserError, match="top-level prior only"):
        PriorLevel1Config(n_ctx=32, width=32, depth=2, blocks=4, bins=16, labels=False, character_tokens=16).validate()


def test_a_checkpoint_from_before_the_track_character_loads_and_runs_as_before(tmp_path):
    torch.manual_seed(0)
    cfg = small_top()
    model = Prior(cfg).eval()
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith("character_")}  # as written then
    save_checkpoint(tmp_path / "last.pt", "prior", config, model.state_dict())
    loaded = load_prior(tmp_path)
    assert not hasattr(loaded, "character") and loaded.cfg.character_tokens == 0
    codes = torch.randint(0, 16, (1, 32))
    assert torch.equal(loaded.logits(codes, labels=label()), model.logits(codes, labels=label()))
