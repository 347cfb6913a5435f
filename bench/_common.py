"""What the scripts in bench/ share (not a benchmark itself; each script imports it first).

  * the import path: knockout from the checkout's ``src/`` when it is not installed;
  * ``Timed``: the wall seconds of a block, this process's CPU seconds, and how much other
    processes (and, on a VM, other guests) used the CPUs meanwhile, in cores (``/proc/stat``),
    plus how long our threads waited for a CPU (``/proc/self/task/*/schedstat``);
    ``wait_for_idle`` (wait for a quiet moment before a timed run) and ``sync`` (a device sync);
  * ``options()``: the options every script takes (``--quick``, ``--threads``, ``--device``,
    ``--wait-idle``, ``--out``, ``--default-allocator``), as a parent parser, and ``start(args)``
    to apply them (by default the whole process, peer included, keeps freed memory as knockout's
    jobs do: the comparison is of the code, not of the allocator);
  * ``cnn_setup`` / ``resnet_setup``: the models and images of the Captum comparisons;
    ``reference_images``: the images ablation values are taken from (never the evaluated ones),
    and ``value_context`` / ``captum_baselines``: one ablation value (zero, mean, resample) as
    knockout's Context and as Captum's matching ``layer_baselines``;
  * ``print_table``, ``write_csv`` and ``finish``, which prints the table and the notes, writes
    ``--out`` and ends the run with the line ``min ratio: N.NNx``: the smallest knockout-vs-peer
    ratio over the rows (how many times faster ours is; below 1: slower). Every speed bench ends
    with that line; bench/coverage.py's ends with ``min pass rate: NN.N%``. ``environment``:
    the versions line each script prints first.

Off Linux the contention numbers are None (shown as n/a).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import knockout  # noqa: F401
except ImportError:  # not installed: use the checkout's src/
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

DATA_DIR = ROOT / "results" / "data" / "fashion_mnist"
CNN_WEIGHTS = ROOT / "results" / "models" / "cnn" / "seed0" / "final.pt"


# --------------------------------------------------------------------------- contention


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_counters() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat, or None off
    Linux. busy: all but idle, iowait and steal."""
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


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of the children it has waited for
    (DataLoader workers are joined at the end of an epoch)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def waited_seconds() -> float | None:
    """Seconds this process's live threads spent runnable but waiting for a CPU, or None."""
    total, found = 0, False
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
            found = True
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9 if found else None


class Timed:
    """Times a block: ``with Timed(device) as t: ...``.

    seconds: its wall time (with a device given, its queued work is synced at both ends).
    cpu: CPU seconds of this process and its finished children, all threads.
    others: CPU other processes used meanwhile, in cores (a single-threaded stretch of ours
        leaves a core idle for them, so this alone does not mean we were slowed down).
    steal: CPU the hypervisor gave to other guests meanwhile, in cores.
    load: others + steal, the CPU something else took (near 0: the time is trustworthy).
    waited: time our threads were ready to run but had no CPU, in cores (with DataLoader
        workers it includes waiting for our own workers).
    All but seconds and cpu are None where /proc does not tell.
    """

    seconds: float
    cpu: float
    others: float | None = None
    steal: float | None = None
    waited: float | None = None

    def __init__(self, device: torch.device | str | None = None):
        self.device = device

    def __enter__(self) -> Timed:
        sync(self.device)
        self._start = (cpu_counters(), own_cpu_seconds(), waited_seconds())
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        sync(self.device)
        self.seconds = time.perf_counter() - self._wall
        counters, own, waited = cpu_counters(), own_cpu_seconds(), waited_seconds()
        counters0, own0, waited0 = self._start
        span = max(self.seconds, 1e-9)
        self.cpu = own - own0
        if counters is not None and counters0 is not None:
            self.others = max(0.0, ((counters[0] - counters0[0]) - self.cpu) / span)
            self.steal = (counters[1] - counters0[1]) / span
        if waited is not None and waited0 is not None:
            self.waited = max(0.0, waited - waited0) / span
        return False

    @property
    def load(self) -> float | None:
        return None if self.others is None else self.others + (self.steal or 0.0)


