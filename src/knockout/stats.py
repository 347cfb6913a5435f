"""Across-seed statistics of the per-seed evaluation tables.

Each training seed writes a tidy CSV with one row per condition (`intervention, model, seed,
condition, set, accuracy, loss, baseline_accuracy, delta`, plus optional descriptive columns
such as layer, unit, k, draw, fraction, epoch, mode). This module turns those rows into:

- `summarize`: mean, std and Student-t confidence interval over seeds, per condition and per
  set (a set's conditions, e.g. the random draws, are averaged within each seed first);
- `paired_comparison` / `comparisons`: one set against another, paired by seed, with a paired
  t-test, an exact (or sampled) sign-flip permutation test and a one-line verdict;
- `unit_significance`: within one seed, each single-unit condition against the baseline over the
  test examples (exact McNemar test on its flips), with Benjamini-Hochberg's false discovery rate
  over the units of its layer; `summarize` then counts the significant units per layer and seed
  and gives that count's CI over seeds.

Pure pandas / numpy / scipy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

GROUP_KEYS = ("intervention", "model")
CONDITION_KEYS = (*GROUP_KEYS, "condition")
SET_KEYS = (*GROUP_KEYS, "set")
REQUIRED = (*GROUP_KEYS, "seed", "condition", "set")
VALUE_COLS = ("accuracy", "delta", "loss")
STAT_SUFFIXES = ("mean", "std", "ci_low", "ci_high")
# Per-seed measurements, never descriptive (the baseline condition's row summarizes them).
MEASURED_COLS = ("baseline_accuracy", "right_to_wrong", "wrong_to_right", "p_mcnemar", "q_bh")
# The false discovery rate at which a unit's effect is called significant (`unit_significance`).
FDR = 0.05
# Up to this many seeds the sign-flip test enumerates all 2**n flips (65536 at most).
EXACT_PERMUTATION_MAX_N = 16


# ---------------------------------------------------------------------------------------------
# Confidence intervals
# ---------------------------------------------------------------------------------------------


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float, int]:
    """Mean and Student-t confidence interval of `values` (NaNs ignored).

    In: any 1-d array-like of numbers. Out: `(mean, std, ci_low, ci_high, n)` where std has
    ddof=1 and the interval is mean ± t(1 - (1 - confidence) / 2, n - 1) * std / sqrt(n).
    With n == 1 std and the interval are NaN (one value says nothing about spread); with n == 0
    everything but n is NaN.
    """
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, math.nan, 1
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half, n


def _stat_columns(values, prefix: str, confidence: float) -> dict:
    """`{prefix_mean, prefix_std, prefix_ci_low, prefix_ci_high}` of `values`, for one row."""
    mean, std, low, high, _ = mean_ci(values, confidence)
    return dict(zip((f"{prefix}_{s}" for s in STAT_SUFFIXES), (mean, std, low, high)))


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def read_per_seed(paths) -> pd.DataFrame:
    """Concatenate per-seed CSVs (one path or an iterable of paths) into one DataFrame.

    Columns are the union of the files' columns (missing ones become NaN); the index is reset.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [pd.read_csv(p) for p in paths]
    if not frames:
        raise ValueError("read_per_seed: no CSV paths given")
    return pd.concat(frames, ignore_index=True)


def _check_columns(per_seed: pd.DataFrame, value_cols: Iterable[str]) -> None:
    """Raise ValueError naming the required columns `per_seed` lacks."""
    missing = [c for c in (*REQUIRED, *value_cols) if c not in per_seed.columns]
    if missing:
        raise ValueError(f"per-seed table lacks column(s): {', '.join(missing)}")


def _check_unique(per_seed: pd.DataFrame) -> None:
    """Raise ValueError if a condition appears twice for one seed (e.g. a CSV read twice)."""
    keys = [*CONDITION_KEYS, "seed"]
    dup = per_seed.duplicated(keys, keep=False)
    if dup.any():
        first = per_seed.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"per-seed table has duplicate rows for {first}")


