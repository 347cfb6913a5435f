"""Where a path in a config points: one rule for every key that names a file or folder of yours
(a model's or dataset's `file.py:callable`, checkpoints and their patterns, a weights file, image
folders, a tensors file, mirrors). `~` and `$VARS` are expanded, and a relative path is taken
from the working directory: the folder the workflow runs in (snakemake's `--directory`, else the
folder snakemake is started in: your project) and the current folder for the `knockout` commands
(`check-config`, `check-data`, `summary`). Never from the config file's folder, nor from the
workflow's: the jobs run in the working directory too, so a path means the same to the config
check and to every job. `knockout.config.check` stops on a path that is not there, in one line
naming the key and the path as resolved (`missing`).
"""

from __future__ import annotations

import os
from pathlib import Path


def config_path(value: str | os.PathLike) -> Path:
    """A path as a config gives it, `~` and `$VARS` expanded (relative still, when it was: to the
    working directory)."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))


def resolved(value: str | os.PathLike) -> Path:
    """Where a config's path points: absolute, a relative one from the working directory."""
    return Path(os.path.abspath(config_path(value)))


def missing(key: str, value: str | os.PathLike, kind: str = "file") -> str | None:
    """The one-line error for a `kind` (file or folder) that is not there: the key and the path
    as resolved; None when it is there."""
    path = config_path(value)
    if path.is_dir() if kind == "folder" else path.is_file():
        return None
    where = "" if path.is_absolute() else f" (a relative path is taken from the working directory, {Path.cwd()})"
    return f"{key}: no such {kind} {resolved(value)}{where}"