def wait_for_idle(limit_s: float, window_s: float = 2.0, threshold: float = 0.2) -> None:
    """Wait (at most limit_s) for a window_s stretch in which other processes (and guests) use
    less than threshold cores."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with Timed() as t:
            time.sleep(window_s)
        if t.load is None or t.load < threshold:
            return
        print(f"  waiting for an idle machine (others use {t.load:.2f} cores) ...", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- options


def options(quick: str, threads: int | None = None) -> argparse.ArgumentParser:
    """The options every bench takes, as a parent parser (``ArgumentParser(parents=[...])``).
    quick: what --quick does in this script; threads: the default of --threads (None: torch's)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch.set_num_threads for both sides (default: "
        + ("torch's own" if threads is None else f"all cores, {threads}")
        + ")",
    )
    p.add_argument("--device", default="cpu", help="torch device for both sides (default cpu)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed run, wait up to SECONDS for other processes to leave the "
        "CPUs idle (default 0: don't wait; a shared machine needs it)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")
    p.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (default: both sides keep freed memory, as "
        "knockout's jobs do: knockout.devices.keep_freed_memory)",
    )
    return p


ALLOCATOR = ["glibc default"]  # what start() chose, for environment()


def start(args: argparse.Namespace) -> torch.device:
    """Apply --threads and the allocator (the whole process, so the peer's side too); the
    --device to run on."""
    from knockout.devices import keep_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.default_allocator and keep_freed_memory():
        ALLOCATOR[0] = "freed memory kept (both sides)"
    return torch.device(args.device)


# --------------------------------------------------------------------------- models and images


def cnn_setup(n: int, seed: int, notes: list[str]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Study 5's CNN and n images: the trained weights of CNN_WEIGHTS and the first n prepared
    Fashion-MNIST test images when present, else a seeded random init and N(0, 1) images
    labelled with its predictions. Appends what was used to notes."""
    from knockout.data import open_view
    from knockout.models import build_model, load_model

    if CNN_WEIGHTS.exists():
        model = load_model(CNN_WEIGHTS, "cpu")
        notes.append(f"cnn: trained weights {CNN_WEIGHTS.relative_to(ROOT)}")
    else:
        torch.manual_seed(seed)
        model = build_model("study5_cnn", (1, 28, 28), 10)
        notes.append(f"cnn: random init (seed {seed}); {CNN_WEIGHTS.relative_to(ROOT)} not found")
    model.eval()
    if (DATA_DIR / "meta.json").exists():
        _, test, _ = open_view(DATA_DIR)
        n = min(n, len(test))
        images, labels = test.inputs(range(n), "cpu"), test.labels[:n]
        notes.append(f"cnn: the first {len(images)} Fashion-MNIST test images and their labels")
    else:
        images = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            labels = model(images).argmax(1)
        notes.append(
            f"cnn: {n} random N(0,1) images (no {DATA_DIR.relative_to(ROOT)}), " "labels = the model's predictions"
        )
    return model, images, labels


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """A random network made to spread its predictions over the classes (a random ResNet predicts
    one class for every input): its batch norms' running statistics set to those of `images` (one
    train-mode pass) and its head's bias (`fc`) centred on them. In place; in eval mode after."""
    for m in model.modules():  # running statistics = those of the images (a random init has none)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(images)
    model.eval()
    model.fc.bias -= model(images).mean(0)  # spread the predictions over the classes
    return model


