"""The built-in datasets (`mnist`, `fashion_mnist`, `cifar10`, given without `source`): their
official files, each verified against its checksum (the md5 of the official archive or, for
Debian's re-compressed copies, the sha256 of the decompressed content), found in a mirror or
downloaded, laid out as torchvision reads them (decompressed, or safely extracted) in a
temporary folder and read with torchvision's readers.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch

from ..errors import DataError
from .common import Raw, RawSplit, expand, file_hashes, hash_stream, one_line


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
    format: 'idx' (4 files: train images, train labels, test images, test labels,
        in that order) or 'cifar' (one cifar-10-python.tar.gz).
    files: the raw files, in the order above.
    urls: base URLs tried in order; a file's URL is base + file name.
    classes: class names, index = label (ours: MNIST's are '0'..'9', not torchvision's '0 - zero').
    torchvision_name: torchvision's class name (its root/<name>/raw/ layout), or None.
    debian_package: Debian package that installs the data, or None.
    """

    name: str
    format: Literal["idx", "cifar"]
    files: tuple[DataFile, ...]
    urls: tuple[str, ...]
    classes: tuple[str, ...]
    torchvision_name: str | None = None
    debian_package: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W) of the full-size dataset."""
        return (1, 28, 28) if self.format == "idx" else (3, 32, 32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def n_train(self) -> int:
        """Images in the official training split (60,000 for the MNISTs, 50,000 for CIFAR-10)."""
        return 60_000 if self.format == "idx" else 50_000

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
        format="idx",
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
        format="idx",
        files=tuple(DataFile(n, m, s) for n, m, s in zip(_IDX_NAMES, _FASHION_MD5, _FASHION_CONTENT_SHA256)),
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
        format="cifar",
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


def _source(name: str, source: DatasetSource | None) -> DatasetSource:
    """The given source override, else DATASETS[name]; DataError for an unknown name."""
    if source is not None:
        return source
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"{name}: unknown dataset (known: {', '.join(sorted(DATASETS))})") from None


def _content_sha256(path: Path) -> str | None:
    """sha256 of a gzip file's decompressed bytes, or None if it does not decompress."""
    try:
        with gzip.open(path, "rb") as f:
            return hash_stream(f, "sha256")[0]
    except (OSError, EOFError, zlib.error):
        return None


def _verify(source: DatasetSource, filename: str, path: Path) -> str:
    """Check one raw file; return its md5. DataError if missing or neither checksum matches."""
    expected = source.file(filename)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{source.name}: {filename}: missing ({path})")
    md5, _ = file_hashes(path)
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


def locate(name: str, mirrors: list[str | Path], source: DatasetSource | None = None) -> dict[str, Path] | None:
    """Find a verified local copy of a dataset.

    In: dataset name, mirror roots (~ and $VARS expanded; missing ones skipped).
    Under each root, looks in root/<name>/, root/<name with - for _>/,
    root/<torchvision name>/raw/, then root/ itself.
    Out: file name -> path for the first folder holding all files, all verified;
    None if there is none. A folder with a corrupt file is skipped with a warning.
    """
    src = _source(name, source)
    for mirror in mirrors:
        root = expand(mirror)
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


def _download_file(src: DatasetSource, filename: str, dest: Path, bases: list[str], timeout: float) -> str:
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
            reasons.append(f"{url}: {one_line(err)}")
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


def acquire(
    name: str,
    entry: dict,
    dest: Path,
    mirrors: list[str | Path],
    download: bool = True,
    timeout: float = 30,
    urls: list[str] | None = None,
    source: DatasetSource | None = None,
) -> dict:
    """Verified copies of the official files in `dest`: from `locate`, else downloaded from the
    official URLs (or `urls`, base URLs; `timeout` per request); nothing is done when dest's
    manifest.json already covers them and they verify. Out: the manifest's `files`
    ({filename: {md5, sha256, source}}). DataError if a download has the wrong checksum, or if
    no way worked. `source` replaces the dataset's description (tests use tiny copies)."""
    src = _source(name, source)
    dest = Path(dest)
    existing = _manifest_if_complete(src, dest)
    if existing is not None:
        return {"files": existing["files"]}

    found = locate(name, mirrors, source=src)
    if found is not None:
        sources = _copy_from_mirror(src, found, dest)
    else:
        roots = [expand(m) for m in mirrors]
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
                f"{src.name}: not in any mirror ({searched}) and download failed ({err}); " f"{_how_to_get(src, roots)}"
            ) from None
    files = {}
    for filename in src.filenames:
        md5, sha256 = file_hashes(dest / filename)
        files[filename] = {"md5": md5, "sha256": sha256, "source": sources[filename]}
    return {"files": files}


