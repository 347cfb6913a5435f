"""`source: torchvision`: any image-classification class of `torchvision.datasets`, from a mirror
(each folder of data.mirrors tried as its `root`, with torchvision's own existence and integrity
checks) or downloaded by torchvision; the files it read are recorded with their checksums.

    {class: CIFAR100, kwargs: {...}, splits: {train: ..., test: ...}, size: 32 | [H, W], channels: 1 | 3}

`splits.train: null` leaves out the training split (an evaluation-only dataset).
"""

from __future__ import annotations

import difflib
import inspect as pyinspect
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .common import (
    Raw,
    class_names,
    dataset_split,
    expand,
    file_entry,
    labels_attribute,
    manifest_checksums,
    mode_of,
    one_line,
    size_pair,
    to_pixels,
    verify_manifest,
)

# Classes of torchvision.datasets whose items are not (image, class index), by what they are.
NOT_CLASSIFICATION = {
    "CocoCaptions": "an image-captioning dataset",
    "Flickr8k": "an image-captioning dataset",
    "Flickr30k": "an image-captioning dataset",
    "SBU": "an image-captioning dataset",
    "CocoDetection": "an object-detection dataset",
    "VOCDetection": "an object-detection dataset",
    "WIDERFace": "a face-detection dataset",
    "Kitti": "an object-detection dataset",
    "VOCSegmentation": "a segmentation dataset",
    "Cityscapes": "a segmentation dataset",
    "SBDataset": "a segmentation dataset",
    "CelebA": "a face-attribute dataset",
    "LFWPairs": "a face-pair dataset",
    "PhotoTour": "a patch-matching dataset",
    "Kinetics": "a video dataset",
    "HMDB51": "a video dataset",
    "UCF101": "a video dataset",
    "MovingMNIST": "a video dataset",
    "LSUNClass": "one LSUN category without labels (LSUN is the classification dataset)",
    "VisionDataset": "the base class of torchvision's datasets",
    "DatasetFolder": "a generic folder reader (for a folder of images per class, use source: image_folder)",
    "ImageFolder": "a generic folder reader (for a folder of images per class, use source: image_folder)",
}
# ... and whole families of them, by base class.
NOT_CLASSIFICATION_BASES = {
    "FlowDataset": "an optical-flow dataset",
    "StereoMatchingDataset": "a stereo-matching dataset",
}
# Set by knockout, not by `kwargs`: where the files are, whether to download, and no transforms
# (the images are converted once, by prepare).
RESERVED = ("root", "download", "transform", "target_transform", "transforms", "loader", "is_valid_file")


@dataclass(frozen=True)
class ClassCall:
    """How a `torchvision` entry becomes datasets: the class, whether it takes `root` and
    `download`, and the keyword arguments of each split it has (kwargs and the split's own)."""

    cls: type
    takes_root: bool
    takes_download: bool
    arguments: dict

    def call(self, split: str) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments[split].items())
        return f"torchvision.datasets.{self.cls.__name__}({args})"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.arguments)


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
        (kind for base, kind in NOT_CLASSIFICATION_BASES.items() if base in {k.__name__ for k in cls.__mro__}), None
    )
    if what:
        raise DataError(f"datasets.{name}.class: {class_name} is {what}, not an image-classification dataset")
    return cls