def resnet_setup(n: int, seed: int, notes: list[str], calibrate_min: int = 0):
    """A randomly initialised ResNet18 (small stem, 3x32x32, 10 classes) and n N(0, 1) images.
    A random ResNet predicts one class for every input, so its batch norms' running statistics
    are set from one train-mode pass over the images (topped up with more random images to
    calibrate_min) and its classifier bias is shifted so the mean logit over them is 0; labels
    are its predictions."""
    from knockout.models import build_model

    torch.manual_seed(seed)
    model = build_model({"type": "resnet", "depth": 18, "small_input": True}, (3, 32, 32), 10)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    calib = images
    if n < calibrate_min:
        extra = torch.randn(calibrate_min - n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 2))
        calib = torch.cat([images, extra])
    calibrate(model, calib)
    with torch.no_grad():
        labels = model(images).argmax(1)
    notes.append(
        f"resnet18: random init (seed {seed}), batch norms and fc bias calibrated on {len(calib)} random "
        f"N(0,1) 3x32x32 images; {n} of them used, labels = the model's predictions "
        f"(classes {torch.bincount(labels, minlength=10).tolist()})"
    )
    return model, images, labels


def reference_images(name: str, n: int, seed: int, notes: list[str]) -> torch.Tensor:
    """n images the mean and resample values are taken from, never the evaluated ones: for the
    cnn the first n prepared Fashion-MNIST training images when present, else (and for the
    ResNet) seeded N(0, 1) images of another seed than the evaluated ones."""
    from knockout.data import open_view

    if name == "cnn" and (DATA_DIR / "meta.json").exists():
        train, _, _ = open_view(DATA_DIR)
        notes.append(f"{name}: values from the first {min(n, len(train))} Fashion-MNIST training images")
        return train.inputs(range(min(n, len(train))), "cpu")
    shape = (1, 28, 28) if name == "cnn" else (3, 32, 32)
    notes.append(f"{name}: values from {n} random N(0,1) images (seed {seed + 3})")
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed + 3))


def value_context(model: nn.Module, value: str, layers: list[str], reference: torch.Tensor):
    """knockout's Context for one ablation value: the unit statistics over `reference` (as the
    unit_values rule computes them, once per model: outside any timing) and the donor split."""
    from knockout.data import as_split
    from knockout.engine import Context
    from knockout.units import unit_values

    labels = torch.zeros(len(reference), dtype=torch.long)
    stats = unit_values(model, as_split(reference, labels), layers) if value != "zero" else None
    donors = as_split(reference, labels) if value == "resample" else None
    return Context(trained=model, unit_values=stats, donors=donors, seed=0)


class captum_baselines:
    """Captum's `layer_baselines` matching a knockout value, per batch of evaluated images
    (`first`: the batch's position in the evaluated images): 0; the unit means (1, C, 1, 1) or
    (1, C); or, for resample, the silence point's output on each example's donor (the very
    donors knockout draws: `engine.values.donor_indices`), computed by a forward of the donor
    images with a hook on `point` (part of the peer's timed work, as a researcher would do it)."""

    def __init__(self, model: nn.Module, point: nn.Module, layer: str, context, value: str, n: int):
        from knockout.engine.values import donor_indices

        self.model, self.point, self.value = model, point, value
        if value == "mean":
            stats = context.unit_values[layer]
            # the channel means over the layer's whole output shape (a broadcast (1, C, 1, 1) trips
            # Captum's LayerFeatureAblation when features are grouped: perturbations of 2+ channels)
            shape = stats["mean_position"].shape
            self.mean = stats["mean_channel"].float().view(-1, *[1] * (len(shape) - 1)).expand(shape)
        if value == "resample":
            self.donors = context.donors
            self.index = donor_indices(context.seed, 0, n, len(context.donors))

    def __call__(self, first: int, size: int, device):
        if self.value == "zero":
            return 0
        if self.value == "mean":
            return self.mean.to(device).expand(size, *self.mean.shape)
        seen = []
        handle = self.point.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
        try:
            with torch.no_grad():
                self.model(self.donors.inputs(self.index[first : first + size].tolist(), device))
        finally:
            handle.remove()
        return seen[0]


# --------------------------------------------------------------------------- report


