"""Your own project folder, outside the clone: its config, a model file that imports the module
beside it, checkpoints it trained and saved the plain PyTorch way, and an image folder, all named
by relative paths. knockout runs on it as a Snakemake module of the project's own Snakefile and
with `snakemake -s <clone>/Snakefile -d <project> --configfile <project>/config.yaml`; both give
the same tables, under the project's results/, and those are the project's own evaluation of its
checkpoint, image by image, intact and with each filter silenced. A relative path that is not there
stops the run before any job, in one line naming the key and the path as resolved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, one_line, planned_jobs, snakemake, write_config
from knockout.config import ConfigError, check, validate

CLASSES = ["dark", "dim", "light", "bright"]
PER_CLASS = 25  # per split: 100 test images

LAYERS = """
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()
"""

MODEL = """
from torch import nn

from layers import ConvBlock


class Net(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.features = ConvBlock(3, 6)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
"""

# The project's Snakefile, as `snakedeploy deploy-workflow` writes it (the module by path here; by
# github(...) and a tag in the docs).
SNAKEFILE = f"""configfile: "config.yaml"


module knockout:
    snakefile: "{ROOT / "Snakefile"}"
    config: config


use rule * from knockout as knockout_*
"""

CONFIG = {
    "seeds": [0],
    "device": "cpu",
    "threads": 1,
    "data": {"mirrors": [], "download": False},
    "datasets": {"shapes": {"source": "image_folder", "train": "images/train", "test": "images/test", "size": 12}},
    "models": {
        "net": {
            "dataset": "shapes",
            "arch": {"type": "module", "target": "model.py:Net"},
            "preprocess": "none",  # the project's ToTensor(): pixels / 255
            "checkpoints": "checkpoints/seed{seed}.pt",
        }
    },
    "interventions": {
        "filters": {
            "type": "filter_ablation",
            "model": "net",
            "layers": ["features.conv"],
            "sets": {"each": {"select": "each"}},
        }
    },
}
TARGETS = ["results/tables/filters.csv", "results/tables/baselines.csv", "results/provenance.json"]


def write_images(root: Path) -> None:
    """images/{train,test}/<class>/NNN.png, 12x12 RGB: a class is how bright its images are,
    give or take (the classes overlap)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, name in enumerate(CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                pixels = rng.integers(0, 120, (12, 12, 3)) + 40 * k + rng.normal(0, 20)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


def project_module(root: Path):
    """The project's model.py, imported as the project's own scripts import it."""
    import importlib
    import sys

    sys.path.insert(0, str(root))
    try:
        for name in ("model", "layers"):
            sys.modules.pop(name, None)
        return importlib.import_module("model")
    finally:
        sys.path.remove(str(root))
        for name in ("model", "layers"):
            sys.modules.pop(name, None)


def train_and_evaluate(root: Path) -> dict:
    """The project's own script: a plain training loop, torch.save(state_dict), and its own
    evaluation of that checkpoint on the test images: intact, and with each filter of
    features.conv silenced (its output channel zeroed)."""
    from torch.nn import functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    Net = project_module(root).Net
    train = datasets.ImageFolder(root / "images/train", transform=transforms.ToTensor())
    test = datasets.ImageFolder(root / "images/test", transform=transforms.ToTensor())
    torch.manual_seed(0)
    net = Net()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(15):
        for x, y in DataLoader(train, batch_size=25, shuffle=True):
            optimiser.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimiser.step()
    (root / "checkpoints").mkdir()
    torch.save(net.state_dict(), root / "checkpoints/seed0.pt")

    def predictions(state: dict) -> torch.Tensor:
        model = Net()
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x).argmax(1) for x, _ in DataLoader(test, batch_size=32)])

    state = torch.load(root / "checkpoints/seed0.pt", weights_only=True)
    silenced = {}
    for unit in range(6):
        changed = {k: v.clone() for k, v in state.items()}
        changed["features.conv.weight"][unit] = 0
        changed["features.conv.bias"][unit] = 0
        silenced[unit] = predictions(changed)
    return {"labels": torch.tensor(test.targets), "intact": predictions(state), "silenced": silenced}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project folder (outside the clone) and its own evaluation of its checkpoint."""
    root = tmp_path_factory.mktemp("my-project")
    assert not root.resolve().is_relative_to(ROOT)
    (root / "layers.py").write_text(LAYERS)
    (root / "model.py").write_text(MODEL)
    write_images(root)
    theirs = train_and_evaluate(root)
    write_config(root, CONFIG)
    return root, theirs


def copy_of(project: Path, folder: Path) -> Path:
    shutil.copytree(project, folder)
    return folder


def tables(folder: Path) -> dict[str, pd.DataFrame]:
    results = folder / "results"
    found = sorted(list((results / "tables").glob("*.csv")) + list((results / "interventions").rglob("*.csv")))
    return {str(p.relative_to(results)): pd.read_csv(p) for p in found}


@pytest.mark.slow  # two runs of seven jobs each and two dry runs: about a minute on 2 idle cores
def test_the_module_and_the_clones_snakefile_give_the_projects_own_evaluation(project, tmp_path):
    root, theirs = project
    # (a) a Snakemake module of the project's own Snakefile, run in the project
    mine = copy_of(root, tmp_path / "as-module")
    (mine / "Snakefile").write_text(SNAKEFILE)
    run = snakemake(mine, *TARGETS, snakefile=mine / "Snakefile")
    assert run.returncode == 0, run.stderr[-3000:]
    # (b) the clone's Snakefile, the project as its working directory and its config
    other = copy_of(root, tmp_path / "by-path")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = snakemake(elsewhere, *TARGETS, "-d", str(other), "--configfile", str(other / "config.yaml"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (elsewhere / "results").exists() and not (ROOT / "results/tables/filters.csv").exists()

    # Both the same tables, written under the project.
    a, b = tables(mine), tables(other)
    assert "tables/filters.csv" in a and "interventions/filters/net/seed0.confusion.csv" in a
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)

    # knockout's predictions are the project's own: the confusion of every condition, the accuracy.
    labels = theirs["labels"].numpy()
    confusion = a["interventions/filters/net/seed0.confusion.csv"]
    table = a["interventions/filters/net/seed0.csv"].set_index("condition")
    conditions = {"baseline": theirs["intact"]} | {
        c: theirs["silenced"][int(c.rpartition(":")[2])] for c in table.index if c != "baseline"
    }
    assert len(conditions) == 1 + 6
    for condition, predicted in conditions.items():
        expected = pd.crosstab(labels, predicted.numpy()).stack()
        rows = confusion[confusion["condition"] == condition]
        assert {(r.true, r.predicted): r.count for r in rows.itertuples()} == {
            (t, p): c for (t, p), c in expected.items() if c
        }, condition
        assert table.loc[condition, "accuracy"] == pytest.approx((predicted.numpy() == labels).mean(), abs=1e-6)
    baseline = a["tables/filters.csv"].query("level == 'condition' and condition == 'baseline'")
    assert baseline["accuracy_mean"].iloc[0] == pytest.approx((theirs["intact"].numpy() == labels).mean(), abs=1e-6)
    assert (theirs["intact"].numpy() == labels).mean() > 0.5  # chance: 0.25

    # The record names the knockout that ran and the clone's commit (the project has no git).
    provenance = json.loads((mine / "results/provenance.json").read_text())
    import knockout

    assert provenance["knockout"] == knockout.__version__
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert provenance["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)

    # Nothing to redo; an edit of the module the model file imports redoes what built the network.
    def dry_run():
        run = snakemake(elsewhere, *TARGETS, "-n", "-d", str(other), "--configfile", str(other / "config.yaml"))
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout + run.stderr

    assert "Nothing to be done" in dry_run()
    (other / "layers.py").write_text(LAYERS + "\n# the user edits a comment\n")
    assert "rule adopt" in dry_run()


def test_as_a_module_by_path_the_workflows_own_files_come_from_the_clone(project, tmp_path):
    """The default target of the project's Snakefile plans every job, each of the workflow's files
    (the notebooks) from the clone, each of the project's (its checkpoints) from the project."""
    root, _ = project
    mine = copy_of(root, tmp_path / "project")
    (mine / "Snakefile").write_text(SNAKEFILE)
    dry = snakemake(mine, "-n", snakefile=mine / "Snakefile")
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = planned_jobs(dry.stdout)
    assert ("knockout_notebook", "results/notebooks/filters.ipynb") in jobs
    assert ("knockout_adopt", "results/models/net/seed0/final.pt") in jobs
    assert f"{ROOT}/notebooks/filter_ablation.ipynb" in dry.stdout and "checkpoints/seed0.pt" in dry.stdout
    assert not (mine / "notebooks").exists()