def _descriptive_columns(per_seed: pd.DataFrame, value_cols: Sequence[str]) -> list[str]:
    """Extra columns that are constant within every condition across seeds (layer, k, set...).

    A column that varies across seeds for one condition is a measurement, not a description,
    so it is left out, as is baseline_accuracy always (so the schema does not depend on data).
    """
    skip = {*CONDITION_KEYS, "seed", *value_cols, *MEASURED_COLS}
    grouped = per_seed.groupby(list(CONDITION_KEYS), dropna=False, sort=False)
    return [c for c in per_seed.columns if c not in skip and (grouped[c].nunique(dropna=False) <= 1).all()]


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def set_means_per_seed(per_seed: pd.DataFrame, value_cols=VALUE_COLS) -> pd.DataFrame:
    """Average the conditions of each set within each seed.

    In: the per-seed table. Out: one row per (intervention, model, set, seed) with the mean of
    each value column over the set's conditions in that seed, and `n_conditions` (how many
    conditions were averaged).
    """
    value_cols = list(value_cols)
    grouped = per_seed.groupby([*SET_KEYS, "seed"], dropna=False, sort=True)
    means = grouped[value_cols].mean()
    means["n_conditions"] = grouped["condition"].nunique()
    return means.reset_index()


def _condition_level(per_seed, value_cols, descriptive, confidence) -> pd.DataFrame:
    """One row per (intervention, model, condition): across-seed stats and descriptive cols."""
    rows = []
    for keys, g in per_seed.groupby(list(CONDITION_KEYS), dropna=False, sort=False):
        row = dict(zip(CONDITION_KEYS, keys))
        row["n_seeds"] = g["seed"].nunique()
        row["n_conditions"] = 1
        for v in value_cols:
            row.update(_stat_columns(g[v], v, confidence))
        row.update({c: g[c].iloc[0] for c in descriptive})
        rows.append(row)
    return pd.DataFrame(rows)


def _set_constants(per_seed: pd.DataFrame, columns: list[str]) -> dict[tuple, dict]:
    """Per (intervention, model, set): each column's value if the whole set shares it, else NaN."""
    out = {}
    for keys, g in per_seed.groupby(list(SET_KEYS), dropna=False, sort=False):
        out[keys] = {c: g[c].iloc[0] if g[c].nunique(dropna=False) <= 1 else np.nan for c in columns}
    return out


