"""Splits of any size: a prepared split read from disk batch by batch gives what the same split
held in memory gives (training: the same weights, bit for bit; a study: the same tables), and a
prepare killed mid-way resumes from the chunks it wrote, to the same files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from knockout.config import resolve
from knockout.data import fetch, open_split, prepare, read_meta
from knockout.preprocess import Preprocess
from knockout.preprocess import resolve as resolve_preprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    """A tensors dataset of 1,200 + 300 learnable 1x12x12 images, prepared."""
    folder = tmp_path_factory.mktemp("streamed")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 1200), ("test", 300)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 120, (n, 1, 12, 12)).astype(np.uint8)
        images[:, :, :3] += (labels * 40).astype(np.uint8)[:, None, None, None]  # the class: the top rows' brightness
        arrays |= {f"{split}_images": images, f"{split}_labels": labels}
    np.savez(folder / "data.npz", **arrays)
    entry = resolve("dataset_tensors", {"source": "tensors", "path": str(folder / "data.npz")})
    fetch("t", folder / "raw", [], entry=entry)
    prepare("t", folder / "raw", folder / "view", entry=entry)
    return folder / "view"


def splits(view: Path, resident_mb: float):
    meta = read_meta(view / "meta.json")
    preprocess = Preprocess.of(resolve_preprocess("cnn", {"arch": "study5_cnn"}), meta)
    return meta, [open_split(view, split, preprocess, "cpu", resident_mb) for split in ("train", "test")]


def test_streamed_training_gives_the_in_memory_weights_bit_for_bit(view, tmp_path):
    from knockout.models import build_model
    from knockout.trainer import TrainConfig, train
    from specs import train_settings

    size_mb = 1200 * 144 / 2**20  # the train split, uint8
    weights = {}
    for name, resident_mb in (("streamed", size_mb / 10), ("in_memory", 10 * size_mb)):
        _, (train_split, test_split) = splits(view, resident_mb)
        assert (type(train_split._store).__name__ == "_OnDisk") == (name == "streamed")
        torch.manual_seed(3)
        model = build_model({"type": "cnn", "conv": [8, 8], "pool": 2, "dense": [16]}, (1, 12, 12), 4)
        config = TrainConfig.from_dict(train_settings(epochs=2, batch_size=64, optimizer="adam", lr=0.01, augment=True))
        metrics = train(model, train_split, test_split, config, tmp_path / name, seed=3, device="cpu", progress=False)
        weights[name] = model.state_dict()
        assert metrics["test_accuracy"] > 0.5  # it learned: chance is 0.25
    for key, value in weights["in_memory"].items():
        assert torch.equal(weights["streamed"][key], value), key


def test_a_streamed_study_gives_the_in_memory_tables(view):
    from knockout.engine.evaluate import evaluate_conditions
    from knockout.tables import condition_tables
    from knockout.models import build_model
    from knockout.engine import Context, apply_condition
    from knockout.studies import filter_ablation
    from specs import study_spec

    torch.manual_seed(0)
    model = build_model({"type": "cnn", "conv": [8, 8], "pool": 2, "dense": [16]}, (1, 12, 12), 4).eval()
    context = Context(trained=model, seed=0)
    spec = study_spec(
        "filter_ablation",
        layers=["conv2"],
        sets={"each": {"select": "each"}, "r": {"select": "random", "k": 3, "repeats": 2}},
    )
    conditions = filter_ablation.conditions(spec, context)
    tables = []
    for resident_mb in (0, 100):
        meta, (_, test) = splits(view, resident_mb)
        out = evaluate_conditions(
            conditions, context, test, budget_mb=0.05, device="cpu", apply=apply_condition
        )  # a tight budget: many chunks
        tables.append(condition_tables(conditions, out, test.labels, meta["classes"], test.indices))
    for name in tables[0]:
        pd.testing.assert_frame_equal(tables[0][name], tables[1][name])


def write_jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, count in (("train", n), ("test", 40)):
        for k in range(2):
            (folder / split / f"c{k}").mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / split / f"c{i % 2}" / f"{i:05d}.jpg", quality=90)


def prepare_cli(raw: Path, out: Path, entry: dict, threads: int) -> subprocess.Popen:
    job = {"dataset": "jpegs", "entry": entry, "geometry": None}
    cmd = [
        sys.executable,
        "-m",
        "knockout",
        "prepare",
        "--job",
        json.dumps(job),
        "--raw",
        str(raw),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_prepare_resumes_to_the_same_files(tmp_path):
    """An image folder of 20,000 JPEGs (20 chunks of 16 MB at 74x74): killed once chunks are
    recorded on disk, prepared again, it takes up where it stopped and ends with the files of a
    run that was never killed."""
    write_jpegs(tmp_path / "jpegs", 20_000)
    entry = resolve(
        "dataset_image_folder",
        {
            "source": "image_folder",
            "train": str(tmp_path / "jpegs/train"),
            "test": str(tmp_path / "jpegs/test"),
            "size": 74,
        },
    )
    fetch("jpegs", tmp_path / "raw", [], entry=entry)
    assert prepare_cli(tmp_path / "raw", tmp_path / "whole", entry, 2).wait(timeout=300) == 0

    out = tmp_path / "killed"
    proc = prepare_cli(tmp_path / "raw", out, entry, 1)
    progress = out / ".partial" / "progress.json"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(progress.read_text())["done"].get("train"):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    assert not (out / "meta.json").exists() and not (out / "train_images.npy").exists()  # nothing looks done
    written = len(json.loads(progress.read_text())["done"]["train"])
    assert 1 <= written < 20

    rerun = prepare_cli(tmp_path / "raw", out, entry, 2)
    _, log = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    assert f"resuming: {written} of 20 chunks of the train split already prepared" in log
    for name in [f"{s}_{a}.npy" for s in ("train", "test") for a in ("images", "labels", "indices")] + ["meta.json"]:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not (out / ".partial").exists()
