"""Training throughput: knockout.trainer.train vs. the notebooks' torchvision DataLoader loop.

What it measures
----------------
One training epoch (or --epochs of them) on the Fashion-MNIST training set (all 60,000
images by default) of two presets:

  * mlp: study 2's MLP, ``build_model('study2_mlp', (1, 28, 28), 10)``, SGD lr 0.01, batch 256
  * cnn: study 5's CNN, ``build_model('study5_cnn', (1, 28, 28), 10)``, Adam lr 1e-3, batch 64

each trained two ways, from the same initial weights (same seed), with the same batch size,
optimizer, torch.set_num_threads (``--threads``, default all cores) and device (``--device``,
default cpu):

  1. ours: ``knockout.trainer.train(...)`` with ``TrainConfig.from_dict(knockout.config.resolve(
     "train", {...}))`` (constant lr, no momentum, weight decay, augmentation or checkpoints;
     amp off, so on a GPU both sides do float32 maths, though ours also trains a CNN in
     channels_last there as knockout.train does); the prepared split is held in memory as uint8
     (``knockout.data.open_view``), each batch gathered and normalised as the job does. The time is the
     ``seconds`` column of its history.csv, which covers the training loop only (not the
     evaluation after each epoch, not checkpoint writing).
  2. notebook: ``torchvision.datasets.FashionMNIST(root, train=True,
     transform=Compose([ToTensor(), Normalize(mean, std)]))`` + ``DataLoader(batch_size=B,
     shuffle=True, num_workers=W)`` and the usual loop (zero_grad, forward, cross_entropy,
     backward, step, running loss via loss.item(); each batch moved to the device). The time
     covers one pass over the loader, including creating its iterator (which starts the worker
     processes, as every epoch of the notebooks did). One row per --workers value (default 0 and 2; the notebooks used 4 on a
     bigger machine).

Both sides run a few warm-up batches (on a throw-away copy of the model) before anything is
timed. The same per-channel mean/std (computed by knockout.data.prepare over the training
images used) is used on both sides, so the two see identical input values.

The raw files come from knockout.data.fetch (the mirrors below, else the official URLs) and are
verified there. torchvision (download=False) only looks for the *decompressed* IDX files in
root/FashionMNIST/raw/ (Debian's re-compressed .gz files fail its md5 checks, so its own download
path would refuse them), so the verified .gz files are decompressed into a temporary folder.

Output: a table with model, method, batch size, images/s, seconds/epoch, the final training
loss and ours / this row's images per second, then the speed-up ours / notebook per model, both
against the fastest DataLoader row and against num_workers=0, and as the last line
``min ratio: N.NNx``, the smallest ours / notebook over the rows (the speed-up against the
fastest DataLoader of the slowest-gaining model). ``--out FILE.csv`` also writes the rows as CSV.

Timings are only meaningful on an otherwise idle machine: with 2 torch threads on 2 cores, one
other busy process slows an epoch down several-fold. Every row therefore reports, in cores, the
CPU other processes used while it ran ("others", /proc/stat) and the time this process's threads
were ready to run but got no CPU ("waited", /proc/self/task/*/schedstat); a warning is printed
when "waited" exceeds 0.05 (for DataLoader-worker rows, which wait for their own workers: when
"others" exceeds 0.2). On a shared machine use ``--wait-idle 120`` (wait for a quiet moment
before each timed run), ``--retries 6`` (redo runs that were disturbed anyway) and/or
``--repeat 3`` (keep the fastest of 3).

How to run (from the repository root)
-------------------------------------
    .venv/bin/python bench/train_throughput.py                  # full 60k, 1 epoch (minutes on 2 cores)
    .venv/bin/python bench/train_throughput.py --quick          # 10,000 images
    .venv/bin/python bench/train_throughput.py --train-subset 20000 --epochs 2 --workers 0,2,4 \
        --threads 2 --models cnn --out bench/results/train_throughput.csv

    .venv/bin/python bench/train_throughput.py --wait-idle 120 --retries 6  # on a shared machine

See ``--help`` for the rest (batch sizes, mirrors, seed, warm-up batches, --workdir to keep files).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import Timed, environment, finish, options, start, sync, wait_for_idle  # first: src/ on the path
import torch
from torch import nn
import torchvision
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from knockout.config import resolve
from knockout.data import fetch, open_view, prepare
from knockout.sources.builtin import DATASETS
from knockout.models import build_model, count_parameters
from knockout.trainer import TrainConfig, train

DATASET = "fashion_mnist"
DEFAULT_MIRRORS = ["~/.cache/knockout/datasets", "/usr/share/datasets"]
QUICK_SUBSET = 10_000

# model key -> (preset, optimizer, lr, default batch size)
MODELS = {
    "mlp": ("study2_mlp", "sgd", 0.01, 256),
    "cnn": ("study5_cnn", "adam", 1e-3, 64),
}

COLUMNS = [
    "model",
    "method",
    "num_workers",
    "batch_size",
    "images",
    "epochs",
    "threads",
    "seconds_per_epoch",
    "images_per_second",
    "train_loss",
    "speedup_vs_best_loader",
    "speedup_vs_workers0",
    "other_cpu_cores",
    "waited_cores",
    "steal_cores",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[
            options(quick=f"short run: --train-subset {QUICK_SUBSET} unless one is given", threads=os.cpu_count() or 1)
        ],
    )
    p.add_argument("--models", default="mlp,cnn", help="comma list of: mlp, cnn (default both)")
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="train on a class-stratified subset of N images (default all 60,000)",
    )
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per run (default 1)")
    p.add_argument(
        "--workers", default="0,2", help="comma list of DataLoader num_workers for the notebook way (default 0,2)"
    )
    p.add_argument("--mlp-batch-size", type=int, default=MODELS["mlp"][3])
    p.add_argument("--cnn-batch-size", type=int, default=MODELS["cnn"][3])
    p.add_argument("--warmup-batches", type=int, default=5, help="untimed batches before timing (default 5)")
    p.add_argument(
        "--repeat", type=int, default=1, help="time every row this many times and keep the fastest (default 1)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="redo a timed run during which other processes kept ours off the CPUs, up to "
        "this many times in all (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="initial weights and shuffling (default 0)")
    p.add_argument(
        "--mirrors",
        nargs="*",
        default=DEFAULT_MIRRORS,
        help=f"dataset mirror roots for knockout.data.fetch (default {' '.join(DEFAULT_MIRRORS)})",
    )
    p.add_argument("--no-download", action="store_true", help="only use the mirrors")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the data and model folders here (default: a temporary folder, removed)",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    if not args.workers:
        p.error("--workers needs at least one value")
    if args.quick and args.train_subset is None:
        args.train_subset = QUICK_SUBSET
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


# --------------------------------------------------------------------------- data


def torchvision_root(raw_dir: Path, root: Path) -> Path:
    """root/FashionMNIST/raw/ with the decompressed IDX files torchvision's _check_exists wants."""
    tv_raw = root / DATASETS[DATASET].torchvision_name / "raw"
    tv_raw.mkdir(parents=True, exist_ok=True)
    for name in DATASETS[DATASET].filenames:
        target = tv_raw / name.removesuffix(".gz")
        if not target.exists():
            with gzip.open(raw_dir / name, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return root


def notebook_dataset(tv_root: Path, mean: list[float], std: list[float], indices: torch.Tensor | None):
    """The notebooks' dataset: torchvision FashionMNIST + ToTensor + Normalize (a Subset if asked)."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = torchvision.datasets.FashionMNIST(str(tv_root), train=True, transform=tf, download=False)
    if indices is not None:
        ds = Subset(ds, indices.tolist())
    return ds


# --------------------------------------------------------------------------- the two ways


def notebook_epoch(model, loader, optimizer, device, max_batches: int | None = None) -> tuple[float, float, int]:
    """One pass of the usual notebook loop; out: (seconds, mean train loss, images seen)."""
    model.train()
    began = time.perf_counter()
    running_loss, seen = 0.0, 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(y)
        seen += len(y)
        if max_batches is not None and i + 1 >= max_batches:
            break
    sync(device)
    seconds = time.perf_counter() - began
    return seconds, running_loss / max(seen, 1), seen


CONTENDED = 0.05  # our threads' wait for a CPU, in cores, above which a run is flagged (and redone)


def contended(row: dict) -> bool:
    """Whether other processes kept the row's run off the CPUs: its threads waited more than
    CONTENDED cores for a CPU (with DataLoader workers, which it also waits for, or without
    schedstat: other processes used more than 0.2 cores)."""
    t = row["other_load"]
    if t.waited is not None and not row["loader_workers"]:
        return t.waited + (t.steal or 0) > CONTENDED
    return t.others is not None and t.others + (t.steal or 0) > 0.2


def contention(t: Timed) -> str:
    """The contention column: others, waited (and steal), in cores."""
    if t.others is None and t.waited is None:
        return "n/a"
    text = "others " + ("n/a" if t.others is None else f"{t.others:.2f}")
    text += ", waited " + ("n/a" if t.waited is None else f"{t.waited:.2f}")
    return text + (f", steal {t.steal:.2f}" if (t.steal or 0) >= 0.01 else "")


def make_optimizer(name: str, lr: float, params):
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)


def run_ours(
    model,
    init_state,
    train_split,
    test_split,
    cfg: TrainConfig,
    work: Path,
    seed: int,
    warmup_batches: int,
    device,
    wait_idle: float,
) -> dict:
    # Warm-up: a short train() on a throw-away copy (allocator, oneDNN/MKL kernels, thread pool).
    if warmup_batches > 0:
        n = min(len(train_split), warmup_batches * cfg.batch_size)
        warm = copy.deepcopy(model)
        warm.load_state_dict(init_state)
        shutil.rmtree(work / "warmup", ignore_errors=True)
        train(
            warm,
            train_split.subset(range(n)),
            test_split.subset(range(256)),
            dataclasses.replace(cfg, epochs=1, checkpoints=()),
            work / "warmup",
            seed=seed,
            device=device,
            progress=False,
        )
    model.load_state_dict(init_state)
    out_dir = work / "run"
    shutil.rmtree(out_dir, ignore_errors=True)  # else train() would resume a finished run
    wait_for_idle(wait_idle)
    with Timed(device) as load:
        metrics = train(model, train_split, test_split, cfg, out_dir, seed=seed, device=device, progress=False)
    # Same initial weights as the notebook side: init.pt is what train() started from.
    saved = torch.load(out_dir / "init.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], init_state[k]) for k in init_state), "ours did not start from init_state"
    with open(out_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    seconds = [float(h["seconds"]) for h in history]
    return {
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "images_per_second": len(train_split) * len(seconds) / sum(seconds),
        "train_loss": float(history[-1]["train_loss"]),
        "test_acc": metrics["test_accuracy"],
        "other_load": load,
        "loader_workers": 0,
    }


def run_notebook(
    model,
    init_state,
    dataset,
    batch_size: int,
    workers: int,
    opt: str,
    lr: float,
    epochs: int,
    seed: int,
    warmup_batches: int,
    device,
    wait_idle: float,
) -> dict:
    model.to(device)
    if warmup_batches > 0:
        warm = copy.deepcopy(model)
        warm.load_state_dict(init_state)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
        notebook_epoch(warm, loader, make_optimizer(opt, lr, warm.parameters()), device, max_batches=warmup_batches)
        del loader, warm
    model.load_state_dict(init_state)
    optimizer = make_optimizer(opt, lr, model.parameters())
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed)
    )
    seconds, loss, seen = [], 0.0, 0
    wait_for_idle(wait_idle)
    with Timed(device) as load:
        for _ in range(epochs):
            s, loss, seen = notebook_epoch(model, loader, optimizer, device)
            seconds.append(s)
    assert seen == len(dataset), (seen, len(dataset))
    return {
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "images_per_second": len(dataset) * len(seconds) / sum(seconds),
        "train_loss": loss,
        "other_load": load,
        "loader_workers": workers,
    }


# --------------------------------------------------------------------------- report


def fastest(repeat: int, retries: int, run) -> dict:
    """The fastest of `repeat` calls of run() (each returns a row with images_per_second and
    other_load); a run during which other processes were busy is redone up to `retries` times in
    all, and such runs only count when no clean one was had."""
    runs = []
    for _ in range(repeat):
        runs.append(run())
        while contended(runs[-1]) and retries > 0:
            retries -= 1
            print("  other processes were busy: timing it again", file=sys.stderr, flush=True)
            runs.append(run())
    clean = [r for r in runs if not contended(r)] or runs
    return max(clean, key=lambda r: r["images_per_second"])


def matmul_rate(model: nn.Module, batch: int, device, repeats: int = 5) -> tuple[float, float]:
    """(GFLOP/s, FLOPs per image): the machine's rate on exactly the matrix products one training
    step of `model` (an MLP) does, timed alone (best of `repeats`): per linear layer the forward
    product and the two of the backward pass; and a training step's FLOPs per image."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    mats = []
    for m in layers:
        x, w, g = (
            torch.randn(*shape, device=device)
            for shape in ((batch, m.in_features), (m.out_features, m.in_features), (batch, m.out_features))
        )
        mats.append((x, w, g))

    def step():
        for x, w, g in mats:
            x @ w.T, g @ w, g.T @ x  # forward, grad input, grad weight

    step()
    best = float("inf")
    for _ in range(repeats):
        with Timed(device) as t:
            step()
        best = min(best, t.seconds)
    flops = sum(6 * m.in_features * m.out_features for m in layers)  # per image: 3 products x 2 FLOPs per multiply-add
    return flops * batch / best / 1e9, flops


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start(args)
    threads = torch.get_num_threads()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="knockout-bench-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        raw = work / "raw"
        fetch(DATASET, raw, args.mirrors, download=not args.no_download)
        meta = prepare(
            DATASET, raw, work / "prepared", train_subset=args.train_subset, test_subset=1000, seed=args.seed
        )
        train_split, test_split, meta = open_view(work / "prepared")
        n = len(train_split)
        tv_root = torchvision_root(raw, work / "torchvision")
        dataset = notebook_dataset(tv_root, meta["mean"], meta["std"], None if n == 60_000 else train_split.indices)
        # Both sides see the same images in the same units (up to float rounding).
        probe = [0, n // 2, n - 1]
        x_nb = torch.stack([dataset[i][0] for i in probe])
        assert torch.allclose(x_nb, train_split.inputs(probe, "cpu"), atol=1e-5), "input pipelines disagree"
        assert [dataset[i][1] for i in probe] == train_split.labels[probe].tolist()

        print(f"{environment(device, torchvision)}, DataLoader start method {torch.multiprocessing.get_start_method()}")
        print(
            f"Fashion-MNIST train images: {n:,}; epochs timed: {args.epochs}; warm-up batches: "
            f"{args.warmup_batches}; fastest of {args.repeat}; seed {args.seed}; mean/std {meta['mean'][0]:.4f}/{meta['std'][0]:.4f}"
        )
        print(flush=True)

        rows: list[dict] = []
        ratios: list[str] = []
        for key in args.models:
            preset, opt, lr, _ = MODELS[key]
            batch = args.mlp_batch_size if key == "mlp" else args.cnn_batch_size
            torch.manual_seed(args.seed)  # as knockout's CLI: initial weights are a function of the seed
            model = build_model(preset, (1, 28, 28), 10)
            init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            label = f"{key} ({preset}, {count_parameters(model):,} params, {opt} lr {lr:g})"
            print(f"{label}: timing ...", file=sys.stderr, flush=True)

            # amp off: on a GPU both sides then do the same float32 maths (on the CPU it is never used)
            cfg = TrainConfig.from_dict(
                resolve(
                    "train",
                    {
                        "epochs": args.epochs,
                        "batch_size": batch,
                        "optimizer": opt,
                        "lr": lr,
                        "momentum": 0.0,
                        "weight_decay": 0.0,
                        "schedule": "constant",
                        "augment": False,
                        "checkpoints": [],
                        "amp": False,
                    },
                )
            )
            ours = fastest(
                args.repeat,
                args.retries,
                lambda: run_ours(
                    model,
                    init_state,
                    train_split,
                    test_split,
                    cfg,
                    work / f"ours_{key}",
                    args.seed,
                    args.warmup_batches,
                    device,
                    args.wait_idle,
                ),
            )
            model_rows = [{"model": key, "method": "ours: knockout.train", "num_workers": "", **ours}]
            print(f"  ours: {ours['seconds_per_epoch']:.2f} s/epoch", file=sys.stderr, flush=True)
            for w in args.workers:
                nb = fastest(
                    args.repeat,
                    args.retries,
                    lambda: run_notebook(
                        model,
                        init_state,
                        dataset,
                        batch,
                        w,
                        opt,
                        lr,
                        args.epochs,
                        args.seed,
                        args.warmup_batches,
                        device,
                        args.wait_idle,
                    ),
                )
                model_rows.append({"model": key, "method": f"notebook: DataLoader workers={w}", "num_workers": w, **nb})
                print(f"  notebook workers={w}: {nb['seconds_per_epoch']:.2f} s/epoch", file=sys.stderr, flush=True)

            ours_ips = ours["images_per_second"]
            loaders = model_rows[1:]
            best = max(loaders, key=lambda r: r["images_per_second"])
            zero = next((r for r in loaders if r["num_workers"] == 0), None)
            for r in model_rows:
                r.update(batch_size=batch, images=n, epochs=args.epochs, threads=threads)
                r["speedup_vs_this"] = None if r is model_rows[0] else ours_ips / r["images_per_second"]
                r["speedup_vs_best_loader"] = ours_ips / best["images_per_second"]
                r["speedup_vs_workers0"] = ours_ips / zero["images_per_second"] if zero else None
                load = r["other_load"]
                r.update(other_cpu_cores=load.others, waited_cores=load.waited, steal_cores=load.steal)
            rows += model_rows
            if key == "mlp":  # matmul-bound: how close to the machine's rate on the same products
                rate, flops = matmul_rate(model, batch, device)
                achieved = ours_ips * flops / 1e9
                ratios.append(
                    f"{label}: ours does {achieved:.1f} GFLOP/s of matrix products; the machine does "
                    f"{rate:.1f} GFLOP/s on the same products alone: {achieved / rate:.0%} of it (goal >= 75%)"
                )
            ratios.append(
                f"{label}, batch {batch}: ours / notebook = "
                f"{ours_ips / best['images_per_second']:.2f}x vs the best DataLoader "
                f"(workers={best['num_workers']})"
                + (f", {ours_ips / zero['images_per_second']:.2f}x vs workers=0" if zero else "")
            )

        busy = [r for r in rows if contended(r)]
        if busy:
            ratios += [
                "",
                f"WARNING: other processes got in the way during {len(busy)} of the {len(rows)} runs "
                f"(contention column: 'waited' > {CONTENDED} cores, or with DataLoader workers 'others' > 0.2): "
                "those timings are not trustworthy; rerun on an idle machine (see --wait-idle, --retries).",
            ]
        finish(
            rows,
            COLUMNS,
            ratio="speedup_vs_this",
            out=args.out,
            left=(0, 1, 7),
            notes=ratios,
            header=["model", "method", "batch", "images/s", "s/epoch", "train loss", "ours/this", "contention (cores)"],
            cells=lambda r: [
                r["model"],
                r["method"],
                r["batch_size"],
                f"{r['images_per_second']:,.0f}",
                f"{r['seconds_per_epoch']:.2f}",
                f"{r['train_loss']:.4f}",
                "" if r["speedup_vs_this"] is None else f"{r['speedup_vs_this']:.2f}x",
                contention(r["other_load"]),
            ],
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
