"""Datasets from anywhere: a class of `torchvision.datasets`, a folder of images per class, or a
tensors file. `knockout.data` calls this module for every dataset whose config entry has a
`source`; the built-ins (`mnist`, `fashion_mnist`, `cifar10`) stay there.

    source: torchvision   {class: CIFAR100, kwargs: {...}, splits: {train: ..., test: ...},
                           size: 32 | [H, W], channels: 1 | 3}       (size, channels optional)
    source: image_folder  {train: folder, test: folder, size: 32 | [H, W], channels: 1 | 3}
    source: tensors       {path: data.npz | data.pt, layout: auto | NCHW | NHWC}

Each source answers three calls, all with the entry's raw spec (no subset keys):

    inspect(name, spec, raw_dir) -> {shape, classes, n_train, n_test, deferred}  before any job
    fetch(name, spec, dest, mirrors, download) -> the manifest (dest/manifest.json)   download rule
    read(name, spec, manifest) -> (train RawSplit, test RawSplit, classes)        prepare rule

Where torchvision reads a format, its reader is used: the dataset classes themselves (their
mirrors, downloads and integrity checks), `ImageFolder` and its listing functions. Problems are
one-line `DataError`s that start with the key they are about (`datasets.<name>.<key>: ...`).
"""

from __future__ import annotations

import difflib
import hashlib
import inspect as pyinspect
import json
import os
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import DataError, RawSplit, _expand, _file_hashes, _one_line
from .io import write_json

SPLITS = ("train", "test")


