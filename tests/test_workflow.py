"""End to end through the real `snakemake` on a tiny study in a temporary folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
MIRROR = "/usr/share/datasets"

TINY = {
    "seeds": [0, 1],
    "device": "cpu",
    "threads": 1,
    "data": {"mirrors": [MIRROR], "download": False},
    "datasets": {"fashion_mnist": {"train_subset": 600, "test_subset": 200}},
    "models": {
        "mlp": {
            "dataset": "fashion_mnist",
            "arch": {"type": "mlp", "widths": [32]},
            "train": {"epochs": 2, "lr": 0.1, "momentum": 0.9, "checkpoints": "all"},
        },
        "cnn": {"dataset": "fashion_mnist", "arch": "study5_cnn", "train": {"epochs": 1, "optimizer": "adam", "lr": 0.003}},
    },
    "interventions": {
        "swap": {"type": "layer_swap", "model": "mlp", "modes": ["reinit", "transplant", "rewind"]},
        "filters": {
            "type": "filter_ablation",
            "model": "cnn",
            "layers": ["conv3"],
            "sets": {
                "low": {"select": "lowest_response", "k": 4},
                "rand": {"select": "random", "k": 4, "repeats": 2, "exclude": "low"},
                "each": {"select": "each"},
            },
            "compare": [["low", "rand"]],
        },
    },
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
    )


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


needs_fashion = pytest.mark.skipif(
    not Path(MIRROR, "fashion-mnist").exists(), reason="Debian's dataset-fashion-mnist is not installed (bash setup.sh installs it)"
)


@needs_fashion
@pytest.mark.slow
def test_tiny_study_runs_end_to_end(tmp_path):
    write_config(tmp_path, TINY)
    dry = snakemake(tmp_path, "-n")
    assert dry.returncode == 0, dry.stderr
    for rule in ["download", "prepare", "train"]:
        assert rule in dry.stdout

    run = snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]

    meta = json.loads((tmp_path / "results/data/fashion_mnist/meta.json").read_text())
    assert meta["n_train"] == 600 and meta["n_test"] == 200 and meta["num_classes"] == 10
    for model in ["mlp", "cnn"]:
        for seed in [0, 1]:
            folder = tmp_path / f"results/models/{model}/seed{seed}"
            for name in ["init.pt", "final.pt", "history.csv", "metrics.json"]:
                assert (folder / name).exists()
            assert (tmp_path / f"results/logs/train/{model}/seed{seed}.log").exists()
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["test_accuracy"] > 0.3  # 10 classes: well above chance on real data
    assert (tmp_path / "results/models/mlp/seed0/epoch2.pt").exists()
    history = pd.read_csv(tmp_path / "results/models/mlp/seed1/history.csv")
    assert list(history["epoch"]) == [1, 2]

    per_seed = pd.read_csv(tmp_path / "results/interventions/filters/cnn/seed1.csv")
    assert {"intervention", "model", "seed", "condition", "accuracy", "loss", "baseline_accuracy", "delta"} <= set(per_seed.columns)
    assert len(per_seed) == 1 + 1 + 2 + 64  # baseline, low, 2 random draws, every conv3 filter
    for suffix in ["per_class.csv", "confusion.csv", "examples.parquet"]:
        assert (tmp_path / f"results/interventions/filters/cnn/seed0.{suffix}").exists()
    table = pd.read_csv(tmp_path / "results/tables/filters.csv")
    assert {"mean", "std", "ci_low", "ci_high", "n_seeds"} <= set(table.columns)
    assert (table["n_seeds"] == 2).all()
    comparison = pd.read_csv(tmp_path / "results/tables/filters.comparisons.csv")
    assert list(comparison[["a", "b"]].iloc[0]) == ["low", "rand"] and "p = " in comparison.verdict[0]
    swap = pd.read_csv(tmp_path / "results/tables/swap.csv").set_index(["level", "condition"])
    assert swap.loc[("condition", "rewind:fc1:epoch2"), "mean"] == swap.loc[("condition", "baseline"), "mean"]
    assert (tmp_path / "results/units/cnn/seed0.csv").exists()
    assert (tmp_path / "results/tables/baselines.csv").exists()
    assert (tmp_path / "results/provenance.json").exists()
    for analysis in ["baselines", "filters", "swap"]:
        assert (tmp_path / f"results/notebooks/{analysis}.ipynb").exists()
        figures = list((tmp_path / f"results/figures/{analysis}").glob("*.png"))
        assert figures and all(f.with_suffix(".pdf").exists() for f in figures)
    report = snakemake(tmp_path, "--report", "report.zip")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "report.zip").stat().st_size > 10_000

    again = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c["models"]["mlp"].update(dataset="fashion"), "models.mlp.dataset: 'fashion' is not a key of datasets"),
        (lambda c: c["datasets"].update(imagenet={}), "datasets: 'imagenet' is not one of"),
        (lambda c: c["models"]["cnn"].update(arch="study9_cnn"), "models.cnn.arch: unknown preset 'study9_cnn'"),
        (lambda c: c["models"]["cnn"].update(optimiser="adam"), "models.cnn: Additional properties are not allowed ('optimiser'"),
        (lambda c: c["models"]["cnn"]["train"].update(optimizer="rmsprop"), "models.cnn.train.optimizer: 'rmsprop' is not one of"),
        (lambda c: c.update(seeds=[1, 1]), "seeds: [1, 1] has non-unique elements"),
    ],
)
def test_bad_config_stops_with_one_line_before_any_job(tmp_path, change, message):
    config = json.loads(json.dumps(TINY))
    change(config)
    write_config(tmp_path, config)
    run = snakemake(tmp_path, "-n")
    assert run.returncode != 0
    # Snakemake's own note that it read profiles/default is not part of the error.
    lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("Using workflow specific profile")]
    assert len(lines) == 1, run.stderr
    assert message in lines[0]
    assert not (tmp_path / "results").exists()
