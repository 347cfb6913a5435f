"""Your network and your data, as a user brings them, checked against their own PyTorch code.

A user's plain training script (here, in the test) trains their own small CNN (a residual add, a
concatenation, squeeze-excitation) with torchvision's `ImageFolder` and `ToTensor()` alone,
saves `{"model_state_dict": ...}` per seed and measures its test accuracy its own way; knockout,
pointed at those files and at the evaluation-only test folder, must give the same predictions
on the same images, and stop with one line when told the wrong preprocessing. Beside it, a
torchvision ResNet-18 with "pretrained" weights (a state_dict the test writes into torch's cache,
as a download would) is evaluated exactly as `weights.transforms()` prepares the images.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, snakemake

import knockout

CLASSES = ["dark", "grey", "light"]

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """A residual add, a concatenation and a squeeze-excitation gate."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.se = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.a(x)) + x
        z = torch.cat([y, self.b(x)], 1)
        z = z * torch.sigmoid(self.se(z.mean((2, 3))))[:, :, None, None]
        return self.head(z.mean((2, 3)))
'''


def write_folder(root: Path) -> None:
    """train/ and test/ of 16x16 PNGs, a subfolder per class: the class is how bright the image
    is, under noise (so that a network fed other pixel values than it was trained on fails)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (16, 16, 3)) + 50 * k
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")


def users_own_training(root: Path) -> dict:
    """The user's script: ImageFolder + ToTensor() (pixels / 255, no mean or std), a few Adam
    steps per seed, a checkpoint per seed, and their own evaluation on the test folder."""
    import importlib.util

    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    loader = importlib.util.spec_from_file_location("users_net", root / "user" / "net.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    train = datasets.ImageFolder(root / "shapes" / "train", transform=transforms.ToTensor())
    test = datasets.ImageFolder(root / "shapes" / "test", transform=transforms.ToTensor())
    out = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = module.Net(num_classes=3)
        optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(8):
            for x, y in DataLoader(train, batch_size=16, shuffle=True):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                optimiser.step()
        (root / "user" / "ckpt").mkdir(exist_ok=True)
        torch.save({"model_state_dict": net.state_dict(), "epoch": 8}, root / "user" / "ckpt" / f"seed{seed}.pt")
        net.eval()
        with torch.no_grad():
            predictions = torch.cat([net(x).argmax(1) for x, _ in DataLoader(test, batch_size=5)])
        labels = torch.tensor(test.targets)
        out[seed] = {
            "predictions": predictions,
            "accuracy": (predictions == labels).float().mean().item(),
            "labels": labels,
        }
    return out


def write_pretrained(torch_home: Path) -> None:
    """resnet18's IMAGENET1K_V1 weights as torch's cache holds a download (here: seeded random
    ones; the test is of the path, not of ImageNet)."""
    import torchvision

    torch.manual_seed(0)
    member = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), folder / Path(member.url).name)


@pytest.mark.slow
def test_your_checkpoints_and_pretrained_weights_give_your_predictions(tmp_path):
    import torchvision
    from torch.utils.data import DataLoader

    from knockout.data import open_split, read_meta
    from knockout.engine.evaluate import predict_logits
    from knockout.models import load_model
    from knockout.preprocess import Preprocess

    write_folder(tmp_path / "shapes")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "net.py").write_text(NET)
    own = users_own_training(tmp_path)
    assert all(own[s]["accuracy"] > 0.6 for s in own)  # chance: 1/3
    write_pretrained(tmp_path / "torch")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    config = {
        "seeds": [0, 1],
        "device": "cpu",
        "threads": 1,
        "data": {"mirrors": [], "download": False},
        "datasets": {"shapes": {"source": "image_folder", "test": "shapes/test", "size": 16}},  # evaluation only
        "models": {
            "mine": {
                "dataset": "shapes",
                "arch": {"type": "module", "target": "user/net.py:Net"},
                "preprocess": "none",
                "checkpoints": {"final": "user/ckpt/seed{seed}.pt", "accuracy": {s: own[s]["accuracy"] for s in own}},
            },
            "r18": {
                "dataset": "shapes",
                "arch": {"type": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"},
                "checkpoints": "pretrained",
                "allow_chance": True,
            },  # weights' transforms: the default
        },
        "interventions": {
            "mine_sweep": {
                "type": "filter_ablation",
                "model": "mine",
                "layers": ["a"],
                "sets": {"each": {"select": "each"}},
            },
            "r18_layers": {
                "type": "layer_swap",
                "model": "r18",
                "layers": ["layer4.1.conv2", "fc"],
                "modes": ["rerandomize"],
            },
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/tables/{t}.csv" for t in config["interventions"]] + [
        "results/tables/baselines.csv",
        "results/provenance.json",
    ]
    run = snakemake(tmp_path, *targets, env=env)
    assert run.returncode == 0, run.stderr[-4000:]

    # Your checkpoints: your accuracy, your predictions, image by image.
    test_labels = own[0]["labels"]
    for seed in (0, 1):
        metrics = json.loads((tmp_path / f"results/models/mine/seed{seed}/metrics.json").read_text())
        assert metrics["test_accuracy"] == own[seed]["accuracy"]
        assert metrics["preprocess"]["name"] == "none" and metrics["preprocess"]["mean"] == [0.0]
        confusion = pd.read_csv(tmp_path / f"results/interventions/mine_sweep/mine/seed{seed}.confusion.csv").query(
            "condition == 'baseline'"
        )
        theirs = pd.crosstab(test_labels.numpy(), own[seed]["predictions"].numpy())
        assert {(r.true, r.predicted): r.count for r in confusion.itertuples()} == {
            (t, p): c for (t, p), c in theirs.stack().items() if c
        }
    meta = read_meta(tmp_path / "results/data/shapes/meta.json")
    assert meta["n_train"] == 0 and meta["n_test"] == 36 and meta["stats_split"] == "test"
    sweep = pd.read_csv(tmp_path / "results/tables/mine_sweep.csv").query("level == 'condition'")
    assert len(sweep) == 1 + 8 and (sweep["n_seeds"] == 2).all()

    # Pretrained torchvision weights: their transforms, exactly as torchvision's own pipeline.
    view = tmp_path / "results/data/shapes@r256-c224-bilinear"
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    theirs = torchvision.datasets.ImageFolder(tmp_path / "shapes" / "test", transform=weights.transforms())
    plan_preprocess = json.loads((tmp_path / "results/models/r18/seed0/metrics.json").read_text())["preprocess"]
    assert plan_preprocess["geometry"] == {"resize": 256, "crop": [224, 224], "interpolation": "bilinear"}
    split = open_split(view, "test", Preprocess.of(plan_preprocess, read_meta(view / "meta.json")))
    reference = torch.stack([theirs[i][0] for i in range(len(theirs))])
    assert torch.equal(split.inputs(range(len(split)), "cpu"), reference)  # the same inputs, bit for bit
    network = load_model(tmp_path / "results/models/r18/seed0/final.pt", "cpu").eval()
    plain = torchvision.models.resnet18(num_classes=3).eval()
    plain.load_state_dict(network.state_dict())
    with torch.no_grad():
        expected = torch.cat([plain(x) for x, _ in DataLoader(theirs, batch_size=7)])
    assert torch.allclose(predict_logits(network, split, batch_size=16, amp=False), expected, atol=1e-5)
    provenance = json.loads((tmp_path / "results/provenance.json").read_text())
    assert provenance["preprocess"]["r18"]["from"] == "torchvision ResNet18_Weights.IMAGENET1K_V1.transforms()"
    assert provenance["preprocess"]["mine"]["view"] == "shapes"
    assert provenance["knockout"] == knockout.__version__  # the version that ran
    layers = pd.read_csv(tmp_path / "results/tables/r18_layers.csv").query("level == 'condition'")
    assert set(layers["condition"]) == {"baseline", "rerandomize:layer4.1.conv2", "rerandomize:fc"}

    summary = subprocess.run(
        [sys.executable, "-m", "knockout", "summary", "--config", "config.yaml", "--model", "r18"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env | {"PYTHONPATH": str(ROOT / "src")},
    )
    assert summary.returncode == 0, summary.stderr
    assert "(prepared view shapes@r256-c224-bilinear), input (3, 224, 224)" in summary.stdout
    assert (
        "Preprocess: weights: mean 0.485, 0.456, 0.406, std 0.229, 0.224, 0.225, resize 256, crop [224, 224], bilinear "
        "(torchvision ResNet18_Weights.IMAGENET1K_V1.transforms())" in summary.stdout
    )

    # The wrong preprocessing (the dataset's mean and std, knockout's default for its own networks):
    # the adopt job stops with one line, and no table is made of it.
    config["models"]["mine"]["preprocess"] = "dataset"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "results/tables/mine_sweep.csv", env=env)
    assert run.returncode != 0
    lines = (tmp_path / "results/logs/adopt/mine/seed0.log").read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "knockout adopt: error: models.mine.checkpoints.accuracy.0: you measured "
    ), lines
    assert "models.mine.preprocess is dataset: mean" in lines[0]
    assert not (tmp_path / "results/models/mine/seed0/final.pt").exists()


def test_a_network_at_chance_stops_unless_meant(tmp_path):
    """A random network adopted as if trained: its adopt job stops with one line naming the
    model, its accuracy, chance and its preprocessing; `allow_chance` lets it through."""
    from knockout.config import resolve
    from knockout.errors import ConfigError
    from knockout.jobs import adopt, prepare
    from knockout.data import fetch
    from knockout.models import build_model
    from knockout.preprocess import resolve as resolve_preprocess
    from knockout.settings import AdoptSettings, PrepareSettings

    rng = np.random.default_rng(0)
    labels = np.arange(300) % 10
    images = (rng.random((300, 1, 8, 8)) * 60).astype(np.uint8) + labels[:, None, None, None].astype(np.uint8) * 19
    np.savez(tmp_path / "d.npz", test_images=images, test_labels=labels)  # evaluation only
    entry = resolve("dataset_tensors", {"source": "tensors", "path": str(tmp_path / "d.npz")})
    fetch("d", tmp_path / "raw", [], entry=entry)
    prepare(PrepareSettings(dataset="d", entry=entry), str(tmp_path / "raw"), str(tmp_path / "data"))
    arch = {"type": "mlp", "widths": [16]}
    torch.manual_seed(0)
    torch.save(build_model(arch, (1, 8, 8), 10).state_dict(), tmp_path / "random.pt")
    job = AdoptSettings(
        model="m",
        arch=arch,
        epochs=[],
        eval_batch_size=64,
        preprocess=resolve_preprocess("m", {"arch": arch}),
        resident_mb=0,
        device="cpu",
    )
    with pytest.raises(ConfigError) as err:
        adopt(
            job,
            0,
            str(tmp_path / "data"),
            str(tmp_path / "final.pt"),
            [str(tmp_path / "random.pt")],
            str(tmp_path / "metrics.json"),
        )
    message = str(err.value)
    assert "\n" not in message and message.startswith("models.m: seed 0: test accuracy ")
    assert "on 300 test images of d is not above chance (0.1000; + 3 SE: 0.1520)" in message
    assert "models.m.preprocess is dataset: mean" in message and "models.m.allow_chance: true" in message
    assert not (tmp_path / "final.pt").exists() and not (tmp_path / "metrics.json").exists()
    adopt(
        dataclasses.replace(job, allow_chance=True),
        0,
        str(tmp_path / "data"),
        str(tmp_path / "final.pt"),
        [str(tmp_path / "random.pt")],
        str(tmp_path / "metrics.json"),
    )
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] < 0.2


@pytest.mark.parametrize(
    "model,expected",
    [
        ({"arch": "study5_cnn"}, {"name": "dataset", "mean": None, "geometry": None}),
        (
            {"arch": {"type": "torchvision", "name": "resnet50", "weights": "IMAGENET1K_V2"}},
            {
                "name": "weights",
                "mean": [0.485, 0.456, 0.406],
                "geometry": {"resize": 232, "crop": [224, 224], "interpolation": "bilinear"},
            },
        ),
        (
            {"arch": {"type": "torchvision", "name": "resnet50", "weights": "/my/resnet50.pth"}},
            {"name": "dataset", "geometry": None},
        ),
        (
            {"arch": "study1_resnet50", "preprocess": {"weights": "ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1"}},
            {"name": "weights", "geometry": {"resize": 518, "crop": [518, 518], "interpolation": "bicubic"}},
        ),
        (
            {"arch": "study1_resnet50", "preprocess": "imagenet"},
            {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "geometry": None},
        ),
        ({"arch": "study5_cnn", "preprocess": "none"}, {"mean": [0.0], "std": [1.0], "geometry": None}),
        (
            {"arch": "study5_cnn", "preprocess": {"mean": [0.5], "std": [0.25], "resize": 36, "crop": 32}},
            {
                "name": "config",
                "mean": [0.5],
                "geometry": {"resize": 36, "crop": [32, 32], "interpolation": "bilinear"},
            },
        ),
    ],
)
def test_one_place_decides_a_models_preprocessing(model, expected):
    """Read from torchvision's weights metadata (there offline) or from the config; the
    geometry names the prepared view the model reads."""
    from knockout.catalog import view_name
    from knockout.preprocess import resolve

    resolved = resolve("m", model)
    assert {k: resolved[k] for k in expected} == expected
    if resolved["geometry"]:
        assert view_name("d", resolved["geometry"]).startswith("d@r")


def test_the_imagenet_example_plans_its_whole_study(tmp_path):
    """examples/imagenet_eval on a stand-in validation folder (two WordNet ids) and a stand-in
    for the cached weights: the one view at the weights' geometry, every study's jobs."""
    from PIL import Image

    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "data/imagenet/val" / wnid).mkdir(parents=True)
        Image.new("RGB", (300, 250), (120, 30, 60)).save(
            tmp_path / "data/imagenet/val" / wnid / "ILSVRC2012_val_0.JPEG"
        )
    import torchvision

    folder = tmp_path / "torch/hub/checkpoints"
    folder.mkdir(parents=True)
    (folder / Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url).name).write_bytes(b"stand-in")
    run = snakemake(
        ROOT,
        "-n",
        "--configfile",
        str(ROOT / "examples/imagenet_eval/config.yaml"),
        "--directory",
        str(tmp_path),
        env={**os.environ, "TORCH_HOME": str(tmp_path / "torch")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "results/data/imagenet_val@r232-c224-bilinear/meta.json" in run.stdout
    stats = run.stdout.split("Job stats:")[1].split("Reasons:")[0]
    jobs = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}
    assert jobs["adopt"] == 3 and jobs["intervene"] == 6 and jobs["unit_stats"] == 3 and "train" not in jobs