def fetch(name: str, spec: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    """Make a dataset's raw data available and write dest/manifest.json: {dataset, source, spec,
    n_train, n_test, shape, classes, files, ...} (what was found where; `files` maps each file to
    its size and, where there are files to verify, md5 and sha256)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    describe = {"torchvision": _fetch_torchvision, "image_folder": _fetch_folder, "tensors": _fetch_tensors}[spec["source"]]
    manifest = {"dataset": name, "source": spec["source"], "spec": spec, **describe(name, spec, dest, mirrors, download)}
    write_json(manifest, dest / "manifest.json")
    return manifest


def inspect(name: str, spec: dict, raw_dir: Path | None) -> dict:
    """{shape, classes, n_train, n_test} of the full splits as far as they can be known before any
    job, and `deferred`: why some are None (a torchvision class not fetched yet)."""
    if spec["source"] == "image_folder":
        folders = _folders(name, spec)
        return {"shape": folders.shape, "classes": folders.classes, **{f"n_{s}": len(folders.samples[s]) for s in SPLITS}}
    if spec["source"] == "tensors":
        return _tensors_info(name, spec)
    plan = torchvision_plan(name, spec)
    manifest = _manifest(raw_dir)
    if manifest and manifest.get("dataset") == name and manifest.get("spec") == spec:
        found = {k: manifest.get(k) for k in ("shape", "classes", "n_train", "n_test")}
        if found["classes"] is None:  # it keeps no list of labels or classes: prepare reads every label
            found["deferred"] = f"datasets.{name}: torchvision.datasets.{plan.cls.__name__} lists no classes: they are known once it is prepared"
        return found
    shape = None
    if spec.get("size") is not None and spec.get("channels") is not None:
        shape = (spec["channels"], *_size(spec["size"]))
    return {"shape": shape, "classes": None, "n_train": None, "n_test": None,
            "deferred": f"datasets.{name}: torchvision.datasets.{plan.cls.__name__} is known once its files are fetched"}


def read(name: str, spec: dict, manifest: dict) -> tuple[RawSplit, RawSplit, list[str]]:
    """Both splits of a fetched dataset (`manifest` from `fetch`, for this very spec) and its
    class names. The files the manifest verified are verified again first."""
    _verify_manifest(name, manifest)
    if spec["source"] == "image_folder":
        return _read_folder(name, spec, manifest)
    if spec["source"] == "tensors":
        return _read_tensors(name, spec)
    return _read_torchvision(name, spec, manifest)


def origin(manifest: dict) -> dict:
    """Where a fetched dataset was read from, for meta.json's `source`: the source type and its
    class, arguments, root, folders or file, as the manifest has them."""
    keys = ("source", "class", "origin", "root", "train", "test", "path")
    out = {k: manifest[k] for k in keys if k in manifest}
    if manifest["source"] == "torchvision":
        out |= {k: manifest["spec"].get(k) for k in ("kwargs", "splits")}
    return out


def checksums(manifest: dict) -> dict[str, str]:
    """File -> sha256 of the files a manifest verified (an image folder: its listing's sha256)."""
    if "listing_sha256" in manifest:
        return {"listing_sha256": manifest["listing_sha256"]}
    return {f: entry["sha256"] for f, entry in manifest.get("files", {}).items() if "sha256" in entry}


def available(name: str, spec: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    """(whether the data can be had, one line saying how) for `knockout check-data`; `spec`
    without subsets, `mirrors` as configured."""
    mirrors = [_expand(m) for m in mirrors]
    try:
        if spec["source"] != "torchvision":
            inspect(name, spec, None)
            return True, "files present"
        plan = torchvision_plan(name, spec)
        if not plan.takes_root:
            return True, "generated by torchvision"
        for root in _candidates(name, mirrors):
            try:
                _construct_splits(name, plan, root, download=False)
                return True, f"in mirror {root}"
            except DataError:
                raise
            except Exception:
                continue
    except DataError as err:
        return False, str(err)
    if download:
        return True, f"in no mirror; torchvision.datasets.{plan.cls.__name__} downloads it"
    return False, f"in no mirror and download disabled; {_where_to_put(name, plan, mirrors)}"


# --------------------------------------------------------------------------- shared


def _manifest(raw_dir: Path | None) -> dict | None:
    if raw_dir is None:
        return None
    try:
        return json.loads((Path(raw_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _verify_manifest(name: str, manifest: dict) -> None:
    """DataError unless every file with a sha256 in the manifest still has it."""
    for filename, entry in manifest.get("files", {}).items():
        if "sha256" not in entry:
            continue
        path = Path(entry["source"])
        if not path.is_file():
            raise DataError(f"datasets.{name}: {path}: gone since it was fetched; fetch it again (the download rule)")
        sha256 = _file_hashes(path)[1]
        if sha256 != entry["sha256"]:
            raise DataError(
                f"datasets.{name}: {filename}: changed since it was fetched (sha256 {sha256}, fetched {entry['sha256']}); "
                "fetch it again (the download rule)"
            )


def _file_entry(path: Path) -> dict:
    md5, sha256 = _file_hashes(path)
    return {"size": path.stat().st_size, "md5": md5, "sha256": sha256, "source": str(path.resolve())}


def _size(size) -> tuple[int, int]:
    """The config's `size` (an int, or [H, W]) as (H, W)."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _fit(image, size: tuple[int, int]):
    """A PIL image resized (bilinear, antialiased) so that it covers `size` (H, W), its shorter
    side onto the target's, then centre-cropped to it (torchvision's Resize and CenterCrop)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    height, width = size
    w, h = image.size
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    resized = F.resize(image, [max(height, round(h * scale)), max(width, round(w * scale))],
                       interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(resized, [height, width])


_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _mode(image, channels: int | None) -> str:
    """The PIL mode images are converted to: `channels` (1: L, 3: RGB), else grey for grey
    images and RGB for the rest (palette, alpha and CMYK images included)."""
    if channels is not None:
        return "L" if channels == 1 else "RGB"
    return "L" if getattr(image, "mode", "RGB") in _GREY_MODES else "RGB"


def _to_tensor(where: str, item: int, image, size: tuple[int, int] | None, mode: str) -> torch.Tensor:
    """One dataset image as uint8 (C, H, W): converted to `mode`, fitted to `size` if given."""
    from PIL import Image
    from torchvision.transforms import functional as F

    if isinstance(image, torch.Tensor):
        image = F.to_pil_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise DataError(f"{where}: item {item}: its image is a {type(image).__name__}: not an image-classification dataset")
    if image.mode != mode:
        image = image.convert(mode)
    if size is not None:
        image = _fit(image, size)
    return F.pil_to_tensor(image)


def _label(where: str, item: int, target) -> int:
    """A dataset item's target as a class index; DataError for anything else."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_)):
        return int(target)
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point() and target.dtype != torch.bool:
        return int(target)
    text = " ".join(repr(target).split())[:60]
    raise DataError(f"{where}: item {item}: its target is {type(target).__name__} {text}, not a class index: "
                    "not an image-classification dataset")


def _labels_attribute(dataset) -> torch.Tensor | None:
    """Every label of a dataset from the list torchvision keeps of them (`targets`, `labels` or
    `_labels`), or None when it keeps none that fits (one integer per item)."""
    for attribute in ("targets", "labels", "_labels"):
        value = getattr(dataset, attribute, None)
        if value is None:
            continue
        try:
            labels = np.asarray(value)
        except Exception:
            continue
        if labels.ndim == 1 and len(labels) == len(dataset) and labels.dtype.kind in "iu":
            return torch.from_numpy(labels.astype(np.int64))
    return None


def _split(where: str, dataset, size: tuple[int, int] | None, mode: str | None, channels: int | None = None) -> tuple[RawSplit, str]:
    """A map-style dataset of (image, class index) items as a RawSplit; out: it, and the PIL mode
    its images are converted to (decided by the first image unless given). Labels come from the
    dataset's own list when it keeps one (each loaded item is checked against it), else from a
    pass over every item. Every image must come out the same shape (`size` makes them so)."""
    n = len(dataset)
    if n == 0:
        raise DataError(f"{where}: no images")
    labels = _labels_attribute(dataset)
    if labels is None:
        labels = torch.tensor([_label(where, i, dataset[i][1]) for i in range(n)], dtype=torch.int64)
    first, _ = dataset[0]
    mode = mode or _mode(first, channels)
    shape = tuple(int(d) for d in _to_tensor(where, 0, first, size, mode).shape)

    def images(indices: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(indices), *shape), dtype=torch.uint8)
        for j, i in enumerate(indices.tolist()):
            image, target = dataset[i]
            if _label(where, i, target) != int(labels[i]):
                raise DataError(f"{where}: item {i}: its target is {_label(where, i, target)}, its label in the dataset's list {int(labels[i])}")
            x = _to_tensor(where, i, image, size, mode)
            if tuple(x.shape) != shape:
                raise DataError(f"{where}: item {i}: image of {x.shape[0]}x{x.shape[1]}x{x.shape[2]}, item 0 "
                                f"{shape[0]}x{shape[1]}x{shape[2]}: give a size to resize them all")
            out[j] = x
        return out

    return RawSplit(labels, images, shape), mode


def _class_names(where: str, names, labels: list[torch.Tensor]) -> list[str]:
    """Class names: the dataset's own (when it has a list of them), else '0'..'K-1' for the
    largest label K-1; DataError when a label has no name."""
    top = max(int(l.max()) for l in labels if l.numel())
    low = min(int(l.min()) for l in labels if l.numel())
    if low < 0:
        raise DataError(f"{where}: a label is {low}: labels must be class indices 0..K-1")
    if names is None:
        return [str(k) for k in range(top + 1)]
    names = [str(c) for c in names]
    if top >= len(names):
        raise DataError(f"{where}: a label is {top} but there are {len(names)} class names")
    return names


# --------------------------------------------------------------------------- torchvision classes

# Classes of torchvision.datasets whose items are not (image, class index), by what they are.
NOT_CLASSIFICATION = {
    "CocoCaptions": "an image-captioning dataset", "Flickr8k": "an image-captioning dataset",
    "Flickr30k": "an image-captioning dataset", "SBU": "an image-captioning dataset",
    "CocoDetection": "an object-detection dataset", "VOCDetection": "an object-detection dataset",
    "WIDERFace": "a face-detection dataset", "Kitti": "an object-detection dataset",
    "VOCSegmentation": "a segmentation dataset", "Cityscapes": "a segmentation dataset", "SBDataset": "a segmentation dataset",
    "CelebA": "a face-attribute dataset", "LFWPairs": "a face-pair dataset", "PhotoTour": "a patch-matching dataset",
    "Kinetics": "a video dataset", "HMDB51": "a video dataset", "UCF101": "a video dataset", "MovingMNIST": "a video dataset",
    "LSUNClass": "one LSUN category without labels (LSUN is the classification dataset)",
    "VisionDataset": "the base class of torchvision's datasets",
    "DatasetFolder": "a generic folder reader (for a folder of images per class, use source: image_folder)",
    "ImageFolder": "a generic folder reader (for a folder of images per class, use source: image_folder)",
}
# ... and whole families of them, by base class.
NOT_CLASSIFICATION_BASES = {"FlowDataset": "an optical-flow dataset", "StereoMatchingDataset": "a stereo-matching dataset"}
# Set by knockout, not by `kwargs`: where the files are, whether to download, and no transforms
# (the images are converted once, by prepare).
RESERVED = ("root", "download", "transform", "target_transform", "transforms", "loader", "is_valid_file")


@dataclass(frozen=True)
class TorchvisionPlan:
    """How a `torchvision` entry becomes datasets: the class, whether it takes `root` and
    `download`, and the keyword arguments of each split (kwargs and the split's own)."""

    cls: type
    takes_root: bool
    takes_download: bool
    arguments: dict

    def call(self, split: str) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments[split].items())
        return f"torchvision.datasets.{self.cls.__name__}({args})"


def _parameters(cls: type) -> tuple[set[str], bool]:
    """The keyword arguments a class's constructor takes, following **kwargs up its bases (EMNIST
    passes them to MNIST); and whether it takes any other (a **kwargs that leads nowhere known)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = list(pyinspect.signature(klass.__init__).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


def torchvision_class(name: str, class_name: str) -> type:
    """The class of torchvision.datasets called `class_name`; DataError if there is none, or if
    it is not an image-classification dataset."""
    import torchvision.datasets as tvd

    known = [n for n in tvd.__all__ if isinstance(getattr(tvd, n, None), type)]
    if class_name not in known:
        close = difflib.get_close_matches(class_name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"datasets.{name}.class: torchvision.datasets has no dataset class {class_name!r}{hint}")
    cls = getattr(tvd, class_name)
    what = NOT_CLASSIFICATION.get(class_name) or next(
        (kind for base, kind in NOT_CLASSIFICATION_BASES.items() if base in {k.__name__ for k in cls.__mro__}), None)
    if what:
        raise DataError(f"datasets.{name}.class: {class_name} is {what}, not an image-classification dataset")
    return cls


def torchvision_plan(name: str, spec: dict) -> TorchvisionPlan:
    """Check a `torchvision` entry against its class and plan its two splits. The split goes in
    as `train=True/False` when the class takes `train`, else as `split=` ("train"/"test", or the
    names `splits` gives); `splits` may also give a split's keyword arguments (a mapping), which
    classes that take neither need (FakeData). DataError naming the key for an argument the
    class does not take, one knockout sets, or splits that would be the same images."""
    cls = torchvision_class(name, spec["class"])
    params, open_kwargs = _parameters(cls)
    convention = "train" if "train" in params else "split" if "split" in params else None
    takes = ", ".join(sorted(params - set(RESERVED) - {convention}))

    def check_arguments(key: str, arguments: dict) -> None:
        for arg in arguments:
            if arg in RESERVED:
                raise DataError(f"datasets.{name}.{key}.{arg}: set by knockout (the mirrors, data.download; no transforms)")
            if arg == convention and key == "kwargs":
                raise DataError(f"datasets.{name}.kwargs.{arg}: {cls.__name__} takes its split as {arg}=: give it in datasets.{name}.splits")
            if not open_kwargs and arg not in params:
                raise DataError(f"datasets.{name}.{key}.{arg}: {cls.__name__} takes no argument {arg!r} (it takes: {takes})")

    kwargs = dict(spec.get("kwargs") or {})
    check_arguments("kwargs", kwargs)
    splits = spec.get("splits") or {}
    arguments = {}
    for split, flag in (("train", True), ("test", False)):
        given = splits.get(split)
        own = {"train": {"train": flag}, "split": {"split": split}}.get(convention)
        if isinstance(given, str):
            if convention != "split":
                how = "train=True/False" if convention == "train" else "no split argument"
                raise DataError(f"datasets.{name}.splits.{split}: {cls.__name__} takes {how}, not a split name: "
                                "give this split's keyword arguments (a mapping) or nothing")
            own = {"split": given}
        elif isinstance(given, dict):
            check_arguments(f"splits.{split}", {k: v for k, v in given.items() if k != convention})
            own = (own or {}) | given
        elif own is None:
            raise DataError(f"datasets.{name}.splits: {cls.__name__} takes neither train nor split: give splits.train and "
                            "splits.test as its keyword arguments for each split (e.g. {size: 1000, random_offset: 0})")
        arguments[split] = kwargs | own
    if arguments["train"] == arguments["test"]:
        raise DataError(f"datasets.{name}.splits: the train and test splits get the same arguments ({arguments['train']}): "
                        "they would be the same images")
    return TorchvisionPlan(cls, "root" in params, "download" in params, arguments)


def _construct(plan: TorchvisionPlan, split: str, root: Path | None, download: bool):
    args = dict(plan.arguments[split])
    if plan.takes_root:
        args["root"] = str(root)
    if plan.takes_download:
        args["download"] = download
    return plan.cls(**args)


def _construct_splits(name: str, plan: TorchvisionPlan, root: Path | None, download: bool) -> dict:
    """Both splits of a torchvision dataset at `root`. Arguments the class refuses (ValueError,
    TypeError: an unknown split name, a bad keyword) are a DataError; any other exception (not
    found, corrupt, download failed) propagates."""
    out, failed = {}, None
    for split in SPLITS:  # both, so that a bad argument of either is seen even where the files are not
        try:
            out[split] = _construct(plan, split, root, download)
        except (ValueError, TypeError) as err:
            raise DataError(f"datasets.{name}: {plan.call(split)}: {_one_line(err)}") from None
        except Exception as err:
            failed = failed or err
    if failed is not None:
        raise failed
    return out


def _candidates(name: str, mirrors: list[Path]) -> list[Path]:
    """The roots tried in each mirror: mirror/<name>/, mirror/<name with - for _>/, the mirror."""
    roots = []
    for mirror in map(Path, mirrors):
        roots += [mirror / name, mirror / name.replace("_", "-"), mirror]
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def _where_to_put(name: str, plan: TorchvisionPlan, mirrors: list[Path]) -> str:
    root = Path(mirrors[0]) / name if mirrors else Path("<mirror>") / name
    return f"put its files where torchvision.datasets.{plan.cls.__name__}(root='{root}') finds them"


# Files opened for reading while a torchvision class checks and reads its copy (an audit hook:
# torchvision gives no list of a dataset's files). Only collected inside `_opened_files`.
_RECORDERS: list[set[str]] = []
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _RECORDERS:
        return
    path, mode, flags = args
    if isinstance(path, int) or path is None:
        return
    reading = (not any(c in mode for c in "wax+")) if isinstance(mode, str) else not (flags or 0) & (os.O_WRONLY | os.O_RDWR)
    if reading:
        for files in _RECORDERS:
            files.add(os.fsdecode(path))


@contextmanager
def _opened_files():
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    files: set[str] = set()
    _RECORDERS.append(files)
    try:
        yield files
    finally:
        _RECORDERS.remove(files)


def _files_under(root: Path, opened: set[str]) -> dict:
    """Size, md5 and sha256 of each file under `root` that was opened, by its path under root."""
    root = root.resolve()
    files = {}
    for p in sorted(opened):
        path = Path(p).resolve()
        if path.is_file() and path.is_relative_to(root) and path.name != "manifest.json":
            files[path.relative_to(root).as_posix()] = _file_entry(path)
    return files


def _describe_torchvision(name: str, plan: TorchvisionPlan, spec: dict, datasets: dict) -> dict:
    """What the manifest says of a torchvision dataset: split sizes, image shape (from the first
    image, converted as prepare will), class names when the dataset lists them or its labels."""
    where = f"datasets.{name}: {plan.call('train')}"
    size = _size(spec["size"]) if spec.get("size") is not None else None
    train = datasets["train"]
    if len(train) == 0:
        raise DataError(f"{where}: no images")
    first = train[0][0]
    shape = list(_to_tensor(where, 0, first, size, _mode(first, spec.get("channels"))).shape)
    labels = [_labels_attribute(d) for d in datasets.values()]
    names = getattr(train, "classes", None)
    classes = None
    if all(l is not None for l in labels):
        classes = _class_names(where, names, labels)
    elif names is not None:
        classes = [str(c) for c in names]
    return {"n_train": len(train), "n_test": len(datasets["test"]), "shape": shape, "classes": classes}


def _fetch_torchvision(name: str, spec: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    """Each mirror root (mirror/<name>/, mirror/, ...) tried with download=False: torchvision's own
    checks of existence and integrity; else, when `download`, torchvision downloads into `dest`
    (verifying md5s where the class has them). The manifest lists the files torchvision read
    meanwhile, with their checksums (prepare verifies them again)."""
    plan = torchvision_plan(name, spec)
    if not plan.takes_root:  # generated (FakeData): nothing to find, nothing to verify
        datasets = _construct_splits(name, plan, None, False)
        return {"class": plan.cls.__name__, "origin": "generated", "root": None,
                **_describe_torchvision(name, plan, spec, datasets), "files": {}}
    def manifest(origin: str, root: Path) -> dict:
        """torchvision's classes over `root` (downloading there for origin 'download'), described
        with the files they read; a DataError passes, anything else raises as it is."""
        with _opened_files() as opened:
            datasets = _construct_splits(name, plan, root, download=origin == "download")
            described = _describe_torchvision(name, plan, spec, datasets)
        return {"class": plan.cls.__name__, "origin": origin, "root": str(root.resolve()), **described,
                "files": _files_under(root, opened)}

    for root in _candidates(name, mirrors):
        try:
            return manifest("mirror", root)
        except DataError:
            raise
        except Exception:  # torchvision's own check: not (all) there, or corrupted
            continue
    searched = ", ".join(str(m) for m in mirrors) or "none given"
    where = f"datasets.{name}: torchvision.datasets.{plan.cls.__name__} is in no mirror ({searched})"
    if not download:
        raise DataError(f"{where} and download is disabled; {_where_to_put(name, plan, mirrors)}")
    try:
        return manifest("download", dest)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{where} and its download failed ({type(err).__name__}: {_one_line(err)}); "
                        f"{_where_to_put(name, plan, mirrors)}") from None


def _read_torchvision(name: str, spec: dict, manifest: dict) -> tuple[RawSplit, RawSplit, list[str]]:
    plan = torchvision_plan(name, spec)
    root = Path(manifest["root"]) if manifest.get("root") else None
    try:
        datasets = _construct_splits(name, plan, root, download=False)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"datasets.{name}: {plan.call('train')} at {root}: {type(err).__name__}: {_one_line(err)}; "
                        "fetch it again (the download rule)") from None
    size = _size(spec["size"]) if spec.get("size") is not None else None
    train, mode = _split(f"datasets.{name}: {plan.call('train')}", datasets["train"], size, None, spec.get("channels"))
    test, _ = _split(f"datasets.{name}: {plan.call('test')}", datasets["test"], size, mode)
    classes = _class_names(f"datasets.{name}: {plan.call('train')}", getattr(datasets["train"], "classes", None),
                           [train.labels, test.labels])
    return train, test, classes


# --------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class _Folders:
    paths: dict  # split -> Path
    classes: list[str]
    samples: dict  # split -> [(path, class index)], as ImageFolder lists them
    size: tuple[int, int]
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)


def _folders(name: str, spec: dict) -> _Folders:
    """List an image_folder entry's two folders as torchvision's ImageFolder does (a subfolder per
    class, sorted; files with an image extension). DataError for a missing folder, a folder
    without classes or with an empty class, test classes other than the train classes."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    paths, classes, samples = {}, {}, {}
    for split in SPLITS:
        folder = _expand(spec[split])
        if not folder.is_dir():
            raise DataError(f"datasets.{name}.{split}: no such folder {spec[split]}")
        try:
            classes[split], index = find_classes(folder)
            samples[split] = make_dataset(folder, index, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"datasets.{name}.{split}: {spec[split]}: {_one_line(err)}") from None
        paths[split] = folder
    if classes["test"] != classes["train"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(f"datasets.{name}.test: its classes are not the train folder's (only in train: "
                        f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'})")
    return _Folders(paths, classes["train"], samples, _size(spec["size"]), spec.get("channels", 3))


def _listing(folders: _Folders) -> dict:
    """split/class/file -> {size} of every image of both folders."""
    return {f"{split}/{Path(path).relative_to(folders.paths[split]).as_posix()}": {"size": os.path.getsize(path)}
            for split in SPLITS for path, _ in folders.samples[split]}


def _listing_sha256(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _fetch_folder(name: str, spec: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    folders = _folders(name, spec)
    files = _listing(folders)
    return {"train": str(folders.paths["train"].resolve()), "test": str(folders.paths["test"].resolve()),
            "n_train": len(folders.samples["train"]), "n_test": len(folders.samples["test"]),
            "shape": list(folders.shape), "classes": folders.classes, "listing_sha256": _listing_sha256(files), "files": files}


def _pil_loader(name: str, mode: str):
    def load(path: str):
        from PIL import Image

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(mode)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"datasets.{name}: {path}: unreadable image ({_one_line(err)})") from None

    return load


def _read_folder(name: str, spec: dict, manifest: dict) -> tuple[RawSplit, RawSplit, list[str]]:
    from torchvision.datasets import ImageFolder

    folders = _folders(name, spec)
    if _listing_sha256(_listing(folders)) != manifest.get("listing_sha256"):
        raise DataError(f"datasets.{name}: the image folders changed since they were fetched (images added, removed or "
                        "rewritten); fetch them again (snakemake --forcerun download)")
    mode = "L" if folders.channels == 1 else "RGB"
    splits = {}
    for split in SPLITS:
        dataset = ImageFolder(str(folders.paths[split]), loader=_pil_loader(name, mode))
        splits[split], _ = _split(f"datasets.{name}.{split}", dataset, folders.size, mode)
    return splits["train"], splits["test"], folders.classes


# --------------------------------------------------------------------------- tensors files

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


class _TensorsFile:
    """The arrays of an .npz (numpy, no pickles) or a .pt (torch.load(weights_only=True): a dict of
    tensors, `classes` a list of strings): their shapes and dtypes without reading them, and
    each array on demand as numpy."""

    def __init__(self, name: str, spec: dict):
        self.key = f"datasets.{name}.path"
        self.path = _expand(spec["path"])
        self.file = self.path.name
        if not self.path.is_file():
            raise DataError(f"{self.key}: no such file {spec['path']}")
        if self.path.suffix == ".npz":
            self._open_npz()
        elif self.path.suffix == ".pt":
            self._open_pt()
        else:
            raise DataError(f"{self.key}: {self.file}: expected an .npz or .pt file")

    def _problem(self, text: str) -> DataError:
        return DataError(f"{self.key}: {self.file}: {text}")

    def _open_npz(self) -> None:
        self._headers = {}
        try:
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with archive.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                        header = read(f) if read else None
                    self._headers[info.filename[: -len(".npy")]] = (header[0], header[2]) if header else None
            self._npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self._problem(f"not a readable .npz ({_one_line(err)})") from None
        self.keys = set(self._headers)

    def _open_pt(self) -> None:
        try:
            try:
                data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # an old (non-zip) file cannot be memory-mapped
                data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses pickles of anything but tensors and containers
            raise self._problem(f"not a file torch.load(weights_only=True) reads ({type(err).__name__}: {_one_line(err)})") from None
        if not isinstance(data, dict):
            raise self._problem(f"holds a {type(data).__name__}, expected a dict of tensors ({', '.join(ARRAYS)}, classes)")
        self._pt = data
        self.keys = {str(k) for k in data}

    def header(self, array: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of an array, read from its header where the file has one."""
        if hasattr(self, "_pt"):
            value = self._pt[array]
            if not isinstance(value, torch.Tensor):
                raise self._problem(f"{array} is a {type(value).__name__}, expected a tensor")
            dtype = np.dtype("float32") if value.dtype == torch.bfloat16 else torch.empty(0, dtype=value.dtype).numpy().dtype
            return tuple(value.shape), dtype
        if self._headers.get(array) is None:
            value = self.load(array)
            return value.shape, value.dtype
        return tuple(self._headers[array][0]), self._headers[array][1]

    def load(self, array: str) -> np.ndarray:
        try:
            if hasattr(self, "_pt"):
                value = self._pt[array]
                if isinstance(value, (list, tuple)):
                    return np.asarray(value)
                if not isinstance(value, torch.Tensor):
                    raise self._problem(f"{array} is a {type(value).__name__}, expected a tensor")
                return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
            return self._npz[array]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self._problem(f"{array}: unreadable ({_one_line(err)})") from None


def _layout(file: _TensorsFile, array: str, shape: tuple[int, ...], layout: str, name: str) -> tuple[tuple[int, int, int], str]:
    """(C, H, W) and the layout (NHW, NCHW or NHWC) of an images array. `auto`: 3-d arrays are one
    channel; 4-d arrays are NHWC when the last axis has 1 or 3 entries and the second does not,
    NCHW when the second has and the last does not, and must be told otherwise."""
    if len(shape) == 3:
        return (1, shape[1], shape[2]), "NHW"
    if len(shape) != 4:
        raise file._problem(f"{array} has shape {shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if layout == "auto":
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first == last:
            raise file._problem(f"cannot tell the channel axis of {array} {shape}: set datasets.{name}.layout to NCHW or NHWC")
        layout = "NCHW" if first else "NHWC"
    return ((shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])), layout


def _tensors_arrays(name: str, spec: dict) -> tuple[_TensorsFile, dict]:
    """Open and check a tensors file: every array there, images uint8 or float, one layout and
    image shape for both splits, labels integers 0..K-1 with one per image (K: the number of
    `classes` when given, else the largest label + 1). Out: the file and {shape, classes,
    n_train, n_test, layouts, labels}."""
    file = _TensorsFile(name, spec)
    missing = [a for a in ARRAYS if a not in file.keys]
    if missing:
        raise file._problem(f"no array {missing[0]!r} (it has: {', '.join(sorted(file.keys)) or 'none'})")
    shapes, layouts, labels, counts = {}, {}, {}, {}
    for split in SPLITS:
        shape, dtype = file.header(f"{split}_images")
        if dtype != np.uint8 and dtype.kind != "f":
            raise file._problem(f"{split}_images are {dtype}; expected uint8 (0..255) or floats in [0, 1]")
        shapes[split], layouts[split] = _layout(file, f"{split}_images", shape, spec.get("layout", "auto"), name)
        counts[split] = shape[0]
        y = file.load(f"{split}_labels")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise file._problem(f"{split}_labels are {y.dtype} of shape {y.shape}; expected one integer per image")
        if len(y) != shape[0]:
            raise file._problem(f"{len(y)} {split}_labels for {shape[0]} {split}_images")
        labels[split] = y.astype(np.int64)
    if shapes["train"] != shapes["test"]:
        raise file._problem(f"train images are {'x'.join(map(str, shapes['train']))}, test images {'x'.join(map(str, shapes['test']))}")
    classes = None
    if "classes" in file.keys:
        names = file.load("classes")
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise file._problem(f"classes are {names.dtype} of shape {names.shape}; expected a list of names")
        classes = [str(c) for c in names.tolist()]
    top = max((int(y.max()) for y in labels.values() if y.size), default=-1)
    k = len(classes) if classes is not None else top + 1
    for split, y in labels.items():
        if y.size and (y.min() < 0 or y.max() >= k):
            named = f" ({k} classes)" if classes is not None else ""
            raise file._problem(f"{split}_labels outside 0..{k - 1}{named}: min {y.min()}, max {y.max()}")
    return file, {"shape": list(shapes["train"]), "classes": classes if classes is not None else [str(c) for c in range(k)],
                  "n_train": counts["train"], "n_test": counts["test"], "layouts": layouts, "labels": labels}


def _tensors_info(name: str, spec: dict) -> dict:
    _, found = _tensors_arrays(name, spec)
    return {k: found[k] for k in ("shape", "classes", "n_train", "n_test")}


def _fetch_tensors(name: str, spec: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    file, found = _tensors_arrays(name, spec)
    return {"path": str(file.path.resolve()), **{k: found[k] for k in ("n_train", "n_test", "shape", "classes")},
            "files": {file.file: _file_entry(file.path)}}


def _read_tensors(name: str, spec: dict) -> tuple[RawSplit, RawSplit, list[str]]:
    file, found = _tensors_arrays(name, spec)
    shape = tuple(found["shape"])

    def split_of(split: str) -> RawSplit:
        def images(indices: torch.Tensor) -> torch.Tensor:
            x = file.load(f"{split}_images")[indices.numpy()]
            layout = found["layouts"][split]
            x = x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2) if layout == "NHWC" else x
            if x.dtype != np.uint8:
                if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
                    raise file._problem(f"{split}_images are floats outside [0, 1] (min {np.nanmin(x):g}, max {np.nanmax(x):g})")
                x = np.rint(x.astype(np.float64) * 255).astype(np.uint8)
            return torch.from_numpy(np.ascontiguousarray(x))

        return RawSplit(torch.from_numpy(found["labels"][split]), images, shape)

    return split_of("train"), split_of("test"), found["classes"]
