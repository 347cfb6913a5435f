"""Datasets from anywhere, one module per `source`, all answering the same calls (as the study
types do): `builtin` for `mnist`, `fashion_mnist` and `cifar10` given without a source, then
`torchvision` (a class of torchvision.datasets), `image_folder`, `tensors` and `module` (your
own Dataset).

    inspect(name, entry, raw_dir) -> {shape, classes, n_train, n_test[, channels][, deferred]}
        what is known before any job (the config checks): the full splits (n_train 0: no
        training split), the image shape at the dataset's own size (None when it varies),
        `deferred` saying why a field is None (a torchvision class not fetched yet)
    acquire(name, entry, dest, mirrors, download) -> the manifest's body    (the download rule)
        the raw data made available in `dest` (copied, downloaded, or found where it is) and
        recorded: what `knockout.data.fetch` writes into manifest.json
    read(name, entry, manifest, raw_dir) -> Raw                            (the prepare rule)
    available(name, entry, mirrors, download) -> (ok, how)                 (knockout check-data)

`entry` is the dataset's config entry without its subset keys (`catalog.raw_entry`). Where
torchvision reads a format, its reader is used (the dataset classes with their mirrors,
downloads and integrity checks; ImageFolder and its listing; the MNIST and CIFAR readers).
Problems are one-line `DataError`s that start with the key or the file they are about.
`knockout.data` dispatches to these modules; they never import it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..catalog import BUILTIN, SOURCES
from ..errors import DataError


def source_of(name: str, entry: dict | None) -> str:
    """`builtin` for a built-in name given without `source`, else the entry's `source`.
    DataError for another name without a source."""
    if entry and entry.get("source"):
        return entry["source"]
    if name in BUILTIN:
        return "builtin"
    raise DataError(
        f"datasets.{name}: not a built-in dataset ({', '.join(BUILTIN)}): give its source ({', '.join(SOURCES)})"
    )


def source(name: str) -> ModuleType:
    """The module of source `name` (`builtin` or one of catalog.SOURCES)."""
    if name != "builtin" and name not in SOURCES:
        raise DataError(f"unknown dataset source {name!r} (known: {', '.join(SOURCES)})")
    return importlib.import_module(f"{__name__}.{name}")
