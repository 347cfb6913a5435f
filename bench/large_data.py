"""A dataset larger than the memory a job may hold: prepare, training and a unit sweep, streamed.

What it measures
----------------
A generated image dataset (``--images`` 200,000 training and ``--test-images`` 10,000 test RGB
images of ``--size`` 64x64, ten classes of smooth patterns under noise: 2.5 GB as uint8, 9.8 GB
as float32), written once as an image folder of JPEGs (quality 90) and as a tensors file (an
uncompressed .npz), larger than the 1 GB that knockout's jobs hold in memory (``data.resident_mb``,
the default): every phase below streams it from disk. Each phase runs in a process of its own, so
its peak resident memory (``ru_maxrss`` from ``wait4``; with DataLoader workers, the largest of
the process and its workers) is its own:

  * prepare, image folder: ``knockout.data.prepare(workers=W)`` (the prepare rule's job: PIL
    decodes in W DataLoader worker processes, chunks of 16 MB written in place, resumable) vs the
    decode rate of the DataLoader loop a researcher writes: ``ImageFolder(folder,
    transform=ToTensor())`` + ``DataLoader(batch_size=256, num_workers=W)`` over the first
    ``--peer-images`` images (nothing written). images/s. The folder is read once before, untimed,
    so that both read it from the page cache.
  * prepare, tensors file: ``knockout.data.prepare`` of the same images from the .npz (rows read in
    place at their offset; no decoding). No peer.
  * training: a ResNet-18 (small stem: 3x3/1, no max pooling) trained by ``knockout.trainer.train``
    for ``--train-steps`` batches of ``--batch`` drawn at random from the whole 200,000-image
    split (a seeded subset of ``steps x batch`` positions spread over the file, shuffled as the
    job shuffles): streamed (read from disk batch by batch while the previous batch trains) vs
    the same positions held in memory (``Split.in_memory``: the in-memory path, on a subset that
    fits) vs the DataLoader loop (``ImageFolder`` of the same files, ``ToTensor`` + ``Normalize``
    with the same mean and std, ``Subset`` of the same positions, ``shuffle=True``,
    ``num_workers=W``). images/s of the training loop (knockout's: the ``seconds`` of its
    history; the DataLoader's: one pass, its iterator's start included). On the CPU a whole epoch
    of 200,000 images is hours; ``--train-steps 0`` trains the whole epoch (a GPU).
  * unit sweep: 64 units (0..63, ``--units``) of ``--layer`` (layer3.1.conv2) silenced one at a
    time, on the first ``--sweep-images`` test images, by ``evaluate_conditions`` on the streamed
    test split vs the same in memory vs Captum's ``DataLoaderAttribution(FeatureAblation)`` over
    the DataLoader of the same images (ImageFolder + ToTensor + Normalize, ``num_workers=W``): the
    forward gates the layer's silence point by a (B, 64) input of ones, which FeatureAblation sets
    to 0 one unit at a time (``perturbations_per_pass`` 8), and the metric is the correct count
    (``reduce``), so a unit's accuracy is the intact one minus its attribution. A calibrated
    random network (batch norms' statistics from the images, head bias centred: a random ResNet
    otherwise predicts one class). Every unit's correct count is checked against Captum's. images
    x units per second.

Goals: the peak memory of every knockout job under 2 GB, whatever the dataset's size; streamed
training >= 90% of the in-memory path's images/s; prepare >= the DataLoader's decode rate; the
sweep >= 3x Captum's DataLoaderAttribution. The table has one row per comparison; the last line is
``min ratio: N.NNx`` over them (ours / peer, images per second).

How to run (from the repository root)
-------------------------------------
    .venv/bin/python bench/large_data.py                  # the full run (about half an hour on 2 cores)
    .venv/bin/python bench/large_data.py --quick          # 20,000 + 2,000 images, fewer steps
    .venv/bin/python bench/large_data.py --device cuda --train-steps 0   # a whole epoch on a GPU

The generated data stay in ``--workdir`` (default results/bench/large_data) for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from _common import ROOT, Timed, calibrate, environment, finish, options, start  # first: src/ on the path
import numpy as np
import torch

COLUMNS = [
    "phase",
    "ours",
    "ours_per_s",
    "peer",
    "peer_per_s",
    "ratio",
    "goal",
    "goal_met",
    "ours_peak_mb",
    "peer_peak_mb",
    "checked",
]
CLASSES = 10
PEAK_GOAL_MB = 2048


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[options(quick="20,000 + 2,000 images, 4 training steps, 16 sweep images")],
    )
    p.add_argument("--images", type=int, default=200_000, help="training images (default 200,000)")
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes, ours and the DataLoader's (default 2)")
    p.add_argument(
        "--peer-images", type=int, default=50_000, help="images the DataLoader decodes for its rate (default 50,000)"
    )
    p.add_argument("--train-steps", type=int, default=48, help="training batches (default 48; 0: a whole epoch)")
    p.add_argument(
        "--batch",
        type=int,
        default=16,
        help="training batch size (default 16: a ResNet-18 at 64x64 needs 70 MB of activations per image)",
    )
    p.add_argument("--sweep-images", type=int, default=64)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--layer", default="layer3.1.conv2")
    p.add_argument("--budget-mb", type=float, default=512)
    p.add_argument("--workdir", type=Path, default=ROOT / "results" / "bench" / "large_data")
    p.add_argument("--only", default="prepare,train,sweep", help="the phases to run (default all: prepare,train,sweep)")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # a child process: one phase
    p.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        for key, value in (
            ("images", 20_000),
            ("test_images", 2_000),
            ("peer_images", 5_000),
            ("train_steps", 4),
            ("sweep_images", 16),
        ):
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    return args


# --------------------------------------------------------------------------- the data


def pattern(k: int, i: int, size: int) -> np.ndarray:
    """Image i of class k: a smooth pattern of the class (stripes of its frequency and direction)
    under noise, uint8 (H, W, 3); a pure function of (k, i)."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = np.pi * k / CLASSES
    wave = np.sin(2 * np.pi * (2 + k) * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    base = 128 + 70 * wave
    image = np.stack([base, 128 + 40 * np.cos(2 * np.pi * k / CLASSES) + 0 * base, 255 - base], -1) + rng.normal(
        0, 12, (size, size, 3)
    )
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_range(task) -> None:
    from PIL import Image

    folder, split, first, stop, size, offset = task
    for i in range(first, stop):
        path = folder / split / f"c{i % CLASSES}" / f"{i:06d}.jpg"
        Image.fromarray(pattern(i % CLASSES, offset + i, size)).save(path, quality=90)


def generate(args) -> dict:
    """The image folder and the tensors file in --workdir (kept: made once per size)."""
    from concurrent.futures import ProcessPoolExecutor

    work = args.workdir / f"{args.images}_{args.test_images}_{args.size}"
    done = work / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    folder = work / "jpegs"
    counts = {"train": args.images, "test": args.test_images}
    offsets = {"train": 0, "test": 10**9}
    for split in counts:
        for k in range(CLASSES):
            (folder / split / f"c{k}").mkdir(parents=True, exist_ok=True)
    step = 5000
    tasks = [
        (folder, split, a, min(a + step, n), args.size, offsets[split])
        for split, n in counts.items()
        for a in range(0, n, step)
    ]
    began = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(_write_range, tasks))
    # The same images (as JPEGs decode them) as a tensors file, written member by member, stored.
    from torchvision.datasets.folder import ImageFolder

    npz = work / "images.npz"
    with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for split, n in counts.items():
            listing = ImageFolder(str(folder / split)).samples
            with archive.open(f"{split}_images.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, {"descr": "|u1", "fortran_order": False, "shape": (n, args.size, args.size, 3)}
                )
                from PIL import Image

                for path, _ in listing:
                    with Image.open(path) as image:
                        member.write(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes())
            with archive.open(f"{split}_labels.npy", "w") as member:
                np.lib.format.write_array(member, np.array([label for _, label in listing], dtype=np.int64))
    info = {
        "folder": str(folder),
        "npz": str(npz),
        "seconds": time.perf_counter() - began,
        "uint8_gb": (args.images + args.test_images) * 3 * args.size**2 / 1e9,
    }
    done.write_text(json.dumps(info))
    return info


