"""A researcher's files as they really are, each written the way the user (or their library) writes
it, and knockout's predictions checked against the user's own evaluation, image by image.

The user's project: `model.py` (a small CNN that imports `Block` from `blocks.py` beside it),
an image folder of 5 classes, and their own training script (ImageFolder + ToTensor, Adam, an
exponential moving average of the weights). Their weights are saved as people save them: a
`torch.compile`d model's state_dict, a Lightning checkpoint written by Lightning's own Trainer, a
`.safetensors` file, timm's layout with EMA weights under `state_dict_ema`; a network whose
forward returns a dict; a head of 10 outputs on the 5 classes. Every case runs knockout's jobs
in-process on those files (the jobs the workflow's rules call); the messages for what cannot
work are one line.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from knockout import jobs
from knockout.config import ConfigError, check, validate
from knockout.data import open_split, read_meta
from knockout.engine.evaluate import predict_logits
from knockout.errors import DataError
from knockout.models import load_model
from knockout.preprocess import Preprocess
from knockout.settings import DownloadSettings, PrepareSettings

CLASSES = ["a", "b", "c", "d", "e"]
PER_CLASS = {"train": 40, "test": 30}

BLOCKS = """
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x)).relu()
"""

MODEL = '''
import torch
from torch import nn

from blocks import Block


class Net(nn.Module):
    """Two blocks and a head; `head` outputs (default: one per class); `returns` what forward gives."""

    def __init__(self, num_classes=5, head=None, returns="tensor"):
        super().__init__()
        self.b1 = Block(3, 8)
        self.b2 = Block(8, 8)
        self.head = nn.Linear(8, head or num_classes)
        self.returns = returns

    def forward(self, x):
        features = self.b2(self.b1(x)).mean((2, 3))
        logits = self.head(features)
        if self.returns == "dict":
            return {"logits": logits, "features": features}
        if self.returns == "named":
            return {"scores": logits, "features": features}
        return logits
'''


def write_images(root: Path) -> None:
    """train/ and test/ PNGs of 16x16, a folder per class: the class is how bright the image is."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in PER_CLASS.items():
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 100, (16, 16, 3)) + 35 * k
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")


def users_script(root: Path) -> dict:
    """The user's own training and evaluation, as they would write it: ImageFolder + ToTensor,
    Adam, an EMA of the weights (torch's AveragedModel), a Lightning run; their files saved
    the ways their tools save them; their predictions on the test folder."""
    import sys

    import lightning as L
    from safetensors.torch import save_file
    from torch.nn import functional as F
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    sys.path.insert(0, str(root))  # the user runs their script in their project folder
    try:
        from model import Net
    finally:
        sys.path.remove(str(root))
    train = datasets.ImageFolder(root / "images/train", transform=transforms.ToTensor())
    test = datasets.ImageFolder(root / "images/test", transform=transforms.ToTensor())
    ckpt = root / "ckpt"
    ckpt.mkdir()

    def predictions(net):
        net.eval()
        with torch.no_grad():
            return torch.cat([net(x).argmax(1) for x, _ in DataLoader(test, batch_size=16)])

    def fit(net, ema=None, epochs=6):
        optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(epochs):
            net.train()
            for x, y in DataLoader(train, batch_size=20, shuffle=True):
                optimiser.zero_grad()
                F.cross_entropy(net(x), y).backward()
                optimiser.step()
                if ema is not None:
                    ema.update_parameters(net)

    torch.manual_seed(0)
    net = Net()
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    fit(net, ema)
    torch.save(net.state_dict(), ckpt / "seed0.pt")
    torch.save(torch.compile(net).state_dict(), ckpt / "compiled_seed0.pt")  # every key `_orig_mod.`
    save_file(net.state_dict(), ckpt / "seed0.safetensors")
    # timm's train.py layout: the EMA weights beside the model's, under state_dict_ema
    torch.save(
        {"epoch": 6, "arch": "net", "state_dict": net.state_dict(), "state_dict_ema": ema.module.state_dict()},
        ckpt / "timm_seed0.pth.tar",
    )
    wide = Net(head=10)  # 10 outputs for the 5 classes: trained with class k at output 2k
    torch.manual_seed(1)
    optimiser = torch.optim.Adam(wide.parameters(), lr=0.02)
    for _ in range(6):
        for x, y in DataLoader(train, batch_size=20, shuffle=True):
            optimiser.zero_grad()
            F.cross_entropy(wide(x), 2 * y).backward()
            optimiser.step()
    torch.save({"model_state_dict": wide.state_dict(), "epoch": 6}, ckpt / "wide_seed0.pt")

    class Lit(L.LightningModule):  # the attribute names are the checkpoint's key prefixes
        def __init__(self):
            super().__init__()
            self.model = Net()
            self.model_ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)

        def training_step(self, batch, index):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def on_train_batch_end(self, *args):
            self.model_ema.update_parameters(self.model)

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=0.02)

    torch.manual_seed(2)
    lit = Lit()
    trainer = L.Trainer(
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root / "lightning",
    )
    trainer.fit(lit, DataLoader(train, batch_size=20, shuffle=True))
    trainer.save_checkpoint(ckpt / "lightning_seed0.ckpt")
    with torch.no_grad():
        wide.eval()
        wide_logits = torch.cat([wide(x) for x, _ in DataLoader(test, batch_size=16)])
    return {
        "labels": torch.tensor(test.targets),
        "net": predictions(net),
        "ema": predictions(ema.module),
        "lightning": predictions(lit.model),
        "lightning_ema": predictions(lit.model_ema.module),
        "wide_logits": wide_logits,
    }