def _set_level(per_seed, value_cols, descriptive, confidence) -> pd.DataFrame:
    """One row per (intervention, model, set): stats over seeds of the within-seed set means.

    Descriptive columns keep their value where it is the same for the whole set, else NaN.
    """
    seed_means = set_means_per_seed(per_seed, value_cols)
    shared = _set_constants(per_seed, [c for c in descriptive if c != "set"])
    rows = []
    for keys, g in seed_means.groupby(list(SET_KEYS), dropna=False, sort=False):
        row = dict(zip(SET_KEYS, keys))
        row["condition"] = row["set"]
        row["n_seeds"] = g["seed"].nunique()
        # Conditions per seed; the minimum if a seed lost some (every seed averaged at least it).
        row["n_conditions"] = int(g["n_conditions"].min())
        for v in value_cols:
            row.update(_stat_columns(g[v], v, confidence))
        row.update(shared.get(keys, {}))
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(per_seed: pd.DataFrame, value_cols=VALUE_COLS, confidence: float = 0.95) -> pd.DataFrame:
    """Across-seed mean, std and t confidence interval, per condition and per set.

    In: the per-seed table (one row per intervention, model, seed, condition). Out: one tidy
    table with a `level` column:

    - `condition`: one row per (intervention, model, condition) over seeds, with
      `n_seeds`, `n_conditions` (= 1), `{v}_mean, {v}_std, {v}_ci_low, {v}_ci_high` for each
      value column v, and the descriptive columns constant within every condition (set, layer,
      unit, k, draw, ...).
    - `set`: one row per (intervention, model, set); the set's conditions are first averaged
      within each seed, then the stats are taken across seeds. `condition` holds the set name,
      `n_conditions` the conditions averaged per seed; descriptive columns are kept where
      constant over the set, NaN otherwise.

    - `layer` (only where the table has single-unit conditions with `significant`, see
      `unit_significance`): one row per (intervention, model, set, layer), `condition` is
      `{set}:{layer}`; `n_significant_{mean,std,ci_low,ci_high}` is the count of the layer's units
      significant at FDR 5% in a seed, over seeds, and `n_units` the units tested per seed.

    `mean, std, ci_low, ci_high` repeat the accuracy statistics (the file contract's names).
    """
    value_cols = list(value_cols)
    _check_columns(per_seed, value_cols)
    _check_unique(per_seed)
    descriptive = _descriptive_columns(per_seed, value_cols)
    cond = _condition_level(per_seed, value_cols, descriptive, confidence)
    sets = _set_level(per_seed, value_cols, descriptive, confidence)
    layers = _layer_level(per_seed, confidence)
    levels = [cond.assign(level="condition"), sets.assign(level="set")]
    out = pd.concat(levels + ([layers.assign(level="layer")] if len(layers) else []), ignore_index=True)
    if "accuracy" in value_cols:
        for s in STAT_SUFFIXES:
            out[s] = out[f"accuracy_{s}"]
    return _order_columns(out, value_cols, descriptive)


