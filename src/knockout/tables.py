"""The per-seed tables of a study (no files: `knockout.jobs` writes them): their names and
suffixes, an evaluated study's per-condition outputs on a split -> its four tidy tables, and
which per-seed columns are values to summarise over seeds (`knockout.stats`).

No torch import: `condition_tables` computes with the methods of the tensors it is given, and
`knockout aggregate` reads VALUE_COLUMNS in the analysis env, which has no torch. pandas and
scipy (`knockout.stats`) are imported by the functions: the workflow's plan reads the names here
at every parse, without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# The tables an evaluated study writes per seed, by name: the suffix of each beside `seed{seed}`
# (the outputs of the rules intervene and collect: `knockout.plan.PER_SEED`).
TABLES = {
    "table": ".csv",
    "per_class": ".per_class.csv",
    "confusion": ".confusion.csv",
    "examples": ".examples.parquet",
}

# Per-seed columns summarised over seeds when a table has them (retraining studies add some).
VALUE_COLUMNS = (
    "accuracy",
    "delta",
    "loss",
    "gap",
    "train_accuracy",
    "seconds_per_epoch",
    "baseline_prob",
    "min_prob",
    "changed_area",
    "significant",
)


def value_columns(per_seed: pd.DataFrame) -> list[str]:
    """The VALUE_COLUMNS a per-seed table has."""
    return [c for c in VALUE_COLUMNS if c in per_seed]


def check_indices(labels, n_classes: int, predictions: list) -> None:
    """ValueError, one line, unless every label is a class index 0..K-1 and every prediction an
    index >= 0 (of a class, or of another output of the network)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels from {int(labels.min())} to {int(labels.max())} for {n_classes} classes")
    if any(len(p) != len(labels) or (len(p) and int(p.min()) < 0) for p in predictions):
        raise ValueError(f"predictions that are not one class index per example ({len(labels)} examples)")


def condition_tables(conditions, outputs, labels, classes: list[str], indices) -> dict[str, pd.DataFrame]:
    """Per-condition outputs (`ConditionOutput` by name) on a split -> the four tidy tables, by
    name (TABLES): `table` (one row per condition, with its flips against the baseline and
    their exact McNemar test; single-unit conditions also with their significance over their
    layer's units: `knockout.stats.unit_significance`), `per_class`, `confusion` (non-zero cells)
    and `examples` (the flips: examples right at baseline and wrong after, or the reverse;
    `example` indexes the original split through `indices`). `labels` and each output's
    `predictions` are integer tensors of one length; a label is one of `classes`, a prediction
    a class or (>= the number of classes) an output of the network that is none of them
    (`knockout.readout`): every table indexes classes as the labels do."""
    import pandas as pd

    from .stats import unit_significance

    base = outputs["baseline"]
    n_classes = len(classes)
    check_indices(labels, n_classes, [out.predictions for out in outputs.values()])
    base_correct = base.predictions == labels
    counts = labels.bincount(minlength=n_classes).clamp(min=1)
    base_per_class = labels[base_correct].bincount(minlength=n_classes) / counts
    rows, per_class, confusion, flips = [], [], [], []
    for c in conditions:
        out = outputs[c.name]
        correct = out.predictions == labels
        rows.append(
            {
                "condition": c.name,
                "set": c.set,
                "accuracy": correct.float().mean().item(),
                "loss": out.losses.mean().item(),
                "baseline_accuracy": base_correct.float().mean().item(),
                "delta": (correct.float().mean() - base_correct.float().mean()).item(),
                "right_to_wrong": int((base_correct & ~correct).sum()),
                "wrong_to_right": int((correct & ~base_correct).sum()),
                "n_silenced": sum(len(u) for _, u in c.silence),
                "units": ";".join(f"{layer}:{','.join(map(str, units))}" for layer, units in c.silence),
                "base": c.base,
                **dict(c.info),
            }
        )
        acc = labels[correct].bincount(minlength=n_classes) / counts
        for k in range(n_classes):
            per_class.append(
                {
                    "condition": c.name,
                    "class": k,
                    "class_name": classes[k],
                    "n": int((labels == k).sum()),
                    "accuracy": acc[k].item(),
                    "baseline_accuracy": base_per_class[k].item(),
                    "delta": (acc[k] - base_per_class[k]).item(),
                }
            )
        width = max(n_classes, int(out.predictions.max()) + 1 if len(labels) else 0)  # a row per true class
        cells = (labels * width + out.predictions).bincount(minlength=n_classes * width)
        for cell in cells.nonzero().flatten().tolist():
            confusion.append(
                {"condition": c.name, "true": cell // width, "predicted": cell % width, "count": int(cells[cell])}
            )
        for i in (correct != base_correct).nonzero().flatten().tolist():
            flips.append(
                {
                    "condition": c.name,
                    "example": int(indices[i]),
                    "label": int(labels[i]),
                    "baseline_prediction": int(base.predictions[i]),
                    "prediction": int(out.predictions[i]),
                    "flip": "right_to_wrong" if base_correct[i] else "wrong_to_right",
                }
            )
    flip_columns = ["condition", "example", "label", "baseline_prediction", "prediction", "flip"]
    return {
        "table": unit_significance(pd.DataFrame(rows)),
        "per_class": pd.DataFrame(per_class),
        "confusion": pd.DataFrame(confusion, columns=["condition", "true", "predicted", "count"]),
        "examples": pd.DataFrame(flips, columns=flip_columns),
    }
