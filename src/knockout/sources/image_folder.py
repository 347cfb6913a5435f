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
from dataclasses import dataclass
from pathlib import Path

from ..catalog import SPLITS
from ..errors import DataError
from .common import Raw, dataset_split, expand, one_line, size_pair


@dataclass(frozen=True)
class _Folders:
    paths: dict  # split -> Path, for the splits the entry has
    classes: list[str]
    samples: dict  # split -> [(path, class index)], as ImageFolder lists them
    channels: int


def _folders(name: str, spec: dict) -> _Folders:
    """List an image_folder entry's folders as torchvision's ImageFolder does (a subfolder per
    class, sorted; files with an image extension). DataError for a missing folder, a folder
    without classes or with an empty class, test classes other than the train classes."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    paths, classes, samples = {}, {}, {}
    for split in (s for s in SPLITS if spec.get(s) is not None):
        folder = expand(spec[split])
        if not folder.is_dir():
            raise DataError(f"datasets.{name}.{split}: no such folder {spec[split]}")
        try:
            classes[split], index = find_classes(folder)
            samples[split] = make_dataset(folder, index, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"datasets.{name}.{split}: {spec[split]}: {one_line(err)}") from None
        paths[split] = folder
    if "train" in classes and classes["test"] != classes["train"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(f"datasets.{name}.test: its classes are not the train folder's (only in train: "
                        f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'})")
    return _Folders(paths, classes["test"], samples, spec.get("channels", 3))


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


def _shape(folders: _Folders, spec: dict) -> list | None:
    return [folders.channels, *size_pair(spec["size"])] if spec.get("size") is not None else None


def inspect(name: str, spec: dict, raw_dir: Path | None) -> dict:
    folders = _folders(name, spec)
    return {"shape": _shape(folders, spec), "channels": folders.channels, "classes": folders.classes,
            **{f"n_{s}": len(folders.samples.get(s, ())) for s in SPLITS}}


def fetch(name: str, spec: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    folders = _folders(name, spec)
    files = _listing(folders)
    return {**{split: str(path.resolve()) for split, path in folders.paths.items()},
            **{f"n_{s}": len(folders.samples.get(s, ())) for s in SPLITS},
            "shape": _shape(folders, spec), "classes": folders.classes, "listing_sha256": _listing_sha256(files), "files": files}


def _pil_loader(name: str, mode: str):
    def load(path: str):
        from PIL import Image

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(mode)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"datasets.{name}: {path}: unreadable image ({one_line(err)})") from None

    return load


def read(name: str, spec: dict, manifest: dict, raw_dir: Path) -> Raw:
    from torchvision.datasets import ImageFolder

    folders = _folders(name, spec)
    if _listing_sha256(_listing(folders)) != manifest.get("listing_sha256"):
        raise DataError(f"datasets.{name}: the image folders changed since they were fetched (images added, removed or "
                        "rewritten); fetch them again (snakemake --forcerun download)")
    loader = _pil_loader(name, "L" if folders.channels == 1 else "RGB")
    splits = {split: dataset_split(f"datasets.{name}.{split}", ImageFolder(str(path), loader=loader))
              for split, path in folders.paths.items()}
    origin = {"source": "image_folder", **{split: manifest[split] for split in folders.paths}}
    return Raw(splits, folders.classes, folders.channels, origin, {"listing_sha256": manifest["listing_sha256"]})


def available(name: str, spec: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    _folders(name, spec)
    return True, "files present"
