"""Config files: the default study and every paper-scale config validate; defaults are filled."""

import json
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


def test_a_config_checked_before_is_not_checked_again_until_something_it_names_changes(tmp_path, monkeypatch):
    """`checked` (what the workflow parses with): the same config, files and code give the plan
    without the check; an edit of the config or of a file it names (here a checkpoint and the
    model's code) checks again; a config that fails is never remembered."""
    import os

    import torch

    import knockout.config as config_module
    from knockout.config import check, checked

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\ndef Net(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n"
    )
    from knockout.models import build_model

    for seed in (0, 1):
        torch.save(build_model({"type": "module", "target": "net.py:Net"}, (1, 28, 28), 10).state_dict(), f"w{seed}.pt")
    raw = {
        "seeds": [0],
        "datasets": {"fashion_mnist": {}},
        "models": {
            "m": {
                "dataset": "fashion_mnist",
                "arch": {"type": "module", "target": "net.py:Net"},
                "checkpoints": "w{seed}.pt",
            }
        },
        "interventions": {
            "f": {"type": "filter_ablation", "model": "m", "layers": ["1"], "sets": {"each": {"select": "each"}}}
        },
    }
    calls = []
    monkeypatch.setattr(config_module, "check", lambda c, root: calls.append(1) or check(c, root))

    def parse(changes=None):
        config = validate(json.loads(json.dumps(raw)) | (changes or {}))
        return checked(config, cache=tmp_path / "cache")

    assert list(parse().studies) == ["f"] and len(calls) == 1
    assert list(parse().studies) == ["f"] and len(calls) == 1  # remembered: not checked again
    later = os.stat("w0.pt").st_mtime_ns + 10**9
    os.utime("w0.pt", ns=(later, later))
    parse()
    assert len(calls) == 2  # the checkpoint changed
    (tmp_path / "net.py").write_text((tmp_path / "net.py").read_text() + "# edited\n")
    parse()
    parse()
    assert len(calls) == 3  # the model's code changed, then nothing did
    parse({"seeds": [0, 1]})
    assert len(calls) == 4
    with pytest.raises(ConfigError, match=f"models.m.checkpoints: no such file {tmp_path}/x0.pt"):
        parse({"seeds": [0, 1]} | {"models": {"m": raw["models"]["m"] | {"checkpoints": "x{seed}.pt"}}})
    with pytest.raises(ConfigError):
        parse({"seeds": [0, 1]} | {"models": {"m": raw["models"]["m"] | {"checkpoints": "x{seed}.pt"}}})
    assert len(calls) == 6  # a failing config is checked every time
