"""What the analysis notebooks (notebooks/*.ipynb) share: the figure style, a figure writer,
confidence intervals, and readers of the study files they are given.

Importable without torch (numpy, pandas, scipy, matplotlib, seaborn and the standard library
only): the notebooks run in the analysis environment, which has no torch. Every reader takes the
paths it is given and reads nothing else, so a notebook shows exactly the seeds and models the
workflow passed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

__all__ = [
    "FULL",
    "HALF",
    "PALETTE",
    "Figures",
    "ci_text",
    "class_name",
    "read_arrays",
    "read_split",
    "read_tables",
    "setup",
    "t_ci",
    "yerr",
]

HALF, FULL = 3.5, 7.0  # figure widths in inches: one column, two columns
PALETTE = sns.color_palette("colorblind")

# Paper-sized, reproducible figures: seaborn's "paper" context (text >= 8 pt), one font that
# ships with matplotlib, white backgrounds, no timestamps or versions in the files.
RC_PARAMS = {
    "font.family": "DejaVu Sans",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.dpi": 200,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "knockout",
    "image.interpolation": "nearest",
}
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}


def setup() -> None:
    """Set the figure style of every notebook: seaborn's paper/ticks theme, then RC_PARAMS.
    Changes matplotlib's global state; returns nothing."""
    sns.set_theme(context="paper", style="ticks", font="DejaVu Sans")
    mpl.rcParams.update(RC_PARAMS)


class Figures:
    """Writes a notebook's figures into one folder (created if missing) and remembers their names.

    `save(fig, name)` writes {out_dir}/{name}.png (200 dpi) and {name}.pdf without timestamps or
    software versions, shows the figure (inline in a notebook) and closes it. `names` lists the
    names written, in order.
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []

    def save(self, fig: mpl.figure.Figure, name: str) -> None:
        """Write `fig` as {name}.png (200 dpi) and {name}.pdf, then show and close it."""
        fig.savefig(self.out_dir / f"{name}.png", dpi=200, metadata=PNG_METADATA)
        fig.savefig(self.out_dir / f"{name}.pdf", metadata=PDF_METADATA)
        self.names.append(name)
        plt.show()
        plt.close(fig)

    def placeholder(self, name: str, text: str) -> None:
        """A small figure that says why there is nothing to plot (the file names stay fixed);
        `text` is also printed."""
        fig, ax = plt.subplots(figsize=(HALF, 0.8), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
        self.save(fig, name)
        print(f"{name}: {text}")


def t_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) t confidence interval of the mean of `values` (NaNs dropped), as the study's
    tables compute it; (mean, mean) for one value, (nan, nan) for none."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (np.nan, np.nan)
    m = x.mean()
    if len(x) < 2:
        return (m, m)
    h = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return (m - h, m + h)


def yerr(frame: pd.DataFrame, mean: str = "mean", low: str = "ci_low", high: str = "ci_high") -> np.ndarray:
    """Asymmetric error bars, shape (2, len(frame)), from a frame's mean and CI columns; 0 where the
    CI is missing (one seed)."""
    return np.nan_to_num(np.vstack([frame[mean] - frame[low], frame[high] - frame[mean]]), nan=0.0).clip(min=0)


def ci_text(mean: float, low: float, high: float, digits: int = 4) -> str:
    """'mean [low, high]' with `digits` decimals; only the mean when the CI is missing."""
    if pd.isna(low) or pd.isna(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def class_name(k: int, classes: list[str] | None) -> str:
    """A predicted or true class index in words: its name, 'another output' for an index past
    the classes (a network output that is none of them: `knockout.readout`), 'none' for -1."""
    if k < 0:
        return "none"
    if classes is None:
        return str(k)
    return classes[k] if k < len(classes) else "another output"


def read_tables(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Per-seed tables (.csv, or .parquet by suffix), concatenated in the order given.

    Every per-seed file carries its own `intervention`, `model` and `seed` columns; nothing is
    taken from the file names. No paths: an empty frame.
    """
    frames = []
    for path in map(Path, paths):
        frames.append(pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_arrays(paths: Iterable[str | Path]) -> list[dict[str, np.ndarray]]:
    """The arrays of each .npz file, in the order given: one {name: array} dict per file (scalars
    such as `seed` come back as 0-d arrays)."""
    out = []
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            out.append({key: data[key] for key in data.files})
    return out


def read_split(images: str | Path, indices: str | Path) -> dict[str, np.ndarray]:
    """A prepared split's images (`{split}_images.npy`, memory-mapped: uint8 (N, C, H, W)) and
    indices (`{split}_indices.npy`: int64 (N,), the examples' indices in the original split)."""
    split = {
        "images": np.load(images, mmap_mode="r", allow_pickle=False),
        "indices": np.load(indices, allow_pickle=False),
    }
    if split["images"].ndim != 4 or len(split["images"]) != len(split["indices"]):
        raise ValueError(
            f"{images}: images {split['images'].shape}, indices {split['indices'].shape}; expected (N, C, H, W), (N,)"
        )
    return split