def inspect(name: str, entry: dict, raw_dir: Path | None) -> dict:
    """Known from the dataset's description alone."""
    src = DATASETS[name]
    return {"shape": src.shape, "classes": src.classes, "n_train": src.n_train, "n_test": src.n_test}


def available(name: str, entry: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    found = locate(name, mirrors)
    if found:
        return True, f"in mirror {next(iter(found.values())).parent}"
    if download and reachable(name):
        return True, "downloadable"
    return False, "in no mirror and not downloadable"


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


# --------------------------------------------------------------------------- reading the built-ins


def _check_labels(where: str, labels, n_images: int, n_classes: int) -> None:
    """DataError unless there is one label per image and each is a valid class index."""
    if tuple(labels.shape) != (n_images,):
        raise DataError(f"{where}: {labels.shape[0]} labels for {n_images} images")
    if n_images and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels outside 0..{n_classes - 1}")


def _decompress(src: DatasetSource, raw_dir: Path, filename: str, work: Path) -> Path:
    """A verified .gz file, decompressed into `work` (torchvision reads IDX files uncompressed)."""
    target = work / filename.removesuffix(".gz")
    try:
        with gzip.open(raw_dir / filename, "rb") as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out, _CHUNK)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{src.name}: {filename}: corrupt or truncated gzip ({one_line(err)})") from None
    return target


def _read_idx_file(src: DatasetSource, filename: str, path: Path, labels: bool) -> torch.Tensor:
    """torchvision's reader of one uncompressed IDX file: uint8 N,H,W images or int64 N labels.
    Its errors (asserts, shape and type errors) become one DataError naming the file."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        return (read_label_file if labels else read_image_file)(str(path))
    except AssertionError:
        raise DataError(f"{src.name}: {filename}: not an IDX file of bytes (bad magic number)") from None
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as err:
        raise DataError(f"{src.name}: {filename}: malformed IDX file ({one_line(err)})") from None


def _read_idx_split(
    src: DatasetSource, raw_dir: Path, work: Path, images_file: str, labels_file: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an IDX dataset; out: (uint8 N,1,H,W images, int64 N labels)."""
    images = _read_idx_file(src, images_file, _decompress(src, raw_dir, images_file, work), labels=False)
    labels = _read_idx_file(src, labels_file, _decompress(src, raw_dir, labels_file, work), labels=True)
    _check_labels(f"{src.name}: {labels_file}", labels, images.shape[0], len(src.classes))
    return images.unsqueeze(1).contiguous(), labels.to(torch.int64)


_CIFAR_DIR = "cifar-10-batches-py"


def _check_member_name(where: str, member: str) -> None:
    """DataError if a tar member name is absolute or climbs out with '..'."""
    path = PurePosixPath(member)
    if path.is_absolute() or member.startswith("\\") or ".." in path.parts or ".." in member.split("\\"):
        raise DataError(f"{where}: refusing unsafe archive member name {member!r}")


