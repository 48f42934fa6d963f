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
