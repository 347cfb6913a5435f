"""Datasets: find or download the raw files, verify them, parse them, prepare subsets.

Raw files are only ever used after their checksum is verified: either the md5 of
the official archive, or (for Debian's re-compressed copies) the sha256 of the
decompressed content. The pipeline is

    fetch(name, raw_dir, mirrors)  -> raw_dir/<files> + raw_dir/manifest.json
    prepare(name, raw_dir, out_dir) -> out_dir/train.npz, test.npz, meta.json
    load_prepared(out_dir, device)  -> normalised float tensors

Every output file is written to a temporary name and renamed into place, so an
interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import math
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DataError",
    "DataFile",
    "DatasetSource",
    "Split",
    "fetch",
    "load_prepared",
    "locate",
    "prepare",
    "read_raw",
    "reachable",
    "stratified_subset",
    "verify",
]


from .errors import DataError  # noqa: E402  (re-exported: a dataset problem, as one line)
from .io import read_arrays, write_arrays, write_json  # noqa: E402


@dataclass(frozen=True)
class DataFile:
    """One raw file of a dataset.

    name: file name as published (e.g. 'train-images-idx3-ubyte.gz').
    md5: md5 of the official archive file.
    content_sha256: sha256 of the gunzipped content, or None; lets re-compressed
        copies (Debian's) be accepted when their .gz md5 differs.
    """

    name: str
    md5: str
    content_sha256: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how its raw files are laid out.

    name: dataset key in DATASETS (e.g. 'fashion_mnist').
    kind: 'idx' (4 files: train images, train labels, test images, test labels,
        in that order) or 'cifar' (one cifar-10-python.tar.gz).
    files: the raw files, in the order above.
    urls: base URLs tried in order; a file's URL is base + file name.
    classes: class names, index = label.
    torchvision_name: torchvision's class name (its root/<name>/raw/ layout), or None.
    debian_package: Debian package that installs the data, or None.
    """

    name: str
    kind: Literal["idx", "cifar"]
    files: tuple[DataFile, ...]
    urls: tuple[str, ...]
    classes: tuple[str, ...]
    torchvision_name: str | None = None
    debian_package: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W) of the full-size dataset."""
        return (1, 28, 28) if self.kind == "idx" else (3, 32, 32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def n_test(self) -> int:
        """Images in the official test split (MNIST, Fashion-MNIST and CIFAR-10 all have 10,000)."""
        return 10_000

    @property
    def filenames(self) -> list[str]:
        """The raw file names, in order."""
        return [f.name for f in self.files]

    def file(self, filename: str) -> DataFile:
        """The DataFile called `filename`; DataError if the dataset has no such file."""
        for f in self.files:
            if f.name == filename:
                return f
        raise DataError(f"{self.name}: {filename}: not a file of this dataset (files: {', '.join(self.filenames)})")


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Checksums copied from torchvision 0.29 (datasets/mnist.py, datasets/cifar.py).
_MNIST_MD5 = (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3",
    "ec29112dd5afa0611ce80d1b7f02629c",
)
_FASHION_MD5 = (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310",
)
# sha256 of the decompressed files: identical in the official and Debian copies.
_FASHION_CONTENT_SHA256 = (
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
)

DATASETS: dict[str, DatasetSource] = {
    "mnist": DatasetSource(
        name="mnist",
        kind="idx",
        files=tuple(DataFile(n, m) for n, m in zip(_IDX_NAMES, _MNIST_MD5)),
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        classes=tuple(str(d) for d in range(10)),
        torchvision_name="MNIST",
    ),
    "fashion_mnist": DatasetSource(
        name="fashion_mnist",
        kind="idx",
        files=tuple(
            DataFile(n, m, s) for n, m, s in zip(_IDX_NAMES, _FASHION_MD5, _FASHION_CONTENT_SHA256)
        ),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        torchvision_name="FashionMNIST",
        debian_package="dataset-fashion-mnist",
    ),
    "cifar10": DatasetSource(
        name="cifar10",
        kind="cifar",
        files=(DataFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}

_CHUNK = 1 << 20
_USER_AGENT = "knockout-data/0.1 (python urllib)"


# --------------------------------------------------------------------------- checksums


def _source(name: str, source: DatasetSource | None) -> DatasetSource:
    """The given source override, else DATASETS[name]; DataError for an unknown name."""
    if source is not None:
        return source
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"{name}: unknown dataset (known: {', '.join(sorted(DATASETS))})") from None


def _hash_stream(stream, *algorithms: str) -> list[str]:
    """Hex digests of everything read from a binary stream, one per algorithm."""
    hashes = [hashlib.new(a) for a in algorithms]
    while chunk := stream.read(_CHUNK):
        for h in hashes:
            h.update(chunk)
    return [h.hexdigest() for h in hashes]


def _file_hashes(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file's bytes, in one pass."""
    with open(path, "rb") as f:
        md5, sha256 = _hash_stream(f, "md5", "sha256")
    return md5, sha256


