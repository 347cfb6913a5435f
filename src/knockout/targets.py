"""A user's callable named in the config as `package.module:callable` or `path/to/file.py:callable`
(a path as `knockout.paths` resolves it: from the working directory): their network (`arch: {type: module}`) or their
dataset (`source: module`). A file is imported with its folder on the import path, so it may
import the modules beside it (`from blocks import Block`), and those are the files of it the
workflow watches (`local_files`): editing one reruns what it changes."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from .paths import config_path


def target_file(target: str) -> Path | None:
    """The file of a `file.py:callable` target (None for an importable module)."""
    where = str(target).rpartition(":")[0]
    return config_path(where) if where.endswith(".py") else None


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
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)  # its neighbours import as they do when the user runs it
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise ValueError(
                f"target {target!r}: importing {path} failed ({type(e).__name__}: {_first_line(e)})"
            ) from None
        finally:
            sys.path.remove(folder)
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


def local_files(target: str) -> list[Path]:
    """The files of a `file.py:callable` target: the file and the modules beside it that it
    imports, and theirs, found by reading their import statements (nothing is run); [] for an
    importable module's target (an installed package is not the workflow's to watch)."""
    first = target_file(target)
    if first is None:
        return []
    found, todo = [], [first]
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.append(path)
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError, ValueError):
            continue  # importing it says what is wrong
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            )
            for name in names:
                top = path.parent / name.split(".")[0]  # a module beside it, or a package folder
                todo += sorted(top.rglob("*.py")) if top.is_dir() else [top.with_suffix(".py")]
    return found


def accepted(factory) -> set[str]:
    """The keyword arguments a callable takes (empty when it cannot be told)."""
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
