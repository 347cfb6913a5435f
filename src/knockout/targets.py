"""A user's callable named in the config as `package.module:callable` or `path/to/file.py:callable`
(a path relative to the working folder): their network (`arch: {type: module}`) or their
dataset (`source: module`)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path


def target_file(target: str) -> Path | None:
    """The file of a `file.py:callable` target (None for an importable module)."""
    where = str(target).rpartition(":")[0]
    return Path(where).expanduser() if where.endswith(".py") else None


def load_target(target: str):
    """The callable `target` names; ValueError, one line naming the target, when it cannot be had."""
    target = str(target)
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise ValueError(f"target {target!r} is not 'package.module:callable' or 'file.py:callable'")
    path = target_file(target)
    if path is not None:
        if not path.is_file():
            raise ValueError(f"target {target!r}: no such file {path}")
        module_name = f"knockout_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise ValueError(
                f"target {target!r}: importing {path} failed ({type(e).__name__}: {_first_line(e)})"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise ValueError(
                f"target {target!r}: cannot import {where} ({type(e).__name__}: {_first_line(e)})"
            ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"target {target!r}: {where} has no callable {attr!r}")
    return factory


def accepted(factory) -> set[str]:
    """The keyword arguments a callable takes (empty when it cannot be told)."""
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
