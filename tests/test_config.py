from pathlib import Path

import pytest
import yaml

from jukebox_lite.core.config import RecipeConfig, load_config, parse_override, save_config
from jukebox_lite.core.errors import UserError

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


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


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PIPELINES / "demo.yaml", ["data.workers=1"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["workers"] == 1