def _extract_cifar(src: DatasetSource, path: Path, work: Path) -> Path:
    """The batches of a verified CIFAR archive extracted into work/cifar-10-batches-py/ (the layout
    torchvision's CIFAR10 reads). Every member name is checked first (none absolute, none with
    '..'), only regular files of that folder are extracted, and through tarfile's `data` filter."""
    where = f"{src.name}: {path.name}"
    try:
        with tarfile.open(path, "r:gz") as tar:
            infos = tar.getmembers()
            for info in infos:
                _check_member_name(where, info.name)
            wanted = [i for i in infos if i.isfile() and PurePosixPath(i.name).parent == PurePosixPath(_CIFAR_DIR)]
            names = {PurePosixPath(i.name).name for i in wanted}
            for required in ("data_batch_1", "test_batch", "batches.meta"):
                if required not in names:
                    raise DataError(f"{where}: archive has no file {_CIFAR_DIR}/{required}")
            tar.extractall(work, members=wanted, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{where}: corrupt or truncated archive ({one_line(err)})") from None
    return work / _CIFAR_DIR


def _read_cifar(src: DatasetSource, path: Path, work: Path) -> tuple[tuple, tuple, list[str]]:
    """Read a verified cifar-10-python.tar.gz with torchvision's CIFAR10, extracted into `work`.

    Out: ((train uint8 N,3,32,32, int64 N), (test ..., ...), class names).
    Must only be called on an archive whose checksum was verified (its batches are unpickled).
    """
    from torchvision.datasets import CIFAR10

    where = f"{src.name}: {path.name}"
    folder = _extract_cifar(src, path, work)
    n_batches = 0
    while (folder / f"data_batch_{n_batches + 1}").is_file():
        n_batches += 1

    def listed(filename: str) -> list[str]:
        return [filename, file_hashes(folder / filename)[0]]

    # CIFAR10 checks each extracted file against its list of md5s; the archive they came from was
    # verified, so the list is theirs (and a smaller archive, as in the tests, reads too).
    reader = type(
        "CIFAR10",
        (CIFAR10,),
        {
            "train_list": [listed(f"data_batch_{i}") for i in range(1, n_batches + 1)],
            "test_list": [listed("test_batch")],
            "meta": {**CIFAR10.meta, "md5": listed(CIFAR10.meta["filename"])[1]},
        },
    )
    try:
        train = reader(str(work), train=True)
        test = reader(str(work), train=False)
        classes = [str(c) for c in train.classes]
    except Exception as err:  # a malformed pickle can raise almost anything
        raise DataError(f"{where}: unreadable CIFAR batches ({type(err).__name__}: {one_line(err)})") from None

    def tensors(dataset, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if dataset.data.dtype != np.uint8:
            raise DataError(f"{where}: {what}: data is {dataset.data.dtype}, expected uint8")
        try:
            labels = torch.from_numpy(np.asarray(dataset.targets, dtype=np.int64))
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: {what}: labels are not integers ({one_line(err)})") from None
        _check_labels(f"{where}: {what}", labels, len(dataset.data), len(classes))
        # torchvision holds N,H,W,C (for PIL); the batches, and we, N,C,H,W.
        return torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2))), labels

    return tensors(train, "data_batch_*"), tensors(test, "test_batch"), classes


def _read(src: DatasetSource, raw_dir: Path, work: Path) -> tuple[tuple, tuple, list[str]]:
    """Read already-verified raw files, laid out for torchvision in `work`; same output as read_raw."""
    raw_dir = Path(raw_dir)
    if src.format == "cifar":
        return _read_cifar(src, raw_dir / src.files[0].name, work)
    train_images, train_labels, test_images, test_labels = src.filenames
    train = _read_idx_split(src, raw_dir, work, train_images, train_labels)
    test = _read_idx_split(src, raw_dir, work, test_images, test_labels)
    return train, test, list(src.classes)


def _verify_all(src: DatasetSource, raw_dir: Path) -> dict[str, str]:
    """Verify every raw file in raw_dir; out: file name -> md5."""
    return {f: _verify(src, f, Path(raw_dir) / f) for f in src.filenames}


def read_raw(
    name: str, raw_dir: Path, source: DatasetSource | None = None, work_dir: Path | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """Verify and read the raw files of a built-in dataset.

    In: dataset name, folder holding its raw files; `work_dir`, where the files are laid out
    for torchvision meanwhile (a temporary folder in it, removed after; default: the system's).
    Out: ((train_images, train_labels), (test_images, test_labels), classes) with
    images uint8 N,C,H,W (MNIST-like: C=1, 28x28; CIFAR: C=3, 32x32), labels int64 N.
    DataError naming the file for a bad checksum or malformed content.
    """
    src = _source(name, source)
    _verify_all(src, raw_dir)  # CIFAR files are unpickled: only ever read verified data
    with tempfile.TemporaryDirectory(prefix=".layout-", dir=work_dir) as work:
        return _read(src, Path(raw_dir), Path(work))


def read(name: str, entry: dict, manifest: dict, raw_dir: Path, source: DatasetSource | None = None) -> Raw:
    """Both splits of a fetched built-in (its files verified again first), held as arrays; the
    origin is each file's source, the checksums each file's md5."""
    src = _source(name, source)
    checksums = _verify_all(src, raw_dir)
    with tempfile.TemporaryDirectory(prefix=".layout-", dir=raw_dir) as work:
        (train_x, train_y), (test_x, test_y), classes = _read(src, Path(raw_dir), Path(work))

    def split(images: torch.Tensor, labels: torch.Tensor) -> RawSplit:
        return RawSplit(labels, lambda i: images[i], lambda idx: images[torch.from_numpy(idx)].numpy())

    origin = {f: file.get("source") for f, file in manifest.get("files", {}).items()} or None
    return Raw(
        {"train": split(train_x, train_y), "test": split(test_x, test_y)}, classes, src.shape[0], origin, checksums
    )