def _layer_level(per_seed: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per (intervention, model, set, layer) of single-unit conditions: the count of significant
    units per seed, over seeds (empty when the table has no such conditions)."""
    if "significant" not in per_seed or "layer" not in per_seed:
        return pd.DataFrame()
    tested = per_seed[per_seed["significant"].notna()]
    rows = []
    for keys, g in tested.groupby([*SET_KEYS, "layer"], dropna=False, sort=False):
        per = g.groupby("seed")["significant"].agg(["sum", "count"])
        row = dict(zip((*SET_KEYS, "layer"), keys))
        row["condition"] = f"{row['set']}:{row['layer']}"
        row["n_seeds"] = len(per)
        row["n_conditions"] = int(per["count"].min())
        row["n_units"] = int(per["count"].min())
        row.update(_stat_columns(per["sum"].to_numpy(float), "n_significant", confidence))
        rows.append(row)
    return pd.DataFrame(rows)


def _order_columns(out: pd.DataFrame, value_cols, descriptive) -> pd.DataFrame:
    """Keys first, then counts, the accuracy aliases, per-value stats, descriptive columns, and
    the layer level's significance counts where there is one."""
    head = ["level", *CONDITION_KEYS, "set", "n_seeds", "n_conditions"]
    aliases = [s for s in STAT_SUFFIXES if s in out.columns]
    value_stats = [f"{v}_{s}" for v in value_cols for s in STAT_SUFFIXES]
    tail = [c for c in descriptive if c not in head]
    counts = [c for c in ("n_units", *(f"n_significant_{s}" for s in STAT_SUFFIXES)) if c in out.columns]
    if "layer" in out.columns and "layer" not in tail:
        tail.append("layer")
    return out[head + aliases + value_stats + tail + counts]


# ---------------------------------------------------------------------------------------------
# Per-unit significance within a seed
# ---------------------------------------------------------------------------------------------


def mcnemar_pvalue(right_to_wrong, wrong_to_right) -> np.ndarray:
    """Exact two-sided McNemar p-values of paired right/wrong outcomes (arrays of flip counts):
    under no effect each of the b + c discordant examples flips either way with probability 1/2,
    so p = min(1, 2 P(Binomial(b + c, 1/2) <= min(b, c))); 1 when nothing flips."""
    b = np.asarray(right_to_wrong, dtype=float)
    c = np.asarray(wrong_to_right, dtype=float)
    return np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(b, c), b + c, 0.5))


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of one family of tests."""
    p = np.asarray(pvalues, dtype=float)
    return sps.false_discovery_control(p, method="bh") if p.size else p


def unit_significance(table: pd.DataFrame, fdr: float = FDR) -> pd.DataFrame:
    """One seed's condition table (with `right_to_wrong` and `wrong_to_right` flip counts
    against the baseline) with `p_mcnemar` for every condition, and, for single-unit conditions
    (those with a `unit`: an `each` sweep), `q_bh` (Benjamini-Hochberg over the units of the same
    set and layer) and `significant` (q_bh < fdr)."""
    out = table.copy()
    out["p_mcnemar"] = mcnemar_pvalue(out["right_to_wrong"], out["wrong_to_right"])
    if "unit" not in out or "layer" not in out:
        return out
    out["q_bh"] = np.nan
    out["significant"] = np.nan
    per_unit = out[out["unit"].notna()]
    for _, family in per_unit.groupby(["set", "layer"], sort=False):
        q = benjamini_hochberg(family["p_mcnemar"])
        out.loc[family.index, "q_bh"] = q
        out.loc[family.index, "significant"] = (q < fdr).astype(float)
    return out


# ---------------------------------------------------------------------------------------------
# Paired comparisons
# ---------------------------------------------------------------------------------------------


def sign_flip_pvalue(diffs, n_permutations: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of the mean of paired differences.

    In: the per-seed differences. Out: the fraction of sign flips whose |mean| is at least the
    observed |mean| (the observed flip counts). All 2**n flips are enumerated when
    n <= 16 (so with n seeds the smallest p is 2 / 2**n); otherwise `n_permutations` random
    flips from `numpy.random.default_rng(seed)` plus the observed one. NaN when n == 0.
    """
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    # Flips equal in exact arithmetic may differ in the last bits: compare with a tolerance.
    tol = 1e-12 * max(np.abs(d).max(), 1e-300)
    if n <= EXACT_PERMUTATION_MAX_N:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        means = ((1 - 2 * bits) * d).mean(axis=1)
        return float(np.mean(np.abs(means) >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_permutations, n))
    hits = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - tol))
    return (hits + 1) / (n_permutations + 1)