def config(models: dict, interventions: dict | None = None) -> dict:
    return {
        "seeds": [0],
        "device": "cpu",
        "threads": 1,
        "data": {"mirrors": [], "download": False},
        "datasets": {"shapes": {"source": "image_folder", "train": "images/train", "test": "images/test", "size": 16}},
        "models": {
            name: {"dataset": "shapes", "arch": {"type": "module", "target": "model.py:Net"}, "preprocess": "none"}
            | entry
            for name, entry in models.items()
        },
        "interventions": interventions or {},
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The user's project folder with their files, and the view knockout prepares of their images."""
    root = tmp_path_factory.mktemp("project")
    (root / "blocks.py").write_text(BLOCKS)
    (root / "model.py").write_text(MODEL)
    write_images(root / "images")
    own = users_script(root)
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root)
        plan = check(validate(config({"m": {}})))
        jobs.download(plan.download_job("shapes"), "results/raw/shapes")
        jobs.prepare(plan.prepare_job("shapes"), "results/raw/shapes", "results/data/shapes")
    finally:
        os.chdir(cwd)
    return root, own


def adopted(root: Path, model: str, entry: dict, monkeypatch) -> torch.nn.Module:
    """The user's checkpoint through the config check and the adopt job, as the workflow runs
    them; the network knockout then evaluates."""
    monkeypatch.chdir(root)
    plan = check(validate(config({model: entry})))
    out = root / "results/models" / model / "seed0"
    shutil.rmtree(out, ignore_errors=True)
    jobs.adopt(
        plan.adopt_job(model),
        0,
        plan.data_dir(model),
        str(out / "final.pt"),
        plan.adopt_inputs(model, 0, "final"),
        str(out / "metrics.json"),
    )
    return load_model(out / "final.pt", "cpu").eval()


def knockouts_predictions(root: Path, network) -> torch.Tensor:
    """The network's predictions on the prepared test split, fed as the user's ToTensor() feeds it."""
    from knockout.preprocess import resolve

    meta = read_meta(root / "results/data/shapes/meta.json")
    preprocess = Preprocess.of(resolve("m", {"arch": "x", "preprocess": "none"}), meta)
    split = open_split(root / "results/data/shapes", "test", preprocess)
    assert torch.equal(split.indices, torch.arange(len(split)))  # ImageFolder's order
    return predict_logits(network, split, batch_size=32, amp=False).argmax(1)