def print_table(header: Sequence[str], lines: Iterable[Sequence], left: Iterable[int] = (0,)) -> None:
    """A plain text table: columns `left` left-aligned, the others right-aligned."""
    cells = [[str(v) for v in header]] + [[str(v) for v in line] for line in lines]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    left = set(left)
    for i, c in enumerate(cells):
        print("  ".join(v.ljust(w) if j in left else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    """rows' `columns` (other keys ignored) as CSV; floats rounded to 6 significant digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in r.items()})


def min_ratio(rows: list[dict], ratio: str) -> float | None:
    """The smallest row[ratio] (rows where it is None have no peer), or None."""
    values = [r[ratio] for r in rows if r.get(ratio) is not None]
    return min(values) if values else None


def _report(rows, columns, out, header, cells, left, notes) -> None:
    """The table (titles `header`, default `columns`; one line per row, cells(row), default its
    `columns`), a blank line, the notes, and the rows' `columns` written to `out` as CSV."""
    cells = cells or (lambda r: [r[k] for k in columns])
    print_table(header or columns, [cells(r) for r in rows], left)
    print()
    for line in notes:
        print(line)
    if out is not None:
        write_csv(out, rows, columns)
        print(f"wrote {out}")


def finish(
    rows: list[dict],
    columns: Sequence[str],
    *,
    ratio: str | None = None,
    rates: dict[str, float] | None = None,
    out: Path | None = None,
    header: Sequence[str] | None = None,
    cells: Callable[[dict], Sequence] | None = None,
    left: Iterable[int] = (0,),
    notes: Iterable[str] = (),
) -> None:
    """End a bench: print the table (titles `header`, default `columns`; one line per row,
    cells(row), default its `columns`), a blank line and the notes, write the rows' `columns`
    to `out` as CSV (and its {name}.meta.json, which the docs' benchmarks page reads) when
    given, and print last ``min ratio: N.NNx``, the smallest row[ratio] (the knockout-vs-peer
    ratio: peer time / ours), or for a coverage bench (`rates`, percentages per family)
    ``min pass rate: NN.N%``."""
    notes = list(notes)
    _report(rows, columns, out, header, cells, left, notes)
    if rates is not None:
        last = "min pass rate: " + (f"{min(rates.values()):.1f}%" if rates else "n/a")
    else:
        low = min_ratio(rows, ratio)
        last = "min ratio: " + ("n/a" if low is None else f"{low:.2f}x")
    if out is not None:
        write_meta(out, last, notes)
    print(last, flush=True)


def environment(device, *packages) -> str:
    """One line for a bench's header: torch's and `packages`' versions, the device, the threads
    (remembered for the CSV's meta.json)."""
    versions = ", ".join(f"{m.__name__} {m.__version__}" for m in (torch, *packages))
    ENVIRONMENT[0] = (
        f"{versions}, device {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"python {sys.version.split()[0]}, allocator: {ALLOCATOR[0]}"
    )
    return ENVIRONMENT[0]


ENVIRONMENT = [""]  # the last environment() line


def machine() -> str:
    """The CPU model, its cores, the memory and the GPU, if any, in one line."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    memory = Path("/proc/meminfo").read_text().split()[1] if Path("/proc/meminfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    gib = f", {int(memory) / 2**20:.0f} GiB" if memory else ""
    return f"{model or 'CPU'}, {os.cpu_count()} cores{gib}, {gpu}"


def write_meta(out: Path, last_line: str, notes: Iterable[str]) -> Path:
    """Beside a bench's CSV, {name}.meta.json: what ran it (title, command), where (machine,
    environment), when (UTC date), its last line and the notes on its columns."""
    import datetime
    import json

    main = sys.modules["__main__"]
    script = Path(sys.argv[0])
    meta = {
        "bench": script.stem,
        "title": (main.__doc__ or script.stem).strip().split("\n")[0],
        "command": " ".join([".venv/bin/python", f"bench/{script.name}", *sys.argv[1:]]),
        "machine": machine(),
        "environment": ENVIRONMENT[0],
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "last_line": last_line,
        "notes": list(notes),
    }
    path = Path(out).with_suffix(".meta.json")
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path
