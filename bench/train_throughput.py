"""Training throughput: knockout.train.train vs. the notebooks' torchvision DataLoader loop.

What it measures
----------------
One training epoch (or --epochs of them) on the Fashion-MNIST training set (all 60,000
images by default) of two presets:

  * mlp: study 2's MLP, ``build_model('study2_mlp', (1, 28, 28), 10)``, SGD lr 0.01, batch 256
  * cnn: study 5's CNN, ``build_model('study5_cnn', (1, 28, 28), 10)``, Adam lr 1e-3, batch 64

each trained two ways, from the same initial weights (same seed), with the same batch size,
optimizer and torch.set_num_threads:

  1. ours: ``knockout.train.train(...)``; the split is held as one normalised float tensor and
     batches are index slices. The time is the ``seconds`` column of its history.csv, which
     covers the training loop only (not the evaluation after each epoch, not checkpoint writing).
  2. notebook: ``torchvision.datasets.FashionMNIST(root, train=True,
     transform=Compose([ToTensor(), Normalize(mean, std)]))`` + ``DataLoader(batch_size=B,
     shuffle=True, num_workers=W)`` and the usual loop (zero_grad, forward, cross_entropy,
     backward, step, running loss via loss.item()). The time covers one pass over the loader,
     including creating its iterator (which starts the worker processes, as every epoch of the
     notebooks did). One row per --workers value (default 0 and 2; the notebooks used 4 on a
     bigger machine).

Both sides run a few warm-up batches (on a throw-away copy of the model) before anything is
timed. The same per-channel mean/std (computed by knockout.data.prepare over the training
images used) is used on both sides, so the two see identical input values.

The raw files come from knockout.data.fetch (the mirrors below, else the official URLs) and are
verified there. torchvision (download=False) only looks for the *decompressed* IDX files in
root/FashionMNIST/raw/ (Debian's re-compressed .gz files fail its md5 checks, so its own download
path would refuse them), so the verified .gz files are decompressed into a temporary folder.

Output: a table with model, method, batch size, images/s, seconds/epoch and the final training
loss, then the speed-up ours / notebook per model, both against the fastest DataLoader row and
against num_workers=0. ``--out FILE.csv`` also writes the rows as CSV.

Timings are only meaningful on an otherwise idle machine: with 2 torch threads on 2 cores, one
other busy process slows an epoch down several-fold. Every row therefore reports, in cores, the
CPU other processes used while it ran ("others", /proc/stat) and the time this process's threads
were ready to run but got no CPU ("waited", /proc/self/task/*/schedstat); a warning is printed
when "waited" exceeds 0.05 (for DataLoader-worker rows, which wait for their own workers: when
"others" exceeds 0.2). On a shared machine use ``--wait-idle 120`` (wait for a quiet moment before each
timed run), ``--retries 6`` (redo runs that were disturbed anyway) and/or ``--repeat 3`` (keep the
fastest of 3).

How to run (from the repository root)
-------------------------------------
    .venv/bin/python bench/train_throughput.py                  # full 60k, 1 epoch (minutes on 2 cores)
    .venv/bin/python bench/train_throughput.py --quick          # 10,000 images
    .venv/bin/python bench/train_throughput.py --train-subset 20000 --epochs 2 --workers 0,2,4 \
        --threads 2 --models cnn --out results/bench/throughput.csv

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
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    import knockout  # noqa: F401
except ImportError:  # not installed: use the checkout's src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torchvision
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from knockout.data import DATASETS, fetch, load_prepared, prepare
from knockout.models import build_model, count_parameters
from knockout.train import TrainConfig, train

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
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="mlp,cnn", help="comma list of: mlp, cnn (default both)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on a class-stratified subset of N images (default all 60,000)")
    p.add_argument("--quick", action="store_true",
                   help=f"short run: --train-subset {QUICK_SUBSET} unless one is given")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per run (default 1)")
    p.add_argument("--workers", default="0,2",
                   help="comma list of DataLoader num_workers for the notebook way (default 0,2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for both sides (default: all cores, os.cpu_count())")
    p.add_argument("--mlp-batch-size", type=int, default=MODELS["mlp"][3])
    p.add_argument("--cnn-batch-size", type=int, default=MODELS["cnn"][3])
    p.add_argument("--warmup-batches", type=int, default=5, help="untimed batches before timing (default 5)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time every row this many times and keep the fastest (default 1)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each timed run, wait up to SECONDS for other processes to leave the "
                        "CPUs idle (default 0: don't wait; shared machines need it)")
    p.add_argument("--retries", type=int, default=0,
                   help="redo a timed run during which other processes kept ours off the CPUs, up to "
                        "this many times in all (default 0)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and shuffling (default 0)")
    p.add_argument("--mirrors", nargs="*", default=DEFAULT_MIRRORS,
                   help=f"dataset mirror roots for knockout.data.fetch (default {' '.join(DEFAULT_MIRRORS)})")
    p.add_argument("--no-download", action="store_true", help="only use the mirrors")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the data and model folders here (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")
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


def notebook_epoch(model, loader, optimizer, max_batches: int | None = None) -> tuple[float, float, int]:
    """One pass of the usual notebook loop; out: (seconds, mean train loss, images seen)."""
    model.train()
    began = time.perf_counter()
    running_loss, seen = 0.0, 0
    for i, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(y)
        seen += len(y)
        if max_batches is not None and i + 1 >= max_batches:
            break
    seconds = time.perf_counter() - began
    return seconds, running_loss / max(seen, 1), seen


class OtherLoad:
    """How much other processes got in the way while a block ran (Linux /proc; else None).

    cores: CPU other processes used, in cores (from /proc/stat). A single-threaded stretch of
        ours leaves a core idle for them, so this alone does not mean we were slowed down.
    waited: time this process's threads were ready to run but had no CPU, in cores (from
        /proc/self/task/*/schedstat). With DataLoader workers this includes waiting for our own
        workers (2 workers + 2 threads on 2 cores), so such runs are judged by `cores` instead
        (finished workers count as ours, not as others).
    steal: CPU the hypervisor gave to other guests, in cores.
    A busy machine makes every number here meaningless, so each row reports them.
    """

    cores: float | None = None
    waited: float | None = None
    steal: float | None = None

    def __init__(self, workers: int = 0):
        self.workers = workers

    def __enter__(self):
        self.start = (_cpu_counters(), _own_cpu_seconds(), _waited_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        counters, own, waited, wall = _cpu_counters(), _own_cpu_seconds(), _waited_seconds(), time.perf_counter()
        (counters0, own0, waited0, wall0) = self.start
        span = wall - wall0
        if counters is not None and counters0 is not None:
            self.cores = max(0.0, ((counters[0] - counters0[0]) - (own - own0)) / span)
            self.steal = (counters[1] - counters0[1]) / span
        if waited is not None and waited0 is not None:
            self.waited = max(0.0, waited - waited0) / span
        return False

    @property
    def contended(self) -> bool:
        """Whether our threads were kept off the CPU (or, without schedstat, others were busy)."""
        if self.waited is not None and not self.workers:
            return self.waited + (self.steal or 0) > CONTENDED
        return self.cores is not None and self.cores + (self.steal or 0) > 0.2

    def __str__(self) -> str:
        if self.cores is None and self.waited is None:
            return "n/a"
        text = "others " + ("n/a" if self.cores is None else f"{self.cores:.2f}")
        text += ", waited " + ("n/a" if self.waited is None else f"{self.waited:.2f}")
        return text + (f", steal {self.steal:.2f}" if (self.steal or 0) >= 0.01 else "")


def _waited_seconds() -> float | None:
    """Seconds this process's live threads spent runnable but waiting for a CPU, or None."""
    total, found = 0, False
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
            found = True
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9 if found else None


def _cpu_counters() -> tuple[float, float] | None:
    """(non-idle, steal) CPU seconds of the whole machine since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    fields += [0] * (8 - len(fields))
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle - steal) / tick, steal / tick


def wait_for_idle(limit_s: float, window_s: float = 2.0, threshold: float = 0.2) -> None:
    """Wait (at most limit_s) for a window_s stretch in which other processes use < threshold cores."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with OtherLoad() as load:
            time.sleep(window_s)
        if load.cores is None or load.cores + (load.steal or 0) < threshold:
            return
        print(f"  waiting for an idle machine (others use {load} cores) ...", file=sys.stderr, flush=True)


WAIT_IDLE_S = 0.0  # set from --wait-idle
CONTENDED = 0.05  # our threads' wait for a CPU, in cores, above which a run is flagged (and redone)


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers are joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def make_optimizer(name: str, lr: float, params):
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)


def run_ours(model, init_state, train_split, test_split, cfg: TrainConfig, work: Path, seed: int,
             warmup_batches: int) -> dict:
    # Warm-up: a short train() on a throw-away copy (allocator, oneDNN/MKL kernels, thread pool).
    if warmup_batches > 0:
        n = min(len(train_split), warmup_batches * cfg.batch_size)
        warm = copy.deepcopy(model)
        warm.load_state_dict(init_state)
        shutil.rmtree(work / "warmup", ignore_errors=True)
        train(warm, train_split.images[:n], train_split.labels[:n], test_split.images[:256],
              test_split.labels[:256], dataclasses.replace(cfg, epochs=1, checkpoints=()),
              work / "warmup", seed=seed, device="cpu", progress=False)
    model.load_state_dict(init_state)
    out_dir = work / "run"
    shutil.rmtree(out_dir, ignore_errors=True)  # else train() would resume a finished run
    wait_for_idle(WAIT_IDLE_S)
    with OtherLoad() as load:
        metrics = train(model, train_split.images, train_split.labels, test_split.images,
                        test_split.labels, cfg, out_dir, seed=seed, device="cpu", progress=False)
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
    }


def run_notebook(model, init_state, dataset, batch_size: int, workers: int, opt: str, lr: float,
                 epochs: int, seed: int, warmup_batches: int) -> dict:
    if warmup_batches > 0:
        warm = copy.deepcopy(model)
        warm.load_state_dict(init_state)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
        notebook_epoch(warm, loader, make_optimizer(opt, lr, warm.parameters()), max_batches=warmup_batches)
        del loader, warm
    model.load_state_dict(init_state)
    optimizer = make_optimizer(opt, lr, model.parameters())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    seconds, loss, seen = [], 0.0, 0
    wait_for_idle(WAIT_IDLE_S)
    with OtherLoad(workers) as load:
        for _ in range(epochs):
            s, loss, seen = notebook_epoch(model, loader, optimizer)
            seconds.append(s)
    assert seen == len(dataset), (seen, len(dataset))
    return {
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "images_per_second": len(dataset) * len(seconds) / sum(seconds),
        "train_loss": loss,
        "other_load": load,
    }


# --------------------------------------------------------------------------- report


def print_table(rows: list[dict], ratios: list[str]) -> None:
    header = ["model", "method", "batch", "images/s", "s/epoch", "train loss", "ours/this", "contention (cores)"]
    lines = []
    for r in rows:
        speed = r["speedup_vs_this"]
        lines.append([
            r["model"], r["method"], str(r["batch_size"]), f"{r['images_per_second']:,.0f}",
            f"{r['seconds_per_epoch']:.2f}", f"{r['train_loss']:.4f}",
            "" if speed is None else f"{speed:.2f}x", str(r["other_load"]),
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    right = {2, 3, 4, 5, 6}
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for l in lines:
        print(fmt(l))
    print()
    for line in ratios:
        print(line)
    busy = [r for r in rows if contended(r)]
    if busy:
        print(f"\nWARNING: other processes got in the way during {len(busy)} of the {len(rows)} runs "
              f"(contention column: 'waited' > {CONTENDED} cores, or with DataLoader workers 'others' > 0.2): "
              "those timings are not trustworthy; rerun on an idle machine (see --wait-idle, --retries).")


def contended(row: dict) -> bool:
    return row["other_load"].contended


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


def main(argv: list[str] | None = None) -> int:
    global WAIT_IDLE_S
    args = parse_args(argv)
    WAIT_IDLE_S = args.wait_idle
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

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
        meta = prepare(DATASET, raw, work / "prepared", train_subset=args.train_subset, test_subset=1000,
                       seed=args.seed)
        train_split, test_split, meta = load_prepared(work / "prepared")
        n = len(train_split)
        indices = torch.load(work / "prepared" / "train.pt", weights_only=True)["indices"]
        tv_root = torchvision_root(raw, work / "torchvision")
        dataset = notebook_dataset(tv_root, meta["mean"], meta["std"], None if n == 60_000 else indices)
        # Both sides see the same images in the same units (up to float rounding).
        probe = [0, n // 2, n - 1]
        x_nb = torch.stack([dataset[i][0] for i in probe])
        assert torch.allclose(x_nb, train_split.images[probe], atol=1e-5), "input pipelines disagree"
        assert [dataset[i][1] for i in probe] == train_split.labels[probe].tolist()

        print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"DataLoader start method {torch.multiprocessing.get_start_method()}")
        print(f"Fashion-MNIST train images: {n:,}; epochs timed: {args.epochs}; warm-up batches: "
              f"{args.warmup_batches}; fastest of {args.repeat}; seed {args.seed}; mean/std {meta['mean'][0]:.4f}/{meta['std'][0]:.4f}")
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

            cfg = TrainConfig(epochs=args.epochs, batch_size=batch, optimizer=opt, lr=lr, momentum=0.0,
                              weight_decay=0.0, schedule="constant", augment=False, checkpoints=())
            ours = fastest(args.repeat, args.retries, lambda: run_ours(
                model, init_state, train_split, test_split, cfg, work / f"ours_{key}", args.seed,
                args.warmup_batches))
            model_rows = [{"model": key, "method": "ours: knockout.train", "num_workers": "", **ours}]
            print(f"  ours: {ours['seconds_per_epoch']:.2f} s/epoch", file=sys.stderr, flush=True)
            for w in args.workers:
                nb = fastest(args.repeat, args.retries, lambda: run_notebook(
                    model, init_state, dataset, batch, w, opt, lr, args.epochs, args.seed,
                    args.warmup_batches))
                model_rows.append({"model": key, "method": f"notebook: DataLoader workers={w}",
                                   "num_workers": w, **nb})
                print(f"  notebook workers={w}: {nb['seconds_per_epoch']:.2f} s/epoch", file=sys.stderr,
                      flush=True)

            ours_ips = ours["images_per_second"]
            loaders = model_rows[1:]
            best = max(loaders, key=lambda r: r["images_per_second"])
            zero = next((r for r in loaders if r["num_workers"] == 0), None)
            for r in model_rows:
                r.update(batch_size=batch, images=n, epochs=args.epochs, threads=threads)
                r["speedup_vs_this"] = None if r is model_rows[0] else ours_ips / r["images_per_second"]
                r["speedup_vs_best_loader"] = ours_ips / best["images_per_second"]
                r["speedup_vs_workers0"] = ours_ips / zero["images_per_second"] if zero else None
            rows += model_rows
            ratios.append(f"{label}, batch {batch}: ours / notebook = "
                          f"{ours_ips / best['images_per_second']:.2f}x vs the best DataLoader "
                          f"(workers={best['num_workers']})"
                          + (f", {ours_ips / zero['images_per_second']:.2f}x vs workers=0" if zero else ""))

        print_table(rows, ratios)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                for r in rows:
                    load = r["other_load"]
                    r = {**r, "other_cpu_cores": load.cores, "waited_cores": load.waited, "steal_cores": load.steal}
                    writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
            print(f"\nwrote {args.out}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
