"""What the tests share: the paths, running `snakemake` in a folder, configs, and the session's
prepared Fashion-MNIST and trained models.

Two tiers: `pytest` (the README's test command) runs everything not marked `slow`, in minutes;
`pytest -m slow` runs the end-to-end studies at full size through snakemake. End-to-end tests of
the first tier start from `trained`: the canonical models block (`MODELS`) trained once per
session, copied into each test's folder so that its snakemake runs only the studies under test.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Tests run on small CPU machines: keep torch from oversubscribing the cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
MIRROR = "/usr/share/datasets"  # where Debian's dataset-fashion-mnist installs

needs_fashion = pytest.mark.skipif(
    not Path(MIRROR, "fashion-mnist").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (bash setup.sh installs it)",
)

# The canonical study: a small Fashion-MNIST, two seeds, study 2's MLP (2 epochs, every epoch
# kept: rewinding needs them) and study 5's CNN (1 epoch). Tests add their studies to it.
DATA = {
    "data": {"mirrors": [MIRROR], "download": False},
    "datasets": {"fashion_mnist": {"train_subset": 600, "test_subset": 200}},
}
MODELS = {
    "mlp": {
        "dataset": "fashion_mnist",
        "arch": {"type": "mlp", "widths": [32]},
        "train": {"epochs": 2, "lr": 0.1, "momentum": 0.9, "checkpoints": "all"},
    },
    "cnn": {
        "dataset": "fashion_mnist",
        "arch": "study5_cnn",
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.003},
    },
}
BASE = {"seeds": [0, 1], "device": "cpu", "threads": 1, **DATA, "models": MODELS, "interventions": {}}


# The second tier runs on two workers (.ci/run: pytest -m slow -n 2 --dist loadfile), a file at
# a time to whichever worker is free: its files longest first (seconds, one after another on 2
# cores), so that the tiny study's file does not start last.
SECOND_TIER_SECONDS = {
    "test_workflow.py": 310,
    "test_factorize.py": 100,
    "test_api.py": 80,
    "test_your_data.py": 75,
    "test_project_folder.py": 70,
    "test_tutorial.py": 55,
    "test_shards.py": 50,
    "test_values_workflow.py": 40,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -SECOND_TIER_SECONDS.get(item.path.name, 0) if item.get_closest_marker("slow") else 0)


def snakemake(
    workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile", env: dict | None = None, timeout: int = 1200
) -> subprocess.CompletedProcess:
    """`snakemake -s <snakefile> --cores 2 <args>` in `workdir`."""
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(snakefile), "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def write_config(workdir: Path, config: dict) -> None:
    (Path(workdir) / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config))))


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run lists."""
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    output: ([^,\n]+)", dry_run_output, flags=re.M)
    return [(rule, out) for rule, out in jobs if rule != "all"]


def printed(notebook: Path) -> str:
    """What an executed notebook printed."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def one_line(run: subprocess.CompletedProcess) -> str:
    """The one line a failed snakemake run printed (Snakemake's note on its profile aside)."""
    lines = [
        line
        for line in run.stderr.splitlines()
        if line.strip() and not line.startswith("Using workflow specific profile")
    ]
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A folder in which snakemake fetched and prepared the data and trained `MODELS` for both
    seeds (download, prepare, train: the first rules of every study, once per session)."""
    if not Path(MIRROR, "fashion-mnist").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (bash setup.sh installs it)")
    folder = tmp_path_factory.mktemp("trained")
    write_config(folder, BASE)
    targets = [f"results/models/{m}/seed{s}/final.pt" for m in MODELS for s in BASE["seeds"]]
    run = snakemake(folder, *targets)
    assert run.returncode == 0, run.stderr[-4000:]
    return folder


@pytest.fixture
def with_models(trained, tmp_path):
    """(interventions, **top-level changes) -> a working folder with the session's trained models
    and prepared data copied in (times kept, so snakemake takes them as done) and the canonical
    config with those studies: its snakemake runs only what the studies add."""

    def make(interventions: dict, models: dict | None = None, **changes) -> Path:
        shutil.copytree(trained / "results", tmp_path / "results", ignore=shutil.ignore_patterns("logs", "benchmarks"))
        write_config(tmp_path, BASE | {"models": MODELS | (models or {}), "interventions": interventions} | changes)
        return tmp_path

    return make
