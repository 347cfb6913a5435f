"""Training: schedules, augmentation, determinism and resume after a kill."""

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

from knockout.models import build_model, load_model
from knockout.preprocess import resolve
from knockout.trainer import TrainConfig, augment_batch, learning_rate, train
from specs import train_settings

ROOT = Path(__file__).resolve().parents[1]


def tiny_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[:, :, : 2 * 1, :] += y[:, None, None, None].float()  # learnable: class in the top rows
    return x, y


def run(tmp_path, seed=0, **cfg):
    torch.manual_seed(seed)
    model = build_model({"type": "cnn", "conv": [4], "pool": 2, "dense": [8]}, (1, 8, 8), 4)
    x, y = tiny_data()
    config = TrainConfig.from_dict(train_settings(**{"epochs": 3, "batch_size": 32, "lr": 0.05, **cfg}))
    epochs = tmp_path / "epochs" if config.checkpoints else None
    metrics = train(
        model, (x, y), (x[:64], y[:64]), config, tmp_path, seed=seed, device="cpu", epochs_dir=epochs, progress=False
    )
    return model, metrics


def test_writes_the_model_folder_contract(tmp_path):
    _, metrics = run(tmp_path, checkpoints=[1, 3])
    for name in ["init.pt", "final.pt", "history.csv", "metrics.json", "epochs/epoch1.pt", "epochs/epoch3.pt"]:
        assert (tmp_path / name).exists(), name
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch1.pt", "epoch3.pt"]
    assert not (tmp_path / "resume.pt").exists() and not (tmp_path / "epochs.partial").exists()
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns[:5]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert "seconds" in history.columns and len(history) == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["test_accuracy"] > 0.5  # it learned


def test_same_seed_gives_bit_identical_weights(tmp_path):
    a, _ = run(tmp_path / "a", seed=3, optimizer="adam", lr=0.01, schedule="onecycle", augment=True)
    b, _ = run(tmp_path / "b", seed=3, optimizer="adam", lr=0.01, schedule="onecycle", augment=True)
    c, _ = run(tmp_path / "c", seed=4, optimizer="adam", lr=0.01, schedule="onecycle", augment=True)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.fc2.weight, c.fc2.weight)


def test_init_checkpoint_is_the_untrained_model(tmp_path):
    torch.manual_seed(7)
    fresh = build_model({"type": "cnn", "conv": [4], "pool": 2, "dense": [8]}, (1, 8, 8), 4)
    model, _ = run(tmp_path, seed=7)
    init = load_model(tmp_path / "init.pt", "cpu")
    assert torch.equal(init.conv1.weight, fresh.conv1.weight)
    assert not torch.equal(init.conv1.weight, model.conv1.weight)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules_peak_at_lr_and_stay_positive(schedule):
    cfg = TrainConfig.from_dict(train_settings(lr=0.1, schedule=schedule))
    lrs = [learning_rate(cfg, s, 100) for s in range(100)]
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and min(lrs) > 0
    if schedule == "onecycle":
        assert lrs[0] < 0.01 and lrs.index(max(lrs)) == 30 and lrs[-1] < 1e-3


def test_augmentation_is_a_crop_of_the_padded_image_maybe_flipped():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8).repeat(100, 1, 1, 1)
    out = augment_batch(x, g, pad=2)
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    crops = [padded[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
    kinds = []
    for image in out:
        plain = any(torch.equal(image, c) for c in crops)
        flipped = any(torch.equal(image, c.flip(-1)) for c in crops)
        assert plain or flipped
        kinds.append(flipped and not plain)
    assert 20 < sum(kinds) < 80  # about half are flipped


def write_prepared(folder: Path, n=2048):
    """A prepared dataset folder in the `knockout prepare` format, from synthetic images."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, size in [("train", n), ("test", 256)]:
        labels = torch.arange(size) % 10
        images = torch.randint(0, 50, (size, 1, 28, 28), generator=g, dtype=torch.uint8)
        images[:, :, :3, :] = (labels * 25).to(torch.uint8)[:, None, None, None]
        for array, values in (("images", images.numpy()), ("labels", labels.numpy()), ("indices", np.arange(size))):
            np.save(folder / f"{split}_{array}.npy", values)
    meta = {
        "dataset": "fashion_mnist",
        "classes": [str(i) for i in range(10)],
        "num_classes": 10,
        "shape": [1, 28, 28],
        "mean": [0.15],
        "std": [0.2],
        "n_train": n,
        "n_test": 256,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def train_cli(data: Path, out: Path, epochs: int):
    settings = train_settings(
        epochs=epochs,
        batch_size=64,
        optimizer="adam",
        lr=0.002,
        schedule="onecycle",
        checkpoints=list(range(1, epochs + 1)),
    )
    job = {
        "model": "cnn",
        "arch": "study5_cnn",
        "train": settings,
        "device": "cpu",
        "resident_mb": 0,  # streamed from disk
        "preprocess": resolve("cnn", {"arch": "study5_cnn"}),
    }
    cmd = [
        sys.executable,
        "-m",
        "knockout",
        "train",
        "--job",
        json.dumps(job),
        "--seed",
        "1",
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    data = tmp_path / "data"
    write_prepared(data)
    epochs = 6
    assert train_cli(data, tmp_path / "whole", epochs).wait(timeout=300) == 0

    out = tmp_path / "killed"
    proc = train_cli(data, out, epochs)
    deadline = time.time() + 300
    while not (out / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # kill mid-epoch, after at least one resume point
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (out / "final.pt").exists() and not (out / "metrics.json").exists() and not (out / "epochs").exists()
    (out / "init.pt").unlink(missing_ok=True)  # snakemake --rerun-incomplete removes outputs

    rerun = train_cli(data, out, epochs)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert b"resuming after epoch" in err
    whole, resumed = load_model(tmp_path / "whole" / "final.pt", "cpu"), load_model(out / "final.pt", "cpu")
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(
        load_model(tmp_path / "whole" / "init.pt", "cpu").conv1.weight, load_model(out / "init.pt", "cpu").conv1.weight
    )
    assert len(pd.read_csv(out / "history.csv")) == epochs
    for e in range(1, epochs + 1):  # every epoch checkpoint, those written before the kill too
        assert torch.equal(
            load_model(tmp_path / "whole" / f"epochs/epoch{e}.pt", "cpu").fc2.weight,
            load_model(out / f"epochs/epoch{e}.pt", "cpu").fc2.weight,
        )
