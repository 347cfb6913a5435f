"""Datasets: the dispatch to their sources (`knockout.sources`), class-stratified subsets, and the
prepared splits, written once by `prepare` and streamed by every job.

    inspect(name, entry, raw_dir, geometry)     -> DataInfo, before any job (the config checks)
    fetch(name, dest, mirrors, download, entry) -> dest/<files> + dest/manifest.json (download rule)
    prepare(name, raw_dir, out_dir, ...)        -> out_dir/{split}_{images,labels,indices}.npy and
                                                   meta.json                          (prepare rule)
    open_split(folder, split, preprocess, ...)  -> a Split: uint8 images on disk (in memory when
                                                   small), model inputs made batch by batch

`entry` is a dataset's config entry (validated; None: a built-in with no subsets).

A prepared split is uncompressed uint8 on disk (`numpy.load(path, mmap_mode="r")` opens it). A
job reads it in batches with positioned reads, never whole, and converts and normalises each
batch on the device while a thread reads the next: its memory is a few batches, whatever the
dataset's size. `prepare` decodes in parallel workers, resizes once (the view's geometry), and
resumes a killed run from the chunks it had written. Every file is written under a temporary
name and renamed into place, meta.json last, so an interrupted run never leaves a view that looks
complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from . import sources
from .catalog import SPLITS, DataInfo, raw_entry
from .errors import DataError
from .io import atomic_write, write_json
from .sources.common import mode_of, one_line, output_size, to_pixels

__all__ = [
    "DataError",
    "Split",
    "as_split",
    "fetch",
    "inspect",
    "open_split",
    "open_view",
    "prepare",
    "read_meta",
    "stratified_subset",
]

_CHUNK_BYTES = 16 << 20  # images converted and written per step of prepare
_SYNC_SECONDS = 2.0  # how often prepare records the chunks it wrote (what a killed run keeps)


# --------------------------------------------------------------------------- dispatch


def inspect(name: str, entry: dict | None, raw_dir: Path | None = None, geometry: dict | None = None):
    """What can be known of a configured dataset before any job runs (for the config checks).

    In: its key and config entry (validated; None: a built-in with no subsets); `raw_dir`, where
    the `download` rule writes its manifest, if it may have run already; `geometry`, the resize
    and crop of the view a model asks for (None: the dataset's own size).
    Out: a `knockout.catalog.DataInfo`: shape (C, H, W) at that geometry, classes, and the sizes
    of the prepared splits (subsets applied; n_train 0 for an evaluation-only dataset). A field
    that cannot be known yet is None and `deferred` says why. DataError, one line naming the key
    or file, for an entry or file that cannot work.
    """
    return inspect_views(name, entry, raw_dir, [geometry])[0]


def inspect_views(name: str, entry: dict | None, raw_dir: Path | None, geometries: list) -> list:
    """`inspect` at each of `geometries`, the source inspected once (an image folder's listing
    is read once, however many views its models ask for)."""
    entry = entry or {}
    found = sources.source(sources.source_of(name, entry)).inspect(name, raw_entry(entry), raw_dir)
    native = tuple(found["shape"]) if found.get("shape") is not None else None
    channels = found.get("channels", native[0] if native else None)

    def kept(subset: int | None, n: int | None) -> int | None:
        return None if n is None else n if subset is None else min(subset, n)

    def at(geometry: dict | None) -> DataInfo:
        shape = native
        if geometry is not None:
            size = output_size(geometry, native[1:] if native else None)
            shape = (channels, *size) if channels is not None and size is not None else None
        return DataInfo.from_meta(
            {
                "shape": shape,
                "classes": found.get("classes"),
                "n_test": kept(entry.get("test_subset"), found.get("n_test")),
                "n_train": kept(entry.get("train_subset"), found.get("n_train")),
                "deferred": found.get("deferred"),
            }
        )

    return [at(g) for g in geometries]


def fetch(name: str, dest: Path, mirrors: list, download: bool = True, entry: dict | None = None, **options) -> dict:
    """Make a dataset's raw data available and describe it in dest/manifest.json: {dataset,
    source, entry (the config entry without its subsets), files (each with its size and, where there are
    files to verify, md5 and sha256), ...}. `options` go to the built-ins' acquire (`timeout`,
    `urls`, `source`: tests give tiny copies)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    source = sources.source_of(name, entry)
    body = sources.source(source).acquire(name, raw_entry(entry), dest, list(mirrors), download, **options)
    manifest = {"dataset": name, "source": source, "entry": raw_entry(entry), **body}
    write_json(manifest, dest / "manifest.json")
    return manifest


