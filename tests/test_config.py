"""Config files: the default study and every paper-scale config validate; defaults are filled."""

from pathlib import Path

import pytest

from knockout.config import ConfigError, load, validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "path", [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))], ids=lambda p: p.name
)
def test_shipped_configs_are_valid(path):
    config = load(path).config
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


def test_the_schema_ships_inside_the_installed_package(tmp_path):
    """A wheel of the library carries its schema, so `knockout.config` works installed with pip
    outside the repository."""
    import subprocess
    import sys
    import zipfile

    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("knockout-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "knockout/schema.yaml" in names and "knockout/studies/filter_ablation.py" in names
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    code = "import knockout.config as c; print(c.SCHEMA.parent.parent.name, bool(c.load_schema()['$defs']['filter_ablation']))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split() == ["site", "True"], out.stderr[-2000:]
