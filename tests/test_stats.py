"""Across-seed statistics: the numbers a user reads off the summary and comparison tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from knockout.stats import (
    comparisons,
    mean_ci,
    paired_comparison,
    read_per_seed,
    sign_flip_pvalue,
    summarize,
)


def rows(seed: int, conditions: dict[str, tuple[str, float]], baseline: float = 0.9, **extra):
    """Per-seed rows: condition -> (set, accuracy); loss is 1 - accuracy, delta vs `baseline`."""
    return [
        dict(
            intervention="ablate",
            model="cnn",
            seed=seed,
            condition=c,
            set=s,
            accuracy=acc,
            loss=1 - acc,
            baseline_accuracy=baseline,
            delta=acc - baseline,
            **extra,
        )
        for c, (s, acc) in conditions.items()
    ]


def sets_table(per_set: dict[str, list[float]], model: str = "cnn") -> pd.DataFrame:
    """One condition per set per seed: per_set[name][i] is the accuracy of seed i."""
    out = []
    for name, accs in per_set.items():
        for seed, acc in enumerate(accs):
            if acc is not None:
                out += rows(seed, {name: (name, acc)})
    return pd.DataFrame(out).assign(model=model)


# ---------------------------------------------------------------------------------------------
# mean_ci
# ---------------------------------------------------------------------------------------------


def test_mean_ci_of_1_2_3_is_2_plus_minus_t_times_sem():
    mean, std, low, high, n = mean_ci([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) / math.sqrt(3)  # std is 1
    assert (mean, std, n) == (2.0, 1.0, 3)
    assert half == pytest.approx(2.484, abs=1e-3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))


def test_mean_ci_ignores_nans_and_is_undefined_for_one_value():
    assert mean_ci([1.0, np.nan, 3.0])[::4] == (2.0, 2)
    mean, std, low, high, n = mean_ci([0.7])
    assert mean == 0.7 and n == 1
    assert math.isnan(std) and math.isnan(low) and math.isnan(high)
    assert math.isnan(mean_ci([])[0]) and mean_ci([np.nan])[4] == 0


# ---------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------


def draws_table() -> pd.DataFrame:
    """2 seeds x 2 random draws, where averaging within the seed first matters.

    seed 0: draws 0.80, 0.90 -> 0.85;  seed 1: draws 0.84, 0.86 -> 0.85.
    Set level over seeds: mean 0.85, std 0 (the seeds agree once the draws are averaged);
    pooling the 4 draws instead would give std ~0.041.
    """
    out = []
    for seed, (d0, d1) in enumerate([(0.80, 0.90), (0.84, 0.86)]):
        out += rows(seed, {"baseline": ("baseline", 0.9)}, fraction=np.nan, draw=np.nan)
        out += rows(seed, {"rand:draw0": ("rand", d0)}, fraction=0.1, draw=0)
        out += rows(seed, {"rand:draw1": ("rand", d1)}, fraction=0.1, draw=1)
    return pd.DataFrame(out)


def test_set_level_averages_draws_within_seed_before_the_ci():
    summary = summarize(draws_table())
    rand = summary[(summary.level == "set") & (summary.condition == "rand")].iloc[0]
    assert rand["set"] == "rand"
    assert (rand.n_seeds, rand.n_conditions) == (2, 2)
    assert rand.accuracy_mean == pytest.approx(0.85)
    assert rand.accuracy_std == pytest.approx(0.0, abs=1e-12)
    assert (rand.ci_low, rand.ci_high) == pytest.approx((0.85, 0.85))
    assert rand.delta_mean == pytest.approx(0.85 - 0.9)


def test_condition_level_is_over_seeds_with_accuracy_aliases():
    summary = summarize(draws_table())
    cond = summary[summary.level == "condition"].set_index("condition")
    assert list(cond.index) == ["baseline", "rand:draw0", "rand:draw1"]
    draw0 = cond.loc["rand:draw0"]
    assert draw0.n_seeds == 2 and draw0.accuracy_mean == pytest.approx(0.82)
    assert draw0.accuracy_std == pytest.approx(0.04 / math.sqrt(2))
    half = sps.t.ppf(0.975, 1) * draw0.accuracy_std / math.sqrt(2)
    assert draw0.accuracy_ci_high == pytest.approx(0.82 + half)
    for s in ("mean", "std", "ci_low", "ci_high"):
        assert draw0[s] == draw0[f"accuracy_{s}"]
    assert draw0.loss_mean == pytest.approx(0.18)


def test_descriptive_columns_constant_within_a_condition_survive():
    summary = summarize(draws_table())
    cond = summary[summary.level == "condition"].set_index("condition")
    assert cond.loc["rand:draw1", "draw"] == 1 and cond.loc["rand:draw1", "fraction"] == 0.1
    assert cond.loc["rand:draw0", "set"] == "rand"
    assert math.isnan(cond.loc["baseline", "draw"])
    sets = summary[summary.level == "set"].set_index("condition")
    assert sets.loc["rand", "fraction"] == 0.1  # shared by the whole set
    assert math.isnan(sets.loc["rand", "draw"])  # differs between the set's draws


def test_columns_that_vary_across_seeds_are_not_carried():
    table = draws_table()
    table["epoch"] = 10 + table["seed"]  # differs between seeds: not a description
    summary = summarize(table)
    assert "epoch" not in summary.columns and "baseline_accuracy" not in summary.columns


def test_duplicate_condition_for_one_seed_is_an_error():
    table = draws_table()
    with pytest.raises(ValueError, match="duplicate"):
        summarize(pd.concat([table, table.iloc[:1]]))


def test_read_per_seed_concatenates_csvs(tmp_path):
    table = draws_table()
    paths = []
    for seed, part in table.groupby("seed"):
        paths.append(tmp_path / f"seed{seed}.csv")
        part.to_csv(paths[-1], index=False)
    back = read_per_seed(paths)
    assert len(back) == len(table) and set(back.seed) == {0, 1}
    assert summarize(back).shape == summarize(table).shape


# ---------------------------------------------------------------------------------------------
# paired comparisons
# ---------------------------------------------------------------------------------------------

LOW = [0.8121, 0.8170, 0.8223]
RAND = [0.8157, 0.8120, 0.8125]


def test_three_seeds_low_vs_random_exact_permutation_and_no_evidence():
    r = paired_comparison(sets_table({"low": LOW, "rand": RAND}), "low", "rand")
    diffs = np.subtract(LOW, RAND)  # -0.0036, +0.0050, +0.0098
    assert r["n_seeds"] == 3
    assert r["diff_mean"] == pytest.approx(0.0112 / 3)
    assert r["p_ttest"] == pytest.approx(sps.ttest_rel(LOW, RAND).pvalue)
    # 8 sign flips; |sum| of the flips: .0112 .0184 .0012 .0084 twice each -> 4 of 8 reach .0112
    assert r["p_permutation"] == 0.5
    assert sign_flip_pvalue(np.abs(diffs)) == 2 / 8  # the smallest two-sided p with 3 seeds
    assert "low - rand = +0.0037" in r["verdict"]
    assert r["verdict"].endswith("no evidence of a difference")


def test_two_seeds_are_too_few_to_tell():
    r = paired_comparison(sets_table({"low": LOW[:2], "rand": [0.5, 0.5]}), "low", "rand")
    assert r["n_seeds"] == 2 and "too few to tell" in r["verdict"]


def test_clear_difference_over_eight_seeds_is_higher():
    rng = np.random.default_rng(1)
    b = 0.80 + rng.normal(0, 0.003, 8)
    a = b + 0.02 + rng.normal(0, 0.002, 8)
    r = paired_comparison(sets_table({"a": list(a), "b": list(b)}), "a", "b")
    assert r["n_seeds"] == 8 and r["p_ttest"] < 0.05
    assert r["p_permutation"] == 2 / 256  # every seed agrees: only identity and full flip
    assert r["verdict"].endswith("a is higher")
    assert paired_comparison(sets_table({"a": list(a), "b": list(b)}), "b", "a")["verdict"].endswith("b is lower")


def test_identical_sets_give_p_one():
    r = paired_comparison(sets_table({"x": LOW, "y": LOW}), "x", "y")
    assert r["diff_mean"] == 0 and r["p_ttest"] == 1.0 and r["p_permutation"] == 1.0
    assert r["verdict"].endswith("no evidence of a difference")


def test_a_set_missing_for_a_seed_pairs_only_common_seeds():
    table = sets_table({"low": [0.81, 0.82, 0.83, None], "rand": [0.80, 0.80, 0.80, 0.70]})
    r = paired_comparison(table, "low", "rand")
    assert r["n_seeds"] == 3
    assert r["mean_b"] == pytest.approx(0.80)  # seed 3's 0.70 is not paired
    assert r["diff_mean"] == pytest.approx(0.02)


def test_sets_are_averaged_within_seed_before_pairing():
    r = paired_comparison(draws_table(), "rand", "baseline")
    assert r["n_seeds"] == 2 and r["diff_mean"] == pytest.approx(-0.05)


def test_unknown_set_is_an_error():
    with pytest.raises(ValueError, match="'nope'"):
        paired_comparison(sets_table({"low": LOW}), "low", "nope")


def test_large_n_uses_seeded_random_flips():
    d = np.linspace(-1, 1.2, 20)
    p1, p2 = sign_flip_pvalue(d, 2000, seed=3), sign_flip_pvalue(d, 2000, seed=3)
    assert p1 == p2 and 1 / 2001 <= p1 <= 1
    assert math.isnan(sign_flip_pvalue([]))


def test_comparisons_one_row_per_model_and_pair():
    cnn = sets_table({"low": LOW, "rand": RAND}, "cnn")
    mlp = sets_table({"low": RAND, "rand": LOW}, "mlp")
    out = comparisons(pd.concat([cnn, mlp]), [("low", "rand"), ("rand", "low")])
    expected = [("cnn", "low"), ("cnn", "rand"), ("mlp", "low"), ("mlp", "rand")]
    assert list(zip(out.model, out.a)) == expected
    assert out.diff_mean.to_numpy() == pytest.approx(np.array([1, -1, -1, 1]) * 0.0112 / 3)
    assert set(out.intervention) == {"ablate"}


def test_constant_nonzero_differences_have_no_t_test():
    r = paired_comparison(sets_table({"a": [0.9, 0.8, 0.7], "b": [0.8, 0.7, 0.6]}), "a", "b")
    assert r["diff_mean"] == pytest.approx(0.1) and r["diff_std"] == pytest.approx(0, abs=1e-12)
    assert math.isnan(r["p_ttest"]) and r["p_permutation"] == 2 / 8
    assert r["verdict"].endswith("no evidence of a difference")


# ---------------------------------------------------------------------------------------------
# Per-unit significance: McNemar within a seed, Benjamini-Hochberg over a layer's units
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (0, 7), (10, 2), (5, 5), (40, 22), (1, 30)])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(b, c):
    from knockout.stats import mcnemar_pvalue

    expected = sps.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert mcnemar_pvalue(b, c) == pytest.approx(expected, rel=1e-12)


def test_benjamini_hochberg_by_its_definition():
    from knockout.stats import benjamini_hochberg

    p = np.array([0.001, 0.04, 0.03, 0.2, 0.012, 0.5])
    m = len(p)
    # q_i = min over j with p_j >= p_i of p_j * m / rank_j, capped at 1
    ranks = p.argsort().argsort() + 1
    expected = [min(1.0, min(p[j] * m / ranks[j] for j in range(m) if p[j] >= p[i])) for i in range(m)]
    assert benjamini_hochberg(p) == pytest.approx(expected, rel=1e-12)


def _sweep_outputs(flips_per_unit: list[int], n: int = 200):
    """A baseline right on 80% of `n` examples and one condition per unit that turns the first
    `flips_per_unit[u]` right examples wrong (and one wrong example right, for unit 0)."""
    import torch

    from knockout.engine.evaluate import ConditionOutput
    from knockout.engine import Condition

    labels = torch.zeros(n, dtype=torch.long)
    base = torch.zeros(n, dtype=torch.long)
    base[int(0.8 * n) :] = 1
    outputs = {"baseline": ConditionOutput(base, torch.zeros(n))}
    conditions = [Condition("baseline", "baseline")]
    for unit, k in enumerate(flips_per_unit):
        pred = base.clone()
        pred[:k] = 1
        if unit == 0:
            pred[-1] = 0
        name = f"each:conv2:{unit}"
        outputs[name] = ConditionOutput(pred, torch.zeros(n))
        info = (("layer", "conv2"), ("unit", unit), ("k", 1))
        conditions.append(Condition(name, "each", silence=(("conv2", (unit,)),), info=info))
    return conditions, outputs, labels


def test_each_sweep_tables_carry_flips_mcnemar_and_fdr_over_the_layer():
    import torch

    from knockout.stats import benjamini_hochberg, mcnemar_pvalue
    from knockout.tables import condition_tables

    flips = [0, 1, 3, 12, 30, 2]
    conditions, outputs, labels = _sweep_outputs(flips)
    n = len(labels)
    table = condition_tables(conditions, outputs, labels, ["a", "b"], torch.arange(n))["table"].set_index("condition")
    units = table.loc[[f"each:conv2:{u}" for u in range(len(flips))]]
    assert list(units.right_to_wrong) == flips and list(units.wrong_to_right) == [1, 0, 0, 0, 0, 0]
    p = [sps.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0 for b, c in zip(flips, [1, 0, 0, 0, 0, 0])]
    assert list(units.p_mcnemar) == pytest.approx(p, rel=1e-12)
    assert list(units.q_bh) == pytest.approx(list(benjamini_hochberg(mcnemar_pvalue(flips, [1, 0, 0, 0, 0, 0]))))
    assert list(units.significant) == [float(q < 0.05) for q in units.q_bh]
    assert list(units.significant) == [0, 0, 0, 1, 1, 0]  # 12 and 30 flips one way: far from chance
    assert math.isnan(table.loc["baseline", "q_bh"]) and table.loc["baseline", "p_mcnemar"] == 1.0


def test_significant_units_per_layer_are_counted_per_seed_with_a_ci_over_seeds():
    import torch

    from knockout.tables import condition_tables

    per_seed = []
    for seed, flips in enumerate([[0, 12, 30, 1], [20, 15, 0, 0], [25, 40, 18, 0]]):
        conditions, outputs, labels = _sweep_outputs(flips)
        table = condition_tables(conditions, outputs, labels, ["a", "b"], torch.arange(len(labels)))["table"]
        per_seed.append(table.assign(intervention="sweep", model="cnn", seed=seed))
    per_seed = pd.concat(per_seed, ignore_index=True)
    counts = per_seed.groupby("seed")["significant"].sum().to_numpy()
    assert list(counts) == [2, 2, 3]
    summary = summarize(per_seed, value_cols=["accuracy", "delta", "loss", "significant"])
    layer = summary[summary.level == "layer"].set_index("condition").loc["each:conv2"]
    mean, std, low, high, _ = mean_ci(counts)
    assert (layer.set, layer.layer, layer.n_units, layer.n_seeds) == ("each", "conv2", 4, 3)
    assert [layer.n_significant_mean, layer.n_significant_std] == pytest.approx([mean, std])
    assert [layer.n_significant_ci_low, layer.n_significant_ci_high] == pytest.approx([low, high])
    unit1 = summary[summary.level == "condition"].set_index("condition").loc["each:conv2:1"]
    assert unit1.significant_mean == pytest.approx(1.0)  # significant in every seed
    assert set(summary.level) == {"condition", "set", "layer"}