def _content_sha256(path: Path) -> str | None:
    """sha256 of a gzip file's decompressed bytes, or None if it does not decompress."""
    try:
        with gzip.open(path, "rb") as f:
            return _hash_stream(f, "sha256")[0]
    except (OSError, EOFError, zlib.error):
        return None


def _verify(source: DatasetSource, filename: str, path: Path) -> str:
    """Check one raw file; return its md5. DataError if missing or neither checksum matches."""
    expected = source.file(filename)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{source.name}: {filename}: missing ({path})")
    md5, _ = _file_hashes(path)
    if md5 == expected.md5:
        return md5
    message = f"{source.name}: {filename}: checksum mismatch (md5 {md5}, expected {expected.md5}"
    if expected.content_sha256 is not None:
        content = _content_sha256(path)
        if content == expected.content_sha256:
            return md5
        actual = content if content is not None else "unreadable gzip"
        message += f"; content sha256 {actual}, expected {expected.content_sha256}"
    raise DataError(message + ")")


def verify(name: str, filename: str, path: Path, source: DatasetSource | None = None) -> None:
    """Raise DataError unless `path` is a good copy of `filename` of dataset `name`.

    Accepted if the file's md5 is the official one, or (where the dataset has one)
    the sha256 of its decompressed content matches. The message names the dataset,
    the file, and the actual and expected checksums.
    """
    _verify(_source(name, source), filename, Path(path))


# --------------------------------------------------------------------------- finding and fetching


def _candidate_dirs(source: DatasetSource, root: Path) -> list[Path]:
    """Folders under a mirror root that may hold the dataset, in search order, no repeats."""
    dirs = [root / source.name, root / source.name.replace("_", "-")]
    if source.torchvision_name:
        dirs.append(root / source.torchvision_name / "raw")
    dirs.append(root)
    return list(dict.fromkeys(dirs))


