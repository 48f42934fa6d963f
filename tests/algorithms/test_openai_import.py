"""Importing OpenAI Jukebox checkpoints: safe unpickling, config inference, clear errors, the CLI."""

from __future__ import annotations

import argparse
import re
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from jukebox_lite.stages import import_jukebox
from jukebox_lite.core.checkpoint import load_checkpoint
from jukebox_lite.core.errors import UserError
from jukebox_lite.algorithms.openai_import import ForeignObject, load_openai_checkpoint
from jukebox_lite.stages.import_jukebox import import_vqvae
from jukebox_lite.models.checkpoints import load_vqvae
from tests.helpers import FIXTURES, JUKEBOX_FORMAT

TSV = JUKEBOX_FORMAT / "vqvae_released_hparams.tsv"


def released_shapes() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in TSV.read_text().splitlines() if not line.startswith("#")]
    return {key: tuple(int(v) for v in shape.strip("()").split(",") if v.strip()) for key, shape in rows}


def save_openai_style(path: Path, state: dict, hps_items: dict, legacy: bool = False, **extra) -> None:
    """Pickle like OpenAI's training code: hps is a `jukebox.hparams.Hyperparams` (a dict subclass).

    The `jukebox` modules exist only while saving; loading must work without them.
    """
    package, hparams = types.ModuleType("jukebox"), types.ModuleType("jukebox.hparams")

    class Hyperparams(dict):
        def __getattr__(self, attr):
            return self[attr]

        def __setattr__(self, attr, value):
            self[attr] = value

    Hyperparams.__module__, Hyperparams.__qualname__ = "jukebox.hparams", "Hyperparams"
    hparams.Hyperparams = Hyperparams
    package.hparams = hparams
    sys.modules["jukebox"], sys.modules["jukebox.hparams"] = package, hparams
    try:
        checkpoint = {"hps": Hyperparams(hps_items), "model": state, "opt": None, "step": 1234, **extra}
        # legacy: the pre-1.6 torch format OpenAI's 2020 code (torch 1.4) wrote
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules["jukebox"], sys.modules["jukebox.hparams"]


RELEASED_HPS = dict(
    sr=44100,
    levels=3,
    downs_t=(3, 2, 2),
    strides_t=(2, 2, 2),
    emb_width=64,
    l_bins=2048,
    l_mu=0.99,
    commit=0.02,
    hvqvae_multipliers=(2, 1, 1),
    loss_fn="lmix",
    lmix_l2=1.0,
    lmix_linf=0.02,
    linf_k=2048,
    width=32,
    depth=4,
    m_conv=1.0,
    dilation_growth_rate=3,
    dilation_cycle=None,
    vqvae_reverse_decoder_dilation=True,
    sample_length=262144,
    multispectral=1.0,
    bandwidth={"l1": np.float64(0.05), "l2": np.float64(0.01), "spec": np.float64(120.5)},
)


