"""Write tiny files in the real raw formats of the datasets, for tests.

- write_idx_gz: gzipped IDX (MNIST / Fashion-MNIST) files.
- write_cifar_tar: a cifar-10-python.tar.gz with the real member layout.
- tiny_idx_dataset / tiny_cifar_dataset: a whole tiny dataset plus a
  DatasetSource whose checksums match it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from knockout.sources.builtin import DATASETS, DataFile, DatasetSource

# IDX type code for unsigned bytes (the only type the datasets use).
_UBYTE = 0x08


def md5_of(path: Path) -> str:
    """md5 hex digest of a file's bytes."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed IDX encoding of a uint8 array: magic, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (_UBYTE << 8) | array.ndim  # bytes 0, 0, type, ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array (N,H,W images or N labels) as a gzipped IDX file; return path."""
    path = Path(path)
    path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return path


def _pickle_member(tar: tarfile.TarFile, name: str, obj: object) -> None:
    """Add `obj`, pickled, to `tar` as a regular file called `name`."""
    data = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _batch(images: np.ndarray, labels, label: str) -> dict:
    """A CIFAR batch dict (str keys: the real python 2 pickles as torchvision reads them, with
    encoding='latin1')."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    return {"batch_label": label, "labels": [int(l) for l in labels], "data": data}


def write_cifar_tar(
    path: Path,
    train_batches: list[tuple[np.ndarray, list[int]]],
    test_batch: tuple[np.ndarray, list[int]],
    label_names: list[str],
    extra_members: dict[str, bytes] | None = None,
) -> Path:
    """Write a cifar-10-python.tar.gz: cifar-10-batches-py/data_batch_1..k, test_batch, batches.meta.

    In: train batches and the test batch as (uint8 N,3,32,32 or N,3072 images,
    labels); class names; optional extra raw members (name -> bytes), e.g. to
    plant a '../' name. Out: path.
    """
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        for i, (images, labels) in enumerate(train_batches, start=1):
            _pickle_member(tar, f"cifar-10-batches-py/data_batch_{i}", _batch(images, labels, f"training batch {i}"))
        _pickle_member(tar, "cifar-10-batches-py/test_batch", _batch(*test_batch, "testing batch 1"))
        meta = {"label_names": list(label_names), "num_vis": 3072}
        _pickle_member(tar, "cifar-10-batches-py/batches.meta", meta)
        for name, data in (extra_members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def balanced_labels(n: int, n_classes: int = 10) -> np.ndarray:
    """Labels 0,1,..,n_classes-1,0,1,.. of length n (uint8)."""
    return (np.arange(n) % n_classes).astype(np.uint8)


def source_for(base: DatasetSource, folder: Path) -> DatasetSource:
    """`base` with each file's md5 replaced by that of the copy in `folder`."""
    files = tuple(DataFile(f.name, md5_of(Path(folder) / f.name)) for f in base.files)
    return dataclasses.replace(base, files=files)


def tiny_idx_dataset(
    folder: Path, n_train: int = 40, n_test: int = 20, size: int = 28, seed: int = 0
) -> tuple[DatasetSource, dict[str, np.ndarray]]:
    """Write the 4 MNIST .gz files with random images and balanced labels.

    Out: (a DatasetSource for them, {'train_images' N,H,W, 'train_labels',
    'test_images', 'test_labels'} arrays written).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": balanced_labels(n_train),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": balanced_labels(n_test),
    }
    base = DATASETS["mnist"]
    for f, key in zip(base.filenames, arrays):
        write_idx_gz(folder / f, arrays[key])
    return source_for(base, folder), arrays


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_cifar_dataset(
    folder: Path, batch_size: int = 10, n_batches: int = 2, n_test: int = 10, seed: int = 0, **kwargs
) -> tuple[DatasetSource, dict[str, np.ndarray]]:
    """Write a tiny cifar-10-python.tar.gz; kwargs go to write_cifar_tar.

    Out: (a DatasetSource for it, {'train_images' N,3,32,32, 'train_labels',
    'test_images', 'test_labels'}).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = [
        (rng.integers(0, 256, (batch_size, 3, 32, 32), dtype=np.uint8), balanced_labels(batch_size).tolist())
        for _ in range(n_batches)
    ]
    test = (rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), balanced_labels(n_test).tolist())
    write_cifar_tar(folder / "cifar-10-python.tar.gz", batches, test, CIFAR_CLASSES, **kwargs)
    arrays = {
        "train_images": np.concatenate([b[0] for b in batches] or [np.zeros((0, 3, 32, 32), np.uint8)]),
        "train_labels": np.asarray([l for b in batches for l in b[1]], dtype=np.int64),
        "test_images": test[0],
        "test_labels": np.asarray(test[1]),
    }
    return source_for(DATASETS["cifar10"], folder), arrays


def write_png_folder(folder: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "RGB") -> dict[Path, tuple]:
    """A folder of solid-colour PNGs, one subfolder per class: `sizes` maps each class to the
    (width, height) of its images. Out: each file's colour (an RGB triple, or a grey level)."""
    from PIL import Image

    colours = {}
    for k, (cls, shapes) in enumerate(sorted(sizes.items())):
        (Path(folder) / cls).mkdir(parents=True, exist_ok=True)
        for i, (width, height) in enumerate(shapes):
            colour = (40 * k + 9 * i, 200 - 30 * k, 17 * i + 3) if mode == "RGB" else 30 * k + 11 * i
            path = Path(folder) / cls / f"img{i:02d}.png"
            Image.new(mode, (width, height), colour).save(path)
            colours[path] = colour
    return colours


def write_torchvision_mnist(root: Path, class_name: str, arrays: dict[str, np.ndarray]) -> Path:
    """The four uncompressed IDX files where torchvision's MNIST-like `class_name` (KMNIST,
    FashionMNIST, ...) reads them: root/<class_name>/raw/. `arrays` as tiny_idx_dataset's."""
    raw = Path(root) / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f, key in zip(DATASETS["mnist"].filenames, arrays):
        (raw / f.removesuffix(".gz")).write_bytes(idx_bytes(arrays[key]))
    return raw
