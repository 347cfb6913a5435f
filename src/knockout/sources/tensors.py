"""`source: tensors`: arrays you have, in an `.npz` (numpy, no pickles) or a `.pt`
(`torch.load(weights_only=True)`, a dict of tensors): `train_images`, `train_labels`,
`test_images`, `test_labels` and optionally `classes`. The train arrays may be left out (an
evaluation-only dataset).

    {path: data.npz | data.pt, layout: auto | NCHW | NHWC}

Images are read in rows, never whole: an uncompressed `.npz` member in place (positioned reads
at its offset), a compressed one as a stream read forward, a `.pt` memory-mapped.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..catalog import SPLITS
from ..errors import DataError
from .common import Raw, RawSplit, expand, file_entry, manifest_checksums, one_line, verify_manifest

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


class _NpzMember:
    """One array of an .npz read in rows, without loading the rest: a stored member by positioned
    reads at its offset in the file, a compressed one by reading its stream forward (rows asked
    for in increasing order, as prepare asks, read it once)."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, shape: tuple[int, ...], dtype: np.dtype, fortran: bool):
        self.path, self.info, self.shape, self.dtype, self.fortran = path, info, shape, dtype, fortran
        self.row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._stream, self._next = None, 0
        with open(path, "rb") as raw:  # where the member's bytes start: after its local header
            raw.seek(info.header_offset)
            local = raw.read(30)
            self._data = (
                info.header_offset
                + 30
                + int.from_bytes(local[26:28], "little")
                + int.from_bytes(local[28:30], "little")
            )
        with zipfile.ZipFile(path) as archive, archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
            self._data += f.tell()  # the npy header's length (stored members: their bytes follow in place)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The rows `indices` (sorted, increasing) as an array (n, ...)."""
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        if self.info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as f:
                for j, i in enumerate(indices.tolist()):
                    flat[j] = np.frombuffer(os.pread(f.fileno(), self.row, self._data + i * self.row), dtype=np.uint8)
            return out
        for j, i in enumerate(indices.tolist()):
            if self._stream is None or i < self._next:
                self._reopen()
            skip = (i - self._next) * self.row
            while skip:
                skip -= len(self._stream.read(min(skip, 1 << 24)))
            flat[j] = np.frombuffer(self._stream.read(self.row), dtype=np.uint8)
            self._next = i + 1
        return out

    def _reopen(self) -> None:
        archive = zipfile.ZipFile(self.path)
        self._stream = archive.open(self.info)
        version = np.lib.format.read_magic(self._stream)
        (
            np.lib.format.read_array_header_1_0(self._stream)
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0(self._stream)
        )
        self._next = 0