@pytest.fixture(scope="module")
def openai_file(tmp_path_factory) -> tuple[Path, dict]:
    """A synthetic released-size vqvae.pth.tar: the .tsv's keys and shapes, random values, DDP prefix."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in released_shapes().items():
        scale = 1.0 if key.endswith(".k") else 0.05
        state["module." + key] = torch.randn(shape, generator=gen) * scale
    path = tmp_path_factory.mktemp("openai") / "vqvae.pth.tar"
    save_openai_style(path, state, RELEASED_HPS)
    return path, state


def test_load_needs_no_jukebox_module(openai_file):
    path, state = openai_file
    assert "jukebox" not in sys.modules
    hps, loaded = load_openai_checkpoint(path)
    assert "jukebox" not in sys.modules
    assert set(loaded) == {key.removeprefix("module.") for key in state}
    assert torch.equal(loaded["bottleneck.level_blocks.2.k"], state["module.bottleneck.level_blocks.2.k"])
    assert hps["downs_t"] == [3, 2, 2] and hps["bandwidth"] == {"l1": 0.05, "l2": 0.01, "spec": 120.5}
    assert type(hps) is dict and type(hps["bandwidth"]["l2"]) is float


def test_legacy_torch_format_loads(tmp_path):
    path = tmp_path / "old.pth.tar"
    state = {"module.a": torch.randn(3, 4), "module.b": torch.nn.Parameter(torch.ones(2))}
    save_openai_style(path, state, {"sr": 44100, "bandwidth": {"l2": np.float64(0.1)}}, legacy=True)
    assert path.read_bytes()[:2] == b"\x80\x02"  # a bare pickle, not a zip archive
    hps, loaded = load_openai_checkpoint(path)
    assert hps == {"sr": 44100, "bandwidth": {"l2": 0.1}}
    assert torch.equal(loaded["a"], state["module.a"]) and torch.equal(loaded["b"], torch.ones(2))


def test_import_round_trips_weights_and_runs(openai_file, tmp_path):
    path, state = openai_file
    out = import_vqvae(path, tmp_path / "vqvae")
    assert out == tmp_path / "vqvae" / "last.pt"
    saved = load_checkpoint(out, kind="vqvae")  # weights_only load: the file holds plain data only
    assert saved["config"]["downs_t"] == [3, 2, 2] and saved["config"]["multipliers"] == [2, 1, 1]
    assert saved["openai_hps"]["l_bins"] == 2048
    model = load_vqvae(tmp_path / "vqvae")
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key.removeprefix("module.")], value), key
    assert model.bandwidth == pytest.approx({"l1": 0.05, "l2": 0.01, "spec": 120.5})
    # EMA state in the steady state OpenAI's restore_k sets: 262144 / hop tokens spread over 2048 codes
    block = model.bottleneck.level_blocks[0]
    assert torch.allclose(block.k_elem, torch.full((2048,), 262144 / 8 / 2048))
    assert torch.allclose(block.k_sum, block.k * 16.0) and bool(block.initialised)

    x = 0.1 * torch.randn(1, 1, 1024, generator=torch.Generator().manual_seed(1))
    codes = model.encode(x)
    assert [tuple(c.shape) for c in codes] == [(1, 128), (1, 32), (1, 8)]
    audio = model.decode(codes, level=1)
    assert audio.shape == (1, 1, 1024) and torch.isfinite(audio).all()


def test_config_inferred_from_shapes_when_hps_are_missing(tmp_path):
    # a small VQ-VAE with different structure; only the weights say what it is
    from jukebox_lite.core.config import VQVAEConfig
    from jukebox_lite.models.vqvae import VQVAE

    cfg = VQVAEConfig(sample_length=4096, downs_t=[2, 1, 1], emb_width=16, l_bins=64, width=8, depth=3, multipliers=[3, 1, 2])
    model = VQVAE(cfg)
    state = {k: v for k, v in model.state_dict().items() if k not in model.extra_state_keys()}
    path = tmp_path / "bare.pth.tar"
    torch.save({"model": state}, path)
    import_vqvae(path, tmp_path / "out")
    imported = load_vqvae(tmp_path / "out")
    for name in ("downs_t", "emb_width", "l_bins", "width", "depth", "multipliers"):
        assert getattr(imported.config, name) == getattr(cfg, name), name


def test_garbage_file_is_one_clear_error(tmp_path):
    path = tmp_path / "vqvae.pth.tar"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError, match="vqvae.pth.tar' is not a readable OpenAI Jukebox checkpoint"):
        import_vqvae(path, tmp_path / "out")
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(UserError, match="no 'model' state dict"):
        load_openai_checkpoint(path)
    with pytest.raises(UserError, match="does not exist"):
        load_openai_checkpoint(tmp_path / "missing.pth.tar")


def test_prior_checkpoint_is_refused_as_vqvae(tmp_path):
    path = tmp_path / "prior_level_2.pth.tar"
    save_openai_style(path, {"prior.x_emb.weight": torch.zeros(2048, 16)}, {"level": 2})
    with pytest.raises(UserError, match="holds no VQ-VAE weights"):
        import_vqvae(path, tmp_path / "out")


def test_wrong_shape_names_file_and_key(openai_file, tmp_path):
    _, state = openai_file
    broken = dict(state)
    broken["module.decoders.1.out.weight"] = torch.zeros(1, 64, 5)
    path = tmp_path / "broken.pth.tar"
    save_openai_style(path, broken, RELEASED_HPS)
    with pytest.raises(UserError, match=r"broken\.pth\.tar.*decoders\.1\.out\.weight"):
        import_vqvae(path, tmp_path / "out")
    assert not (tmp_path / "out" / "last.pt").exists()

    missing = {k: v for k, v in state.items() if not k.endswith("encoders.2.level_blocks.2.model.2.bias")}
    save_openai_style(path, missing, RELEASED_HPS)
    with pytest.raises(UserError, match=r"lacks the key 'encoders\.2\.level_blocks\.2\.model\.2\.bias'"):
        import_vqvae(path, tmp_path / "out")


class _RunsCode:
    """Unpickling this with plain pickle would run os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickling_runs_nothing_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"hps": {"payload": _RunsCode(marker)}, "model": {"w": torch.ones(2)}}, path)
    hps, state = load_openai_checkpoint(path)
    assert not marker.exists()
    assert torch.equal(state["w"], torch.ones(2))
    assert "touch" in str(hps["payload"])  # kept as inert data