def class_call(name: str, entry: dict) -> ClassCall:
    """Check a `torchvision` entry against its class and plan its splits. The split goes in as
    `train=True/False` when the class takes `train`, else as `split=` ("train"/"test", or the
    names `splits` gives); `splits` may also give a split's keyword arguments (a mapping), which
    classes that take neither need (FakeData), or null: no such split (only `train` may be left
    out). DataError naming the key for an argument the class does not take, one knockout sets,
    or splits that would be the same images."""
    cls = torchvision_class(name, entry["class"])
    params, open_kwargs = _parameters(cls)
    convention = "train" if "train" in params else "split" if "split" in params else None
    takes = ", ".join(sorted(params - set(RESERVED) - {convention}))

    def check_arguments(key: str, arguments: dict) -> None:
        for arg in arguments:
            if arg in RESERVED:
                raise DataError(
                    f"datasets.{name}.{key}.{arg}: set by knockout (the mirrors, data.download; no transforms)"
                )
            if arg == convention and key == "kwargs":
                raise DataError(
                    f"datasets.{name}.kwargs.{arg}: {cls.__name__} takes its split as {arg}=: give it in datasets.{name}.splits"
                )
            if not open_kwargs and arg not in params:
                raise DataError(
                    f"datasets.{name}.{key}.{arg}: {cls.__name__} takes no argument {arg!r} (it takes: {takes})"
                )

    kwargs = dict(entry.get("kwargs") or {})
    check_arguments("kwargs", kwargs)
    splits = entry.get("splits") or {}
    arguments = {}
    for split, flag in (("train", True), ("test", False)):
        if split == "train" and "train" in splits and splits["train"] is None:
            continue  # evaluation only
        given = splits.get(split)
        own = {"train": {"train": flag}, "split": {"split": split}}.get(convention)
        if isinstance(given, str):
            if convention != "split":
                how = "train=True/False" if convention == "train" else "no split argument"
                raise DataError(
                    f"datasets.{name}.splits.{split}: {cls.__name__} takes {how}, not a split name: "
                    "give this split's keyword arguments (a mapping) or nothing"
                )
            own = {"split": given}
        elif isinstance(given, dict):
            check_arguments(f"splits.{split}", {k: v for k, v in given.items() if k != convention})
            own = (own or {}) | given
        elif own is None:
            raise DataError(
                f"datasets.{name}.splits: {cls.__name__} takes neither train nor split: give splits.train and "
                "splits.test as its keyword arguments for each split (e.g. {size: 1000, random_offset: 0})"
            )
        arguments[split] = kwargs | own
    if "train" in arguments and arguments["train"] == arguments["test"]:
        raise DataError(
            f"datasets.{name}.splits: the train and test splits get the same arguments ({arguments['train']}): "
            "they would be the same images"
        )
    return ClassCall(cls, "root" in params, "download" in params, arguments)


def _construct(call: ClassCall, split: str, root: Path | None, download: bool):
    args = dict(call.arguments[split])
    if call.takes_root:
        args["root"] = str(root)
    if call.takes_download:
        args["download"] = download
    return call.cls(**args)


def _construct_splits(name: str, call: ClassCall, root: Path | None, download: bool) -> dict:
    """The splits of a torchvision dataset at `root`. Arguments the class refuses (ValueError,
    TypeError: an unknown split name, a bad keyword) are a DataError; any other exception (not
    found, corrupt, download failed) propagates."""
    out, failed = {}, None
    for split in call.splits:  # all, so that a bad argument of either is seen even where the files are not
        try:
            out[split] = _construct(call, split, root, download)
        except (ValueError, TypeError) as err:
            raise DataError(f"datasets.{name}: {call.call(split)}: {one_line(err)}") from None
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


def _where_to_put(name: str, call: ClassCall, mirrors: list[Path]) -> str:
    root = Path(mirrors[0]) / name if mirrors else Path("<mirror>") / name
    return f"put its files where torchvision.datasets.{call.cls.__name__}(root='{root}') finds them"


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
    reading = (
        (not any(c in mode for c in "wax+")) if isinstance(mode, str) else not (flags or 0) & (os.O_WRONLY | os.O_RDWR)
    )
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
            files[path.relative_to(root).as_posix()] = file_entry(path)
    return files


def _describe(name: str, call: ClassCall, entry: dict, datasets: dict) -> dict:
    """What the manifest says of a torchvision dataset: split sizes, image shape (from the first
    image, converted as prepare will), class names when the dataset lists them or its labels."""
    first_split = call.splits[0]
    where = f"datasets.{name}: {call.call(first_split)}"
    geometry = {"size": entry["size"]} if entry.get("size") is not None else None
    first_set = datasets[first_split]
    if len(first_set) == 0:
        raise DataError(f"{where}: no images")
    first = first_set[0][0]
    shape = list(to_pixels(where, 0, first, mode_of(first, entry.get("channels")), geometry).shape)
    labels = [labels_attribute(d) for d in datasets.values()]
    names = getattr(first_set, "classes", None)
    classes = None
    if all(l is not None for l in labels):
        classes = class_names(where, names, labels)
    elif names is not None:
        classes = [str(c) for c in names]
    return {
        "n_train": len(datasets["train"]) if "train" in datasets else 0,
        "n_test": len(datasets["test"]),
        "shape": shape,
        "classes": classes,
    }


