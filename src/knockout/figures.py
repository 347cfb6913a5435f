"""The figures of every study, drawn from its tables: what the analysis notebooks save and
`knockout.Result.plot()` returns (one function per notebook, the same code for both).

One kind of uncertainty throughout: a 95% Student-t confidence interval over training seeds (the
study tables'), computed over the seeds' own values (a set's draws are averaged within a seed
first); one seed gives no interval. Accuracy is in percent, a change in accuracy in percentage
points (pp). Heatmaps of accuracy run on a fixed scale from chance to the baseline. Names are the
study's display names (its `labels:` map) or readable forms of the internal ones. A figure with
nothing to show is not drawn: its name and why are in `Drawn.skipped`.

Torch-free (numpy, pandas, scipy, matplotlib, seaborn): it runs in the analysis environment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml
from scipy import stats as sps

from .analysis import FULL, HALF, PALETTE, class_name, read_arrays, read_split, read_tables, setup, t_ci, yerr

CAPTIONS = yaml.safe_load((Path(__file__).with_name("captions.yaml")).read_text())
"""Each figure's caption, by notebook and figure name (the report's, true under every value)."""

# --- what a study's figures are drawn from -------------------------------------------------------


@dataclass
class StudyData:
    """A study's tables as its notebook is given them (files) or a `Result` holds them (frames):
    over seeds (`table`, `comparisons`), per seed (`per_seed`, `per_class`, `confusion`,
    `examples`, `units`: unit statistics with a `seed` column, `arrays`: a probe's), the data's
    `meta` (classes), the test images (`images`: read_split's), retraining `runs` (histories and
    records), the model's `baselines`, and the study's display names (`labels`)."""

    name: str
    model: str = ""
    study_type: str = ""
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_seed: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    confusion: pd.DataFrame = field(default_factory=pd.DataFrame)
    examples: pd.DataFrame = field(default_factory=pd.DataFrame)
    units: pd.DataFrame = field(default_factory=pd.DataFrame)
    arrays: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    images: dict | None = None
    runs: list = field(default_factory=list)
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)
    labels: dict = field(default_factory=dict)

    @classmethod
    def read(cls, name: str, **files) -> StudyData:
        """From the files a notebook is given (each optional; a path or a list of paths): table,
        comparisons, per_seed, per_class, confusion, examples, units, arrays, meta, test_images
        and test_indices, runs ({history, record, condition, seed} each), baselines."""

        def frame(key):
            value = files.get(key)
            if value is None:
                return pd.DataFrame()
            if isinstance(value, (list, tuple)):
                return read_tables(value)
            return pd.read_csv(value) if Path(value).exists() else pd.DataFrame()

        meta = files.get("meta")
        images = files.get("test_images")
        data = cls(
            name=name,
            model=files.get("model", ""),
            study_type=files.get("study_type", ""),
            meta=json.loads(Path(meta).read_text()) if meta and Path(meta).exists() else {},
            images=read_split(images, files["test_indices"]) if images and Path(images).exists() else None,
            arrays=read_arrays(files.get("arrays") or []),
            runs=[
                r | {"history": pd.read_csv(r["history"]), "record": json.loads(Path(r["record"]).read_text())}
                for r in files.get("runs") or []
            ],
            labels=files.get("labels") or {},
        )
        for key in ("table", "comparisons", "per_seed", "per_class", "confusion", "examples", "units", "baselines"):
            setattr(data, key, frame(key))
        if not data.table.empty and "model" in data.table and data.model:
            data.table = data.table[data.table["model"] == data.model]
        return data

    @property
    def seeds(self) -> list[int]:
        found = set()
        for f in (self.per_seed, self.per_class, self.examples):
            if "seed" in f:
                found |= set(f["seed"].astype(int))
        return sorted(found | {int(a["seed"]) for a in self.arrays if "seed" in a})

    @property
    def classes(self) -> list[str] | None:
        if self.meta.get("classes"):
            return list(self.meta["classes"])
        if "class_name" in self.per_class:
            return self.per_class.drop_duplicates("class").sort_values("class")["class_name"].tolist()
        return None

    @property
    def chance(self) -> float | None:
        classes = self.classes
        return 1 / len(classes) if classes else None

    def level(self, level: str) -> pd.DataFrame:
        """The over-seed table's rows of one level (condition, set, layer)."""
        if self.table.empty or "level" not in self.table:
            return pd.DataFrame()
        return self.table[self.table["level"] == level].reset_index(drop=True)

    def display(self, name: str) -> str:
        """A set's or condition's name as the figures show it: its `labels:` entry, else readable."""
        if name in self.labels:
            return str(self.labels[name])
        return readable(name, self.labels)


VALUE_WORDS = {"mean-position": "mean per position", "noise-position": "noise per position"}


def readable(name: str, labels: dict | None = None) -> str:
    """An internal name in words: `rand:draw2` -> "rand, draw 2"; `low@mean` -> "low (mean)";
    `curve:conv2:f0.5` -> "curve conv2 50%"; `rewind:fc1:epoch3` -> "rewind fc1, epoch 3"; a set
    the study's `labels` names, by that name."""
    labels = labels or {}
    head, *parts = str(name).split(":")
    base, _, value = head.partition("@")
    text = str(labels.get(base, base)) + (f" ({VALUE_WORDS.get(value, value)})" if value else "")
    for part in parts:
        if m := re.fullmatch(r"(draw|v|epoch)(\d+)", part):
            text += f", {dict(draw='draw', v='value draw', epoch='epoch')[m.group(1)]} {m.group(2)}"
        elif m := re.fullmatch(r"f([\d.]+)", part):
            text += f" {float(m.group(1)):.0%}"
        else:
            text += f" {part}"
    return text


def wrapped(text: str, width: int = 14) -> str:
    """A tick label broken into lines of about `width` characters."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


@dataclass
class Drawn:
    """A study's figures by name, in order, and the figures not drawn with why."""

    figures: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    def add(self, name: str, fig) -> None:
        self.figures[name] = fig

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why


# --- statistics the figures show ------------------------------------------------------------------


def over_seeds(frame: pd.DataFrame, by: list[str], value: str, scale: float = 1.0) -> pd.DataFrame:
    """`value` of each group of `by` over seeds: the seeds' own values (their rows averaged within
    a seed first), then mean, 95% t CI and n, times `scale`."""
    per_seed = frame.groupby([*by, "seed"], sort=False, dropna=False)[value].mean().reset_index()
    rows = []
    for keys, g in per_seed.groupby(by, sort=False, dropna=False):
        v = g[value].to_numpy(float) * scale
        low, high = t_ci(v) if len(v) > 1 else (np.nan, np.nan)
        rows.append(
            {
                **dict(zip(by, keys if isinstance(keys, tuple) else (keys,))),
                "mean": v.mean(),
                "ci_low": low,
                "ci_high": high,
                "n": len(v),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "n"])


def ci_note(n_seeds: int) -> str:
    return "95% CI over seeds" if n_seeds > 1 else "one seed: no CI"


def _baseline_band(ax, mean: float, low: float, high: float, label: str = "baseline", orientation: str = "h"):
    line, span = (ax.axhline, ax.axhspan) if orientation == "h" else (ax.axvline, ax.axvspan)
    if not np.isnan(low):
        span(low, high, color="0.85", zorder=0, lw=0)
    return line(mean, color="0.3", lw=1, ls="--", zorder=1, label=label)


def _points(ax, x, mean, low, high, color, label=None, marker="o", ms=5, horizontal=False):
    err = np.nan_to_num(np.vstack([np.asarray(mean) - np.asarray(low), np.asarray(high) - np.asarray(mean)]), nan=0.0)
    kw = {"xerr": err} if horizontal else {"yerr": err}
    args = (mean, x) if horizontal else (x, mean)
    return ax.errorbar(*args, **kw, fmt=marker, ms=ms, color=color, capsize=3, zorder=3, label=label)


def _forest(data: StudyData) -> mpl.figure.Figure | None:
    """Every `compare` pair: the paired difference (pp) with its 95% CI over seeds, the p of the
    paired t-test and of the exact sign-flip test, and the seeds paired."""
    c = data.comparisons
    if c.empty or "diff_mean" not in c:
        return None
    fig, ax = plt.subplots(figsize=(FULL, 0.9 + 0.42 * len(c)), layout="constrained")
    y = np.arange(len(c))
    ax.axvline(0, color="0.3", lw=0.8)
    _points(ax, y, c["diff_mean"] * 100, c["diff_ci_low"] * 100, c["diff_ci_high"] * 100, PALETTE[0], horizontal=True)
    ax.set_yticks(y, [f"{data.display(a)} − {data.display(b)}" for a, b in zip(c["a"], c["b"])])
    ax.set_ylim(len(c) - 0.5, -0.5)
    for i, r in enumerate(c.itertuples()):
        p_t = "n/a" if pd.isna(r.p_ttest) else f"{r.p_ttest:.2g}"
        p_s = "n/a" if pd.isna(r.p_permutation) else f"{r.p_permutation:.2g}"
        ax.annotate(
            f"p(t) {p_t}, p(sign-flip) {p_s}, {int(r.n_seeds)} seeds",
            (1.01, i),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("difference in test accuracy (pp), paired by seed, 95% CI")
    return fig


def _per_layer(layers: list, height: float, sharey: bool = False):
    """A row of panels, one per layer (half width for one): the figure and its axes as a 1 x n
    array."""
    width = HALF if len(layers) == 1 else FULL
    return plt.subplots(1, len(layers), figsize=(width, height), layout="constrained", squeeze=False, sharey=sharey)


def _accuracy_per_set(ax, rows: pd.DataFrame, per_seed: pd.DataFrame, label: str) -> None:
    """Each set of `rows` (index: set) at x = 0, 1, ...: its mean accuracy (%) with its CI over
    seeds, and a dot per seed (the set's draws averaged within the seed)."""
    if not per_seed.empty:
        seed_means = per_seed.groupby(["set", "seed"])["accuracy"].mean() * 100
        for i, name in enumerate(rows.index):
            if name in seed_means.index.get_level_values(0):
                vals = seed_means.loc[name].to_numpy()
                ax.scatter(i + np.linspace(-0.12, 0.12, len(vals)), vals, s=8, color="0.55", zorder=2)
    x = np.arange(len(rows))
    _points(ax, x, rows["mean"] * 100, rows["ci_low"] * 100, rows["ci_high"] * 100, PALETTE[0], label)


# --- filter_ablation ------------------------------------------------------------------------------


def filter_ablation(data: StudyData) -> Drawn:
    """sets, values, single_unit, volcano, importance_selectivity, cumulative, per_class,
    confusion_change, flips, flipped_images, comparisons."""
    drawn = Drawn()
    cond, sets = data.level("condition"), data.level("set").set_index("set") if not data.level("set").empty else None
    per_seed = data.per_seed
    sweep_sets = _sets_with(cond, "unit")
    curve_sets = _sets_with(cond, "fraction")
    order = [s for s in dict.fromkeys(cond["set"]) if s != "baseline"] if not cond.empty else []
    n_seeds = len(data.seeds)
    baseline = sets.loc["baseline"] if sets is not None and "baseline" in sets.index else None

    # sets: accuracy per set, draws averaged within a seed
    shown = [s for s in order if s not in curve_sets and sets is not None and s in sets.index]
    shown = [s for s in shown if s not in sweep_sets] + [s for s in shown if s in sweep_sets]
    if shown:
        rows = sets.loc[shown]
        fig, ax = plt.subplots(figsize=(HALF if len(shown) <= 5 else FULL, 2.7), layout="constrained")
        x = np.arange(len(shown))
        if baseline is not None:
            _baseline_band(
                ax,
                baseline["mean"] * 100,
                baseline["ci_low"] * 100,
                baseline["ci_high"] * 100,
                f"baseline ({ci_note(n_seeds)})",
            )
        _accuracy_per_set(ax, rows, per_seed, f"set ({ci_note(n_seeds)}); dots: seeds")
        ticks = []
        for name, r in rows.iterrows():
            what = (
                f"{int(r['n_conditions'])} single units"
                if name in sweep_sets
                else f"{int(r['k'])} units" if "k" in r and pd.notna(r["k"]) else ""
            )
            draws = f", {int(r['n_conditions'])} draws" if name not in sweep_sets and r["n_conditions"] > 1 else ""
            ticks.append(wrapped(data.display(name)) + (f"\n{what}{draws}" if what or draws else ""))
        ax.set_xticks(x, ticks, fontsize=8)
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlabel("silenced set")
        fig.legend(loc="outside upper center", ncol=2, fontsize=8)
        drawn.add("sets", fig)
    else:
        drawn.skip("sets", "no sets other than single units and cumulative curves")

    # values: each set's change under each ablation value
    value_of = cond.drop_duplicates("set").set_index("set")["value"].fillna("zero").to_dict() if "value" in cond else {}
    valued = sorted({v for v in value_of.values() if v != "zero"})
    if valued and sets is not None:
        rows = sets.loc[[s for s in order if s in sets.index]].reset_index()
        rows["value"] = rows["set"].map(value_of).fillna("zero")
        rows["base_set"] = rows["set"].str.split("@").str[0]
        groups = list(dict.fromkeys(rows["base_set"]))
        values = ["zero", *valued]
        width = 0.8 / len(values)
        fig, ax = plt.subplots(figsize=(HALF if len(groups) <= 3 else FULL, 2.7), layout="constrained")
        ax.axhline(0, color="0.3", lw=0.8)
        for j, value in enumerate(values):
            shown_v = rows[rows["value"] == value].set_index("base_set").reindex(groups).dropna(subset=["delta_mean"])
            x = np.array([groups.index(g) for g in shown_v.index]) + (j - (len(values) - 1) / 2) * width
            ax.bar(
                x,
                shown_v["delta_mean"] * 100,
                width=width * 0.9,
                color=PALETTE[j % len(PALETTE)],
                label=VALUE_WORDS.get(value, value),
                yerr=yerr(shown_v.reset_index(), "delta_mean", "delta_ci_low", "delta_ci_high") * 100,
                capsize=2,
                error_kw={"lw": 0.8},
            )
        ax.set_xticks(np.arange(len(groups)), [wrapped(data.display(g)) for g in groups])
        ax.set_xlabel("silenced set")
        ax.set_ylabel("change in test accuracy (pp)")
        ax.legend(title=f"silenced units put out ({ci_note(n_seeds)})", fontsize=8, title_fontsize=8)
        drawn.add("values", fig)
    else:
        drawn.skip("values", "every set silences its units at zero (value: zero)")

    # single units: sorted changes, the significant ones marked
    if sweep_sets and not cond.empty:
        sweep = cond[cond["set"].isin(sweep_sets)]
        panels = list(sweep.groupby(["set", "layer"], sort=False))
        fig, axes = plt.subplots(
            len(panels), 1, figsize=(FULL, 0.8 + 2.1 * len(panels)), layout="constrained", squeeze=False
        )
        for ax, ((name, layer), rows) in zip(axes[:, 0], panels):
            rows = rows.sort_values("delta_mean").reset_index(drop=True)
            x = np.arange(len(rows))
            ax.axhline(0, color="0.3", lw=0.8)
            _points(
                ax,
                x,
                rows["delta_mean"] * 100,
                rows["delta_ci_low"] * 100,
                rows["delta_ci_high"] * 100,
                PALETTE[3],
                ms=3,
            )
            counts = _significant_per_seed(per_seed, name, layer)
            marked = _significant_units(per_seed, name, layer)
            hit = rows["unit"].isin(marked).to_numpy()
            if hit.any():
                ax.scatter(
                    x[hit],
                    rows["delta_mean"][hit] * 100,
                    s=40,
                    facecolors="none",
                    edgecolors="black",
                    lw=0.9,
                    zorder=4,
                    label="significant in a seed (q < 0.05)",
                )
                ax.legend(loc="lower right", fontsize=8)
            worst = ", ".join(str(int(u)) for u in rows["unit"][:3])
            ax.text(
                0.01,
                0.04,
                f"most harmful: units {worst}; significant units per seed (BH q < 0.05): "
                f"{', '.join(map(str, counts)) or 'n/a'}",
                transform=ax.transAxes,
                fontsize=8,
                va="bottom",
            )
            ax.set_xlim(-1, len(rows))
            ax.set_xlabel(f"{layer} units, sorted by the change they cause ({len(rows)} units)")
            ax.set_ylabel(f"change in accuracy (pp)\n{ci_note(n_seeds)}")
            ax.set_title(f"{data.display(name)}: one unit of {layer} silenced at a time", fontsize=9, loc="left")
        drawn.add("single_unit", fig)
        volcano = _volcano(data, sweep_sets)
        drawn.add("volcano", volcano) if volcano is not None else drawn.skip("volcano", "no q values")
        morcos = _importance_selectivity(data, sweep_sets)
        if morcos is not None:
            drawn.add("importance_selectivity", morcos)
        else:
            drawn.skip("importance_selectivity", "no unit statistics (selectivity) given")
    else:
        for name in ("single_unit", "volcano", "importance_selectivity"):
            drawn.skip(name, "no single-unit sweep (select: each)")

    # cumulative curves: every order of a layer on one axis, 95% CI over seeds
    if curve_sets and not per_seed.empty:
        drawn.add("cumulative", _cumulative(data, curve_sets))
    else:
        drawn.skip("cumulative", "no cumulative curves (select: cumulative)")

    per_class = _per_class(data, sweep_sets)
    (
        drawn.add("per_class", per_class)
        if per_class is not None
        else drawn.skip("per_class", "no sets besides single units")
    )
    confusion = _confusion_change(data, sweep_sets + curve_sets)
    if confusion is not None:
        drawn.add("confusion_change", confusion)
    else:
        drawn.skip("confusion_change", "no confusion tables, or no set besides single units and curves")
    flips = _flips(data, sweep_sets)
    drawn.add("flips", flips) if flips is not None else drawn.skip("flips", "no conditions besides single units")
    images = _flipped_images(data, sweep_sets + curve_sets)
    drawn.add("flipped_images", images) if images is not None else drawn.skip("flipped_images", "no flipped images")
    forest = _forest(data)
    drawn.add("comparisons", forest) if forest is not None else drawn.skip("comparisons", "no compare pairs")
    return drawn


def _sets_with(cond: pd.DataFrame, column: str) -> list[str]:
    """Sets whose conditions have `column` (unit: single-unit sweeps; fraction: cumulative)."""
    if cond.empty or column not in cond:
        return []
    return list(dict.fromkeys(cond.loc[cond[column].notna(), "set"]))


def _significant(per_seed: pd.DataFrame, name: str, layer: str) -> pd.DataFrame:
    if per_seed.empty or "significant" not in per_seed:
        return pd.DataFrame(columns=["seed", "unit", "significant"])
    rows = per_seed[(per_seed["set"] == name) & (per_seed["layer"] == layer)]
    return rows.assign(significant=rows["significant"].astype(str).str.lower().isin(["true", "1", "1.0"]))


def _significant_per_seed(per_seed, name, layer) -> list[int]:
    rows = _significant(per_seed, name, layer)
    return [int(v) for v in rows.groupby("seed")["significant"].sum()] if not rows.empty else []


def _significant_units(per_seed, name, layer) -> set:
    rows = _significant(per_seed, name, layer)
    return set(rows.loc[rows["significant"], "unit"]) if not rows.empty else set()


def _volcano(data: StudyData, sweep_sets: list[str]):
    rows = data.per_seed[data.per_seed["set"].isin(sweep_sets)] if not data.per_seed.empty else pd.DataFrame()
    if rows.empty or "q_bh" not in rows or rows["q_bh"].isna().all():
        return None
    rows = rows.assign(logq=-np.log10(rows["q_bh"].clip(lower=1e-300)), significant=rows["q_bh"] < 0.05)
    layers = list(dict.fromkeys(rows["layer"]))
    fig, axes = _per_layer(layers, 2.6, sharey=True)
    for ax, layer in zip(axes[0], layers):
        g = rows[rows["layer"] == layer]
        for seed, s in g.groupby("seed"):
            ax.scatter(
                s["delta"] * 100,
                s["logq"],
                s=10,
                color=PALETTE[int(seed) % len(PALETTE)],
                alpha=0.7,
                label=f"seed {seed}",
            )
        ax.axhline(-np.log10(0.05), color="0.3", ls="--", lw=0.8, label="q = 0.05")
        ax.axvline(0, color="0.6", lw=0.6)
        ax.set_xlabel(f"{layer}: change in accuracy (pp)")
        ax.set_title(f"{int(g['significant'].sum())} unit-seeds with q < 0.05", fontsize=8)
    axes[0, 0].set_ylabel("−log10 q (Benjamini-Hochberg over the layer's units)")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    return fig


def _importance_selectivity(data: StudyData, sweep_sets: list[str]):
    """Morcos et al. 2018: per layer, each unit's importance (the accuracy drop when it alone is
    silenced) against its class selectivity, per seed, with the Spearman correlation of each seed
    and its 95% CI over seeds."""
    units, per_seed = data.units, data.per_seed
    if units.empty or "selectivity" not in units or per_seed.empty:
        return None
    sweep = per_seed[per_seed["set"].isin(sweep_sets[:1])]
    both = sweep.merge(units[["seed", "layer", "unit", "selectivity"]], on=["seed", "layer", "unit"])
    if both.empty:
        return None
    layers = list(dict.fromkeys(both["layer"]))
    fig, axes = _per_layer(layers, 2.8, sharey=True)
    for ax, layer in zip(axes[0], layers):
        g = both[both["layer"] == layer]
        rhos = []
        for seed, s in g.groupby("seed"):
            ax.scatter(
                s["selectivity"],
                -s["delta"] * 100,
                s=10,
                alpha=0.7,
                color=PALETTE[int(seed) % len(PALETTE)],
                label=f"seed {seed}",
            )
            rho = sps.spearmanr(s["selectivity"], -s["delta"]).statistic if len(s) > 2 else np.nan
            rhos.append(rho)
        rhos = np.asarray(rhos, float)
        low, high = t_ci(rhos) if np.isfinite(rhos).sum() > 1 else (np.nan, np.nan)
        ci = f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) else ""
        ax.set_title(
            f"{layer}: Spearman ρ per seed {', '.join(f'{r:.2f}' for r in rhos)};\n" f"mean {np.nanmean(rhos):.2f}{ci}",
            fontsize=8,
        )
        ax.set_xlabel("class selectivity (train images)")
        ax.axhline(0, color="0.6", lw=0.6)
    axes[0, 0].set_ylabel("importance: accuracy drop\nwhen silenced alone (pp)")
    axes[0, -1].legend(fontsize=7)
    return fig


def _cumulative(data: StudyData, curve_sets: list[str]):
    per_seed = data.per_seed
    curves = per_seed[per_seed["set"].isin(curve_sets)].copy()
    start = (
        curves.groupby(["set", "layer", "seed"], dropna=False)["baseline_accuracy"]
        .first()
        .rename("accuracy")
        .reset_index()
        .assign(fraction=0.0)
    )
    curves = pd.concat([start, curves[["set", "layer", "seed", "fraction", "accuracy"]]], ignore_index=True)
    layers = list(dict.fromkeys(curves["layer"]))
    fig, axes = _per_layer(layers, 2.7, sharey=True)
    n_seeds = len(data.seeds)
    for ax, layer in zip(axes[0], layers):
        for j, name in enumerate(curve_sets):
            g = curves[(curves["layer"] == layer) & (curves["set"] == name)]
            if g.empty:
                continue
            s = over_seeds(g, ["fraction"], "accuracy", 100).sort_values("fraction")
            color = PALETTE[j % len(PALETTE)]
            ax.plot(s["fraction"], s["mean"], "o-", ms=3.5, color=color, label=data.display(name))
            if n_seeds > 1:
                ax.fill_between(s["fraction"], s["ci_low"], s["ci_high"], color=color, alpha=0.2, lw=0)
        if data.chance:
            ax.axhline(100 * data.chance, color="0.4", ls=":", lw=1, label="chance")
        ax.set_xlabel(f"fraction of {layer}'s units silenced")
        ax.set_xlim(0, max(curves["fraction"]) * 1.02 or 1)
        ax.set_ylim(0, 100)
    axes[0, 0].set_ylabel("test accuracy (%)")
    axes[0, -1].legend(title=f"order ({ci_note(n_seeds)})", fontsize=8, title_fontsize=8, loc="lower left")
    return fig


def _group(condition: str) -> str:
    """A condition without its draws: draws are averaged in the figures."""
    return re.sub(r"(:draw\d+)?(:v\d+)?$", "", condition)


def _per_class(data: StudyData, sweep_sets: list[str]):
    """The change in per-class accuracy (pp) per condition, on a fixed scale (± baseline − chance),
    each cell with its 95% CI over seeds."""
    pc = data.per_class
    if pc.empty or data.per_seed.empty:
        return None
    skip = set(data.per_seed.loc[data.per_seed["set"].isin(sweep_sets + ["baseline"]), "condition"])
    keep = pc[~pc["condition"].isin(skip)].assign(group=lambda f: f["condition"].map(_group))
    if keep.empty:
        return None
    stats = over_seeds(keep, ["group", "class_name"], "delta", 100)
    order = list(dict.fromkeys(keep["group"]))
    classes = data.classes or list(dict.fromkeys(keep["class_name"]))
    mean = stats.pivot(index="group", columns="class_name", values="mean").reindex(index=order, columns=classes)
    half = (
        stats.assign(h=(stats["ci_high"] - stats["ci_low"]) / 2)
        .pivot(index="group", columns="class_name", values="h")
        .reindex(index=order, columns=classes)
    )
    base = (
        data.level("set").set_index("set").loc["baseline", "mean"]
        if "baseline" in set(data.level("set").get("set", []))
        else 1.0
    )
    limit = 100 * max(base - (data.chance or 0), 0.05)
    annot = mean.map(lambda v: f"{v:+.1f}").astype(str)
    if half.notna().any().any():
        annot = annot + half.map(lambda h: "" if pd.isna(h) else f"\n±{h:.1f}")
    fig, ax = plt.subplots(figsize=(FULL, 1.4 + 0.42 * len(mean)), layout="constrained")
    sns.heatmap(
        mean,
        cmap="RdBu",
        center=0,
        vmin=-limit,
        vmax=limit,
        annot=annot if mean.size <= 200 else False,
        fmt="",
        annot_kws={"fontsize": 6},
        linewidths=0.5,
        linecolor="white",
        ax=ax,
        cbar_kws={"label": "change in class accuracy (pp)\nscale: ± (baseline − chance)"},
    )
    ax.set_yticks(np.arange(len(mean)) + 0.5, [data.display(g) for g in mean.index], rotation=0)
    ax.set_xlabel("class")
    ax.set_ylabel("condition (draws averaged)")
    ax.tick_params(axis="x", rotation=35)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    return fig


def _chosen(data: StudyData, excluded: list[str]) -> str | None:
    """The condition the per-image figures show: the first compared set's, else the one that
    loses the most."""
    cond = data.level("condition")
    if cond.empty:
        return None
    candidates = cond[~cond["set"].isin(excluded + ["baseline"])]
    if candidates.empty:
        return None
    if not data.comparisons.empty and "a" in data.comparisons:
        first = candidates[candidates["set"] == data.comparisons["a"].iloc[0]]
        if not first.empty:
            return first["condition"].iloc[0]
    return candidates.sort_values("mean")["condition"].iloc[0]


def _confusion_change(data: StudyData, excluded: list[str]):
    """Which class takes over: the chosen condition's confusion minus the baseline's, as a share
    of each true class (pp), averaged over seeds."""
    conf = data.confusion
    chosen = _chosen(data, excluded)
    if conf.empty or chosen is None:
        return None
    classes = data.classes or sorted(set(conf["true"]))
    k = len(classes)

    def matrix(condition: str) -> np.ndarray:
        out = []
        for _, g in conf[conf["condition"] == condition].groupby("seed"):
            m = np.zeros((k, max(k, int(g["predicted"].max()) + 1)))
            np.add.at(m, (g["true"].to_numpy(), g["predicted"].to_numpy()), g["count"].to_numpy())
            out.append(m[:, : k + 1] if m.shape[1] > k else np.pad(m, ((0, 0), (0, 1))))
        return np.mean([m / m.sum(1, keepdims=True).clip(min=1) for m in out], axis=0)

    change = (matrix(chosen) - matrix("baseline")) * 100
    other = change[:, k:].sum(1, keepdims=True)
    change = np.hstack([change[:, :k], other]) if np.abs(other).sum() > 0 else change[:, :k]
    columns = list(classes) + (["another output"] if change.shape[1] > k else [])
    limit = max(float(np.abs(change).max()), 1.0)
    fig, ax = plt.subplots(figsize=(FULL, 1.2 + 0.32 * k), layout="constrained")
    sns.heatmap(
        pd.DataFrame(change, index=classes, columns=columns),
        cmap="RdBu_r",
        center=0,
        vmin=-limit,
        vmax=limit,
        annot=k <= 12,
        fmt="+.1f",
        annot_kws={"fontsize": 7},
        linewidths=0.5,
        linecolor="white",
        ax=ax,
        cbar_kws={"label": "change in share of the true class (pp)"},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"{data.display(chosen)} − baseline: where each class's images go, mean over "
        f"{len(set(conf['seed']))} seed(s)",
        fontsize=9,
        loc="left",
    )
    ax.tick_params(axis="x", rotation=35)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    return fig


def _flips(data: StudyData, sweep_sets: list[str]):
    """Per condition group: test images that flip right to wrong and wrong to right, per seed,
    mean with 95% CI over seeds."""
    ps = data.per_seed
    if ps.empty or "right_to_wrong" not in ps:
        return None
    rows = ps[~ps["set"].isin(sweep_sets + ["baseline"])].assign(group=lambda f: f["condition"].map(_group))
    if rows.empty:
        return None
    r2w = over_seeds(rows, ["group"], "right_to_wrong")
    w2r = over_seeds(rows, ["group"], "wrong_to_right").set_index("group").reindex(r2w["group"]).reset_index()
    fig, ax = plt.subplots(figsize=(HALF, 1.0 + 0.3 * len(r2w)), layout="constrained")
    y = np.arange(len(r2w))
    ax.barh(
        y, -r2w["mean"], xerr=yerr(r2w)[::-1], color=PALETTE[3], label="right → wrong", capsize=2, error_kw={"lw": 0.8}
    )
    ax.barh(y, w2r["mean"], xerr=yerr(w2r), color=PALETTE[0], label="wrong → right", capsize=2, error_kw={"lw": 0.8})
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [data.display(g) for g in r2w["group"]])
    ax.set_ylim(len(r2w) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{abs(v):g}"))
    ax.set_xlabel(f"test images per seed that flip ({ci_note(len(data.seeds))})")
    fig.legend(loc="outside upper center", ncol=2, fontsize=8)
    return fig


def _flipped_images(data: StudyData, excluded: list[str], n: int = 6):
    chosen = _chosen(data, excluded)
    ex = data.examples
    if chosen is None or ex.empty or data.images is None or not (ex["condition"] == chosen).any():
        return None
    images, indices = data.images["images"], data.images["indices"]
    position = {int(e): i for i, e in enumerate(indices)}
    seed0 = int(ex.loc[ex["condition"] == chosen, "seed"].min())
    rows = ex[(ex["condition"] == chosen) & (ex["seed"] == seed0)].sort_values("example")
    fig, axes = plt.subplots(2, n, figsize=(FULL, 3.6), layout="constrained", squeeze=False)
    name = lambda k: class_name(k, data.classes)  # noqa: E731
    for row, (flip, label) in enumerate([("right_to_wrong", "right → wrong"), ("wrong_to_right", "wrong → right")]):
        picked = rows[rows["flip"] == flip].head(n)
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
            if col >= len(picked):
                continue
            e = picked.iloc[col]
            img = images[position[int(e["example"])]]
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            change = (
                f"now {name(int(e['prediction']))}"
                if flip == "right_to_wrong"
                else f"was {name(int(e['baseline_prediction']))}"
            )
            ax.set_title(f"{name(int(e['label']))}\n{change}", fontsize=8)
    fig.suptitle(
        f"{data.display(chosen)}, seed {seed0}: test images whose prediction flips (title: true class)", fontsize=9
    )
    return fig


# --- layer_swap -------------------------------------------------------------------------------------


def layer_swap(data: StudyData) -> Drawn:
    """modes (per layer and mode; a line per mode for many layers), rewind (layers x epochs on a
    fixed scale, chance to the baseline, with each cell's CI), comparisons."""
    drawn = Drawn()
    cond = data.level("condition")
    swaps = cond[cond["mode"].notna()] if "mode" in cond else pd.DataFrame()
    baseline = (
        cond[cond["condition"] == "baseline"].iloc[0]
        if (cond.get("condition", pd.Series()) == "baseline").any()
        else None
    )
    layers = list(dict.fromkeys(swaps["layer"])) if not swaps.empty else []
    modes = [m for m in dict.fromkeys(swaps["mode"]) if m != "rewind"] if not swaps.empty else []
    n_seeds = len(data.seeds)
    colors = dict(zip(["reinit", "rerandomize", "transplant"], PALETTE))

    def references(ax):
        if baseline is not None:
            _baseline_band(
                ax,
                100 * baseline["mean"],
                100 * baseline["ci_low"],
                100 * baseline["ci_high"],
                f"trained network ({ci_note(n_seeds)})",
            )
        if data.chance:
            ax.axhline(100 * data.chance, color="0.3", ls=":", lw=1, label="chance")

    if modes:
        many = len(layers) > 12
        fig, ax = plt.subplots(figsize=(FULL if many or len(layers) > 5 else HALF, 2.9), layout="constrained")
        x = np.arange(len(layers))
        for i, mode in enumerate(modes):
            rows = swaps[swaps["mode"] == mode].set_index("layer").reindex(layers)
            color = colors.get(mode, PALETTE[(i + 3) % len(PALETTE)])
            if many:  # a line per mode with its CI band: readable at 50+ layers
                ax.plot(x, rows["mean"] * 100, "o-", ms=2.5, lw=1, color=color, label=mode)
                ax.fill_between(x, rows["ci_low"] * 100, rows["ci_high"] * 100, color=color, alpha=0.2, lw=0)
            else:
                width = 0.8 / len(modes)
                ax.bar(
                    x + (i - (len(modes) - 1) / 2) * width,
                    rows["mean"] * 100,
                    width * 0.95,
                    yerr=yerr(rows.reset_index()) * 100,
                    color=color,
                    capsize=2,
                    error_kw={"elinewidth": 0.8},
                    label=mode,
                )
        references(ax)
        if many:  # stages (layer1, layer2, ...) as sections, a few names as ticks
            stages = [name.split(".")[0] for name in layers]
            for i in range(1, len(stages)):
                if stages[i] != stages[i - 1]:
                    ax.axvline(i - 0.5, color="0.85", lw=0.8, zorder=0)
            starts = [i for i in range(len(stages)) if i == 0 or stages[i] != stages[i - 1]]
            ax.set_xticks(starts, [stages[i] for i in starts], rotation=45, ha="right", rotation_mode="anchor")
            ax.set_xlabel(f"layer ({len(layers)}, in network order; sections: stages)")
        else:
            ax.set_xticks(x, [wrapped(layer, 12) for layer in layers], rotation=0 if len(layers) <= 8 else 45)
            ax.set_xlabel("layer")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        fig.legend(loc="outside upper center", ncol=3, fontsize=8)
        drawn.add("modes", fig)
    else:
        drawn.skip("modes", "no reinit, rerandomize or transplant conditions")

    rewind = swaps[swaps["mode"] == "rewind"] if not swaps.empty else pd.DataFrame()
    if not rewind.empty and "epoch" in rewind:
        rewind = rewind.assign(epoch=rewind["epoch"].astype(int))
        heat = (
            rewind.pivot_table(index="layer", columns="epoch", values="mean", sort=False)
            .reindex(layers)
            .dropna(how="all")
            * 100
        )
        half = (
            rewind.assign(h=(rewind["ci_high"] - rewind["ci_low"]) / 2 * 100)
            .pivot_table(index="layer", columns="epoch", values="h", sort=False)
            .reindex(heat.index)
        )
        low = 100 * (data.chance or 0)
        high = 100 * baseline["mean"] if baseline is not None else float(np.nanmax(heat.to_numpy()))
        annot = heat.map(lambda v: f"{v:.0f}")
        if half.notna().any().any():
            annot = annot + half.map(lambda h: "" if pd.isna(h) else f"\n±{h:.0f}")
        wide = heat.shape[1] > 8 or heat.shape[0] > 12
        fig, ax = plt.subplots(figsize=(FULL if wide else HALF, 1.2 + 0.4 * len(heat)), layout="constrained")
        sns.heatmap(
            heat,
            cmap="viridis",
            vmin=low,
            vmax=max(high, low + 1e-6),
            annot=annot if heat.size <= 160 else False,
            fmt="",
            annot_kws={"fontsize": 7},
            linewidths=0.5,
            linecolor="white",
            ax=ax,
            cbar_kws={"label": "test accuracy (%)\nscale: chance to the trained network"},
        )
        ax.set_xlabel(
            f"epoch of the layer's weights (0 = initial); cells: mean ± half the 95% CI over {n_seeds} seed(s)"
        )
        ax.set_ylabel("layer")
        ax.tick_params(axis="y", rotation=0)
        drawn.add("rewind", fig)
    else:
        drawn.skip("rewind", "no rewind conditions (mode rewind, saved checkpoints)")
    forest = _forest(data)
    drawn.add("comparisons", forest) if forest is not None else drawn.skip("comparisons", "no compare pairs")
    return drawn


# --- retraining studies -------------------------------------------------------------------------


def retrain(data: StudyData) -> Drawn:
    """accuracy, tradeoff (accuracy, generalisation gap and time against parameters), learning
    curves, comparisons."""
    drawn = Drawn()
    cond = data.level("condition")
    sets = data.level("set").set_index("set") if not data.level("set").empty else pd.DataFrame()
    order = [s for s in dict.fromkeys(cond.get("set", [])) if s in sets.index]
    baseline = sets.loc["baseline"] if "baseline" in sets.index else None
    n_seeds = len(data.seeds)
    shown = [s for s in order if s != "baseline"]
    if shown:
        rows = sets.loc[shown]
        fig, ax = plt.subplots(figsize=(HALF if len(shown) <= 5 else FULL, 2.8), layout="constrained")
        x = np.arange(len(shown))
        if baseline is not None:
            _baseline_band(
                ax,
                100 * baseline["mean"],
                100 * baseline["ci_low"],
                100 * baseline["ci_high"],
                f"baseline, trained the same way ({ci_note(n_seeds)})",
            )
        before = data.baselines[data.baselines["model"] == data.model] if "model" in data.baselines else pd.DataFrame()
        if data.study_type == "ablate_then_train" and not before.empty:
            ax.axhline(
                100 * before["mean"].iloc[0], color=PALETTE[2], ls=":", lw=1.2, label="the model before ablation"
            )
        _accuracy_per_set(ax, rows, data.per_seed, f"condition ({ci_note(n_seeds)}); dots: seeds")
        ticks = [
            wrapped(data.display(n)) + (f"\n{int(r['n_conditions'])} draws" if r["n_conditions"] > 1 else "")
            for n, r in rows.iterrows()
        ]
        ax.set_xticks(x, ticks, rotation=0 if len(shown) <= 4 else 30)
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_xlabel(
            {"ablate_then_train": "silenced set, then trained", "architecture": "variant", "factorize": "network"}.get(
                data.study_type, "condition"
            )
        )
        ax.set_ylabel("test accuracy (%)")
        fig.legend(loc="outside upper center", ncol=1, fontsize=8)
        drawn.add("accuracy", fig)
    else:
        drawn.skip("accuracy", "no conditions besides the baseline")

    metrics = [
        (c, label, scale)
        for c, label, scale in [
            ("accuracy", "test accuracy (%)", 100),
            ("gap", "train − test accuracy (pp)", 100),
            ("seconds_per_epoch", "seconds per epoch", 1),
        ]
        if f"{c}_mean" in sets
    ]
    if metrics and order:
        points = sets.loc[order]
        sized = "parameters" in points and points["parameters"].notna().all() and points["parameters"].nunique() > 1
        fig, axes = plt.subplots(1, len(metrics), figsize=(FULL, 2.7), layout="constrained", squeeze=False)
        for ax, (column, label, scale) in zip(axes[0], metrics):
            xs = points["parameters"].astype(float).to_numpy() if sized else np.arange(len(points))
            for i, name in enumerate(points.index):
                r = points.loc[name]
                color = "0.3" if name == "baseline" else PALETTE[i % len(PALETTE)]
                _points(
                    ax,
                    [xs[i]],
                    [r[f"{column}_mean"] * scale],
                    [r[f"{column}_ci_low"] * scale],
                    [r[f"{column}_ci_high"] * scale],
                    color,
                    data.display(name),
                    marker="s" if name == "baseline" else "o",
                )
            if sized:
                ax.set_xlabel("parameters")
                ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
            else:
                ax.set_xticks(
                    xs,
                    [wrapped(data.display(n), 10) for n in points.index],
                    rotation=30,
                    ha="right",
                    rotation_mode="anchor",
                )
            ax.set_ylabel(label)
            if column == "gap":
                ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        fig.legend(
            *axes[0, 0].get_legend_handles_labels(),
            title=f"condition ({ci_note(n_seeds)})",
            fontsize=8,
            title_fontsize=8,
            loc="outside upper center",
            ncol=min(4, len(points)),
        )
        drawn.add("tradeoff", fig)
    else:
        drawn.skip("tradeoff", "no accuracy columns in the table")

    if data.runs:
        history = pd.concat(
            [r["history"].assign(condition=r["condition"], seed=int(r["seed"])) for r in data.runs], ignore_index=True
        )
        names = [c for c in cond.get("condition", []) if c in set(history["condition"])]
        names += [c for c in dict.fromkeys(history["condition"]) if c not in names]
        fig, axes = plt.subplots(1, 2, figsize=(FULL, 2.7), layout="constrained")
        step = min(0.08, 0.6 / max(1, len(names)))
        for ax, (column, label, scale) in zip(
            axes, [("test_acc", "test accuracy (%)", 100), ("train_loss", "training loss (cross-entropy)", 1)]
        ):
            for i, name in enumerate(names):
                s = over_seeds(history[history["condition"] == name], ["epoch"], column, scale)
                color = "0.3" if name == "baseline" else PALETTE[i % len(PALETTE)]
                _points(
                    ax,
                    s["epoch"] + (i - (len(names) - 1) / 2) * step,
                    s["mean"],
                    s["ci_low"],
                    s["ci_high"],
                    color,
                    data.display(name),
                    marker="-o",
                    ms=3,
                )
            ax.set_xlabel("epoch of the condition's training")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        fig.legend(
            *axes[1].get_legend_handles_labels(),
            title=f"condition\n({ci_note(n_seeds)})",
            fontsize=8,
            title_fontsize=8,
            loc="outside right upper",
        )
        drawn.add("learning_curves", fig)
    else:
        drawn.skip("learning_curves", "no training histories given")
    forest = _forest(data)
    drawn.add("comparisons", forest) if forest is not None else drawn.skip("comparisons", "no compare pairs")
    return drawn


# --- occlusion ------------------------------------------------------------------------------------


def occlusion(data: StudyData, max_images: int = 5) -> Drawn:
    """probability_maps and attribution_maps (each image's maps averaged over the seeds, the
    seeds' agreement in each title), window_summary (95% CI over seeds)."""
    drawn = Drawn()
    arrays = data.arrays
    if not arrays:
        for name in ("probability_maps", "attribution_maps", "window_summary"):
            drawn.skip(name, "no occlusion maps given")
        return drawn
    first = arrays[0]
    same = [
        a
        for a in arrays
        if np.array_equal(a["examples"], first["examples"]) and a["prob_centred"].shape == first["prob_centred"].shape
    ]
    prob = np.mean([a["prob_centred"] for a in same], 0)
    attribution = np.mean([a["attribution"] for a in same], 0)
    agreement = _map_agreement([a["prob_centred"] for a in same])
    labels, windows = first["labels"].astype(int), [int(w) for w in first["windows"]]
    base_pred, base_prob = first["baseline_pred"].astype(int), np.mean([a["baseline_prob"] for a in same], 0)
    shown = list(range(min(len(labels), max_images)))
    name = lambda k: class_name(k, data.classes)  # noqa: E731
    note = f"mean over {len(same)} seed(s)" + (
        f"; seeds' maps agree r = {agreement:.2f} (mean pairwise Pearson)" if len(same) > 1 else ""
    )

    def grid(values, cmap, vmin, vmax, label, title):
        n_w = len(windows)
        cell = FULL / (n_w + 1.35)
        fig, axes = plt.subplots(
            len(shown), n_w + 1, figsize=(FULL, 0.6 + (cell + 0.32) * len(shown)), layout="constrained", squeeze=False
        )
        for r, n in enumerate(shown):
            img = np.clip(first["inputs"][n], 0, 1)
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            axes[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            wrong = "" if base_pred[n] == labels[n] else f" (pred. {name(base_pred[n])})"
            axes[r, 0].set_title(f"{name(labels[n])}{wrong}\np = {base_prob[n]:.2f}", fontsize=8)
            for wi, w in enumerate(windows):
                im = axes[r, wi + 1].imshow(values[n, wi], cmap=cmap, vmin=vmin, vmax=vmax)
                axes[r, wi + 1].set_title(title(n, w), fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        fig.colorbar(im, ax=axes[:, 1:], label=label, aspect=30)
        fig.suptitle(note, fontsize=8)
        return fig

    drawn.add("probability_maps", grid(prob, "magma", 0, 1, "p(true class), occluded", lambda n, w: f"{w}×{w} window"))
    limit = float(np.nanmax(np.abs(attribution[shown]))) or 1.0
    drawn.add(
        "attribution_maps",
        grid(
            attribution, "RdBu_r", -limit, limit, "attribution: drop in p(true class)", lambda n, w: f"{w}×{w} window"
        ),
    )
    summary = data.per_seed
    if summary.empty or "min_prob" not in summary:
        drawn.skip("window_summary", "no occlusion summaries given")
        return drawn
    fig, axes = plt.subplots(1, 2, figsize=(FULL, 2.6), layout="constrained")
    for ax, (column, label) in zip(
        axes,
        [("min_prob", "lowest p(true class)"), ("changed_area", "fraction of positions\nthat change the prediction")],
    ):
        for _, g in summary.groupby(["seed", "image"]):
            ax.plot(g["window"], g[column], color="0.8", lw=0.5, zorder=1)
        s = over_seeds(summary, ["window"], column).sort_values("window")
        _points(
            ax,
            s["window"],
            s["mean"],
            s["ci_low"],
            s["ci_high"],
            PALETTE[0],
            f"mean over images ({ci_note(len(data.seeds))})",
            marker="-o",
        )
        ax.set_xticks(windows)
        ax.set_xlabel("occluding window (pixels per side)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(loc="lower left", fontsize=8)
    drawn.add("window_summary", fig)
    return drawn


def _map_agreement(maps: list) -> float:
    """Mean pairwise Pearson correlation of the seeds' maps (flattened), NaN for one seed."""
    if len(maps) < 2:
        return float("nan")
    flat = [np.asarray(m, float).ravel() for m in maps]
    return float(np.mean([np.corrcoef(a, b)[0, 1] for i, a in enumerate(flat) for b in flat[i + 1 :]]))


# --- top activations ------------------------------------------------------------------------------


def top_activations(data: StudyData, max_filters: int = 12) -> Drawn:
    """grid (for every seed, each layer's top patches per filter) and scores (how fast the
    response falls with rank, every seed)."""
    drawn = Drawn()
    if not data.arrays:
        drawn.skip("grid", "no patches given")
    else:
        blocks = [
            (int(a.get("seed", i)), a, layer[len("patches_") :])
            for i, a in enumerate(data.arrays)
            for layer in a
            if layer.startswith("patches_")
        ]
        heights = [0.5 + 0.55 * a[f"patches_{layer}"].shape[0] for _, a, layer in blocks]
        fig = plt.figure(figsize=(FULL, min(sum(heights), 22)), layout="constrained")
        subfigs = np.atleast_1d(fig.subfigures(len(blocks), 1, height_ratios=heights))
        for sub, (seed, arrays, layer) in zip(subfigs, blocks):
            patches, filters = arrays[f"patches_{layer}"], arrays[f"filters_{layer}"]
            k, n_f = patches.shape[:2]
            shown = min(n_f, max_filters)
            axes = sub.subplots(k, shown, squeeze=False)
            for r in range(k):
                for f in range(shown):
                    ax = axes[r, f]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.spines[:].set_visible(False)
                    ax.imshow(_patch_image(patches[r, f]))
                    if r == 0:
                        ax.set_title(str(int(filters[f])), fontsize=7)
                    if f == 0:
                        ax.set_ylabel(str(r + 1), fontsize=7, rotation=0, ha="right", va="center")
            more = f", first {shown} of {n_f}" if shown < n_f else ""
            sub.suptitle(f"seed {seed}, {layer} ({patches.shape[3]}×{patches.shape[4]} px{more})", fontsize=8)
        fig.suptitle("columns: filters (index on top); rows: rank 1 to k", fontsize=9)
        drawn.add("grid", fig)
    table = data.per_seed
    if table.empty or "score" not in table:
        drawn.skip("scores", "no top-activation tables given")
        return drawn
    layers = list(dict.fromkeys(table["layer"]))
    fig, axes = _per_layer(layers, 2.4)
    for ax, layer in zip(axes[0], layers):
        rows = table[table["layer"] == layer]
        for (seed, _), g in rows.groupby(["seed", "filter"]):
            g = g.sort_values("rank")
            top = g["score"].iloc[0]
            ax.plot(
                g["rank"],
                g["score"] / top if top else g["score"],
                "o-",
                color=PALETTE[int(seed) % len(PALETTE)],
                alpha=0.6,
                lw=0.8,
                ms=2.5,
            )
        ax.set_title(f"{layer} (colour: seed)", fontsize=9)
        ax.set_xlabel("rank of the image")
        ax.set_ylabel("score / top score")
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    drawn.add("scores", fig)
    return drawn


def _patch_image(patch):
    """(C, ph, pw) pixels in [0, 1], NaN outside the image -> RGB, blue-grey where NaN."""
    x = np.clip(patch, 0, 1)
    outside = np.isnan(patch).any(axis=0)
    rgb = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    rgb = np.transpose(np.nan_to_num(rgb), (1, 2, 0))
    rgb[outside] = mpl.colors.to_rgb("#c6d3e0")
    return rgb


# --- baselines ----------------------------------------------------------------------------------


def baselines(data: StudyData) -> Drawn:
    """learning_curves (test accuracy and training loss per epoch) and final_accuracy, 95% CI
    over seeds."""
    drawn = Drawn()
    table = data.table
    models = list(table["model"]) if "model" in table else []
    colors = dict(zip(models, PALETTE))
    n_seeds = len(set(data.per_seed["seed"])) if "seed" in data.per_seed else 0
    if data.runs:
        history = pd.concat(
            [r["history"].assign(model=r["model"], seed=int(r["seed"])) for r in data.runs], ignore_index=True
        )
        fig, axes = plt.subplots(1, 2, figsize=(FULL, 2.6), layout="constrained")
        for ax, (column, label, scale) in zip(
            axes, [("test_acc", "test accuracy (%)", 100), ("train_loss", "training loss (cross-entropy)", 1)]
        ):
            for model in dict.fromkeys(history["model"]):
                s = over_seeds(history[history["model"] == model], ["epoch"], column, scale)
                ax.plot(s["epoch"], s["mean"], "o-", ms=3, color=colors.get(model, "0.3"), label=model)
                if n_seeds > 1:
                    ax.fill_between(
                        s["epoch"], s["ci_low"], s["ci_high"], color=colors.get(model, "0.3"), alpha=0.2, lw=0
                    )
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        axes[0].legend(title=f"model ({ci_note(n_seeds)})", loc="lower right", fontsize=8, title_fontsize=8)
        drawn.add("learning_curves", fig)
    else:
        drawn.skip("learning_curves", "no training histories (every model given, not trained here)")
    if table.empty:
        drawn.skip("final_accuracy", "no baselines table")
        return drawn
    fig, ax = plt.subplots(figsize=(HALF, 0.6 + 0.45 * len(table)), layout="constrained")
    y = np.arange(len(table))
    _points(
        ax,
        y,
        table["mean"] * 100,
        table["ci_low"] * 100,
        table["ci_high"] * 100,
        "black",
        ci_note(n_seeds),
        horizontal=True,
    )
    if "test_accuracy" in data.per_seed:
        for i, model in enumerate(models):
            acc = data.per_seed.loc[data.per_seed["model"] == model, "test_accuracy"].to_numpy() * 100
            ax.scatter(
                acc,
                i + (np.linspace(-0.15, 0.15, len(acc)) if len(acc) > 1 else np.zeros(1)),
                s=10,
                color=colors[model],
                alpha=0.8,
                zorder=2,
            )
    ax.set_yticks(y, [f"{m}\n{int(p):,} params" for m, p in zip(table["model"], table["parameters"])])
    ax.set_ylim(len(table) - 0.5, -0.5)
    ax.set_xlabel(f"test accuracy (%), {ci_note(n_seeds)}; dots: seeds")
    drawn.add("final_accuracy", fig)
    return drawn


# --- by notebook ----------------------------------------------------------------------------------

NOTEBOOKS = {
    "filter_ablation": filter_ablation,
    "layer_swap": layer_swap,
    "retrain": retrain,
    "occlusion": occlusion,
    "top_activations": top_activations,
    "baselines": baselines,
}


def save(drawn: Drawn, out_dir: str | Path) -> list[str]:
    """Write each figure as {name}.png (200 dpi) and {name}.pdf into `out_dir` (no timestamps or
    versions in the files); the names written."""
    from .analysis import PDF_METADATA, PNG_METADATA

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in drawn.figures.items():
        fig.savefig(out / f"{name}.png", dpi=200, metadata=PNG_METADATA)
        fig.savefig(out / f"{name}.pdf", metadata=PDF_METADATA)
    return list(drawn.figures)
