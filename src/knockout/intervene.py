"""One intervention study on one trained model and seed: expand, evaluate, write the tables.

Files written next to `out` (`.../{name}/{model}/seed{seed}.csv`):
  seed{seed}.csv            one row per condition: accuracy, loss, baseline_accuracy, delta, ...
  seed{seed}.per_class.csv  condition, class, class_name, n, accuracy, baseline_accuracy, delta
  seed{seed}.confusion.csv  condition, true, predicted, count (non-zero cells)
  seed{seed}.examples.parquet  the flips: examples right at baseline and wrong after, or the
                            reverse (condition, example, label, baseline_prediction,
                            prediction, flip)
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch

from .evaluate import evaluate_conditions
from .interventions import Condition, Context, family
from .models import build_model, load_model


def load_context(model_dir: Path, seed: int, unit_stats: Path | None, device="cpu") -> Context:
    """The trained, initial, per-epoch and re-randomised networks of one model folder."""
    trained = load_model(model_dir / "final.pt", map_location=device)
    init = load_model(model_dir / "init.pt", map_location=device)
    checkpoints = {}
    for path in model_dir.glob("epoch*.pt"):
        if re.fullmatch(r"epoch\d+\.pt", path.name):
            checkpoints[path.stem] = load_model(path, map_location=device)
    # A fresh draw from the layers' initial distributions: the same architecture from another
    # seed, derived from the training seed so reruns agree.
    spec = trained.spec
    torch.manual_seed(10_000_019 + seed)
    arch = {k: v for k, v in spec["arch"].items() if k != "weights"}
    rerandom = build_model(arch, tuple(spec["input_shape"]), spec["num_classes"])
    stats = pd.read_csv(unit_stats) if unit_stats else None
    return Context(trained=trained, init=init, checkpoints=checkpoints, rerandom=rerandom.to(device), unit_stats=stats, seed=seed)


def _units_text(condition: Condition) -> str:
    return ";".join(f"{layer}:{','.join(map(str, units))}" for layer, units in condition.silence)


def tables(conditions, outputs, labels: torch.Tensor, classes: list[str], test_indices: torch.Tensor) -> dict[str, pd.DataFrame]:
    """Per-condition outputs -> the four tidy tables (without the study/model/seed columns)."""
    base = outputs["baseline"]
    base_correct = base.predictions == labels
    n_classes = len(classes)
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1)
    base_per_class = torch.bincount(labels[base_correct], minlength=n_classes) / counts
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
                "n_silenced": sum(len(u) for _, u in c.silence),
                "units": _units_text(c),
                "base": c.base,
                **dict(c.info),
            }
        )
        acc = torch.bincount(labels[correct], minlength=n_classes) / counts
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
        cells = torch.bincount(labels * n_classes + out.predictions, minlength=n_classes**2)
        for cell in cells.nonzero().flatten().tolist():
            confusion.append({"condition": c.name, "true": cell // n_classes, "predicted": cell % n_classes, "count": int(cells[cell])})
        changed = (correct != base_correct).nonzero().flatten()
        for i in changed.tolist():
            flips.append(
                {
                    "condition": c.name,
                    "example": int(test_indices[i]),
                    "label": int(labels[i]),
                    "baseline_prediction": int(base.predictions[i]),
                    "prediction": int(out.predictions[i]),
                    "flip": "right_to_wrong" if base_correct[i] else "wrong_to_right",
                }
            )
    flip_columns = ["condition", "example", "label", "baseline_prediction", "prediction", "flip"]
    return {
        "csv": pd.DataFrame(rows),
        "per_class.csv": pd.DataFrame(per_class),
        "confusion.csv": pd.DataFrame(confusion),
        "examples.parquet": pd.DataFrame(flips, columns=flip_columns),
    }


def run(
    name: str,
    spec: dict,
    model_name: str,
    seed: int,
    model_dir: Path,
    data_dir: Path,
    out: Path,
    unit_stats: Path | None = None,
    device: str = "cpu",
    budget_mb: float = 512,
) -> pd.DataFrame:
    """Expand the study `spec` ({type, model, ...}) for one seed, evaluate every condition on the
    prepared test split and write the files of the module docstring. Returns the main table."""
    from .data import load_prepared

    kind = family(spec["type"])
    context = load_context(Path(model_dir), seed, unit_stats, device)
    conditions = kind.conditions(kind.Spec.from_dict(spec), context)
    _, test, meta = load_prepared(Path(data_dir))
    test_indices = torch.load(Path(data_dir) / "test.pt", weights_only=True)["indices"]
    outputs = evaluate_conditions(conditions, context, test.images, test.labels, budget_mb=budget_mb, device=device, apply=kind.apply)
    result = tables(conditions, outputs, test.labels, list(meta["classes"]), test_indices)
    _write_tables(result, {"intervention": name, "model": model_name, "seed": seed}, Path(out))
    return result["csv"]


# --- Families whose conditions are trained (architecture, factorize, ablate_then_train) ---------


def retrain(
    name: str,
    spec: dict,
    model_name: str,
    seed: int,
    condition_slug: str,
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
    base_train: dict,
    unit_stats: Path | None = None,
    device="cpu",
) -> dict:
    """Train one condition of a retraining study for one seed into `out_dir` (the model folder
    contract, plus `predictions.pt` on the test split and `condition.json`)."""
    import json

    from .data import load_prepared
    from .evaluate import evaluate_conditions
    from .models import count_parameters, multiply_adds
    from .train import TrainConfig, train

    kind = family(spec["type"])
    parsed = kind.Spec.from_dict(spec)
    context = load_context(Path(model_dir), seed, unit_stats, device)
    by_slug = {c.slug: c for c in kind.conditions(parsed, context)}
    if condition_slug not in by_slug:
        raise ValueError(f"{name}: no condition {condition_slug!r} (have {', '.join(by_slug)})")
    condition = by_slug[condition_slug]
    torch.manual_seed(seed)  # dropout draws, as in the baseline's training
    model = kind.apply(condition, context)
    train_split, test_split, meta = load_prepared(Path(data_dir))
    settings = dict(base_train) | json.loads(parsed.train)
    if settings.get("augment", "auto") == "auto":
        settings["augment"] = meta["dataset"] == "cifar10"
    out_dir = Path(out_dir)
    metrics = train(
        model, train_split.images, train_split.labels, test_split.images, test_split.labels,
        TrainConfig.from_dict(settings), out_dir, seed=seed, device=device,
    )
    plain = Context(trained=model.eval())
    per_example = evaluate_conditions([Condition("baseline", "baseline")], plain, test_split.images, test_split.labels, device=device)["baseline"]
    torch.save({"predictions": per_example.predictions, "losses": per_example.losses}, out_dir / "predictions.pt")
    shape = tuple(meta["shape"])
    record = {
        "name": condition.name,
        "set": condition.set,
        "info": [list(kv) for kv in condition.info],
        "parameters": count_parameters(model),
        "multiply_adds": multiply_adds(model, shape),
        "test_accuracy": (per_example.predictions == test_split.labels).float().mean().item(),
    }
    (out_dir / "condition.json").write_text(json.dumps(record, indent=2) + "\n")
    return metrics


def collect(name: str, model_name: str, seed: int, run_dirs: list[Path], data_dir: Path, out: Path) -> pd.DataFrame:
    """The trained conditions of one seed -> the same four tables as `run` writes, plus
    parameters, multiply_adds, train_accuracy, gap (train - test accuracy), seconds_per_epoch."""
    import json

    from .data import load_prepared
    from .evaluate import ConditionOutput

    _, test, meta = load_prepared(Path(data_dir))
    test_indices = torch.load(Path(data_dir) / "test.pt", weights_only=True)["indices"]
    conditions, outputs, extra = [], {}, {}
    for folder in map(Path, run_dirs):
        record = json.loads((folder / "condition.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        saved = torch.load(folder / "predictions.pt", weights_only=True)
        condition = Condition(record["name"], record["set"], info=tuple(tuple(kv) for kv in record["info"]))
        conditions.append(condition)
        outputs[condition.name] = ConditionOutput(saved["predictions"], saved["losses"])
        extra[condition.name] = {
            "parameters": record["parameters"],
            "multiply_adds": record["multiply_adds"],
            "train_accuracy": metrics["train_accuracy"],
            "gap": metrics["train_accuracy"] - metrics["test_accuracy"],
            "seconds_per_epoch": metrics["seconds_per_epoch"],
        }
    result = tables(conditions, outputs, test.labels, list(meta["classes"]), test_indices)
    main = result["csv"]
    result["csv"] = pd.concat([main, pd.DataFrame([extra[c] for c in main["condition"]])], axis=1)
    _write_tables(result, {"intervention": name, "model": model_name, "seed": seed}, Path(out))
    return result["csv"]


def _write_tables(result: dict, ident: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name[: -len(".csv")] if out.name.endswith(".csv") else out.name
    # The main CSV is written last: its presence means the others are complete.
    for suffix, frame in sorted(result.items(), key=lambda kv: kv[0] == "csv"):
        if suffix == "csv":
            frame = pd.concat([pd.DataFrame([ident] * len(frame)), frame.reset_index(drop=True)], axis=1)
        path = out.with_name(f"{stem}.{suffix}")
        tmp = path.with_name(path.name + ".tmp")
        frame.to_parquet(tmp, index=False) if suffix.endswith("parquet") else frame.to_csv(tmp, index=False)
        tmp.replace(path)