def acquire(name: str, entry: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    """Each mirror root (mirror/<name>/, mirror/, ...) tried with download=False: torchvision's own
    checks of existence and integrity; else, when `download`, torchvision downloads into `dest`
    (verifying md5s where the class has them). The manifest lists the files torchvision read
    meanwhile, with their checksums (prepare verifies them again)."""
    call = class_call(name, entry)
    mirrors = [expand(m) for m in mirrors]
    if not call.takes_root:  # generated (FakeData): nothing to find, nothing to verify
        datasets = _construct_splits(name, call, None, False)
        return {
            "class": call.cls.__name__,
            "origin": "generated",
            "root": None,
            **_describe(name, call, entry, datasets),
            "files": {},
        }

    def manifest(origin: str, root: Path) -> dict:
        """torchvision's classes over `root` (downloading there for origin 'download'), described
        with the files they read; a DataError passes, anything else raises as it is."""
        with _opened_files() as opened:
            datasets = _construct_splits(name, call, root, download=origin == "download")
            described = _describe(name, call, entry, datasets)
        return {
            "class": call.cls.__name__,
            "origin": origin,
            "root": str(root.resolve()),
            **described,
            "files": _files_under(root, opened),
        }

    for root in _candidates(name, mirrors):
        try:
            return manifest("mirror", root)
        except DataError:
            raise
        except Exception:  # torchvision's own check: not (all) there, or corrupted
            continue
    searched = ", ".join(str(m) for m in mirrors) or "none given"
    where = f"datasets.{name}: torchvision.datasets.{call.cls.__name__} is in no mirror ({searched})"
    if not download:
        raise DataError(f"{where} and download is disabled; {_where_to_put(name, call, mirrors)}")
    try:
        return manifest("download", dest)
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"{where} and its download failed ({type(err).__name__}: {one_line(err)}); "
            f"{_where_to_put(name, call, mirrors)}"
        ) from None


def inspect(name: str, entry: dict, raw_dir: Path | None) -> dict:
    """Known once fetched (from its manifest); before, only the shape when `size` and `channels`
    say it, and `deferred` says why the rest is not."""
    call = class_call(name, entry)
    manifest = _manifest(raw_dir)
    if manifest and manifest.get("dataset") == name and manifest.get("entry") == entry:
        found = {k: manifest.get(k) for k in ("shape", "classes", "n_train", "n_test")}
        if found["classes"] is None:  # it keeps no list of labels or classes: prepare reads every label
            found["deferred"] = (
                f"datasets.{name}: torchvision.datasets.{call.cls.__name__} lists no classes: they are known once it is prepared"
            )
        return found
    shape = None
    if entry.get("size") is not None and entry.get("channels") is not None:
        shape = (entry["channels"], *size_pair(entry["size"]))
    return {
        "shape": shape,
        "classes": None,
        "n_train": None if "train" in call.splits else 0,
        "n_test": None,
        "deferred": f"datasets.{name}: torchvision.datasets.{call.cls.__name__} is known once its files are fetched",
    }


def read(name: str, entry: dict, manifest: dict, raw_dir: Path) -> Raw:
    verify_manifest(name, manifest)
    call = class_call(name, entry)
    root = Path(manifest["root"]) if manifest.get("root") else None
    try:
        datasets = _construct_splits(name, call, root, download=False)
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"datasets.{name}: {call.call(call.splits[0])} at {root}: {type(err).__name__}: {one_line(err)}; "
            "fetch it again (the download rule)"
        ) from None
    splits = {split: dataset_split(f"datasets.{name}: {call.call(split)}", datasets[split]) for split in call.splits}
    first = datasets[call.splits[0]]
    classes = class_names(
        f"datasets.{name}: {call.call(call.splits[0])}",
        getattr(first, "classes", None),
        [s.labels for s in splits.values()],
    )
    origin = {k: manifest[k] for k in ("source", "class", "origin", "root") if k in manifest} | {
        k: manifest["entry"].get(k) for k in ("kwargs", "splits")
    }
    return Raw(splits, classes, entry.get("channels"), origin, manifest_checksums(manifest))


def available(name: str, entry: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    mirrors = [expand(m) for m in mirrors]
    call = class_call(name, entry)
    if not call.takes_root:
        return True, "generated by torchvision"
    for root in _candidates(name, mirrors):
        try:
            _construct_splits(name, call, root, download=False)
            return True, f"in mirror {root}"
        except DataError:
            raise
        except Exception:
            continue
    if download:
        return True, f"in no mirror; torchvision.datasets.{call.cls.__name__} downloads it"
    return False, f"in no mirror and download disabled; {_where_to_put(name, call, mirrors)}"


def _manifest(raw_dir: Path | None) -> dict | None:
    if raw_dir is None:
        return None
    try:
        return json.loads((Path(raw_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