class _TensorsFile:
    """The arrays of an .npz or a .pt: their shapes and dtypes without reading them, small arrays
    (labels, classes) whole, images in rows."""

    def __init__(self, name: str, entry: dict):
        self.key = f"datasets.{name}.path"
        self.path = expand(entry["path"])
        self.file = self.path.name
        if not self.path.is_file():
            raise DataError(f"{self.key}: no such file {entry['path']}")
        if self.path.suffix == ".npz":
            self._open_npz()
        elif self.path.suffix == ".pt":
            self._open_pt()
        else:
            raise DataError(f"{self.key}: {self.file}: expected an .npz or .pt file")

    def problem(self, text: str) -> DataError:
        return DataError(f"{self.key}: {self.file}: {text}")

    def _open_npz(self) -> None:
        self._members = {}
        try:
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with archive.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = {
                            (1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0,
                        }.get(version)
                        header = read(f) if read else None
                    self._members[info.filename[: -len(".npy")]] = (info, header)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self.problem(f"not a readable .npz ({one_line(err)})") from None
        self.keys = set(self._members)

    def _open_pt(self) -> None:
        try:
            try:
                data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # an old (non-zip) file cannot be memory-mapped
                data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses pickles of anything but tensors and containers
            raise self.problem(
                f"not a file torch.load(weights_only=True) reads ({type(err).__name__}: {one_line(err)})"
            ) from None
        if not isinstance(data, dict):
            raise self.problem(
                f"holds a {type(data).__name__}, expected a dict of tensors ({', '.join(ARRAYS)}, classes)"
            )
        self._pt = data
        self.keys = {str(k) for k in data}

    def _tensor(self, array: str) -> torch.Tensor:
        value = self._pt[array]
        if not isinstance(value, torch.Tensor):
            raise self.problem(f"{array} is a {type(value).__name__}, expected a tensor")
        return value

    def header(self, array: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of an array, from its header where the file has one."""
        if hasattr(self, "_pt"):
            value = self._tensor(array)
            dtype = (
                np.dtype("float32")
                if value.dtype == torch.bfloat16
                else torch.empty(0, dtype=value.dtype).numpy().dtype
            )
            return tuple(value.shape), dtype
        info, header = self._members[array]
        if header is None:
            value = self.load(array)
            return value.shape, value.dtype
        return tuple(header[0]), header[2]

    def load(self, array: str) -> np.ndarray:
        """A whole (small) array."""
        try:
            if hasattr(self, "_pt"):
                value = self._pt[array]
                if isinstance(value, (list, tuple)):
                    return np.asarray(value)
                value = self._tensor(array)
                return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
            with np.load(self.path, allow_pickle=False) as npz:
                return npz[array]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self.problem(f"{array}: unreadable ({one_line(err)})") from None

    def rows(self, array: str, indices: np.ndarray) -> np.ndarray:
        """Rows `indices` (sorted) of an array, reading no more of it than needed."""
        try:
            if hasattr(self, "_pt"):
                value = self._tensor(array)[torch.from_numpy(indices)]
                return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
            info, header = self._members[array]
            if header is None or header[1]:  # no readable header, or Fortran order: read it whole
                return self.load(array)[indices]
            if not hasattr(self, "_readers"):
                self._readers = {}
            if array not in self._readers:
                self._readers[array] = _NpzMember(self.path, info, tuple(header[0]), header[2], header[1])
            return self._readers[array].rows(indices)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self.problem(f"{array}: unreadable ({one_line(err)})") from None


def _layout(
    file: _TensorsFile, array: str, shape: tuple[int, ...], layout: str, name: str
) -> tuple[tuple[int, int, int], str]:
    """(C, H, W) and the layout (NHW, NCHW or NHWC) of an images array. `auto`: 3-d arrays are one
    channel; 4-d arrays are NHWC when the last axis has 1 or 3 entries and the second does not,
    NCHW when the second has and the last does not, and must be told otherwise."""
    if len(shape) == 3:
        return (1, shape[1], shape[2]), "NHW"
    if len(shape) != 4:
        raise file.problem(f"{array} has shape {shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if layout == "auto":
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first == last:
            raise file.problem(
                f"cannot tell the channel axis of {array} {shape}: set datasets.{name}.layout to NCHW or NHWC"
            )
        layout = "NCHW" if first else "NHWC"
    return ((shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])), layout


def _arrays(name: str, entry: dict) -> tuple[_TensorsFile, dict]:
    """Open and check a tensors file: the test arrays there (the train ones both or neither),
    images uint8 or float, one layout and image shape for both splits, labels integers 0..K-1
    with one per image (K: the number of `classes` when given, else the largest label + 1).
    Out: the file and {shape, classes, n_train, n_test, layouts, labels, splits}."""
    file = _TensorsFile(name, entry)
    splits = [s for s in SPLITS if s == "test" or {f"{s}_images", f"{s}_labels"} & file.keys]
    missing = [a for s in splits for a in (f"{s}_images", f"{s}_labels") if a not in file.keys]
    if missing:
        raise file.problem(f"no array {missing[0]!r} (it has: {', '.join(sorted(file.keys)) or 'none'})")
    shapes, layouts, labels, counts = {}, {}, {}, {"train": 0}
    for split in splits:
        shape, dtype = file.header(f"{split}_images")
        if dtype != np.uint8 and dtype.kind != "f":
            raise file.problem(f"{split}_images are {dtype}; expected uint8 (0..255) or floats in [0, 1]")
        shapes[split], layouts[split] = _layout(file, f"{split}_images", shape, entry.get("layout", "auto"), name)
        counts[split] = shape[0]
        y = file.load(f"{split}_labels")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise file.problem(f"{split}_labels are {y.dtype} of shape {y.shape}; expected one integer per image")
        if len(y) != shape[0]:
            raise file.problem(f"{len(y)} {split}_labels for {shape[0]} {split}_images")
        labels[split] = y.astype(np.int64)
    if len(set(shapes.values())) > 1:
        raise file.problem(
            f"train images are {'x'.join(map(str, shapes['train']))}, test images {'x'.join(map(str, shapes['test']))}"
        )
    classes = None
    if "classes" in file.keys:
        names = file.load("classes")
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise file.problem(f"classes are {names.dtype} of shape {names.shape}; expected a list of names")
        classes = [str(c) for c in names.tolist()]
    top = max((int(y.max()) for y in labels.values() if y.size), default=-1)
    k = len(classes) if classes is not None else top + 1
    bad = [
        f"{split}_labels min {y.min()}, max {y.max()}"
        for split, y in labels.items()
        if y.size and (y.min() < 0 or y.max() >= k)
    ]
    if bad:  # every split at once
        named = f" ({k} classes)" if classes is not None else ""
        raise file.problem(f"labels outside 0..{k - 1}{named}: {'; '.join(bad)}")
    return file, {
        "shape": list(shapes["test"]),
        "classes": classes if classes is not None else [str(c) for c in range(k)],
        "n_train": counts["train"],
        "n_test": counts["test"],
        "layouts": layouts,
        "labels": labels,
        "splits": splits,
    }


def inspect(name: str, entry: dict, raw_dir: Path | None) -> dict:
    _, found = _arrays(name, entry)
    return {k: found[k] for k in ("shape", "classes", "n_train", "n_test")}


def acquire(name: str, entry: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    file, found = _arrays(name, entry)
    return {
        "path": str(file.path.resolve()),
        **{k: found[k] for k in ("n_train", "n_test", "shape", "classes")},
        "files": {file.file: file_entry(file.path)},
    }


def read(name: str, entry: dict, manifest: dict, raw_dir: Path) -> Raw:
    verify_manifest(name, manifest)
    file, found = _arrays(name, entry)

    def split_of(split: str) -> RawSplit:
        layout = found["layouts"][split]

        def arrays(indices: np.ndarray) -> np.ndarray:
            x = file.rows(f"{split}_images", indices)
            x = x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2) if layout == "NHWC" else x
            if x.dtype != np.uint8:
                finite = np.isfinite(x).reshape(len(x), -1).all(1)
                if not finite.all():
                    first = int(indices[np.argmin(finite)])
                    raise file.problem(
                        f"{split}_images hold NaN or infinite pixels ({int((~finite).sum())} images of rows "
                        f"{int(indices[0])}..{int(indices[-1])}, the first image {first}); expected floats in [0, 1]"
                    )
                if x.size and not (x.min() >= 0 and x.max() <= 1):
                    raise file.problem(f"{split}_images are floats outside [0, 1] (min {x.min():g}, max {x.max():g})")
                x = np.rint(x.astype(np.float64) * 255).astype(np.uint8)
            return np.ascontiguousarray(x)

        return RawSplit(
            torch.from_numpy(found["labels"][split]), lambda i: torch.from_numpy(arrays(np.array([i]))[0]), arrays
        )

    return Raw(
        {s: split_of(s) for s in found["splits"]},
        found["classes"],
        found["shape"][0],
        {"source": "tensors", "path": manifest["path"]},
        manifest_checksums(manifest),
    )


def available(name: str, entry: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    _arrays(name, entry)
    return True, "files present"