# --------------------------------------------------------------------------- phases (child processes)


def run_phase(args, phase: str, settings: dict) -> dict:
    """Run one phase in a child process (after flushing the page cache's dirty data to disk): its
    result and its peak resident memory (MB)."""
    os.sync()  # what earlier phases wrote reaches the disk now, not while this one is timed
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--settings",
        json.dumps(settings),
        "--threads",
        str(args.threads or 0),
        "--device",
        args.device,
    ] + (["--default-allocator"] if args.default_allocator else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    return result | {"peak_mb": usage.ru_maxrss / 1024}


def phase_prepare(s: dict) -> dict:
    """`knockout prepare` as the rule runs it (its own process: the peak memory is the job's)."""
    from knockout.config import resolve
    from knockout.data import fetch, prepare

    entry = resolve(f"dataset_{s['entry']['source']}", s["entry"])
    fetch(s["name"], Path(s["raw"]), [], entry=entry)
    with Timed() as t:
        prepare(s["name"], Path(s["raw"]), Path(s["out"]), entry=entry, workers=s["workers"], progress=False)
    return {"seconds": t.seconds, "images": s["n"]}


def phase_decode(s: dict) -> dict:
    """The DataLoader's decode rate: ImageFolder + ToTensor, num_workers, over the first n images."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    dataset = Subset(datasets.ImageFolder(s["folder"], transform=transforms.ToTensor()), range(s["n"]))
    with Timed() as t:
        n = sum(len(y) for _, y in DataLoader(dataset, batch_size=256, num_workers=s["workers"]))
    return {"seconds": t.seconds, "images": n}


def _resnet(size: int):
    from knockout.models import build_model

    torch.manual_seed(0)
    return build_model({"type": "resnet", "depth": 18, "small_input": True}, (3, size, size), CLASSES)


def _positions(n_total: int, n: int) -> torch.Tensor:
    """n positions drawn (seeded) from the whole split: reads spread over the whole file."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(1))[:n].sort().values


def phase_train(s: dict) -> dict:
    from knockout.config import resolve
    from knockout.data import open_view
    from knockout.trainer import TrainConfig, train

    device = torch.device(s["device"])
    train_split, test_split, meta = open_view(s["view"], device=device, resident_mb=0)  # streamed
    n = len(train_split) if s["steps"] == 0 else s["steps"] * s["batch"]
    subset = train_split.subset(_positions(len(train_split), n))
    if s["how"] == "in_memory":
        subset = subset.in_memory(device)
    config = TrainConfig.from_dict(
        resolve(
            "train",
            {
                "epochs": 1,
                "batch_size": s["batch"],
                "optimizer": "sgd",
                "lr": 0.01,
                "augment": False,
                "eval_batch_size": 256,
            },
        )
    )
    model = _resnet(meta["shape"][1])
    metrics = train(
        model, subset, test_split.subset(range(64)), config, Path(s["out"]), seed=0, device=device, progress=False
    )
    return {"seconds": metrics["seconds"], "images": n}


def phase_train_dataloader(s: dict) -> dict:
    """The loop a researcher writes: ImageFolder + ToTensor + Normalize, a shuffled DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from knockout.data import read_meta

    device = torch.device(s["device"])
    meta = read_meta(Path(s["view"]) / "meta.json")
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(meta["mean"], meta["std"])])
    dataset = datasets.ImageFolder(s["folder"], transform=normalise)
    n = len(dataset) if s["steps"] == 0 else s["steps"] * s["batch"]
    loader = DataLoader(
        Subset(dataset, _positions(len(dataset), n).tolist()),
        batch_size=s["batch"],
        shuffle=True,
        num_workers=s["workers"],
        generator=torch.Generator().manual_seed(0),
    )
    model = _resnet(meta["shape"][1]).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Timed(device) as t:
        for x, y in loader:
            x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return {"seconds": t.seconds, "images": n}


def _calibrated(view: str, n: int, device):
    """A random ResNet-18 whose batch norms' statistics are those of the first n test images and
    whose head bias is centred on them (else it predicts one class for every image)."""
    from knockout.data import open_view

    _, test, meta = open_view(view, device=device, resident_mb=0)
    model = _resnet(meta["shape"][1]).to(device)
    calibrate(model, test.inputs(range(n), device))
    return model, test.subset(range(n)), meta


def phase_sweep(s: dict) -> dict:
    from knockout.engine.evaluate import evaluate_conditions
    from knockout.engine import Condition, Context, apply_condition

    device = torch.device(s["device"])
    model, test, _ = _calibrated(s["view"], s["n"], device)
    if s["how"] == "in_memory":
        test = test.in_memory(device)
    conditions = [Condition("baseline", "baseline")] + [
        Condition(f"each:{s['layer']}:{u}", "each", silence=((s["layer"], (u,)),)) for u in range(s["units"])
    ]
    context = Context(trained=model)
    evaluate_conditions(
        conditions[:2], context, test.subset(range(2)), budget_mb=s["budget_mb"], device=device, apply=apply_condition
    )  # warm-up
    with Timed(device) as t:
        out = evaluate_conditions(
            conditions, context, test, budget_mb=s["budget_mb"], device=device, apply=apply_condition
        )
    labels = test.labels.cpu()
    correct = [int((out[c.name].predictions == labels).sum()) for c in conditions[1:]]
    return {
        "seconds": t.seconds,
        "images": s["n"] * s["units"],
        "correct": correct,
        "intact": int((out["baseline"].predictions == labels).sum()),
    }


def phase_captum(s: dict) -> dict:
    """DataLoaderAttribution(FeatureAblation): a (B, units) gate of ones on the layer's silence
    point, set to 0 one unit at a time; the metric: the correct count over the DataLoader."""
    from captum.attr import DataLoaderAttribution, FeatureAblation
    from torch.utils.data import DataLoader, Dataset, Subset
    from torchvision import datasets, transforms

    from knockout.engine import silence_point

    device = torch.device(s["device"])
    model, _, meta = _calibrated(s["view"], s["n"], device)
    units = s["units"]
    point = model.get_submodule(silence_point(model, s["layer"]))
    gate = {}
    point.register_forward_hook(
        lambda m, i, o: torch.cat([o[:, :units] * gate["g"][:, :, None, None], o[:, units:]], 1)
    )

    def forward(x, g):
        gate["g"] = g
        return model(x)

    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(meta["mean"], meta["std"])])
    folder = datasets.ImageFolder(s["folder"], transform=normalise)

    class Gated(Dataset):
        def __len__(self):
            return s["n"]

        def __getitem__(self, i):
            x, y = folder[i]
            return x, torch.ones(units), y

    loader = DataLoader(Subset(Gated(), range(s["n"])), batch_size=s["n"], num_workers=s["workers"])

    def reduce(accum, output, inputs):
        right = (output.argmax(1) == inputs[2].to(output.device)).sum().float()
        return right if accum is None else accum + right

    attribution = DataLoaderAttribution(FeatureAblation(forward))
    mask = torch.arange(units).view(1, units)
    with torch.no_grad(), Timed(device) as t:
        attr = attribution.attribute(
            loader,
            input_roles=(1, 0, 2),
            baselines=(0.0,),
            feature_mask=(mask,),
            reduce=reduce,
            perturbations_per_pass=8,
        )
    return {
        "seconds": t.seconds,
        "images": s["n"] * units,
        "lost": [float(v) for v in (attr[0] if isinstance(attr, tuple) else attr).flatten()],
    }


PHASES = {
    "prepare": phase_prepare,
    "decode": phase_decode,
    "train": phase_train,
    "train_dataloader": phase_train_dataloader,
    "sweep": phase_sweep,
    "captum": phase_captum,
}


# --------------------------------------------------------------------------- the run


def row(
    phase: str, ours: dict, ours_name: str, peer: dict | None, peer_name: str, goal: float | None, checked: str = ""
) -> dict:
    ours_rate = ours["images"] / ours["seconds"]
    peer_rate = peer["images"] / peer["seconds"] if peer else None
    ratio = ours_rate / peer_rate if peer_rate else None
    met = None if goal is None or ratio is None else ratio >= goal
    return {
        "phase": phase,
        "ours": ours_name,
        "ours_per_s": round(ours_rate, 1),
        "peer": peer_name,
        "peer_per_s": round(peer_rate, 1) if peer_rate else None,
        "ratio": round(ratio, 2) if ratio else None,
        "goal": f">={goal:g}x" if goal else "",
        "goal_met": "" if met is None else ("yes" if met else "no"),
        "ours_peak_mb": round(ours["peak_mb"]),
        "peer_peak_mb": round(peer["peak_mb"]) if peer else None,
        "checked": checked,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        start(args)
        print("RESULT " + json.dumps(PHASES[args.phase](args.settings)), flush=True)
        return 0
    device = start(args)
    import captum
    import torchvision

    print(environment(device, torchvision, captum), flush=True)
    data = generate(args)
    work = Path(data["folder"]).parent
    print(
        f"{args.images:,} + {args.test_images:,} images of 3x{args.size}x{args.size}: {data['uint8_gb']:.2f} GB as uint8, "
        f"{4 * data['uint8_gb']:.1f} GB as float32; jobs hold at most 1 GB of a split in memory (data.resident_mb)",
        flush=True,
    )
    folder_entry = {
        "source": "image_folder",
        "train": str(Path(data["folder"]) / "train"),
        "test": str(Path(data["folder"]) / "test"),
        "size": args.size,
    }
    view = str(work / "view")
    n_all = args.images + args.test_images
    common = {"device": args.device, "workers": args.workers}
    rows = []
    only = set(args.only.split(","))
    if not (work / "view" / "meta.json").exists():
        only.add("prepare")  # the others read its view

    if "prepare" in only:
        rows += prepare_rows(args, data, work, folder_entry, view, n_all)
    if "train" in only:
        rows += train_rows(args, work, folder_entry, view, common)
    differ, same = 0, True
    if "sweep" in only:
        sweep_rows, differ, same = sweep_rows_of(args, folder_entry, view, common)
        rows += sweep_rows
    peaks = [r["ours_peak_mb"] for r in rows]
    notes = [
        f"peak memory of every knockout phase: {max(peaks):,} MB (goal < {PEAK_GOAL_MB:,} MB, whatever the dataset's size): "
        + ("met" if max(peaks) < PEAK_GOAL_MB else "NOT met"),
        f"data generated once in {data['seconds']:.0f} s ({work.relative_to(ROOT) if work.is_relative_to(ROOT) else work})",
        "peer peak: the DataLoader's process or its largest worker; per_s: images (sweep: images x units) per second",
    ]
    finish(
        rows,
        COLUMNS,
        ratio="ratio",
        out=args.out,
        notes=notes,
        header=["phase", "ours", "ours/s", "peer", "peer/s", "ratio", "goal", "met", "ours MB", "peer MB", "checked"],
    )
    return 0 if differ == 0 and same else 1


def warm(folder: Path) -> None:
    """Every file of the image folder read once, untimed: both sides then read it from the page
    cache (else the first to run pays the cold disk for both)."""
    for path in sorted(folder.rglob("*.jpg")):
        path.read_bytes()


def prepare_rows(args, data, work, folder_entry, view, n_all) -> list[dict]:
    rows = []
    warm(Path(data["folder"]))
    prepared = run_phase(
        args,
        "prepare",
        {
            "name": "jpegs",
            "entry": folder_entry,
            "raw": str(work / "raw_folder"),
            "out": view,
            "n": n_all,
            "workers": args.workers,
        },
    )
    decoded = run_phase(
        args,
        "decode",
        {"folder": folder_entry["train"], "n": min(args.peer_images, args.images), "workers": args.workers},
    )
    rows.append(
        row(
            "prepare (JPEG folder)",
            prepared,
            f"prepare, {args.workers} workers",
            decoded,
            f"ImageFolder+DataLoader decode, {args.workers} workers",
            1.0,
        )
    )
    tensors = run_phase(
        args,
        "prepare",
        {
            "name": "arrays",
            "entry": {"source": "tensors", "path": data["npz"]},
            "raw": str(work / "raw_tensors"),
            "out": str(work / "view_tensors"),
            "n": n_all,
            "workers": args.workers,
        },
    )
    rows.append(row("prepare (tensors file)", tensors, "prepare", None, "", None))
    print(
        f"prepared: {prepared['seconds']:.1f} s from JPEGs, {tensors['seconds']:.1f} s from the tensors file",
        flush=True,
    )
    return rows


def train_rows(args, work, folder_entry, view, common) -> list[dict]:
    rows = []
    training = {"view": view, "steps": args.train_steps, "batch": args.batch, "folder": folder_entry["train"]} | common
    streamed = run_phase(args, "train", training | {"how": "streamed", "out": str(work / "run_streamed")})
    memory = run_phase(args, "train", training | {"how": "in_memory", "out": str(work / "run_in_memory")})
    loader = run_phase(args, "train_dataloader", training)
    steps = f"{args.train_steps} steps of {args.batch}" if args.train_steps else "one epoch"
    rows.append(
        row(f"train ResNet-18, {steps}", streamed, "streamed from disk", memory, "in memory (same images)", 0.9)
    )
    rows.append(
        row(
            f"train ResNet-18, {steps}",
            streamed,
            "streamed from disk",
            loader,
            f"ImageFolder+DataLoader, {args.workers} workers",
            None,
        )
    )
    print(
        f"trained: {streamed['seconds']:.1f} s streamed, {memory['seconds']:.1f} s in memory, {loader['seconds']:.1f} s DataLoader",
        flush=True,
    )
    return rows


def sweep_rows_of(args, folder_entry, view, common) -> tuple[list[dict], int, bool]:
    rows = []
    sweep = {
        "view": view,
        "n": min(args.sweep_images, args.test_images),
        "units": args.units,
        "layer": args.layer,
        "budget_mb": args.budget_mb,
        "folder": folder_entry["test"],
    } | common
    ours_s = run_phase(args, "sweep", sweep | {"how": "streamed"})
    ours_m = run_phase(args, "sweep", sweep | {"how": "in_memory"})
    peer = run_phase(args, "captum", sweep)
    theirs = [ours_s["intact"] - round(lost) for lost in peer["lost"]]
    differ = sum(a != b for a, b in zip(ours_s["correct"], theirs))
    same = ours_s["correct"] == ours_m["correct"]
    what = f"{args.units} units of {args.layer}, {sweep['n']} images"
    rows.append(
        row(
            f"sweep {what}",
            ours_s,
            "streamed from disk",
            peer,
            "Captum DataLoaderAttribution",
            3.0,
            f"{differ} of {args.units} units differ from Captum",
        )
    )
    rows.append(
        row(
            f"sweep {what}",
            ours_s,
            "streamed from disk",
            ours_m,
            "in memory (same images)",
            None,
            "identical" if same else "DIFFERENT",
        )
    )
    return rows, differ, same


if __name__ == "__main__":
    sys.exit(main())
