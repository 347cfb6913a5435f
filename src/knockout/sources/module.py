"""`source: module`: your own `torch.utils.data.Dataset`, from a callable named like a model's
`target` (`package.module:callable`, or `path/to/file.py:callable` relative to the working
directory: `knockout.paths`). It is called once per split as `target(split="train" | "test", **kwargs)` and returns
a map-style dataset of (image, class index) items, or None where it has no such split (only
`train` may be missing). An image is a PIL image, a tensor (C, H, W) or (H, W) of uint8 or of
floats in [0, 1] (`ToTensor()`'s, never normalised: the normalisation belongs to the model, its
`preprocess`), or a uint8 numpy array in PIL's layout (H, W[, C]).

    {target: data.py:make, kwargs: {...}, size: 32 | [H, W], channels: 1 | 3}

Class names come from the dataset's `classes` when it has them; labels from its `targets` (or
`labels`) when it keeps a list of them, else from one pass over its items. The manifest
records the target's file and the modules beside it that it imports, with their checksums: an
edit of any of them fetches (and prepares) again.
"""

from __future__ import annotations

from pathlib import Path

from ..catalog import SPLITS
from ..errors import DataError
from .common import (
    Raw,
    class_names,
    dataset_split,
    file_entry,
    labels_attribute,
    manifest_checksums,
    mode_of,
    one_line,
    to_pixels,
    verify_manifest,
)


def _datasets(name: str, entry: dict) -> dict:
    """split -> the user's dataset, for the splits it has. DataError naming the key otherwise."""
    from ..targets import load_target

    key = f"datasets.{name}.target"
    try:
        factory = load_target(entry["target"])
    except ValueError as e:
        raise DataError(f"{key}: {e}") from None
    out = {}
    for split in SPLITS:
        try:
            dataset = factory(split=split, **dict(entry.get("kwargs") or {}))
        except Exception as e:
            raise DataError(
                f"{key}: {entry['target']}(split={split!r}) failed ({type(e).__name__}: {one_line(e)})"
            ) from None
        if dataset is None:
            continue
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise DataError(
                f"{key}: {entry['target']}(split={split!r}) returned a {type(dataset).__name__}, "
                "not a map-style Dataset (with __getitem__ and __len__)"
            )
        out[split] = dataset
    if "test" not in out:
        raise DataError(f"{key}: {entry['target']}(split='test') returned None: a dataset needs its test split")
    return out


def _describe(name: str, entry: dict, datasets: dict) -> dict:
    where = f"datasets.{name}: {entry['target']}(split='test')"
    test = datasets["test"]
    if len(test) == 0:
        raise DataError(f"{where}: no images")
    first = test[0][0]
    geometry = {"size": entry["size"]} if entry.get("size") is not None else None
    shape = list(to_pixels(where, 0, first, mode_of(first, entry.get("channels")), geometry).shape)
    labels = [labels_attribute(d) for d in datasets.values()]
    names = getattr(test, "classes", None)
    classes = (
        class_names(where, names, labels) if all(l is not None for l in labels) else names and [str(c) for c in names]
    )
    return {
        "shape": shape,
        "channels": shape[0],
        "classes": classes,
        "n_train": len(datasets["train"]) if "train" in datasets else 0,
        "n_test": len(test),
    }


def inspect(name: str, entry: dict, raw_dir: Path | None) -> dict:
    found = _describe(name, entry, _datasets(name, entry))
    if found["classes"] is None:
        found["deferred"] = (
            f"datasets.{name}: {entry['target']} keeps no list of classes or labels: they are known once it is prepared"
        )
    return found


def acquire(name: str, entry: dict, dest: Path, mirrors: list[Path], download: bool) -> dict:
    from ..targets import local_files

    found = _describe(name, entry, _datasets(name, entry))
    files = local_files(entry["target"])  # the target's file and the modules beside it that it imports
    folder = files[0].parent if files else None
    return {"target": entry["target"], **found, "files": {str(f.relative_to(folder)): file_entry(f) for f in files}}


def read(name: str, entry: dict, manifest: dict, raw_dir: Path) -> Raw:
    verify_manifest(name, manifest)
    datasets = _datasets(name, entry)
    splits = {
        split: dataset_split(f"datasets.{name}: {entry['target']}(split={split!r})", d) for split, d in datasets.items()
    }
    classes = class_names(
        f"datasets.{name}: {entry['target']}",
        getattr(datasets["test"], "classes", None),
        [s.labels for s in splits.values()],
    )
    return Raw(
        splits,
        classes,
        entry.get("channels"),
        {"source": "module", "target": entry["target"]},
        manifest_checksums(manifest),
    )


def available(name: str, entry: dict, mirrors: list, download: bool) -> tuple[bool, str]:
    _datasets(name, entry)
    return True, f"from {entry['target']}"
