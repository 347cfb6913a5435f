"""Every file knockout writes goes through here: written to a hidden temporary sibling and renamed
into place, so an interrupted job never leaves a file that looks complete.

Tables are tidy (one row per observation); a job's tables and arrays carry their id columns
(`intervention, model, seed`) so that files can be concatenated without reading their names.
No torch here (the analysis env has none): torch checkpoints go through `atomic_write` too.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on a temporary sibling of `path` (same suffix, so writers that look at
    it behave), then rename it onto `path`; the temporary file is removed if `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def with_ids(frame: pd.DataFrame, ids: dict | None) -> pd.DataFrame:
    """`frame` with the id columns (e.g. intervention, model, seed) first."""
    if not ids:
        return frame
    frame = frame.drop(columns=[c for c in ids if c in frame]).reset_index(drop=True)
    return pd.concat([pd.DataFrame([ids] * len(frame), columns=list(ids)), frame], axis=1)


def write_table(frame: pd.DataFrame, path: str | Path, ids: dict | None = None) -> Path:
    """A tidy table as CSV, or parquet when `path` ends in .parquet, with `ids` columns first."""
    frame = with_ids(frame, ids)
    if str(path).endswith(".parquet"):
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)


def write_json(obj: Any, path: str | Path) -> Path:
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_arrays(arrays: dict[str, Any], path: str | Path, ids: dict | None = None, compress: bool = True) -> Path:
    """Named arrays as an .npz (0-d arrays for the `ids`), readable with `np.load` alone. The
    same arrays give the same bytes (np.savez stamps the time into the zip; this does not)."""
    payload = {k: np.asarray(v) for k, v in {**(ids or {}), **arrays}.items()}

    def write(tmp: Path) -> None:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method) as archive:
            for name, value in payload.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)

    return atomic_write(path, write)


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
