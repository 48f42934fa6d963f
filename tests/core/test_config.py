
import pytest
import yaml

from jukebox_lite.core.config import RecipeConfig, load_config, parse_override, save_config
from jukebox_lite.core.errors import UserError
from tests.helpers import ROOT

PIPELINES = ROOT / "pipelines"


@pytest.mark.parametrize("recipe", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, RecipeConfig)
    assert cfg.name == recipe.stem


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(PIPELINES / "demo.yaml", ["data.workers=3", "data.separation.backend=none", "data.min_seconds=2"])
    assert cfg.data.workers == 3
    assert cfg.data.separation.backend == "none"
    assert cfg.data.min_seconds == 2.0 and isinstance(cfg.data.min_seconds, float)
    assert load_config(None, ["data.loudness_lufs=-2e1"]).data.loudness_lufs == -20.0  # YAML: a string


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  sampel_rate: 22050\n")
    with pytest.raises(UserError, match="data.sampel_rate"):
        load_config(path)
    with pytest.raises(UserError, match="data.separation.nope"):
        load_config(None, ["data.separation.nope=1"])


def test_wrong_types_and_values_are_errors():
    with pytest.raises(UserError, match="data.workers"):
        load_config(None, ["data.workers=many"])
    with pytest.raises(UserError, match="data.workers"):
        load_config(None, ["data.workers=true"])
    with pytest.raises(UserError, match="backend"):
        load_config(None, ["data.separation.backend=demucs"])
    with pytest.raises(UserError, match="sample_rate"):
        load_config(None, ["data.sample_rate=100"])
    with pytest.raises(UserError, match="mask_extension"):
        load_config(None, ["data.separation.mask_extension=ones"])
    with pytest.raises(UserError, match="key=value"):
        parse_override("data.workers")


def test_missing_and_malformed_recipe(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips_without_the_derived_keys(tmp_path):
    cfg = load_config(PIPELINES / "demo.yaml", ["data.workers=1"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["workers"] == 1 and "sample_rate" not in saved["vqvae"] and "bins" not in saved["prior_level2"]


def test_extends_reads_the_base_then_only_the_differences(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ndata:\n  workers: 3\n  min_seconds: 4.0\nvqvae:\n  train:\n    steps: 50\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ndata:\n  workers: 1\nvqvae:\n  train:\n    lr: 0.001\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.data.workers, cfg.data.min_seconds) == ("child", 1, 4.0)  # a section merges key by key
    assert (cfg.vqvae.train.steps, cfg.vqvae.train.lr) == (50, 0.001)
    (tmp_path / "base.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(UserError, match="extends itself"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "lonely.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(UserError, match="missing.yaml' does not exist"):
        load_config(tmp_path / "lonely.yaml")


def test_the_finetune_recipe_is_deep_house_with_openai_upsamplers():
    finetune, deep_house = load_config(PIPELINES / "jukebox_finetune.yaml"), load_config(PIPELINES / "deep_house.yaml")
    assert finetune.data == deep_house.data and finetune.prior_level2 == deep_house.prior_level2
    assert finetune.refiner == deep_house.refiner
    assert (finetune.prior_level1.width, finetune.prior_level1.n_genres, finetune.prior_level1.cond_res_scale) == (1920, 120, True)
    assert finetune.prior_level0.cond_res_scale is False and finetune.prior_level0.train.lr == 1e-4
    assert finetune.vqvae.train.steps == 20000 and finetune.vqvae.l_bins == deep_house.vqvae.l_bins


def test_values_that_follow_from_earlier_stages_are_derived_not_written(tmp_path):
    cfg = load_config(None, ["data.sample_rate=22050", "vqvae.l_bins=512", "vqvae.downs_t=[2,2,2]"])
    assert cfg.vqvae.sample_rate == cfg.refiner.sample_rate == 22050
    assert [cfg.prior_level0.hop_length, cfg.prior_level1.hop_length, cfg.prior_level2.hop_length] == [4, 16, 64]
    assert {p.bins for p in (cfg.prior_level0, cfg.prior_level1, cfg.prior_level2)} == {512}
    assert {p.sample_rate for p in (cfg.prior_level0, cfg.prior_level1, cfg.prior_level2)} == {22050}
    with pytest.raises(UserError, match="'prior_level2.bins', which follows from vqvae.l_bins"):
        load_config(None, ["prior_level2.bins=512"])
    (tmp_path / "r.yaml").write_text("refiner:\n  sample_rate: 8000\n")
    with pytest.raises(UserError, match="'refiner.sample_rate', which follows from data.sample_rate"):
        load_config(tmp_path / "r.yaml")


def test_an_override_the_command_does_not_read_is_refused_naming_it():
    sample = ("name", "sample")
    assert load_config(None, ["sample.temperature=0.9", "name=x"], reads=sample).sample.temperature == 0.9
    with pytest.raises(UserError, match=r"Override 'prior_level2.train.steps=5' is not used by make-believe \(it reads name, sample\)"):
        load_config(None, ["prior_level2.train.steps=5"], reads=sample, command="make-believe")
    with pytest.raises(UserError, match="'prior_level2.hop_fraction', which is now 'sample.hop_fraction_level2'"):
        load_config(None, ["prior_level2.hop_fraction=0.25"], reads=sample)
    separation = ("data.separation",)
    assert load_config(None, ["data.separation.batch_size=2"], reads=separation).data.separation.batch_size == 2
    with pytest.raises(UserError, match="data.workers=2"):
        load_config(None, ["data.workers=2"], reads=separation)
    with pytest.raises(UserError, match="it reads no recipe keys"):
        load_config(None, ["seed=1"], reads=())


@pytest.mark.parametrize("override", ["vqvae.train.lr=nan", "data.loudness_lufs=-inf", "prior_level2.m_attn=.inf", "data.min_seconds=NaN"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(UserError, match=r"it must be a finite number"):
        load_config(None, [override])


def test_alias_bombs_and_binary_recipes_are_refused_in_one_short_sentence(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefg", "bcdefgh")
    ) + "data:\n  extensions: *h\n"
    (tmp_path / "bomb.yaml").write_text(bomb)  # 10^8 values once expanded, in 400 bytes
    with pytest.raises(UserError, match="once its YAML aliases are expanded; refused") as error:
        load_config(tmp_path / "bomb.yaml")
    assert len(str(error.value)) < 300
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="is not a text file"):
        load_config(tmp_path / "binary.yaml")
    (tmp_path / "wide.yaml").write_text("data:\n  workers: [" + ", ".join(["1"] * 5000) + "]\n")
    with pytest.raises(UserError) as error:
        load_config(tmp_path / "wide.yaml")
    assert len(str(error.value)) < 300  # the value is not printed whole