def test_the_module_from_a_repository_reads_the_workflows_files_from_it(project, tmp_path):
    """`github("<owner>/knockout", path="Snakefile", tag=...)`: Snakemake clones the repository
    (here a local copy of this tree, by git's url.<base>.insteadOf) and reads the rules, notebooks,
    envs and report from it, never from the project."""
    root, _ = project
    if shutil.which("git") is None:
        pytest.skip("no git")
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (repo / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / os.fsdecode(name))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "v0.2.0"], ["tag", "v0.2.0"]):
        subprocess.run(git + args, check=True, capture_output=True)
    mine = copy_of(root, tmp_path / "project")
    (mine / "Snakefile").write_text(
        SNAKEFILE.replace(f'"{ROOT / "Snakefile"}"', 'github("someone/knockout", path="Snakefile", tag="v0.2.0")')
    )
    env = os.environ | {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # Snakemake's clone of the repository
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.{repo}.insteadOf",
        "GIT_CONFIG_VALUE_0": "https://github.com/someone/knockout",
    }
    dry = snakemake(mine, "-n", snakefile=mine / "Snakefile", env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "raw.githubusercontent.com/someone/knockout/v0.2.0/notebooks/filter_ablation.ipynb" in dry.stdout
    assert ("knockout_adopt", "results/models/net/seed0/final.pt") in planned_jobs(dry.stdout)


@pytest.mark.parametrize(
    "key,change,message",
    [
        (
            "models.net.checkpoints",
            {"models": {"net": CONFIG["models"]["net"] | {"checkpoints": "runs/seed{seed}.pt"}}},
            "models.net.checkpoints: no such file {root}/runs/seed0.pt",
        ),
        (
            "models.net.arch.target",
            {"models": {"net": CONFIG["models"]["net"] | {"arch": {"type": "module", "target": "net.py:Net"}}}},
            "models.net.arch.target: no such file {root}/net.py",
        ),
        (
            "datasets.shapes.test",
            {"datasets": {"shapes": CONFIG["datasets"]["shapes"] | {"test": "images/val"}}},
            "datasets.shapes.test: no such folder {root}/images/val",
        ),
        (
            "datasets.shapes.path",
            {"datasets": {"shapes": {"source": "tensors", "path": "data/shapes.npz"}}},
            "datasets.shapes.path: no such file {root}/data/shapes.npz",
        ),
        (
            "datasets.shapes.target",
            {"datasets": {"shapes": {"source": "module", "target": "data.py:Shapes"}}},
            "datasets.shapes.target: no such file {root}/data.py",
        ),
        (
            "data.mirrors.1",
            {"data": {"mirrors": ["/nonexistent", "mirror"]}},
            "data.mirrors.1: no such folder {root}/mirror",
        ),
    ],
)
def test_a_relative_path_that_is_not_there_is_one_line_naming_the_key(project, monkeypatch, key, change, message):
    root, _ = project
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError) as error:
        check(validate(json.loads(json.dumps(CONFIG | change))))
    text = str(error.value)
    assert text.startswith(message.format(root=root)), text
    assert text.endswith(f"(a relative path is taken from the working directory, {root})") and "\n" not in text


def test_through_snakemake_it_stops_before_any_job(project, tmp_path):
    root, _ = project
    mine = copy_of(root, tmp_path / "project")
    write_config(mine, CONFIG | {"models": {"net": CONFIG["models"]["net"] | {"checkpoints": "ckpt/seed{seed}.pt"}}})
    run = snakemake(tmp_path, "-d", str(mine), "--configfile", str(mine / "config.yaml"), "-n")
    assert run.returncode != 0
    assert one_line(run) == (
        f"config error: models.net.checkpoints: no such file {mine}/ckpt/seed0.pt"
        f" (a relative path is taken from the working directory, {mine})"
    )
    assert not (mine / "results").exists()