def test_foreign_object_keeps_state():
    obj = ForeignObject.__new__(ForeignObject)
    obj.__setstate__(({"a": 1}, {"b": 2}))
    assert obj == {"a": 1, "b": 2}


def test_cli_run_writes_into_the_run_folder(openai_file, tmp_path):
    path, _ = openai_file
    parser = argparse.ArgumentParser()
    import_jukebox.add_arguments(parser)
    args = parser.parse_args(["--vqvae", str(path), "--run", str(tmp_path / "run")])
    assert import_jukebox.run(args) == 0
    assert (tmp_path / "run" / "vqvae" / "last.pt").is_file()
    with pytest.raises(UserError, match="already exists"):
        import_jukebox.run(args)
    assert import_jukebox.run(parser.parse_args([*map(str, ["--vqvae", path, "--run", tmp_path / "run"]), "--force"])) == 0
    with pytest.raises(UserError, match="no file to import"):
        import_jukebox.run(parser.parse_args(["--run", str(tmp_path / "run")]))


def test_import_jukebox_command_converts_priors_and_checks_their_level(tmp_path, capsys):
    from jukebox_lite.cli import main
    from jukebox_lite.models.checkpoints import load_prior

    files = {}
    for name in ("upsampler_level1", "top_labelled"):
        recorded = torch.load(FIXTURES / f"openai_prior_{name}.pt", weights_only=True)
        files[name] = tmp_path / f"{name}.pth.tar"  # OpenAI's container: hps + DDP-prefixed state dict
        model = {f"module.{k}": v for k, v in recorded["state_dict"].items()}
        torch.save({"hps": recorded["hps"], "model": model, "step": 7}, files[name])
        files[name + "_recorded"] = recorded

    run = tmp_path / "run"
    argv = ["import-jukebox", "--prior-level-1", str(files["upsampler_level1"]), "--prior-level-2", str(files["top_labelled"])]
    assert main([*argv, "--run", str(run)]) == 0
    for name, level in (("upsampler_level1", 1), ("top_labelled", 2)):
        recorded = files[name + "_recorded"]
        prior = load_prior(run / f"prior_level{level}")
        assert prior.cfg.level == level
        logits = prior.logits(recorded["codes"], upper_codes=recorded.get("upper_codes"), labels=recorded["labels"])
        torch.testing.assert_close(logits, recorded["logits"], atol=2e-5, rtol=1e-5)

    assert main(["import-jukebox", "--prior-level-0", str(files["top_labelled"]), "--run", str(tmp_path / "r2")]) == 2
    assert "holds a top-level prior, not a level-0 prior" in capsys.readouterr().err
    assert main([*argv, "--run", str(run)]) == 2  # nothing is overwritten without --force
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("hps_changes, reason", [
    ("a list", "holds hyperparameters that are not a table (a list)"),
    ({"downs_t": "abc"}, "has VQ-VAE hyperparameters jukebox-lite cannot use (invalid literal for int()"),
    ({"sr": float("nan")}, "has VQ-VAE hyperparameters jukebox-lite cannot use (cannot convert float NaN to integer)"),
    ({"width": 10**7}, "has hyperparameters its weights contradict: widths [20000000, 10000000, 10000000] (the weights: [64, 32, 32])"),
])
def test_hostile_vqvae_hyperparameters_are_refused_before_anything_is_built(openai_file, tmp_path, hps_changes, reason):
    path, state = openai_file
    hostile = tmp_path / "vqvae.pth.tar"
    if hps_changes == "a list":
        torch.save({"hps": ["not", "a", "table"], "model": state}, hostile)
    else:
        save_openai_style(hostile, state, {**RELEASED_HPS, **hps_changes})
    with pytest.raises(UserError, match=re.escape(reason)):
        import_vqvae(hostile, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_weights_and_bandwidths_are_not_imported_as_if_sound(openai_file, tmp_path, caplog):
    path, state = openai_file
    damaged = tmp_path / "nan.pth.tar"
    save_openai_style(damaged, {**state, "module.bottleneck.level_blocks.0.k": torch.full((2048, 64), float("nan"))}, RELEASED_HPS)
    with pytest.raises(UserError, match="weight 'module.bottleneck.level_blocks.0.k' holds NaN or infinite values"):
        import_vqvae(damaged, tmp_path / "out")
    for k, bandwidth in enumerate(({"l1": 0.0, "l2": 0.01, "spec": 1.0}, {"l1": 0.1, "l2": float("nan"), "spec": 1.0})):
        odd = tmp_path / f"odd{k}.pth.tar"
        save_openai_style(odd, state, {**RELEASED_HPS, "bandwidth": bandwidth})
        caplog.clear()
        import_vqvae(odd, tmp_path / f"odd{k}")
        assert "no usable data bandwidth" in caplog.text
        imported = load_vqvae(tmp_path / f"odd{k}").bandwidth  # a zero or NaN would divide every loss term
        assert imported != pytest.approx(bandwidth) and all(0 < v < float("inf") for v in imported.values())


@pytest.mark.parametrize("hps_changes, reason", [
    ({"heads": "abc"}, "cannot be used (ValueError: invalid literal for int()"),
    ({"heads": 10**7}, "must be a positive multiple of heads (10000000)"),
    ({"sr": float("nan")}, "cannot be used (ValueError: cannot convert float NaN to integer)"),
    ({"level": 7}, "cannot be used (ValueError: level 7 is not 0, 1 or 2)"),
])
def test_hostile_prior_hyperparameters_are_one_sentence(tmp_path, hps_changes, reason):
    from jukebox_lite.algorithms.openai_import import prior_from_openai

    recorded = torch.load(FIXTURES / "openai_prior_top_labelled.pt", weights_only=True)
    with pytest.raises(UserError, match=re.escape(reason)):
        prior_from_openai({**recorded["hps"], **hps_changes}, recorded["state_dict"])


# ----------------------------------------------------------------------------------------------
# Released layouts: files that carry no hyperparameters


def released_state_dict(width: int, depth: int, n_ctx: int, bins: int, upsampler: bool, untied: bool,
                        y_bins: tuple[int, int] = (120, 4111), t_bins: int = 128) -> dict[str, torch.Tensor]:
    """The weight shapes of a released prior, on the meta device: its sizes without its 5 billion numbers."""
    def meta(*shape):
        return torch.empty(shape, device="meta")

    sd = {"prior.x_emb.weight": meta(bins, width), "prior.pos_emb.pos_emb": meta(n_ctx, width),
          "y_emb.bow_genre_emb.emb.weight": meta(y_bins[0], width), "y_emb.artist_emb.emb.weight": meta(y_bins[1], width)}
    if untied:
        sd["prior.x_out.weight"] = meta(bins, width)
    if not upsampler:
        sd |= {f"y_emb.{name}_emb.emb.weight": meta(t_bins, width) for name in ("total_length", "absolute_pos", "relative_pos")}
    for d in range(depth):
        layer = f"prior.transformer._attn_mods.{d}."
        sd |= {layer + "attn.c_attn.w": meta(width, 3 * width // 4), layer + "mlp.c_fc.w": meta(width, width)}
    if upsampler:
        prefix = "conditioner_blocks.0.cond.model."
        sd |= {prefix + "0.weight": meta(1024, 64, 3), prefix + "1.1.weight": meta(1024, 1024, 4),
               prefix + "2.1.weight": meta(1024, 1024, 4)}
        sd |= {f"{prefix}1.0.blocks.{u}.model.1.weight": meta(1024, 1024, 3) for u in range(16)}
    return sd


def test_released_priors_without_hyperparameters_get_their_registered_settings():
    from jukebox_lite.algorithms.openai_import import openai_prior_hps, prior_config_from_openai

    top = released_state_dict(4800, 72, 8192, 2048, upsampler=False, untied=True)
    cfg = prior_config_from_openai(openai_prior_hps({}, top, 2, None, "prior_level_2.pth.tar"), top)
    assert (cfg.heads, cfg.blocks, cfg.attn_order, cfg.merged_decoder, cfg.init_scale) == (8, 128, 2, True, 0.1)
    assert (cfg.n_genres, cfg.n_artists, cfg.t_bins, cfg.max_bow_genre_size, cfg.min_duration) == (120, 4111, 128, 5, 60.0)
    for level, res_scale in ((1, True), (0, False)):
        up = released_state_dict(1920, 72, 8192, 2048, upsampler=True, untied=False)
        cfg = prior_config_from_openai(openai_prior_hps({}, up, level, None, "up.pth.tar"), up)
        assert (cfg.level, cfg.blocks, cfg.init_scale, cfg.cond_width, cfg.cond_depth, cfg.cond_res_scale) == (
            level, 128, 0.4, 1024, 16, res_scale)
    lyrics = released_state_dict(2048, 72, 6144 + 384, 79 + 2048, upsampler=False, untied=False, y_bins=(604, 7898), t_bins=64)
    cfg = prior_config_from_openai(openai_prior_hps({}, lyrics, 2, None, "1b.pth.tar"), lyrics)
    assert (cfg.n_ctx, cfg.n_tokens, cfg.n_vocab, cfg.bins, cfg.heads, cfg.attn_order, cfg.blocks) == (6144, 384, 79, 2048, 2, 12, 64)
    assert (cfg.n_genres, cfg.n_artists, cfg.t_bins, cfg.max_bow_genre_size, cfg.min_duration) == (604, 7898, 64, 1, 17.84)
    encoder = released_state_dict(4800, 79, 8192, 2048, upsampler=False, untied=True)
    with pytest.raises(UserError, match="a separate lyrics encoder .OpenAI's 5b_lyrics."):
        openai_prior_hps({}, encoder, 2, None, "5b_lyrics.pth.tar")
    with pytest.raises(UserError, match="a separate lyrics encoder"):
        openai_prior_hps({"use_tokens": True, "n_tokens": 512}, top, 2, None, "5b_lyrics.pth.tar")
    with pytest.raises(UserError, match="is a level-1 prior, but 'x' was given as level 0"):
        openai_prior_hps({}, up, 0, "upsampler_level_1", "x")


def test_a_file_without_hyperparameters_is_recognised_by_its_sizes_or_named_or_refused(tmp_path, capsys, monkeypatch):
    from jukebox_lite.algorithms import openai_import
    from jukebox_lite.cli import main
    from jukebox_lite.models.checkpoints import load_prior

    recorded = torch.load(FIXTURES / "openai_prior_top_labelled.pt", weights_only=True)
    bare = tmp_path / "prior_level_2.pth.tar"  # weights only, as released files may be
    torch.save({"model": {f"module.{k}": v for k, v in recorded["state_dict"].items()}}, bare)
    hps = recorded["hps"]
    settings = dict(level=2, width=32, depth=3, heads=hps["heads"], attn_order=2, blocks=hps["blocks"], init_scale=1.0,
                    max_bow_genre_size=hps["max_bow_genre_size"], min_duration=10.0, max_duration=100.0, merged_decoder=False)

    err = "carries no hyperparameters and its sizes (width 32, depth 3, n_ctx 64) match none of OpenAI's released level-2 priors; pass --openai-model NAME (prior_5b"
    assert main(["import-jukebox", "--prior-level-2", str(bare), "--run", str(tmp_path / "refused")]) == 2
    assert err in capsys.readouterr().err
    assert not (tmp_path / "refused" / "prior_level2" / "last.pt").exists()

    for name, n_ctx, argv in (("tiny_released", 64, []), ("tiny_other_size", 4096, ["--openai-model", "tiny_other_size"])):
        monkeypatch.setitem(openai_import.RELEASED_PRIORS, name, {**settings, "n_ctx": n_ctx})
        run = tmp_path / name
        assert main(["import-jukebox", "--prior-level-2", str(bare), *argv, "--run", str(run)]) == 0
        prior = load_prior(run / "prior_level2")
        assert (prior.cfg.heads, prior.cfg.max_bow_genre_size) == (2, 2)  # the registered settings, not OpenAI's defaults
        logits = prior.logits(recorded["codes"], labels=recorded["labels"])
        torch.testing.assert_close(logits, recorded["logits"], atol=2e-5, rtol=1e-5)
        monkeypatch.delitem(openai_import.RELEASED_PRIORS, name)
    capsys.readouterr()
    monkeypatch.setitem(openai_import.RELEASED_PRIORS, "tiny_other_size", {**settings, "n_ctx": 4096})
    assert main(["import-jukebox", "--prior-level-1", str(bare), "--openai-model", "tiny_other_size", "--run", str(tmp_path / "r")]) == 2
    assert "--openai-model tiny_other_size describes a level-2 prior; give it once, with --prior-level-2" in capsys.readouterr().err


def test_import_jukebox_reads_the_1b_lyrics_layout_with_or_without_hyperparameters(tmp_path, monkeypatch):
    from jukebox_lite.algorithms import openai_import
    from jukebox_lite.cli import main
    from jukebox_lite.models.checkpoints import load_prior

    f = torch.load(FIXTURES / "openai_prior_1b_lyrics.pt", weights_only=True)["lyrics"]
    hps = f["hps"]
    # the fixture's sizes under a registered name: what a weights-only file of another size needs --openai-model for
    monkeypatch.setitem(openai_import.RELEASED_PRIORS, "tiny_1b_lyrics", {
        **openai_import.RELEASED_PRIORS["prior_1b_lyrics"], "n_ctx": 64, "width": 16, "depth": 16, "blocks": hps["blocks"],
        "init_scale": 1.0, "n_tokens": 16, "min_duration": 10.0, "max_duration": 100.0,
    })
    model = {f"module.{k}": v for k, v in f["state_dict"].items()}
    for name, container, argv in (("with_hps", {"hps": hps, "model": model}, []),
                                  ("weights_only", {"model": model}, ["--openai-model", "tiny_1b_lyrics"])):
        path = tmp_path / f"{name}.pth.tar"
        torch.save(container, path)
        assert main(["import-jukebox", "--prior-level-2", str(path), *argv, "--run", str(tmp_path / name)]) == 0
        prior = load_prior(tmp_path / name / "prior_level2")
        assert (prior.cfg.n_tokens, prior.cfg.n_vocab, prior.cfg.attn_order) == (16, 79, 12)
        torch.testing.assert_close(prior.logits(f["codes"], labels=f["labels"]), f["logits"], atol=2e-5, rtol=1e-5)


def test_a_weights_only_5b_layout_file_of_other_sizes_imports_with_openai_model_prior_5b(tmp_path, capsys):
    """A fixture OpenAI's code made with prior_5b's registered settings (8 heads, attn_order 2, 128 blocks, untied
    merged decoder, 5 genre slots, 60-600 s) at reduced sizes: without hyperparameters, --openai-model prior_5b
    supplies exactly what the weights cannot tell."""
    from jukebox_lite.cli import main
    from jukebox_lite.models.checkpoints import load_prior

    f = torch.load(FIXTURES / "openai_prior_5b_layout.pt", weights_only=True)
    bare = tmp_path / "prior_level_2.pth.tar"
    torch.save({"model": {f"module.{k}": v for k, v in f["state_dict"].items()}}, bare)
    assert main(["import-jukebox", "--prior-level-2", str(bare), "--run", str(tmp_path / "refused")]) == 2
    assert "pass --openai-model NAME" in capsys.readouterr().err
    for name, path, argv in (("named", bare, ["--openai-model", "prior_5b"]), ("with_hps", tmp_path / "hps.pth.tar", [])):
        if name == "with_hps":
            torch.save({"hps": f["hps"], "model": f["state_dict"]}, path)
        assert main(["import-jukebox", "--prior-level-2", str(path), *argv, "--run", str(tmp_path / name)]) == 0
        prior = load_prior(tmp_path / name / "prior_level2")
        assert (prior.cfg.heads, prior.cfg.blocks, prior.cfg.merged_decoder, prior.cfg.max_bow_genre_size) == (8, 128, True, 5)
        torch.testing.assert_close(prior.logits(f["codes"], labels=f["labels"]), f["logits"], atol=2e-5, rtol=1e-5)