def _expand(mirror: str | Path) -> Path:
    """A mirror path with ~ and $VARS expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(mirror))))


def locate(
    name: str, mirrors: list[str | Path], source: DatasetSource | None = None
) -> dict[str, Path] | None:
    """Find a verified local copy of a dataset.

    In: dataset name, mirror roots (~ and $VARS expanded; missing ones skipped).
    Under each root, looks in root/<name>/, root/<name with - for _>/,
    root/<torchvision name>/raw/, then root/ itself.
    Out: file name -> path for the first folder holding all files, all verified;
    None if there is none. A folder with a corrupt file is skipped with a warning.
    """
    src = _source(name, source)
    for mirror in mirrors:
        root = _expand(mirror)
        if not root.is_dir():
            continue
        for folder in _candidate_dirs(src, root):
            paths = {f: folder / f for f in src.filenames}
            if not all(p.is_file() for p in paths.values()):
                continue
            try:
                for filename, path in paths.items():
                    _verify(src, filename, path)
            except DataError as err:
                warnings.warn(f"{err} in {folder}; skipping this copy", stacklevel=2)
                continue
            return paths
    return None


def _one_line(err: BaseException) -> str:
    """An exception as a single line of text (for DataError messages)."""
    text = str(err) or type(err).__name__
    return " ".join(text.split())


class _DownloadFailed(Exception):
    """No URL delivered a file (network-level failure, not a checksum failure)."""


def _download(url: str, part: Path, timeout: float) -> None:
    """Stream `url` into `part`; network errors propagate, and `part` is removed on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _download_file(
    src: DatasetSource, filename: str, dest: Path, bases: list[str], timeout: float
) -> str:
    """Download one file into dest via dest/<file>.part, trying each base URL in turn.

    Out: the URL it came from. DataError if its checksum is wrong (the .part is
    deleted); _DownloadFailed with the reasons if no URL answered.
    """
    part = dest / f"{filename}.part"
    reasons = []
    for base in bases:
        url = base.rstrip("/") + "/" + filename
        try:
            _download(url, part, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            reasons.append(f"{url}: {_one_line(err)}")
            continue
        try:
            _verify(src, filename, part)
        except DataError as err:
            part.unlink(missing_ok=True)
            raise DataError(f"{err} downloaded from {url}") from None
        os.replace(part, dest / filename)
        return url
    raise _DownloadFailed("; ".join(reasons) or "no URLs")


def _how_to_get(src: DatasetSource, mirrors: list[Path]) -> str:
    """One-line advice on how to provide a dataset by hand."""
    if src.debian_package:
        return (
            f"install Debian's {src.debian_package} (apt-get install {src.debian_package}) "
            "or put the files in one of the mirrors"
        )
    where = f"{mirrors[0]}/{src.name}/" if mirrors else "<mirror>/" + src.name + "/"
    return f"put {', '.join(src.filenames)} in a mirror folder (e.g. {where})"


def _manifest_if_complete(src: DatasetSource, dest: Path) -> dict | None:
    """dest/manifest.json if it exists and every file it covers is present and verifies."""
    path = dest / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("dataset") != src.name or set(manifest.get("files", {})) != set(src.filenames):
        return None
    try:
        for filename in src.filenames:
            _verify(src, filename, dest / filename)
    except DataError:
        return None
    return manifest


def _copy_from_mirror(src: DatasetSource, found: dict[str, Path], dest: Path) -> dict[str, str]:
    """Copy verified mirror files into dest (via .part); out: file name -> source path."""
    sources = {}
    for filename, path in found.items():
        target = dest / filename
        sources[filename] = str(path.resolve())
        if target.exists() and os.path.samefile(path, target):
            continue  # dest is itself the mirror folder
        part = dest / f"{filename}.part"
        shutil.copyfile(path, part)
        try:
            _verify(src, filename, part)  # guards against a copy gone wrong
        except DataError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
    return sources


def fetch(
    name: str,
    dest: Path,
    mirrors: list[str | Path],
    download: bool = True,
    timeout: float = 30,
    urls: list[str] | None = None,
    source: DatasetSource | None = None,
) -> dict:
    """Make `dest` hold verified copies of every raw file of a dataset.

    In: dataset name; dest folder (created); mirror roots searched with `locate`;
    whether to download from the official URLs (or `urls`, base URLs, if given)
    when no mirror has the data; per-request timeout in seconds.
    If dest already has a manifest.json whose files all verify, nothing is done.
    Out: the manifest written to dest/manifest.json:
    {dataset, files: {filename: {md5, sha256, source}}}.
    Raises DataError if a download has the wrong checksum, or if no way worked.
    """
    src = _source(name, source)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    existing = _manifest_if_complete(src, dest)
    if existing is not None:
        return existing

    found = locate(name, mirrors, source=src)
    if found is not None:
        sources = _copy_from_mirror(src, found, dest)
    else:
        roots = [_expand(m) for m in mirrors]
        searched = ", ".join(str(r) for r in roots) or "none given"
        if not download:
            raise DataError(
                f"{src.name}: not in any mirror ({searched}) and download disabled; {_how_to_get(src, roots)}"
            )
        bases = list(urls) if urls is not None else list(src.urls)
        sources = {}
        try:
            for filename in src.filenames:
                sources[filename] = _download_file(src, filename, dest, bases, timeout)
        except _DownloadFailed as err:
            raise DataError(
                f"{src.name}: not in any mirror ({searched}) and download failed ({err}); "
                f"{_how_to_get(src, roots)}"
            ) from None

    manifest = {"dataset": src.name, "files": {}}
    for filename in src.filenames:
        md5, sha256 = _file_hashes(dest / filename)
        manifest["files"][filename] = {"md5": md5, "sha256": sha256, "source": sources[filename]}
    write_json(manifest, dest / "manifest.json")
    return manifest


def reachable(
    name: str, timeout: float = 5, urls: list[str] | None = None, source: DatasetSource | None = None
) -> bool:
    """Whether the first official URL of a dataset answers a HEAD request with 2xx/3xx.

    In: dataset name, timeout in seconds; `urls` overrides the base URLs.
    Out: True if the server answered successfully, False on any error or timeout.
    """
    src = _source(name, source)
    bases = list(urls) if urls is not None else list(src.urls)
    if not bases:
        return False
    url = bases[0].rstrip("/") + "/" + src.files[0].name
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- parsing

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_idx(dataset: str, path: Path, expected_magic: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes.

    In: path to an .idx*-ubyte.gz file, the magic number it must have.
    Out: uint8 array shaped as declared in the header (N,H,W for images, N for labels).
    DataError naming the file if it is not gzip, has the wrong magic, or its
    byte count does not match the declared dimensions.
    """
    where = f"{dataset}: {path.name}"
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{where}: corrupt or truncated gzip ({_one_line(err)})") from None
    if len(raw) < 4:
        raise DataError(f"{where}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{where}: bad IDX magic number {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = math.prod(dims)
    if len(raw) - header != expected_bytes:
        raise DataError(
            f"{where}: {len(raw) - header} data bytes but header declares {dims} = {expected_bytes}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _check_labels(where: str, labels: np.ndarray, n_images: int, n_classes: int) -> None:
    """DataError unless there is one label per image and each is a valid class index."""
    if labels.shape != (n_images,):
        raise DataError(f"{where}: {labels.shape[0]} labels for {n_images} images")
    if n_images and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels outside 0..{n_classes - 1}")


def _read_idx_split(
    src: DatasetSource, raw_dir: Path, images_file: str, labels_file: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an IDX dataset; out: (uint8 N,1,H,W images, int64 N labels)."""
    images = _read_idx(src.name, raw_dir / images_file, _IDX_IMAGES_MAGIC)
    labels = _read_idx(src.name, raw_dir / labels_file, _IDX_LABELS_MAGIC).astype(np.int64)
    _check_labels(f"{src.name}: {labels_file}", labels, images.shape[0], len(src.classes))
    # frombuffer arrays are read-only; copy so torch owns writable memory.
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels)


_CIFAR_DIR = "cifar-10-batches-py"


def _check_member_name(where: str, member: str) -> None:
    """DataError if a tar member name is absolute or climbs out with '..'."""
    path = PurePosixPath(member)
    if path.is_absolute() or member.startswith("\\") or ".." in path.parts or ".." in member.split("\\"):
        raise DataError(f"{where}: refusing unsafe archive member name {member!r}")


def _load_member(where: str, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], member: str) -> dict:
    """Unpickle one member of a verified CIFAR archive (bytes keys, as the files were written)."""
    info = members.get(member)
    if info is None or not info.isfile():
        raise DataError(f"{where}: archive has no file {member}")
    try:
        f = tar.extractfile(info)
        return pickle.load(f, encoding="bytes")
    except Exception as err:  # a broken pickle can raise almost anything
        raise DataError(f"{where}: {member}: unreadable pickle ({_one_line(err)})") from None


