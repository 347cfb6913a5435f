"""Config files: the default study and every paper-scale config validate; defaults are filled."""

from pathlib import Path

import pytest

from knockout.config import ConfigError, load, validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))], ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load(path)
    assert config["models"] and config["seeds"]


def test_defaults_are_filled():
    config = validate({"datasets": {"mnist": {}}, "models": {"m": {"dataset": "mnist", "arch": "study5_cnn"}}})
    assert config["seeds"] == [0, 1, 2] and config["device"] == "auto"
    assert config["data"]["mirrors"][-1] == "/usr/share/datasets"
    assert config["datasets"]["mnist"] == {"train_subset": None, "test_subset": None, "subset_seed": 0}
    assert config["models"]["m"]["train"]["optimizer"] == "sgd"
    assert config["models"]["m"]["train"]["checkpoints"] == []


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load(tmp_path / "nope.yaml")