@pytest.mark.parametrize(
    "name,checkpoints,theirs",
    [
        ("compiled", {"final": "ckpt/compiled_seed{seed}.pt"}, "net"),  # `_orig_mod.` on every key: found
        ("safetensors", {"final": "ckpt/seed{seed}.safetensors"}, "net"),
        ("timm", {"final": "ckpt/timm_seed{seed}.pth.tar"}, "net"),  # its state_dict
        ("timm_ema", {"final": "ckpt/timm_seed{seed}.pth.tar", "key": "state_dict_ema"}, "ema"),
        ("lightning", {"final": "ckpt/lightning_seed{seed}.ckpt", "prefix": "model."}, "lightning"),
        ("lightning_ema", {"final": "ckpt/lightning_seed{seed}.ckpt", "prefix": "model_ema.module."}, "lightning_ema"),
    ],
)
def test_checkpoints_as_libraries_save_them_give_the_users_predictions(project, monkeypatch, name, checkpoints, theirs):
    root, own = project
    network = adopted(root, name, {"checkpoints": checkpoints}, monkeypatch)
    assert torch.equal(knockouts_predictions(root, network), own[theirs])
    assert (own[theirs] == own["labels"]).float().mean() > 0.6  # chance: 0.2


def test_a_lightning_module_with_one_network_needs_no_prefix(project, monkeypatch, tmp_path):
    """Lightning's checkpoint of a module whose only network is `self.model`: its prefix `model.`
    is found (written by a real Trainer, then the EMA's keys dropped as a module without one has none)."""
    root, own = project
    full = torch.load(root / "ckpt/lightning_seed0.ckpt", weights_only=True)
    full["state_dict"] = {k: v for k, v in full["state_dict"].items() if k.startswith("model.")}
    torch.save(full, root / "ckpt/single_seed0.ckpt")
    network = adopted(root, "single", {"checkpoints": {"final": "ckpt/single_seed{seed}.ckpt"}}, monkeypatch)
    assert torch.equal(knockouts_predictions(root, network), own["lightning"])


@pytest.mark.parametrize(
    "checkpoints,prepare,message",
    [
        (
            {"final": "ckpt/lightning_seed{seed}.ckpt"},
            None,
            "models.m.checkpoints.final: ckpt/lightning_seed0.ckpt: the model's weights are in it under 'model.' and "
            "'model_ema.module.': choose one with checkpoints.prefix",
        ),
        (
            {"final": "ckpt/renamed_seed{seed}.pt"},
            lambda root: torch.save(
                {f"backbone.net.{k}": v for k, v in torch.load(root / "ckpt/seed0.pt").items()},
                root / "ckpt/renamed_seed0.pt",
            ),
            None,  # found: the prefix backbone.net. makes every key the model's
        ),
        (
            {"final": "ckpt/other_seed{seed}.pt"},
            lambda root: torch.save(
                {f"net.{k}".replace("b2", "block2"): v for k, v in torch.load(root / "ckpt/seed0.pt").items()},
                root / "ckpt/other_seed0.pt",
            ),
            "models.m.checkpoints.final: ckpt/other_seed0.pt does not match the architecture: lacks b1.conv.weight "
            "(32 differences); every key of it starts with 'net.'",
        ),
        (
            {"final": "ckpt/pickled_seed{seed}.pt"},
            lambda root: _pickle_whole_model(root),
            "models.m.checkpoints.final: ckpt/pickled_seed0.pt: a pickled model.Net object, not a state_dict: knockout reads "
            "weights only (unpickling runs code): save the network's model.state_dict() instead",
        ),
        (
            {"final": "ckpt/timm_seed{seed}.pth.tar", "key": "ema"},
            None,
            "models.m.checkpoints.final: ckpt/timm_seed0.pth.tar: no state_dict under 'ema' (found under: 'state_dict', "
            "'state_dict_ema')",
        ),
    ],
)
def test_checkpoints_that_do_not_fit_say_why_in_one_line(project, monkeypatch, checkpoints, prepare, message):
    root, _ = project
    monkeypatch.chdir(root)
    if prepare is not None:
        prepare(root)
    entry = config({"m": {"checkpoints": checkpoints}})
    if message is None:
        check(validate(entry))
        return
    with pytest.raises(ConfigError) as err:
        check(validate(entry))
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert str(err.value).startswith(message), str(err.value)


