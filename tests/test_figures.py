"""What the figures show (`knockout.figures`, drawn by the notebooks and `Result.plot`), read back
from the matplotlib objects: significant units marked and counted per seed, every comparison a
row of the forest plot with its CI and p values, the study's own names, heatmaps on their fixed
scales (chance to the trained network; ± the room above chance), and intervals over seeds, not
over draws. Built from per-seed rows through the real `summarize` and `comparisons`."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from knockout import figures  # noqa: E402
from knockout.analysis import t_ci  # noqa: E402
from knockout.stats import comparisons, summarize  # noqa: E402
from knockout.tables import value_columns  # noqa: E402

CLASSES = ["a", "b", "c", "d"]  # chance 0.25
SEEDS = (0, 1, 2)


def rows(seed: int, rng) -> list[dict]:
    """One seed's filter_ablation table: a baseline, `low`, two draws of `rand`, a 4-unit sweep
    of conv2 (unit 3 significant in seeds 0 and 1 only) and a random-order curve."""
    base = 0.80 + 0.01 * seed
    out = [dict(condition="baseline", set="baseline", accuracy=base)]
    out.append(dict(condition="low", set="low", accuracy=base - 0.10 - 0.01 * seed, k=2))
    out += [dict(condition=f"rand:draw{d}", set="rand", accuracy=base - 0.02 * (d + 1), k=2, draw=d) for d in (0, 1)]
    for u in range(4):
        significant = u == 3 and seed < 2
        out.append(
            dict(
                condition=f"each:conv2:{u}",
                set="each",
                layer="conv2",
                unit=u,
                accuracy=base - (0.05 if u == 3 else 0.001 * u),
                p_mcnemar=0.001 if significant else 0.5,
                q_bh=0.004 if significant else 0.6,
                significant=significant,
            )
        )
    out += [
        dict(condition=f"curve:conv2:f{f}:draw{d}", set="curve", layer="conv2", fraction=f, draw=d, accuracy=acc)
        for f in (0.25, 0.5)
        for d in (0, 1)
        for acc in [base - f * (0.5 + 0.1 * d) - 0.02 * rng.random()]
    ]
    for r in out:
        r.update(intervention="s", model="m", seed=seed, baseline_accuracy=base, loss=1 - r["accuracy"])
        r["delta"] = r["accuracy"] - base
        r.update(right_to_wrong=int(100 * max(-r["delta"], 0)), wrong_to_right=1)
    return out


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    per_seed = pd.DataFrame([r for s in SEEDS for r in rows(s, rng)])
    per_class = pd.DataFrame(
        [
            dict(seed=s, condition=c, class_name=CLASSES[k], **{"class": k}, delta=-0.1 * (k + 1) * (c != "baseline"))
            for s in SEEDS
            for c in ("baseline", "low", "rand:draw0", "rand:draw1")
            for k in range(4)
        ]
    )
    return figures.StudyData(
        name="s",
        model="m",
        study_type="filter_ablation",
        table=summarize(per_seed, value_cols=value_columns(per_seed)),
        comparisons=comparisons(per_seed, [("low", "rand"), ("low", "baseline")]),
        per_seed=per_seed,
        per_class=per_class,
        meta={"classes": CLASSES},
        labels={"low": "least active", "rand": "random two"},
    )


@pytest.fixture(scope="module")
def drawn(study):
    figures.setup()
    return figures.filter_ablation(study)


def test_names_are_the_studys_or_readable():
    assert figures.readable("rand:draw2") == "rand, draw 2"
    assert figures.readable("low@mean") == "low (mean)"
    assert figures.readable("each@mean-position:conv2:7") == "each (mean per position) conv2 7"
    assert figures.readable("curve:conv2:f0.5") == "curve conv2 50%"
    assert figures.readable("rewind:fc1:epoch3") == "rewind fc1, epoch 3"
    assert figures.readable("low@mean", {"low": "least active"}) == "least active (mean)"


def test_sets_use_the_labels_and_show_the_ci_over_seeds(study, drawn):
    ax = drawn.figures["sets"].axes[0]
    ticks = " ".join(t.get_text().replace("\n", " ") for t in ax.get_xticklabels())
    assert "least active" in ticks and "random two" in ticks and "2 draws" in ticks
    # the error bar of `rand`: the 95% t CI over the seeds' means of their two draws (in %)
    seed_means = study.per_seed[study.per_seed["set"] == "rand"].groupby("seed")["accuracy"].mean() * 100
    low, high = t_ci(seed_means.to_numpy())
    segments = [seg for c in ax.collections for seg in getattr(c, "get_segments", lambda: [])()]
    assert any(np.allclose(sorted(s[:, 1]), [low, high]) for s in segments if len(s) == 2)


def test_significant_units_are_circled_and_counted_per_seed(drawn):
    ax = drawn.figures["single_unit"].axes[0]
    circled = [c for c in ax.collections if c.get_label().startswith("significant")]
    assert len(circled) == 1 and len(circled[0].get_offsets()) == 1  # unit 3 alone
    x, y = circled[0].get_offsets()[0]
    assert x == 0 and y == pytest.approx(-5.0)  # sorted first: the most harmful, -5 pp
    text = " ".join(t.get_text() for t in ax.texts)
    assert "significant units per seed (BH q < 0.05): 1, 1, 0" in text
    assert "volcano" in drawn.figures


def test_every_comparison_is_a_row_of_the_forest_plot(study, drawn):
    ax = drawn.figures["comparisons"].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["least active − random two", "least active − baseline"]
    notes = [t.get_text() for t in ax.texts]
    first = study.comparisons.iloc[0]
    assert f"p(t) {first.p_ttest:.2g}" in notes[0] and "3 seeds" in notes[0] and "p(sign-flip) 0.25" in notes[0]


def test_per_class_heatmap_has_a_fixed_scale_and_cis(study, drawn):
    ax = drawn.figures["per_class"].axes[0]
    mesh = ax.collections[0]
    baseline = study.level("set").set_index("set").loc["baseline", "mean"]
    limit = 100 * (baseline - 0.25)
    assert mesh.norm.vmin == pytest.approx(-limit) and mesh.norm.vmax == pytest.approx(limit)
    assert any("±" in t.get_text() for t in ax.texts)  # each cell's CI


def test_cumulative_bands_are_cis_over_seeds(study, drawn):
    ax = drawn.figures["cumulative"].axes[0]
    band = next(c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection"))
    curve = study.per_seed[(study.per_seed["set"] == "curve") & (study.per_seed["fraction"] == 0.5)]
    low, high = t_ci((curve.groupby("seed")["accuracy"].mean() * 100).to_numpy())  # draws averaged first
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(min(low, ys.min()), abs=1e-9) and np.isclose(ys, low).any()
    assert np.isclose(ys, high).any()


def test_rewind_heatmap_runs_from_chance_to_the_trained_network():
    per_seed = pd.DataFrame(
        [
            dict(intervention="s", model="m", seed=s, condition=c, set=st, layer=l, mode=m, epoch=e, accuracy=a)
            for s in SEEDS
            for c, st, l, m, e, a in [
                ("baseline", "baseline", None, None, None, 0.9),
                ("rewind:fc1:epoch0", "rewind", "fc1", "rewind", 0, 0.3),
                ("rewind:fc1:epoch1", "rewind", "fc1", "rewind", 1, 0.8 + 0.01 * s),
            ]
        ]
    ).assign(baseline_accuracy=0.9, delta=lambda f: f["accuracy"] - 0.9)
    data = figures.StudyData(
        name="s",
        model="m",
        table=summarize(per_seed, value_cols=["accuracy", "delta"]),
        per_seed=per_seed,
        meta={"classes": CLASSES},
    )
    drawn = figures.layer_swap(data)
    assert "modes" in drawn.skipped and "rewind" in drawn.figures
    mesh = drawn.figures["rewind"].axes[0].collections[0]
    assert mesh.norm.vmin == pytest.approx(25.0) and mesh.norm.vmax == pytest.approx(90.0)


def test_a_figure_with_nothing_to_show_is_skipped_with_why(study):
    empty = figures.StudyData(name="s", meta={"classes": CLASSES}, per_seed=study.per_seed.iloc[:0])
    drawn = figures.filter_ablation(empty)
    assert not drawn.figures and set(drawn.skipped) == set(figures.CAPTIONS["filter_ablation"])
    assert all(drawn.skipped.values())