def _paired_ttest(a_vals: np.ndarray, b_vals: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test; (0, 1) when all differences are exactly 0.

    NaN when n < 2 or the differences are all equal (to rounding) but not zero: no variance.
    """
    d = a_vals - b_vals
    if d.size and np.all(d == 0):
        return 0.0, 1.0
    # Differences equal up to rounding have no spread: scipy would report a spurious huge t.
    if d.size < 2 or np.allclose(d, d[0], rtol=1e-9, atol=1e-15):
        return math.nan, math.nan
    res = sps.ttest_rel(a_vals, b_vals)
    return float(res.statistic), float(res.pvalue)


def _fmt(x: float, spec: str = "+.4f") -> str:
    """A number for the verdict; 'n/a' for NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _verdict(r: dict, confidence: float, alpha: float) -> str:
    """A one-line human reading of a paired comparison result dict."""
    a, b, n = r["a"], r["b"], r["n_seeds"]
    if n == 0:
        return f"{a} vs {b}: no seed has both sets, nothing to compare"
    head = (
        f"{a} - {b} = {_fmt(r['diff_mean'])} ({confidence:.0%} CI {_fmt(r['diff_ci_low'])} "
        f"to {_fmt(r['diff_ci_high'])}), p = {_fmt(r['p_ttest'], '.2g')} "
        f"(paired t, {n} seed{'s' if n != 1 else ''})"
    )
    if n < 3:
        return f"{head}: only {n} seed{'s' if n != 1 else ''}, too few to tell"
    if not r["p_ttest"] < alpha:
        return f"{head}: no evidence of a difference"
    return f"{head}: {a} is {'higher' if r['diff_mean'] > 0 else 'lower'}"


def _single_group(per_seed: pd.DataFrame) -> None:
    """Raise ValueError if `per_seed` mixes interventions or models (seeds would be mispaired)."""
    present = [k for k in GROUP_KEYS if k in per_seed.columns]
    if present and len(per_seed[present].drop_duplicates()) > 1:
        raise ValueError("paired_comparison needs one intervention and model; use comparisons() for several")


def paired_comparison(
    per_seed: pd.DataFrame,
    a: str,
    b: str,
    value: str = "accuracy",
    n_permutations: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> dict:
    """Compare set `a` with set `b` on `value`, paired by training seed.

    In: the per-seed table of one (intervention, model). Each set is first averaged over its
    conditions within each seed; only seeds that have both sets are paired. Out: a dict with
    `a, b, n_seeds, mean_a, mean_b, diff_mean (a - b), diff_std, diff_ci_low, diff_ci_high`
    (t interval of the paired differences), `t_stat, p_ttest` (scipy.stats.ttest_rel; p = 1
    when all differences are 0; NaN when n < 2 or the differences are constant otherwise),
    `p_permutation` (see `sign_flip_pvalue`) and `verdict`, a one-line reading.
    """
    _check_columns(per_seed, [value])
    _single_group(per_seed)
    for name in (a, b):
        if not (per_seed["set"] == name).any():
            known = ", ".join(map(str, sorted(per_seed["set"].dropna().unique())))
            raise ValueError(f"set {name!r} is not in the per-seed table (sets: {known})")
    means = set_means_per_seed(per_seed, [value]).pivot(index="seed", columns="set", values=value)
    paired = means[[a, b]].dropna()
    a_vals, b_vals = paired[a].to_numpy(float), paired[b].to_numpy(float)
    diffs = a_vals - b_vals
    diff_mean, diff_std, low, high, n = mean_ci(diffs, confidence)
    t_stat, p_t = _paired_ttest(a_vals, b_vals)
    result = {
        "a": a,
        "b": b,
        "n_seeds": n,
        "mean_a": float(a_vals.mean()) if n else math.nan,
        "mean_b": float(b_vals.mean()) if n else math.nan,
        "diff_mean": diff_mean,
        "diff_std": diff_std,
        "diff_ci_low": low,
        "diff_ci_high": high,
        "t_stat": t_stat,
        "p_ttest": p_t,
        "p_permutation": sign_flip_pvalue(diffs, n_permutations, seed),
    }
    result["verdict"] = _verdict(result, confidence, alpha)
    return result


def comparisons(
    per_seed: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    value: str = "accuracy",
    **kwargs,
) -> pd.DataFrame:
    """`paired_comparison` for every (intervention, model) and every (a, b) in `pairs`.

    In: the per-seed table (any number of interventions and models) and the set pairs. Out: one
    row per (intervention, model, pair) with `intervention, model` and the dict's keys. Extra
    keyword arguments go to `paired_comparison`.
    """
    rows = []
    if pairs:  # no pairs: an empty table, whatever the columns
        _check_columns(per_seed, [value])
    for keys, g in per_seed.groupby(list(GROUP_KEYS), dropna=False, sort=True):
        for a, b in pairs:
            result = paired_comparison(g, a, b, value, **kwargs)
            rows.append({**dict(zip(GROUP_KEYS, keys)), **result})
    columns = [
        *GROUP_KEYS,
        "a",
        "b",
        "n_seeds",
        "mean_a",
        "mean_b",
        "diff_mean",
        "diff_std",
        "diff_ci_low",
        "diff_ci_high",
        "t_stat",
        "p_ttest",
        "p_permutation",
        "verdict",
    ]
    return pd.DataFrame(rows, columns=columns)