def _pickle_whole_model(root: Path) -> None:
    """torch.save(model): the whole module pickled, as a user's script in their folder saves it."""
    import sys

    sys.path.insert(0, str(root))
    try:
        from model import Net

        torch.save(Net(), root / "ckpt/pickled_seed0.pt")
    finally:
        sys.path.remove(str(root))


def test_a_head_that_is_not_the_datasets_classes_stops_before_any_job(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    entry = {"arch": {"type": "module", "target": "model.py:Net", "kwargs": {"head": 10}}}
    with pytest.raises(ConfigError) as err:
        check(validate(config({"wide": entry})))
    assert str(err.value) == (
        "models.wide.class_outputs: the network gives 10 outputs for 5 classes: give it a head of 5 outputs, or "
        "list here the output of each class (5 of them) (datasets.shapes)"
    )
    for outputs, problem in (([0, 2, 4], "lists 3 outputs for 5 classes"), ([0, 2, 4, 6, 10], "names output 10")):
        with pytest.raises(ConfigError, match=problem):
            check(validate(config({"wide": entry | {"class_outputs": outputs}})))


def test_class_outputs_map_every_table_to_the_datasets_classes(project, monkeypatch):
    """The 10-output head trained with class k at output 2k: with class_outputs [0, 2, 4, 6, 8]
    every table counts the data's classes (30 test images each), a prediction of an odd output
    is a wrong answer that the tables call another output (index >= 5), and the confusion table
    is the user's own crosstab."""
    root, own = project
    entry = {
        "arch": {"type": "module", "target": "model.py:Net", "kwargs": {"head": 10}},
        "class_outputs": [0, 2, 4, 6, 8],
        "checkpoints": {"final": "ckpt/wide_seed{seed}.pt"},
    }
    network = adopted(root, "wide", entry, monkeypatch)
    study = {
        "sweep": {
            "type": "filter_ablation",
            "model": "wide",
            "layers": ["b2.conv"],
            "sets": {"each": {"select": "each"}},
        }
    }
    plan = check(validate(config({"wide": entry}, study)))
    out = root / "results/interventions/sweep/wide/seed0.csv"
    jobs.intervene(plan.study_job("sweep"), 0, "results/models/wide/seed0/final.pt", plan.data_dir("wide"), str(out))
    theirs = own["wide_logits"].argmax(1)  # the user's argmax over all 10 outputs
    order = torch.tensor([0, 2, 4, 6, 8, 1, 3, 5, 7, 9])  # class-first: the classes' outputs, then the others
    as_tables = torch.argsort(order)[theirs]  # the user's output index, in the tables' numbering
    assert torch.equal(knockouts_predictions(root, network), as_tables)
    confusion = pd.read_csv(out.with_suffix(".confusion.csv"))
    baseline = confusion.query("condition == 'baseline'")
    assert baseline.groupby("true")["count"].sum().to_dict() == {k: 30 for k in range(5)}
    expected = pd.crosstab(own["labels"].numpy(), as_tables.numpy()).stack()
    assert {(r.true, r.predicted): r.count for r in baseline.itertuples()} == {
        (t, p): c for (t, p), c in expected.items() if c
    }
    for _, rows in confusion.groupby("condition"):  # every condition: 5 true classes of 30, none other
        assert rows.groupby("true")["count"].sum().to_dict() == {k: 30 for k in range(5)}
    per_class = pd.read_csv(out.with_suffix(".per_class.csv"))
    assert (per_class["n"] == 30).all() and set(per_class["class"]) == set(range(5))
    table = pd.read_csv(out)
    accuracy = (theirs == 2 * own["labels"]).float().mean().item()
    assert table.query("condition == 'baseline'")["accuracy"].item() == pytest.approx(accuracy)


@pytest.mark.parametrize("returns,output", [("dict", None), ("named", "scores")])
def test_a_forward_returning_a_dict(project, monkeypatch, returns, output):
    """Its `logits` found; another key named with models.<name>.output; the studies run on it."""
    root, own = project
    arch = {"type": "module", "target": "model.py:Net", "kwargs": {"returns": returns}}
    entry = {"arch": arch, "checkpoints": {"final": "ckpt/seed{seed}.safetensors"}, "output": output}
    network = adopted(root, f"out_{returns}", entry, monkeypatch)
    assert torch.equal(knockouts_predictions(root, network), own["net"])
    if output is not None:
        with pytest.raises(ConfigError) as err:
            check(validate(config({"m": entry | {"output": None}})))
        assert str(err.value) == (
            "models.m.output: the model returns a dict without 'logits' (keys: scores, features): name its logits "
            "with output (datasets.shapes)"
        )


def test_a_model_file_imports_the_modules_beside_it_and_the_workflow_watches_them(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    plan = check(validate(config({"m": {}})))  # builds model.py's Net, which imports blocks.py
    assert plan.code("m") == {"code": ["model.py", "blocks.py"]}
    (root / "data.py").write_text(textwrap.dedent("""
            from folders import folder_of

            def shapes(split):
                return folder_of(split)
            """))
    (root / "folders.py").write_text(textwrap.dedent("""
            from torchvision import datasets

            def folder_of(split):
                return datasets.ImageFolder(f"images/{split}")
            """))
    entry = config({"m": {}}) | {"datasets": {"shapes": {"source": "module", "target": "data.py:shapes", "size": 16}}}
    plan = check(validate(entry))
    assert plan.raw_inputs("shapes") == {"module": ["data.py", "folders.py"]}
    jobs.download(plan.download_job("shapes"), "results/raw/module_shapes")
    files = json.loads((root / "results/raw/module_shapes/manifest.json").read_text())["files"]
    assert sorted(files) == ["data.py", "folders.py"] and all("sha256" in f for f in files.values())


def test_what_the_data_cannot_be_says_where_in_one_line(tmp_path, monkeypatch):
    """NaN in float images names the images; labels out of range name every split; a truncated
    JPEG and an empty file are listed in one pass, not one per rerun."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    images[[3, 7]] = np.nan
    np.savez(tmp_path / "nan.npz", test_images=images, test_labels=np.arange(20) % 2)
    np.savez(
        tmp_path / "labels.npz",
        train_images=np.zeros((6, 8, 8), np.uint8),
        train_labels=np.array([0, 1, 2, 3, 4, 7]),
        test_images=np.zeros((4, 8, 8), np.uint8),
        test_labels=np.array([0, 1, 6, -1]),
        classes=np.array(list("abcde")),
    )
    for k in ("x", "y"):
        (tmp_path / "jpegs" / k).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 90, 20)).save(tmp_path / "jpegs" / k / f"{i}.jpg")
    whole = (tmp_path / "jpegs/x/1.jpg").read_bytes()
    (tmp_path / "jpegs/x/1.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    (tmp_path / "jpegs/y/2.jpg").write_bytes(b"")

    def cfg(entry):
        return {
            "seeds": [0],
            "device": "cpu",
            "data": {"mirrors": [], "download": False},
            "datasets": {"d": entry},
            "models": {"m": {"dataset": "d", "arch": {"type": "mlp", "widths": [4]}, "checkpoints": "w{seed}.pt"}},
        }

    with pytest.raises(ConfigError) as err:
        check(validate(cfg({"source": "tensors", "path": "labels.npz"})))
    assert "labels outside 0..4 (5 classes): train_labels min 0, max 7; test_labels min -1, max 6" in str(err.value)

    def prepared(entry):
        from knockout.config import resolve_dataset

        entry = resolve_dataset("d", entry)
        jobs.download(DownloadSettings(dataset="d", entry=entry, mirrors=[], download=False), "raw")
        jobs.prepare(PrepareSettings(dataset="d", entry=entry), "raw", "view")

    with pytest.raises(DataError) as err:
        prepared({"source": "tensors", "path": "nan.npz"})
    assert "test_images hold NaN or infinite pixels (2 images of rows 0..19, the first image 3)" in str(err.value)
    with pytest.raises(DataError) as err:
        prepared({"source": "image_folder", "test": "jpegs", "size": 8})
    message = str(err.value)
    assert "\n" not in message and message.startswith("2 of the 6 test images cannot be used: ")
    assert "(and 1 more, each on a line of this job's log)" in message


def test_every_study_family_reads_the_classes_through_class_outputs(project, monkeypatch):
    """layer_swap, a retraining study (trained here, its loss over all 10 outputs) and occlusion
    on the 10-output head: every table's classes are the data's, 30 test images each."""
    root, _ = project
    entry = {
        "arch": {"type": "module", "target": "model.py:Net", "kwargs": {"head": 10}},
        "class_outputs": [0, 2, 4, 6, 8],
        "checkpoints": {"final": "ckpt/wide_seed{seed}.pt"},
    }
    adopted(root, "wide", entry, monkeypatch)
    studies = {
        "swap": {"type": "layer_swap", "model": "wide", "layers": ["b1.conv", "head"], "modes": ["rerandomize"]},
        "variants": {"type": "architecture", "model": "wide", "variants": {"plain": {}}, "train": {"epochs": 1}},
        "occ": {"type": "occlusion", "model": "wide", "images": {"n": 3}, "windows": [5]},
    }
    plan = check(validate(config({"wide": entry}, studies)))
    final, data = "results/models/wide/seed0/final.pt", plan.data_dir("wide")
    folder = root / "results/interventions"
    jobs.intervene(plan.study_job("swap"), 0, final, data, str(folder / "swap/seed0.csv"))
    for condition in plan.studies["variants"].conditions:
        jobs.retrain(plan.study_job("variants"), 0, condition, final, data, str(folder / f"variants/runs/{condition}"))
    runs = [str(folder / f"variants/runs/{c}") for c in plan.studies["variants"].conditions]
    jobs.collect(plan.study_job("variants"), 0, runs, data, str(folder / "variants/seed0.csv"))
    for name in ("swap", "variants"):
        for table, n in (("confusion", "count"), ("per_class", "n")):
            frame = pd.read_csv(folder / f"{name}/seed0.{table}.csv")
            for _, rows in frame.groupby("condition"):
                assert rows.groupby("class" if table == "per_class" else "true")[n].sum().to_dict() == {
                    k: 30 for k in range(5)
                }, (name, table)
    occlusion = jobs.probe(
        plan.study_job("occ"), 0, final, data, str(folder / "occ/seed0.csv"), str(folder / "occ/seed0.npz")
    )
    assert set(occlusion["class_name"]) <= set(CLASSES)
    assert set(occlusion["takeover_name"]) <= set(CLASSES) | {"", "another output"}


def test_a_network_trained_here_that_did_not_learn_stops_its_train_job(project, monkeypatch):
    """Trained with a learning rate that cannot move it, the network stays at chance: the train
    job stops in one line and leaves no final.pt, so no study is run on it; allow_chance goes on."""
    root, _ = project
    monkeypatch.chdir(root)
    entry = {"train": {"epochs": 1, "lr": 1e-12, "batch_size": 64}}
    for allow in (False, True):
        plan = check(validate(config({"still": entry | {"allow_chance": allow}})))
        out = root / "results/models/still/seed0"
        shutil.rmtree(out, ignore_errors=True)
        if allow:
            jobs.train(plan.train_job("still"), 0, plan.data_dir("still"), str(out))
            assert (out / "final.pt").is_file()
            continue
        with pytest.raises(ConfigError) as err:
            jobs.train(plan.train_job("still"), 0, plan.data_dir("still"), str(out))
        assert "models.still: seed 0: trained to test accuracy" in str(err.value) and "not above chance" in str(
            err.value
        )
        assert "\n" not in str(err.value) and not (out / "final.pt").exists()