def available(name: str, entry: dict | None, mirrors: list, download: bool) -> tuple[bool, str]:
    """(whether the data can be had, one line saying how) for `knockout check-data`."""
    try:
        return sources.source(sources.source_of(name, entry)).available(name, raw_entry(entry), mirrors, download)
    except DataError as err:
        return False, str(err)


def _read_manifest(name: str, entry: dict | None, raw_dir: Path, required: bool) -> dict:
    """raw_dir/manifest.json, written by `fetch` for this dataset and this very entry ({} when
    there is none and it is not `required`: a built-in's files are verified on their own)."""
    path = Path(raw_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if not required:
            return {}
        raise DataError(f"{name}: {path}: not fetched or unreadable ({one_line(err)})") from None
    if required and (manifest.get("dataset") != name or manifest.get("entry") != raw_entry(entry)):
        raise DataError(f"{name}: {path} was fetched for another config entry; fetch it again (the download rule)")
    return manifest


# --------------------------------------------------------------------------- subsets


def stratified_subset(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Indices of a class-stratified random subset.

    In: labels int N; subset size n (None or >= N: everything); seed.
    Out: int64 indices, sorted ascending, len n. Each class gets its share
    n * count / N rounded by largest remainder (ties to the lower class), so the
    sizes sum exactly to n. Same labels, n and seed -> same indices.
    """
    labels = torch.as_tensor(labels).flatten()
    total = labels.numel()
    if n is None or n >= total:
        return torch.arange(total, dtype=torch.int64)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    counts = counts.tolist()
    # Integer arithmetic keeps the allocation exact (no float rounding ties).
    sizes = [n * c // total for c in counts]
    remainders = [n * c % total for c in counts]
    short = n - sum(sizes)
    for k in sorted(range(len(counts)), key=lambda k: (-remainders[k], k))[:short]:
        sizes[k] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, count, size in zip(classes.tolist(), counts, sizes):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(count, generator=generator)[:size]])
    return torch.sort(torch.cat(chosen)).values.to(torch.int64)


# --------------------------------------------------------------------------- prepare


def _npy_header(f, shape: tuple[int, ...], dtype=np.uint8) -> int:
    """Write an .npy header for a C-order array of `shape`; out: where its data starts."""
    np.lib.format.write_array_header_1_0(
        f,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(int(d) for d in shape),
        },
    )
    return f.tell()


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, where the data starts) of a C-order .npy file, from its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )(f)
        if fortran:
            raise DataError(f"{path}: a Fortran-order array, not a prepared split")
        return tuple(shape), dtype, f.tell()


class _Partial:
    """A prepare in progress: `.partial/` in the output folder holds each split's images file as
    it fills, and progress.json the run's key, the chunks written (synced to disk before they are
    recorded) and their pixel sums, so a killed run resumes where it stopped. A run of another
    key (another entry, subset, geometry or raw data) starts afresh."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        try:
            state = json.loads((folder / "progress.json").read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("key") != key:
            shutil.rmtree(folder, ignore_errors=True)
            state = {}
        folder.mkdir(parents=True, exist_ok=True)
        self.done = {split: set(chunks) for split, chunks in state.get("done", {}).items()}
        self.sums = {split: {int(c): v for c, v in sums.items()} for split, sums in state.get("sums", {}).items()}
        self.pending, self.synced, self.syncing = {}, time.monotonic(), None

    def images(self, split: str, shape: tuple[int, ...]) -> tuple[int, int]:
        """The split's images file (created at its full size if new): (an open descriptor, the
        offset of its data)."""
        path = self.folder / f"{split}_images.npy"
        if path.is_file() and _npy_layout(path)[0] == shape:
            fd = os.open(path, os.O_RDWR)
            return fd, _npy_layout(path)[2]
        self.done.pop(split, None)
        self.sums.pop(split, None)
        with open(path, "wb") as f:
            offset = _npy_header(f, shape)
            f.truncate(offset + int(np.prod(shape, dtype=np.int64)))
        return os.open(path, os.O_RDWR), offset

    def mark(self, split: str, chunk: int, fd: int, sums: list, last: bool = False) -> None:
        """Chunk `chunk` of `split` is written (`sums`: its pixels' per-channel sums). Every few
        seconds the chunks written since are synced to disk and then recorded, by a thread (the
        disk's pace does not hold up the conversion), and after the split's last chunk (`last`)
        at once: a killed run redoes at most a few seconds of work."""
        self.pending.setdefault(split, {})[chunk] = sums
        if last:
            self.wait()
            self._sync(fd, self.pending)
        elif self.syncing is None and time.monotonic() - self.synced >= _SYNC_SECONDS:
            self.syncing = threading.Thread(target=self._sync, args=(fd, self.pending), daemon=True)
            self.syncing.start()
        else:
            return
        self.pending = {}

    def wait(self) -> None:
        """Until the sync in flight, if any, is recorded."""
        if self.syncing is not None:
            self.syncing.join()
            self.syncing = None

    def _sync(self, fd: int, chunks: dict) -> None:
        os.fdatasync(fd)  # the chunks' bytes are on disk before the record says so
        for split, sums in chunks.items():
            self.done.setdefault(split, set()).update(sums)
            self.sums.setdefault(split, {}).update(sums)
        self.synced = time.monotonic()
        record = {"key": self.key, "done": {s: sorted(c) for s, c in self.done.items()}, "sums": self.sums}
        atomic_write(self.folder / "progress.json", lambda tmp: tmp.write_text(json.dumps(record)))
        if threading.current_thread() is self.syncing:
            self.syncing = None


class _Converted(torch.utils.data.Dataset):
    """The chosen items of a raw split, each converted to uint8 (C, H, W) in the loader's workers:
    (position, pixels), or for an item that cannot be converted (position, the one-line
    problem), so that the problem reaches the main process as the same one line."""

    def __init__(
        self, where: str, split, indices: np.ndarray, mode: str, geometry: dict | None, shape: tuple[int, ...]
    ):
        self.where, self.split, self.indices, self.mode, self.geometry, self.shape = (
            where,
            split,
            indices,
            mode,
            geometry,
            shape,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        i = int(self.indices[position])
        try:
            pixels = to_pixels(self.where, i, self.split.item(i), self.mode, self.geometry)
        except DataError as err:
            return position, str(err)
        except Exception as err:  # the user's own Dataset raising, say
            return position, f"{self.where}: item {i}: {type(err).__name__}: {one_line(err)}"
        if pixels.shape != self.shape:
            c, h, w = self.shape
            return position, (
                f"{self.where}: item {i}: image of {'x'.join(map(str, pixels.shape))}, the first one {c}x{h}x{w}: "
                "give a size to resize them all"
            )
        return position, pixels


class _Writer:
    """The loader's collate function, in its workers: a chunk of converted images written in
    place by the worker that converted them (no copy of them crosses to the main process, which
    only records what is done). Out: (the chunk's first position, its pixel sums), or (its first
    position, the one-line problems of its images that cannot be used)."""

    def __init__(self, path: Path, offset: int, row: int):
        self.path, self.offset, self.row, self.fd = path, offset, row, None

    def __call__(self, items: list) -> tuple[int, list]:
        problems = [value for _, value in items if isinstance(value, str)]
        if problems:
            return items[0][0], problems
        return items[0][0], self.write(items[0][0], np.stack([value for _, value in items]))

    def write(self, first: int, pixels: np.ndarray) -> list:
        if self.fd is None:  # a descriptor per process: each worker opens its own
            self.fd = os.open(self.path, os.O_WRONLY)
        os.pwrite(self.fd, np.ascontiguousarray(pixels).data, self.offset + first * self.row)
        return _pixel_sums(pixels)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _pixel_sums(pixels: np.ndarray) -> list[list[int]]:
    """[per-channel sums of the pixel values, of their squares] of uint8 (n, C, H, W), exact
    integers (from each channel's histogram): statistics that depend on neither how the images
    were chunked nor on how many threads summed them."""
    values = np.arange(256, dtype=np.int64)
    counts = [np.bincount(pixels[:, c].ravel(), minlength=256).astype(np.int64) for c in range(pixels.shape[1])]
    return [[int(h @ values) for h in counts], [int(h @ values**2) for h in counts]]


def _channel_stats(sums: list, channels: int, count: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in 0..1 units from the chunks' exact sums."""
    if count == 0:
        return [0.0] * channels, [1.0] * channels
    total = [sum(s[0][c] for s in sums) for c in range(channels)]
    squares = [sum(s[1][c] for s in sums) for c in range(channels)]
    mean = [t / (255 * count) for t in total]
    std = [math.sqrt(max(0, q * count - t * t)) / (255 * count) for t, q in zip(total, squares)]
    return mean, std


def _write_images(
    where: str,
    split: str,
    raw,
    indices: np.ndarray,
    mode: str,
    geometry: dict | None,
    partial: _Partial,
    workers: int,
    progress: bool,
) -> tuple[int, ...]:
    """The chosen images of one split converted and written (in `workers` processes) into the
    partial images file, chunk by chunk (the chunks a killed run recorded are kept). Out: the
    image shape (C, H, W)."""
    from tqdm import tqdm

    first, reason = None, None
    for i in indices:  # the shape is the first readable image's (the unreadable ones are listed below)
        try:
            first = to_pixels(where, int(i), raw.item(int(i)), mode, geometry)
            break
        except DataError as err:
            reason = reason or str(err)
    if first is None:
        raise DataError(f"none of the {len(indices)} {split} images can be used: {reason}")
    shape = tuple(first.shape)
    per_chunk = max(1, _CHUNK_BYTES // first.nbytes)
    chunks = [indices[i : i + per_chunk] for i in range(0, len(indices), per_chunk)]
    fd, offset = partial.images(split, (len(indices), *shape))
    todo = [c for c in range(len(chunks)) if c not in partial.done.get(split, set())]
    if len(todo) < len(chunks):
        print(
            f"prepare: resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks of the {split} split already prepared",
            file=sys.stderr,
        )
    bar = tqdm(
        total=len(indices),
        initial=sum(len(chunks[c]) for c in range(len(chunks)) if c not in todo),
        desc=f"prepare {where} {split}",
        unit="img",
        disable=not progress,
        mininterval=5,
    )
    writer = _Writer(partial.folder / f"{split}_images.npy", offset, first.nbytes)
    try:
        # Arrays a source already holds as uint8 at this mode and size need no conversion.
        if raw.arrays is not None and geometry is None and tuple(raw.arrays(indices[:1]).shape[1:]) == shape:
            done = (
                (c * per_chunk, writer.write(c * per_chunk, _checked(where, split, raw.arrays(chunks[c]), shape)))
                for c in todo
            )
        else:
            done = torch.utils.data.DataLoader(
                _Converted(where, raw, indices, mode, geometry, shape),
                collate_fn=writer,
                batch_sampler=[list(range(c * per_chunk, c * per_chunk + len(chunks[c]))) for c in todo],
                num_workers=workers if len(todo) > 1 else 0,
            )
        problems = []  # every image that cannot be used, found in one pass, not one per rerun
        for n, (position, sums) in enumerate(done, start=1):
            if sums and isinstance(sums[0], str):
                problems += sums
                continue
            partial.mark(split, position // per_chunk, fd, sums, last=n == len(todo))
            bar.update(len(chunks[position // per_chunk]))
    finally:
        partial.wait()
        bar.close()
        writer.close()
        os.close(fd)
    if problems:
        for problem in problems:
            print(f"prepare: {problem}", file=sys.stderr)
        more = f" (and {len(problems) - 1} more, each on a line of this job's log)" if len(problems) > 1 else ""
        raise DataError(f"{len(problems)} of the {len(indices)} {split} images cannot be used: {problems[0]}{more}")
    return shape


def _checked(where: str, split: str, pixels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(pixels.shape[1:]) != shape:
        raise DataError(f"{where}: {split} images of {pixels.shape[1:]}, the first one {shape}")
    return pixels


def _write_npy(array: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, array, allow_pickle=False))


_WORDNET_ID = re.compile(r"^n\d{8}$")


def named_classes(classes: list[str]) -> tuple[list[str], list[str] | None]:
    """(names, ids): ImageNet-1k's 1000 WordNet ids (the folder names of its validation set, in
    sorted order: its class indices) named as torchvision's weights name them (their
    `meta["categories"]`); other classes as they are, without ids."""
    if len(classes) != 1000 or not all(_WORDNET_ID.match(c) for c in classes):
        return list(classes), None
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"]), list(classes)


def prepare(
    name: str,
    raw_dir: Path,
    out_dir: Path,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    entry: dict | None = None,
    geometry: dict | None = None,
    workers: int = 0,
    progress: bool = False,
    source=None,
) -> dict:
    """Verify, read, subset and convert a dataset into a prepared view.

    In: dataset name; the folder `fetch` wrote; the output folder (created); subset sizes (None:
    the whole split) and their seed; `entry`, the dataset's config entry (None or no `source`: the
    built-in `name`); `geometry`, the view's resize and crop (a model's preprocessing; None: the
    entry's `size`, else the images as they are); `workers`, processes that decode images
    (0: this one); `progress`, a progress bar on stderr; `source`, a built-in's description
    (tests give tiny copies).
    Out files: {split}_images.npy (uint8 N,C,H,W), {split}_labels.npy (int64 N) and
    {split}_indices.npy (int64 N, into the original split) for train and test (a dataset
    without a training split: N = 0), then meta.json, the completion marker.
    Returns meta: {dataset, classes, num_classes, shape [C,H,W], mean, std (per channel over the
    train subset, else the test subset; 0..1 units), stats_split, n_train, n_test, subset_seed,
    geometry, source, checksums} (+ class_ids: ImageNet's WordNet ids, when its classes are
    named from torchvision's weights).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the completion marker first so a crash below cannot leave old meta with new images.
    (out_dir / "meta.json").unlink(missing_ok=True)
    origin = sources.source_of(name, entry)
    manifest = _read_manifest(name, entry, raw_dir, required=origin != "builtin")
    raw = sources.source(origin).read(
        name, raw_entry(entry), manifest, Path(raw_dir), **({"source": source} if source else {})
    )
    geometry = geometry or ({"size": entry["size"]} if entry and entry.get("size") is not None else None)
    subsets = {"train": train_subset, "test": test_subset}
    chosen = {split: stratified_subset(s.labels, subsets[split], seed) for split, s in raw.splits.items()}
    first = next(iter(raw.splits.values()))
    mode = {1: "L", 3: "RGB"}.get(raw.channels) or mode_of(first.item(0), None)
    key = hashlib.sha256(
        json.dumps(
            [
                name,
                raw_entry(entry),
                subsets,
                seed,
                geometry,
                mode,
                manifest.get("files"),
                manifest.get("listing_sha256"),
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    partial = _Partial(out_dir / ".partial", key)
    shapes = {
        split: _write_images(
            f"datasets.{name}",
            split,
            raw.splits[split],
            chosen[split].numpy(),
            mode,
            geometry,
            partial,
            workers,
            progress,
        )
        for split in SPLITS
        if split in raw.splits
    }
    if len(set(shapes.values())) > 1:
        raise DataError(
            f"datasets.{name}: train images are {shapes['train']}, test images {shapes['test']}: they must match"
        )
    shape = shapes["test"]
    for split in SPLITS:
        if split not in raw.splits:  # an evaluation-only dataset: an empty training split
            with open(partial.folder / f"{split}_images.npy", "wb") as f:
                _npy_header(f, (0, *shape))
            chosen[split] = torch.zeros(0, dtype=torch.int64)
    stats_split = "train" if "train" in raw.splits else "test"
    count = int(chosen[stats_split].numel()) * shape[1] * shape[2]
    mean, std = _channel_stats(list(partial.sums.get(stats_split, {}).values()), shape[0], count)
    for split in SPLITS:
        labels = raw.splits[split].labels[chosen[split]] if split in raw.splits else torch.zeros(0, dtype=torch.int64)
        _write_npy(labels.numpy().astype(np.int64), out_dir / f"{split}_labels.npy")
        _write_npy(chosen[split].numpy().astype(np.int64), out_dir / f"{split}_indices.npy")
        os.replace(partial.folder / f"{split}_images.npy", out_dir / f"{split}_images.npy")
    classes, class_ids = named_classes(raw.classes)
    meta = {
        "dataset": name,
        "classes": classes,
        "num_classes": len(classes),
        "shape": list(shape),
        "mean": mean,
        "std": std,
        "stats_split": stats_split,
        "n_train": int(chosen["train"].numel()),
        "n_test": int(chosen["test"].numel()),
        "subset_seed": seed,
        "geometry": geometry,
        "source": raw.origin,
        "checksums": raw.checksums,
    } | ({"class_ids": class_ids} if class_ids else {})
    write_json(meta, out_dir / "meta.json")
    shutil.rmtree(partial.folder, ignore_errors=True)
    return meta


# --------------------------------------------------------------------------- loading


def read_meta(path: Path) -> dict:
    """A prepared view's meta.json; DataError if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not prepared or unreadable ({one_line(err)})") from None


class _InMemory:
    """Images held whole (a small prepared split, on the job's device; or tensors given)."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.shape = tuple(images.shape)

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        if (
            self.images.device.type == "cpu"
        ):  # numpy's gather: one thread, not a second team of torch's beside the job's
            return torch.from_numpy(self.images.detach().numpy()[rows.numpy()])
        return self.images[rows.to(self.images.device)]

    def read_range(self, start: int, stop: int) -> torch.Tensor:
        return self.images[start:stop]


class _OnDisk:
    """A prepared images file read in rows by positioned reads: only what is asked for is ever in
    the process (a memory map would count every page it touched as the job's memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shape, dtype, self.offset = _npy_layout(self.path)
        if dtype != np.uint8:
            raise DataError(f"{path}: images of {dtype}, not uint8")
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))
        self.fd = os.open(self.path, os.O_RDONLY)

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass

    def _pread(self, out: np.ndarray, start: int, count: int, into: int) -> None:
        data = os.pread(self.fd, count * self.row, self.offset + start * self.row)
        if len(data) != count * self.row:
            raise DataError(f"{self.path}: truncated (rows {start}..{start + count - 1} are not all there)")
        out[into : into + count] = np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape[1:])

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows in any order: read in increasing order, runs of consecutive rows at once."""
        rows = rows.cpu()
        order = rows.argsort()
        sorted_rows = rows[order].tolist()
        out = np.empty((len(sorted_rows), *self.shape[1:]), dtype=np.uint8)
        j = 0
        while j < len(sorted_rows):
            run = 1
            while j + run < len(sorted_rows) and sorted_rows[j + run] == sorted_rows[j] + run:
                run += 1
            self._pread(out, sorted_rows[j], run, j)
            j += run
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order.numpy()] = np.arange(len(order))
        return torch.from_numpy(out[inverse])  # numpy, as above

    def read_range(self, start: int, stop: int) -> torch.Tensor:
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.uint8)
        self._pread(out, start, stop - start, 0)
        return torch.from_numpy(out)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Split:
    """One split as a job sees it: its images (stored as prepared, uint8, or tensors given as
    they are), every label and index, and the preprocessing that turns stored images into model
    inputs on the device, batch by batch.

    labels: int64 (N,); indices: int64 (N,), the examples' indices in the original split;
    preprocess: stored batch (B, C, H, W) on the device -> model inputs (float32).
    """

    def __init__(
        self,
        store,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] = _identity,
        rows: torch.Tensor | None = None,
    ):
        self._store = store
        self._rows = rows  # a subset: these rows of the store, in this order
        self.labels = labels
        self.indices = indices if indices is not None else torch.arange(len(labels))
        self.preprocess = preprocess

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's stored shape (C, H, W)."""
        return tuple(self._store.shape[1:])

    def subset(self, positions) -> Split:
        """The examples at `positions` (of this split), in that order."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        rows = positions if self._rows is None else self._rows[positions]
        return Split(self._store, self.labels[positions], self.indices[positions], self.preprocess, rows)

    def stored(self, positions) -> torch.Tensor:
        """The stored images at `positions` (on the CPU or where they are held)."""
        positions = torch.as_tensor(positions, dtype=torch.int64).cpu()
        return self._store.read(positions if self._rows is None else self._rows[positions])

    def _stored_range(self, start: int, stop: int) -> torch.Tensor:
        if self._rows is None:
            return self._store.read_range(start, stop)
        return self._store.read(self._rows[start:stop])

    def in_memory(self, device="cpu") -> Split:
        """This split (a subset too) with its images read into memory, on `device`."""
        return Split(_InMemory(self._stored_range(0, len(self)).to(device)), self.labels, self.indices, self.preprocess)

    def pixels(self, positions) -> torch.Tensor:
        """The images at `positions` in pixel space: float32 in [0, 1] for prepared (uint8) images;
        tensors given as they are."""
        x = self.stored(positions)
        return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x

    def inputs(self, positions, device) -> torch.Tensor:
        """Model inputs of the examples at `positions`, on `device`."""
        return self.preprocess(_to_device(self.stored(positions), torch.device(device)))

    def example(self, device) -> torch.Tensor:
        """The first example as a batch of one model input (to trace or probe a network with)."""
        return self.inputs([0], device)

    def chunks(self, size: int, device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(start, inputs, labels) of consecutive chunks of `size` examples, on `device`; the next
        chunk is read while this one is used."""
        device = torch.device(device)
        starts = range(0, len(self), max(1, int(size)))
        reads = ((s, lambda s=s: self._stored_range(s, min(s + size, len(self)))) for s in starts)
        for start, stored in _read_ahead(reads, device):
            yield start, self.preprocess(stored), self.labels[start : start + size].to(device)

    def batches(self, order: torch.Tensor, size: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) of the examples `order[0:size]`, `order[size:2 size]`, ... on `device`
        (training's shuffled batches); the next batch is read while this one is used."""
        device = torch.device(device)
        order = order.cpu()
        picks = [order[s : s + size] for s in range(0, len(order), size)]
        reads = ((p, lambda p=p: self.stored(p)) for p in picks)
        for positions, stored in _read_ahead(reads, device):
            yield self.preprocess(stored), self.labels[positions].to(device)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if x.device == device:
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _read_ahead(reads, device: torch.device, depth: int = 2):
    """(key, stored batch on `device`) for each (key, read) of `reads`, the reads done by a thread
    up to `depth` batches ahead of the consumer (file reads and copies release the GIL)."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for key, read in reads:
                if stop.is_set():
                    return
                results.put((key, _to_device(read(), device)))
            results.put(done)
        except BaseException as err:  # handed to the consumer, raised there
            results.put(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := results.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def open_split(folder: Path, split: str, preprocess=None, device="cpu", resident_mb: float = 0) -> Split:
    """One prepared split of a view folder: its images held in memory on `device` when they take at
    most `resident_mb` MB (uint8), else read from disk batch by batch; `preprocess` (a
    `knockout.preprocess.Preprocess`; None: the stored images as they are) makes model inputs."""
    folder = Path(folder)
    try:
        labels = torch.from_numpy(np.load(folder / f"{split}_labels.npy", allow_pickle=False))
        indices = torch.from_numpy(np.load(folder / f"{split}_indices.npy", allow_pickle=False))
        store = _OnDisk(folder / f"{split}_images.npy")
    except (OSError, ValueError) as err:
        raise DataError(f"{folder.name}: {split}: unreadable prepared split ({one_line(err)})") from None
    if store.shape[0] != len(labels) or len(indices) != len(labels):
        raise DataError(
            f"{folder.name}: {split}: {store.shape[0]} images, {len(labels)} labels, {len(indices)} indices"
        )
    if store.shape[0] * store.row <= resident_mb * 2**20:
        store = _InMemory(store.read_range(0, store.shape[0]).to(device))
    return Split(store, labels.to(torch.int64), indices.to(torch.int64), preprocess or _identity)


def as_split(images, labels=None) -> Split:
    """A Split as it is (or a loader's, `knockout.loaders.LoaderSplit`), or tensors given (`images`
    (N, ...) as model inputs already, `labels` (N,)) as one held in memory."""
    if isinstance(images, Split) or hasattr(images, "chunks"):
        if labels is not None:
            raise ValueError("labels come with the Split")
        return images
    if isinstance(images, (tuple, list)) and labels is None:
        images, labels = images
    return Split(_InMemory(images), torch.as_tensor(labels))


def open_view(
    folder: Path, preprocess: dict | None = None, device="cpu", resident_mb: float = float("inf")
) -> tuple[Split, Split, dict]:
    """Both splits of a prepared view and its meta, as a script or a notebook wants them: (train,
    test, meta), with `preprocess` (a resolved preprocessing, `knockout.preprocess.resolve`;
    None: the dataset's mean and std), held in memory unless larger than `resident_mb`."""
    from .preprocess import Preprocess

    meta = read_meta(Path(folder) / "meta.json")
    normalise = Preprocess.of(preprocess or {"name": "dataset", "mean": None, "std": None, "geometry": None}, meta)
    train, test = (open_split(folder, split, normalise, device, resident_mb) for split in SPLITS)
    return train, test, meta
