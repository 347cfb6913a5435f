"""Training loop over a prepared split, with schedules, checkpoints and resume.

Batches are drawn from the split in a seeded random order, read (from memory, or from disk for a
large split) while the previous batch trains, and converted to model inputs on the device: there
is no per-sample DataLoader. Shuffling and augmentation draw from one seeded generator whose
state is saved with every resume point, so a killed run continues bit for bit where it stopped.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .data import as_split
from .engine.evaluate import evaluate
from .io import atomic_write, write_json, write_table
from .models import count_parameters, save_model
from .readout import Readout

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]


@dataclass(frozen=True)
class TrainConfig:
    """Resolved training settings (the schema's `train` has their defaults and meanings)."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    eps: float  # Adam's and AdamW's epsilon
    weight_decay: float
    schedule: str
    augment: bool  # random crop (padding 4) + horizontal flip, on tensors
    checkpoints: tuple[int, ...]  # epochs saved as epochs/epoch{e}.pt
    eval_batch_size: int
    amp: bool  # bf16 autocast, only ever used on CUDA

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From resolved settings: `augment` a bool and `checkpoints` a list of epochs (the plan
        turns `auto` and `all` into those)."""
        if not isinstance(d["augment"], bool) or isinstance(d["checkpoints"], str):
            raise ValueError("augment and checkpoints must be resolved (a bool, a list of epochs)")
        values = {k: d[k] for k in cls.__dataclass_fields__} | {"checkpoints": tuple(int(e) for e in d["checkpoints"])}
        return cls(**values)


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """The schedule's learning rate at optimiser step `step` of `total`."""
    t = step / max(total, 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    # One-cycle as in Smith & Topin / fastai: 30% cosine warm-up from lr/25, then cosine annealing.
    warm = 0.3
    lo, end = cfg.lr / 25, cfg.lr / 25e4
    if t < warm:
        return lo + (cfg.lr - lo) * 0.5 * (1 - math.cos(math.pi * t / warm))
    return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from {OPTIMIZERS}")


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding plus random horizontal flip, per image: (N,C,H,W) -> same."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def train(
    model: nn.Module,
    train_data,
    test_data,
    cfg: TrainConfig,
    out_dir: str | Path,
    seed: int,
    device: str | torch.device,
    epochs_dir: str | Path | None = None,
    progress: bool = True,
    record: dict | None = None,
) -> dict:
    """Train `model` (already initialised from `seed`) on `train_data` and write the model folder;
    `test_data` is evaluated after every epoch. Each is a `knockout.data.Split` or a pair of
    tensors (model inputs (N, ...), labels (N,)); `record` goes into metrics.json as it is.

    Writes `init.pt` (weights at step 0), `final.pt`, `history.csv`, `metrics.json` and, when
    `epochs_dir` is given, that folder with `epoch{e}.pt` for `cfg.checkpoints`. While the run
    is going, `resume.pt` holds the state after the last finished epoch and `epochs.partial/`
    the checkpoints so far (a rerun after a kill resumes from both); the checkpoint folder is
    renamed into place at the end. Returns the metrics dict.
    """
    if cfg.checkpoints and epochs_dir is None:
        raise ValueError("checkpoints asked for, but no folder to keep them in (epochs_dir)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "epochs.partial"
    device = torch.device(device)
    cuda = device.type == "cuda"
    train_data, test_data = as_split(train_data), as_split(test_data)
    n = len(train_data)
    model.to(device)
    readout = Readout.of(model)  # class-first logits: the loss over all of the network's outputs
    maps = len(train_data.shape) == 3 and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if maps:  # channels-last: cuDNN's and oneDNN's fastest convolutions and pooling, on GPU and CPU
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    history: list[dict] = []
    start_epoch = 1
    resume_path = out / "resume.pt"

    if resume_path.exists():
        state = torch.load(resume_path, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["cpu_rng"].cpu())
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        history = state["history"]
        start_epoch = state["epoch"] + 1
        init_state = state["init"]
        print(f"resuming after epoch {state['epoch']} from {resume_path}", file=sys.stderr)
    else:
        init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        shutil.rmtree(partial, ignore_errors=True)  # checkpoints of an earlier, abandoned run
    if not (out / "init.pt").exists():
        # Rebuilt from the resume state when a rerun removed it with the other outputs.
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(init_state)
        save_model(model, out / "init.pt", seed=seed, epoch=0)
        model.load_state_dict(current)

    bar = tqdm(
        range(start_epoch, cfg.epochs + 1),
        desc=f"train {out}",
        unit="epoch",
        initial=start_epoch - 1,
        total=cfg.epochs,
        disable=not progress,
        mininterval=2,
    )
    for epoch in bar:
        began = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for b, (x, y) in enumerate(train_data.batches(order, cfg.batch_size, device)):
            step = (epoch - 1) * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_steps)
            if cfg.augment:
                x = augment_batch(x, generator)
            if maps:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and cfg.amp):
                logits = readout(model(x))
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        test = evaluate(model, test_data, batch_size=cfg.eval_batch_size, amp=cuda and cfg.amp)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum.item() / n,
                "train_acc": correct.item() / n,
                "test_loss": test.loss,
                "test_acc": test.accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
            }
        )
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", acc=f"{test.accuracy:.3f}")
        if epoch in cfg.checkpoints:
            save_model(model, partial / f"epoch{epoch}.pt", seed=seed, epoch=epoch)
        if epoch < cfg.epochs:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "cpu_rng": torch.get_rng_state(),
                "history": history,
                "init": init_state,
            }
            if cuda:
                state["cuda_rng"] = torch.cuda.get_rng_state()
            atomic_write(resume_path, lambda tmp: torch.save(state, tmp))

    model.to(memory_format=torch.contiguous_format)
    save_model(model, out / "final.pt", seed=seed, epoch=cfg.epochs)
    write_table(pd.DataFrame(history, columns=HISTORY_COLUMNS), out / "history.csv")
    final = history[-1] if history else {}
    seconds = sum(h["seconds"] for h in history)
    metrics = {
        "seed": seed,
        "parameters": count_parameters(model),
        "epochs": cfg.epochs,
        "train_loss": final.get("train_loss"),
        "train_accuracy": final.get("train_acc"),
        "test_loss": final.get("test_loss"),
        "test_accuracy": final.get("test_acc"),
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(len(history), 1),
        "images_per_second": n * len(history) / max(seconds, 1e-9),
        "device": str(device),
        "config": asdict(cfg),
    } | (record or {})
    write_json(metrics, out / "metrics.json")
    if epochs_dir is not None:
        partial.mkdir(exist_ok=True)
        shutil.rmtree(epochs_dir, ignore_errors=True)
        os.replace(partial, epochs_dir)
    resume_path.unlink(missing_ok=True)
    return metrics