def _cifar_batch(where: str, batch: dict, member: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR batch dict -> (uint8 N,3072 data, int64 N labels), checked."""
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: {member}: not a CIFAR batch ({_one_line(err)})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: {member}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{where}: {member}: {labels.shape} labels for {data.shape[0]} images")
    return data, labels


def _read_cifar(src: DatasetSource, path: Path) -> tuple[tuple, tuple, list[str]]:
    """Parse cifar-10-python.tar.gz in memory (nothing is extracted to disk).

    Out: ((train uint8 N,3,32,32, int64 N), (test ..., ...), class names).
    Must only be called on an archive whose checksum was verified (it unpickles).
    """
    where = f"{src.name}: {path.name}"
    try:
        tar = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{where}: corrupt or truncated archive ({_one_line(err)})") from None
    with tar:
        try:
            infos = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(f"{where}: corrupt or truncated archive ({_one_line(err)})") from None
        for info in infos:
            _check_member_name(where, info.name)
        members = {info.name: info for info in infos}
        n_batches = 0
        while f"{_CIFAR_DIR}/data_batch_{n_batches + 1}" in members:
            n_batches += 1
        if n_batches == 0:
            raise DataError(f"{where}: archive has no file {_CIFAR_DIR}/data_batch_1")
        train = [
            _cifar_batch(where, _load_member(where, tar, members, m), m)
            for m in (f"{_CIFAR_DIR}/data_batch_{i}" for i in range(1, n_batches + 1))
        ]
        test_member = f"{_CIFAR_DIR}/test_batch"
        test = _cifar_batch(where, _load_member(where, tar, members, test_member), test_member)
        meta = _load_member(where, tar, members, f"{_CIFAR_DIR}/batches.meta")
    try:
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    except (KeyError, TypeError) as err:
        raise DataError(f"{where}: batches.meta has no label_names ({_one_line(err)})") from None

    def to_tensors(data: np.ndarray, labels: np.ndarray, member: str) -> tuple[torch.Tensor, torch.Tensor]:
        _check_labels(f"{where}: {member}", labels, data.shape[0], len(classes))
        # Rows are 1024 red, then green, then blue values, each row-major 32x32.
        return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)

    train_data = np.concatenate([d for d, _ in train])
    train_labels = np.concatenate([l for _, l in train])
    return (
        to_tensors(train_data, train_labels, "data_batch_*"),
        to_tensors(*test, test_member),
        classes,
    )


def _read(src: DatasetSource, raw_dir: Path) -> tuple[tuple, tuple, list[str]]:
    """Parse already-verified raw files; same output as read_raw."""
    raw_dir = Path(raw_dir)
    if src.kind == "cifar":
        return _read_cifar(src, raw_dir / src.files[0].name)
    train_images, train_labels, test_images, test_labels = src.filenames
    train = _read_idx_split(src, raw_dir, train_images, train_labels)
    test = _read_idx_split(src, raw_dir, test_images, test_labels)
    return train, test, list(src.classes)


def _verify_all(src: DatasetSource, raw_dir: Path) -> dict[str, str]:
    """Verify every raw file in raw_dir; out: file name -> md5."""
    return {f: _verify(src, f, Path(raw_dir) / f) for f in src.filenames}


def read_raw(
    name: str, raw_dir: Path, source: DatasetSource | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """Verify and parse the raw files of a dataset.

    In: dataset name, folder holding its raw files.
    Out: ((train_images, train_labels), (test_images, test_labels), classes) with
    images uint8 N,C,H,W (MNIST-like: C=1, 28x28; CIFAR: C=3, 32x32), labels int64 N.
    DataError naming the file for a bad checksum or malformed content.
    """
    src = _source(name, source)
    _verify_all(src, raw_dir)  # CIFAR files are unpickled: only ever parse verified data
    return _read(src, raw_dir)


# --------------------------------------------------------------------------- subsets and preparation


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


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 N,C,H,W images, in 0..1 units.

    Accumulates in float64 over chunks so large datasets need no full float copy.
    """
    n_channels = images.shape[1]
    total = torch.zeros(n_channels, dtype=torch.float64)
    squares = torch.zeros(n_channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    if count == 0:
        return [0.0] * n_channels, [1.0] * n_channels
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def _save_split(path: Path, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
    """One split subset as an uncompressed .npz (images, labels, indices): numpy reads it, the
    notebooks too, without torch."""
    arrays = {"images": images[indices].numpy(), "labels": labels[indices].numpy(), "indices": indices.numpy()}
    write_arrays(arrays, path, compress=False)


def _manifest_sources(raw_dir: Path) -> dict[str, str] | None:
    """File name -> source from raw_dir/manifest.json, or None without a readable manifest."""
    try:
        manifest = json.loads((Path(raw_dir) / "manifest.json").read_text())
        return {f: entry.get("source") for f, entry in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def prepare(
    name: str,
    raw_dir: Path,
    out_dir: Path,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    source: DatasetSource | None = None,
) -> dict:
    """Verify, parse and subset a dataset into tensors ready for training.

    In: dataset name; folder with its raw files; output folder (created);
    subset sizes (None: whole split); seed for the stratified subsets.
    Out files: out_dir/train.npz and test.npz, each {'images': uint8 N,C,H,W,
    'labels': int64 N, 'indices': int64 N into the original split}, and
    out_dir/meta.json, written last as the completion marker.
    Returns meta: {dataset, classes, num_classes, shape [C,H,W], mean, std
    (per channel over the train subset, 0..1 units), n_train, n_test,
    subset_seed, source, checksums {file: md5}}.
    """
    src = _source(name, source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the completion marker first so a crash below cannot leave old meta with new tensors.
    (out_dir / "meta.json").unlink(missing_ok=True)

    checksums = _verify_all(src, raw_dir)
    (train_images, train_labels), (test_images, test_labels), classes = _read(src, raw_dir)
    train_idx = stratified_subset(train_labels, train_subset, seed)
    test_idx = stratified_subset(test_labels, test_subset, seed)
    _save_split(out_dir / "train.npz", train_images, train_labels, train_idx)
    _save_split(out_dir / "test.npz", test_images, test_labels, test_idx)

    mean, std = _channel_stats(train_images[train_idx])
    meta = {
        "dataset": src.name,
        "classes": list(classes),
        "num_classes": len(classes),
        "shape": list(train_images.shape[1:]),
        "mean": mean,
        "std": std,
        "n_train": int(train_idx.numel()),
        "n_test": int(test_idx.numel()),
        "subset_seed": seed,
        "source": _manifest_sources(raw_dir),
        "checksums": checksums,
    }
    write_json(meta, out_dir / "meta.json")
    return meta


# --------------------------------------------------------------------------- loading


@dataclass
class Split:
    """One prepared split: images float32 N,C,H,W (normalised), labels int64 N, and the indices
    of the examples in the original split (int64 N)."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_meta(path: Path) -> dict:
    """A prepared dataset's meta.json; DataError if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not prepared or unreadable ({_one_line(err)})") from None


def load_split(path: Path, meta: dict, device: str | torch.device) -> Split:
    """One prepared split (`train.npz` or `test.npz`), its images normalised with meta's
    per-channel mean and std ((x/255 - mean) / std), on `device`."""
    path = Path(path)
    try:
        arrays = read_arrays(path)
        images, labels, indices = (torch.from_numpy(arrays[k]) for k in ("images", "labels", "indices"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{path.parent.name}: {path.name}: unreadable ({_one_line(err)})") from None
    expected_n = meta["n_train" if path.stem == "train" else "n_test"]
    if images.shape[0] != expected_n or labels.shape != (expected_n,):
        raise DataError(
            f"{path.parent.name}: {path.name}: {images.shape[0]} images, {labels.shape[0]} labels; "
            f"meta.json says {expected_n}"
        )
    mean = torch.tensor(meta["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: just centre it
    # Move uint8 first: a quarter of the bytes of float32 to transfer.
    x = images.to(device).to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return Split(images=x, labels=labels.to(device=device, dtype=torch.int64), indices=indices)


def load_prepared(data_dir: Path, device: str | torch.device) -> tuple[Split, Split, dict]:
    """Both splits of a folder written by `prepare`, and its meta: (train, test, meta)."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir / "meta.json")
    return load_split(data_dir / "train.npz", meta, device), load_split(data_dir / "test.npz", meta, device), meta
