"""`source: image_folder`: a folder per split with a subfolder per class, listed and read as
torchvision's `ImageFolder` does (sorted class names, the image extensions it knows, PIL).

    {train: folder, test: folder, size: 32 | [H, W], channels: 1 | 3}

`train` may be left out (an evaluation-only dataset, as ImageNet's validation folder); `size`
may be left out when every model of the dataset brings its own resize and crop (its
preprocessing). The manifest lists every file with its size, so that a prepare on an edited
folder stops instead of reading other images than were fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..catalog import SPLITS
from ..errors import DataError
from .common import Raw, dataset_split, expand, one_line, size_pair


@dataclass(frozen=True)
class _Folders:
    paths: dict  # split -> Path, for the splits the entry has
    classes: list[str]
    datasets: dict  # split -> torchvision's ImageFolder of it (its listing: `samples`, `targets`)
    channels: int

    @property
    def samples(self) -> dict:
        """split -> [(path, class index)], as ImageFolder lists them."""
        return {split: d.samples for split, d in self.datasets.items()}


def _folders(name: str, entry: dict) -> _Folders:
    """List an image_folder entry's folders with torchvision's ImageFolder (a subfolder per class,
    sorted; files with an image extension). DataError for a missing folder, a folder without
    classes or with an empty class, test classes other than the train classes."""
    from torchvision.datasets import ImageFolder

    paths, datasets = {}, {}
    for split in (s for s in SPLITS if entry.get(s) is not None):
        folder = expand(entry[split])
        if not folder.is_dir():
            raise DataError(f"datasets.{name}.{split}: no such folder {entry[split]}")
        try:
            datasets[split] = ImageFolder(str(folder))
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"datasets.{name}.{split}: {entry[split]}: {one_line(err)}") from None
        paths[split] = folder
    classes = {split: d.classes for split, d in datasets.items()}
    if "train" in classes and classes["test"] != classes["train"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(
            f"datasets.{name}.test: its classes are not the train folder's (only in train: "
            f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'})"
        )
    return _Folders(paths, classes["test"], datasets, entry.get("channels", 3))


def _listing(folders: _Folders) -> dict:
    """split/class/file -> {size} of every image of the folders (a million files: string
    slicing, not pathlib)."""
    out = {}
    for split, root in folders.paths.items():
        cut = len(str(root)) + 1
        for path, _ in folders.samples[split]:
            out[f"{split}/{path[cut:].replace(os.sep, '/')}"] = {"size": os.path.getsize(path)}
    return out


def _listing_sha256(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _shape(folders: _Folders, entry: dict) -> list | None:
    return [folders.channels, *size_pair(entry["size"])] if entry.get("size") is not None else None


def inspect(name: str, entry: dict, raw_dir: Path | None) -> dict:
    folders = _folders(name, entry)
    return {
        "shape": _shape(folders, entry),
        "channels": folders.channels,
        "classes": folders.classes,
        **{f"n_{s}": len(folders.samples.get(s, ())) for s in SPLITS},
    }


def acquire(name: str, entry: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    folders = _folders(name, entry)
    files = _listing(folders)
    return {
        **{split: str(path.resolve()) for split, path in folders.paths.items()},
        **{f"n_{s}": len(folders.samples.get(s, ())) for s in SPLITS},
        "shape": _shape(folders, entry),
        "classes": folders.classes,
        "listing_sha256": _listing_sha256(files),
        "files": files,
    }


def _pil_loader(name: str, mode: str):
    """ImageFolder's own loader: PIL, converted to `mode` (L or RGB)."""

    def load(path: str):
        from PIL import Image

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(mode)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"datasets.{name}: {path}: unreadable image ({one_line(err)})") from None

    return load


_JPEG = (".jpg", ".jpeg")


def _jpeg_loader(name: str, mode: str):
    """The loader with JPEGs decoded by torchvision's decoder (libjpeg-turbo, as PIL's) where it
    gives PIL's very pixels: a grey or colour JPEG read as RGB (grey replicated, as PIL's convert
    does), a grey one read as L. Anything else (CMYK, colour read as L, what torchvision
    refuses) goes through PIL."""
    import warnings

    import torch

    pil = _pil_loader(name, mode)
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision without its decoders: PIL's
        return pil
    # torchvision 0.29 says its decoders will move to torchcodec, on every call; it is pinned here.
    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
    )
    channels = 3 if mode == "RGB" else 1

    def load(path: str):
        if not path.lower().endswith(_JPEG):
            return pil(path)
        try:
            with open(path, "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
            pixels = decode_jpeg(data, mode=ImageReadMode.UNCHANGED)
        except (OSError, ValueError, RuntimeError):
            return pil(path)
        if pixels.shape[0] == channels:
            return pixels
        return pixels.expand(3, -1, -1) if pixels.shape[0] == 1 and channels == 3 else pil(path)

    return load


def _decoder(name: str, folders: _Folders, mode: str, sample: int = 32):
    """(loader, decoder name): torchvision's JPEG decoder when, on the first `sample` JPEGs of the
    folders, it gives exactly PIL's pixels (the same libjpeg-turbo, as a rule), else PIL's."""
    import numpy as np

    fast, pil = _jpeg_loader(name, mode), _pil_loader(name, mode)
    jpegs = [p for split in folders.paths for p, _ in folders.samples[split] if p.lower().endswith(_JPEG)][:sample]
    for path in jpegs:
        try:
            decoded = fast(path)
        except DataError:
            continue  # an unreadable file: prepare lists every one of them in its pass
        if hasattr(decoded, "numpy"):
            pixels = np.asarray(pil(path))
            pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            if not np.array_equal(decoded.numpy(), pixels):
                print(
                    f"datasets.{name}: torchvision's JPEG decoder differs from PIL's on {path}: PIL decodes them all",
                    file=sys.stderr,
                )
                return pil, "PIL"
    return (fast, "torchvision.io.decode_jpeg where it equals PIL, else PIL") if jpegs else (pil, "PIL")


def read(name: str, entry: dict, manifest: dict, raw_dir: Path) -> Raw:
    folders = _folders(name, entry)
    if _listing_sha256(_listing(folders)) != manifest.get("listing_sha256"):
        raise DataError(
            f"datasets.{name}: the image folders changed since they were fetched (images added, removed or "
            "rewritten); fetch them again (snakemake --forcerun download)"
        )
    loader, decoder = _decoder(name, folders, "L" if folders.channels == 1 else "RGB")
    for dataset in folders.datasets.values():
        dataset.loader = loader
    splits = {split: dataset_split(f"datasets.{name}.{split}", dataset) for split, dataset in folders.datasets.items()}
    origin = {"source": "image_folder", **{split: manifest[split] for split in folders.paths}, "decoder": decoder}
    return Raw(splits, folders.classes, folders.channels, origin, {"listing_sha256": manifest["listing_sha256"]})


def available(name: str, entry: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    _folders(name, entry)
    return True, "files present"
