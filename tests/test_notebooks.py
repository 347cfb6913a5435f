"""The analysis notebooks: stored clean (no outputs, a `parameters` cell, a kernelspec), and run
through papermill on tiny synthetic study files written in the workflow's formats, making every
figure as PNG and PDF without an error, and reading only the files passed as parameters.

Every synthetic study writes seeds 0, 1 and 2 to disk and the notebook is given only some of
them (by default 0 and 1): the seeds a notebook prints (`seeds: [...]`) must be those given.
Also: the notebooks' helpers, `knockout.analysis`, import without torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from knockout.stats import comparisons, mean_ci, summarize
from knockout.tables import value_columns

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
ON_DISK = (0, 1, 2)  # seeds written by every synthetic study
GIVEN = (0, 1)  # seeds passed to the notebooks


def run_notebook(name: str, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    """Execute notebooks/{name}.ipynb with papermill (kernel python3, cwd = repo root)."""
    papermill = pytest.importorskip("papermill")
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def printed(nb: nbformat.NotebookNode) -> str:
    """Everything the executed notebook printed."""
    return "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )


def assert_clean_run(nb: nbformat.NotebookNode, out_dir: Path, figures: list[str]) -> None:
    """No error; exactly `figures` written, PNG and PDF, each with its caption for the report."""
    from knockout.figures import CAPTIONS

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    notebook = nb.metadata["papermill"]["input_path"].rsplit("/", 1)[-1].removesuffix(".ipynb")
    assert not set(figures) - set(CAPTIONS[notebook]), f"{notebook}: figures without a caption"
    for name in figures:
        for suffix in (".png", ".pdf"):
            path = out_dir / f"{name}{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
    assert f"figures: {', '.join(figures)}" in printed(nb)  # in order, and no others


def assert_seeds(nb: nbformat.NotebookNode, seeds) -> None:
    """The notebook's data cell printed `seeds: [...]` with exactly `seeds`."""
    found = re.findall(r"^seeds: \[([\d, ]*)\]$", printed(nb), flags=re.M)
    assert found == [", ".join(str(s) for s in sorted(seeds))], found


def ids(study: str, model: str, seed: int) -> dict:
    """The id columns every per-seed file carries."""
    return {"intervention": study, "model": model, "seed": seed}


def aggregate(frames: list[pd.DataFrame], tables: Path, study: str, pairs=()) -> tuple[Path, Path]:
    """tables/{study}.csv and .comparisons.csv from the given seeds' tables, as `knockout aggregate`."""
    per_seed = pd.concat(frames, ignore_index=True)
    tables.mkdir(parents=True, exist_ok=True)
    table, comps = tables / f"{study}.csv", tables / f"{study}.comparisons.csv"
    summarize(per_seed, value_cols=value_columns(per_seed)).to_csv(table, index=False)  # as `knockout aggregate`
    comparisons(per_seed, list(pairs)).to_csv(comps, index=False)
    return table, comps


# --------------------------------------------------------------------------- synthetic studies


def write_meta(folder: Path, channels: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": "synthetic",
        "classes": CLASSES,
        "num_classes": len(CLASSES),
        "shape": [channels, 8, 8],
        "mean": [0.3] * channels,
        "std": [0.35] * channels,
    }
    path = folder / "meta.json"
    path.write_text(json.dumps(meta))
    return path


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> dict:
    """A prepared test split as the workflow writes it: test_images.npy, test_labels.npy,
    test_indices.npy; out: the paths of the images and the indices."""
    folder.mkdir(parents=True, exist_ok=True)
    for array, values in (
        ("images", images.astype(np.uint8)),
        ("labels", labels.astype(np.int64)),
        ("indices", indices.astype(np.int64)),
    ):
        np.save(folder / f"test_{array}.npy", values)
    return {"test_images": str(folder / "test_images.npy"), "test_indices": str(folder / "test_indices.npy")}


def write_filter_study(root: Path, study="toy_filters", model="toy", given=GIVEN) -> dict:
    """A filter_ablation study's per-seed files for ON_DISK seeds, the tables of the `given` seeds
    and the prepared test split. The seeds not given are stale leftovers of an older config: they
    also hold a condition `stale_set`, which no figure or table of the given seeds may show."""
    rng = np.random.default_rng(0)
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    conditions = [("baseline", "baseline", {}), ("low", "low", {"k": 2})]
    conditions += [(f"rand:draw{d}", "rand", {"k": 2, "draw": d}) for d in range(2)]
    conditions += [(f"each:conv2:{u}", "each", {"layer": "conv2", "unit": u}) for u in range(5)]
    conditions += [
        (f"curve:conv2:f{f}:draw{d}", "curve", {"layer": "conv2", "fraction": f, "draw": d})
        for d in range(2)
        for f in (0.25, 0.5, 0.75)
    ]
    n_test = 40
    labels = np.arange(n_test) % len(CLASSES)
    examples = 1000 + 3 * np.arange(n_test)  # indices into the original test set
    frames, files = {}, {"per_seed": {}, "per_class": {}, "confusion": {}, "examples": {}}
    units = []
    for seed in ON_DISK:
        base_pred = np.where(rng.random(n_test) < 0.8, labels, (labels + 1) % len(CLASSES))
        rows, per_class, flips, confusion = [], [], [], []
        stale = [] if seed in given else [("stale_set", "stale_set", {"k": 2})]
        for name, set_, info in conditions + stale:
            drop = 0.0 if name == "baseline" else 0.5 * info.get("fraction", 0.1) * rng.random()
            pred = np.where(rng.random(n_test) < drop, (labels + 2) % len(CLASSES), base_pred)
            if name in ("low", "stale_set"):
                pred[labels == 0] = labels[labels == 0]  # some flips the other way
            right, base_right = pred == labels, base_pred == labels
            rows.append(
                {
                    **ids(study, model, seed),
                    "condition": name,
                    "set": set_,
                    "accuracy": right.mean(),
                    "loss": 1.0 - right.mean(),
                    "baseline_accuracy": base_right.mean(),
                    "delta": right.mean() - base_right.mean(),
                    "right_to_wrong": int((base_right & ~right).sum()),
                    "wrong_to_right": int((~base_right & right).sum()),
                    "n_silenced": 2,
                    "units": "conv2:0,1",
                    "base": "trained",
                    **info,
                    **({"q_bh": q, "significant": q < 0.05} if set_ == "each" and (q := rng.random() / 10) else {}),
                }
            )
            for k, cls in enumerate(CLASSES):
                m = labels == k
                per_class.append(
                    {
                        **ids(study, model, seed),
                        "condition": name,
                        "class": k,
                        "class_name": cls,
                        "n": int(m.sum()),
                        "accuracy": right[m].mean(),
                        "baseline_accuracy": base_right[m].mean(),
                        "delta": right[m].mean() - base_right[m].mean(),
                    }
                )
            cells = np.bincount(labels * len(CLASSES) + pred, minlength=len(CLASSES) ** 2)
            for cell in np.flatnonzero(cells):
                confusion.append(
                    {
                        **ids(study, model, seed),
                        "condition": name,
                        "true": cell // len(CLASSES),
                        "predicted": cell % len(CLASSES),
                        "count": cells[cell],
                    }
                )
            for i in np.flatnonzero(right != base_right):
                flips.append(
                    {
                        **ids(study, model, seed),
                        "condition": name,
                        "example": int(examples[i]),
                        "label": int(labels[i]),
                        "baseline_prediction": int(base_pred[i]),
                        "prediction": int(pred[i]),
                        "flip": "right_to_wrong" if base_right[i] else "wrong_to_right",
                    }
                )
        frames[seed] = pd.DataFrame(rows)
        files["per_seed"][seed] = run_dir / f"seed{seed}.csv"
        files["per_class"][seed] = run_dir / f"seed{seed}.per_class.csv"
        files["confusion"][seed] = run_dir / f"seed{seed}.confusion.csv"
        files["examples"][seed] = run_dir / f"seed{seed}.examples.parquet"
        frames[seed].to_csv(files["per_seed"][seed], index=False)
        pd.DataFrame(confusion).to_csv(files["confusion"][seed], index=False)
        unit_file = root / "units" / f"seed{seed}.csv"  # the unit statistics (class selectivity)
        unit_file.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"layer": "conv2", "unit": range(5), "selectivity": rng.random(5)}).to_csv(unit_file, index=False)
        if seed in given:
            units.append({"seed": seed, "path": str(unit_file)})
        pd.DataFrame(per_class).to_csv(files["per_class"][seed], index=False)
        columns = [
            *ids(study, model, seed),
            "condition",
            "example",
            "label",
            "baseline_prediction",
            "prediction",
            "flip",
        ]
        pd.DataFrame(flips, columns=columns).to_parquet(files["examples"][seed], index=False)
    table, comps = aggregate([frames[s] for s in given], root / "tables", study, [("low", "rand")])
    data = root / "data"
    meta = write_meta(data)
    images = (rng.random((n_test, 1, 8, 8)) * 255).astype(np.uint8)
    split = write_split(data, images, labels, examples)
    return {
        "study": study,
        "model": model,
        "table": str(table),
        "comparisons": str(comps),
        **{kind: [str(paths[s]) for s in given] for kind, paths in files.items()},
        **split,
        "units": units,
        "meta": str(meta),
    }


def write_layer_swap_study(root: Path, study="toy_layers", model="toy_mlp", given=GIVEN) -> dict:
    """A layer_swap study: per-seed tables and per-class files for ON_DISK seeds, the table of `given`."""
    rng = np.random.default_rng(3)
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    layers = ["fc1", "fc2", "fc3"]
    conditions = [("baseline", "baseline", {})]
    for layer in layers:
        conditions += [
            (f"{mode}:{layer}", mode, {"layer": layer, "mode": mode})
            for mode in ("reinit", "rerandomize", "transplant")
        ]
        conditions += [
            (f"rewind:{layer}:epoch{e}", "rewind", {"layer": layer, "mode": "rewind", "epoch": e}) for e in range(3)
        ]
    frames, per_class_paths = {}, {}
    for seed in ON_DISK:
        base = 0.85 + 0.02 * rng.random()
        rows, per_class = [], []
        for name, set_, info in conditions:
            acc = base if name == "baseline" else float(np.clip(base - rng.random() * 0.6, 0.25, 1))
            rows.append(
                {
                    **ids(study, model, seed),
                    "condition": name,
                    "set": set_,
                    "accuracy": acc,
                    "loss": 1 - acc,
                    "baseline_accuracy": base,
                    "delta": acc - base,
                    **info,
                }
            )
            for k, cls in enumerate(CLASSES):
                per_class.append(
                    {
                        **ids(study, model, seed),
                        "condition": name,
                        "class": k,
                        "class_name": cls,
                        "n": 10,
                        "accuracy": acc,
                        "baseline_accuracy": base,
                        "delta": acc - base,
                    }
                )
        frames[seed] = pd.DataFrame(rows)
        frames[seed].to_csv(run_dir / f"seed{seed}.csv", index=False)
        per_class_paths[seed] = run_dir / f"seed{seed}.per_class.csv"
        pd.DataFrame(per_class).to_csv(per_class_paths[seed], index=False)
    table, _ = aggregate([frames[s] for s in given], root / "tables", study)
    meta = write_meta(root / "data")
    return {
        "study": study,
        "model": model,
        "table": str(table),
        "per_class": [str(per_class_paths[s]) for s in given],
        "meta": str(meta),
    }


RETRAIN_CONDITIONS = {  # kind -> (condition, set, info, parameters)
    "ablate_then_train": [("baseline", "baseline", {}, 1000), ("low", "low", {"k": 2}, 1000)]
    + [(f"rand:draw{d}", "rand", {"k": 2, "draw": d}, 1000) for d in range(2)],
    "architecture": [
        ("baseline", "baseline", {}, 1000),
        ("one_dense_fewer", "one_dense_fewer", {"variant": '{"dense": []}'}, 700),
        ("exponential", "exponential", {"variant": '{"activation": "exponential"}'}, 1000),
    ],
    "factorize": [("baseline", "baseline", {}, 1000), ("factorized", "factorized", {"layers": "conv2"}, 800)],
}
FACTORIZE_DETAILS = [
    {
        "layer": "conv1",
        "n": 3,
        "m": 8,
        "c": 1,
        "m_over_c": 8.0,
        "rule": "3 > 9.0",
        "replace": False,
        "P0": 80,
        "P1": 112,
        "P0_module": "conv1",
        "P1_module": "conv1",
    },
    {
        "layer": "conv2",
        "n": 3,
        "m": 16,
        "c": 8,
        "m_over_c": 2.0,
        "rule": "3 > 3.0",
        "replace": True,
        "P0": 1168,
        "P1": 1184,
        "P0_module": "conv2",
        "P1_module": "conv2.0, conv2.1",
    },
]


def write_retrain_study(root: Path, kind: str, study="toy_retrain", model="toy", given=GIVEN, epochs=2) -> dict:
    """A retraining study of `kind`: per condition and ON_DISK seed a run folder with history.csv
    and condition.json (for factorize, with per-layer `details`), per-seed tables, the study's
    tables and tables/baselines.csv; the parameters name the `given` seeds' files only."""
    rng = np.random.default_rng(4)
    run_dir = root / "interventions" / study / model
    frames, runs = {}, []
    for seed in ON_DISK:
        rows = []
        base = 0.8 + 0.05 * rng.random()
        for name, set_, info, parameters in RETRAIN_CONDITIONS[kind]:
            acc = base if name == "baseline" else base - 0.1 * rng.random()
            train_acc = acc + 0.05 * rng.random()
            extra = (
                {"semantics": "zero_once", "layer": "conv1"}
                if kind == "ablate_then_train" and name != "baseline"
                else {}
            )
            rows.append(
                {
                    **ids(study, model, seed),
                    "condition": name,
                    "set": set_,
                    "accuracy": acc,
                    "loss": 1 - acc,
                    "baseline_accuracy": base,
                    "delta": acc - base,
                    **info,
                    **extra,
                    "parameters": parameters,
                    "multiply_adds": 30 * parameters,
                    "train_accuracy": train_acc,
                    "gap": train_acc - acc,
                    "seconds_per_epoch": 1.0 + parameters / 1000,
                }
            )
            folder = run_dir / "runs" / name.replace(":", "-") / f"seed{seed}"
            folder.mkdir(parents=True)
            history = pd.DataFrame(
                {
                    "epoch": np.arange(1, epochs + 1),
                    "train_loss": np.linspace(1.0, 0.5, epochs) + 0.1 * rng.random(),
                    "train_acc": np.linspace(0.6, train_acc, epochs),
                    "test_loss": np.linspace(1.1, 0.6, epochs),
                    "test_acc": np.linspace(0.55, acc, epochs),
                    "lr": 0.001,
                    "seconds": 1.5,
                }
            )
            history.to_csv(folder / "history.csv", index=False)
            record = {
                "name": name,
                "set": set_,
                "info": [[k, v] for k, v in info.items()],
                "parameters": parameters,
                "multiply_adds": 30 * parameters,
                "test_accuracy": acc,
            }
            if kind == "factorize" and name == "factorized":
                record["details"] = FACTORIZE_DETAILS
            (folder / "condition.json").write_text(json.dumps(record, indent=2))
            if seed in given:
                runs.append(
                    {
                        "condition": name,
                        "seed": seed,
                        "history": str(folder / "history.csv"),
                        "record": str(folder / "condition.json"),
                    }
                )
        frames[seed] = pd.DataFrame(rows)
        frames[seed].to_csv(run_dir / f"seed{seed}.csv", index=False)
    pairs = [("low", "rand"), ("low", "baseline")] if kind == "ablate_then_train" else []
    table, comps = aggregate([frames[s] for s in given], root / "tables", study, pairs)
    baselines = root / "tables" / "baselines.csv"
    pd.DataFrame(
        [
            {
                "model": model,
                "mean": 0.83,
                "std": 0.01,
                "ci_low": 0.8,
                "ci_high": 0.86,
                "n_seeds": len(given),
                "parameters": 1000,
                "seconds_per_epoch": 2.0,
            }
        ]
    ).to_csv(baselines, index=False)
    return {
        "study": study,
        "model": model,
        "study_type": kind,
        "table": str(table),
        "comparisons": str(comps),
        "per_seed": [str(run_dir / f"seed{s}.csv") for s in given],
        "baselines": str(baselines),
        "runs": runs,
    }


def write_baselines(root: Path, models=("mlp", "cnn"), given=GIVEN, epochs=3) -> dict:
    """models/{model}/seed{N}/history.csv for ON_DISK seeds, and the tables of the `given` seeds."""
    rng = np.random.default_rng(5)
    histories, rows = [], []
    for model in models:
        for seed in ON_DISK:
            folder = root / "models" / model / f"seed{seed}"
            folder.mkdir(parents=True)
            acc = 0.8 + 0.1 * rng.random()
            pd.DataFrame(
                {
                    "epoch": np.arange(1, epochs + 1),
                    "train_loss": np.linspace(0.9, 0.4, epochs),
                    "train_acc": np.linspace(0.6, acc + 0.03, epochs),
                    "test_loss": np.linspace(0.95, 0.5, epochs),
                    "test_acc": np.linspace(0.6, acc, epochs),
                    "lr": 0.01,
                    "seconds": 2.0,
                }
            ).to_csv(folder / "history.csv", index=False)
            if seed in given:
                histories.append({"model": model, "seed": seed, "path": str(folder / "history.csv")})
                rows.append(
                    {
                        "model": model,
                        "seed": seed,
                        "test_accuracy": acc,
                        "test_loss": 1 - acc,
                        "train_accuracy": acc + 0.03,
                        "seconds_per_epoch": 2.0,
                    }
                )
    tables = root / "tables"
    tables.mkdir(parents=True)
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(tables / "baselines.per_seed.csv", index=False)
    summary = []
    for model, g in per_seed.groupby("model", sort=False):
        mean, std, low, high, n = mean_ci(g["test_accuracy"])
        summary.append(
            {
                "model": model,
                "mean": mean,
                "std": std,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": n,
                "parameters": 1000 * (len(summary) + 1),
                "seconds_per_epoch": 2.0,
            }
        )
    pd.DataFrame(summary).to_csv(tables / "baselines.csv", index=False)
    return {
        "table": str(tables / "baselines.csv"),
        "per_seed": str(tables / "baselines.per_seed.csv"),
        "histories": histories,
    }


def write_occlusion_study(root: Path, study="toy_occlusion", model="toy", given=(1, 0), n=3, windows=(3, 5)) -> dict:
    """seed{N}.npz and .csv in the format of knockout.occlusion (maps and summary, with the id
    columns and scalars) for ON_DISK seeds, and a table over the `given` seeds (in that order)."""
    from knockout.engine.occlusion import SUMMARY_COLUMNS

    rng = np.random.default_rng(1)
    H = W = 8
    C = 1
    labels = np.arange(n) % len(CLASSES)
    yy, xx = np.mgrid[:H, :W]
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    summaries = {}
    for seed in ON_DISK:
        base_prob = (0.6 + 0.3 * rng.random(n)).astype(np.float32)
        prob = np.empty((n, len(windows), H, W), np.float32)
        for i in range(n):
            cy, cx = rng.integers(2, H - 2, size=2)
            for wi, w in enumerate(windows):
                bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * w))
                prob[i, wi] = base_prob[i] * (1 - 0.9 * w / (w + 2) * bump)
        pred = np.where(prob < 0.4, (labels[:, None, None, None] + 1) % len(CLASSES), labels[:, None, None, None])
        maps = {
            "inputs": rng.random(size=(n, C, H, W)).astype(np.float32),  # pixels in [0, 1]
            "labels": labels.astype(np.int64),
            "examples": np.arange(n, dtype=np.int64),  # indices into the prepared test split
            "windows": np.asarray(windows, dtype=np.int64),
            "stride": np.int64(1),
            "fill": np.zeros(C, np.float32),
            "baseline_prob": base_prob,
            "baseline_pred": labels.astype(np.int64),
            "prob_centred": prob,
            "pred_centred": pred.astype(np.int16),
            "attribution": (base_prob[:, None, None, None] - prob).astype(np.float32),
            "seed": np.int64(seed),
            "model": np.str_(model),
            "intervention": np.str_(study),
        }
        np.savez(run_dir / f"seed{seed}.npz", **maps)
        rows = []
        for i in range(n):
            for wi, w in enumerate(windows):
                p, c = prob[i, wi].reshape(-1), pred[i, wi].reshape(-1).astype(np.int64)
                changed = c != labels[i]
                arg = int(p.argmin())
                takeover = int(np.bincount(c[changed]).argmax()) if changed.any() else -1
                rows.append(
                    [
                        study,
                        model,
                        seed,
                        i,
                        int(labels[i]),
                        w,
                        float(base_prob[i]),
                        float(p[arg]),
                        arg // W,
                        arg % W,
                        float(changed.mean()),
                        takeover,
                    ]
                )
        summaries[seed] = pd.DataFrame(rows, columns=["intervention", "model", "seed", *SUMMARY_COLUMNS])
        summaries[seed].to_csv(run_dir / f"seed{seed}.csv", index=False)
    per_window = pd.concat([summaries[s] for s in given]).groupby(["intervention", "model", "seed", "window"])
    per_window = per_window[["min_prob", "changed_area"]].mean().reset_index()
    per_window = per_window.assign(condition=lambda f: "window" + f["window"].astype(str), set="window")
    tables = root / "tables"
    tables.mkdir(parents=True)
    summarize(per_window, value_cols=["min_prob", "changed_area"]).to_csv(tables / f"{study}.csv", index=False)
    meta = write_meta(root / "data")
    return {
        "study": study,
        "model": model,
        "table": str(tables / f"{study}.csv"),
        "comparisons": str(tables / f"{study}.comparisons.csv"),  # none configured: not written
        "per_seed": [str(run_dir / f"seed{s}.csv") for s in given],
        "arrays": [str(run_dir / f"seed{s}.npz") for s in given],
        "meta": str(meta),
    }


def write_top_study(root: Path, study="toy_top", model="toy", given=(1, 0), k=3) -> dict:
    """seed{N}.npz and .csv in the format of knockout.top_activations (with the id columns and
    scalars) for ON_DISK seeds; the parameters name the `given` seeds, in that order."""
    rng = np.random.default_rng(2)
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    for seed in ON_DISK:
        arrays = {"seed": np.int64(seed), "model": np.str_(model), "intervention": np.str_(study)}
        rows = []
        for layer, filters, size in [("conv1", [0, 2, 5], 3), ("conv2", [1, 4, 6, 7], 6)]:
            patches = rng.random(size=(k, len(filters), 1, size, size)).astype(np.float32)  # pixels in [0, 1]
            patches[:, :, :, :1, :] = np.nan  # the field leaves the image at the top
            arrays[f"patches_{layer}"] = patches
            arrays[f"filters_{layer}"] = np.asarray(filters, dtype=np.int64)
            for f in filters:
                scores = np.sort(rng.random(k))[::-1] * 10
                for r in range(k):
                    rows.append(
                        [
                            study,
                            model,
                            seed,
                            layer,
                            f,
                            r + 1,
                            100 * seed + int(rng.integers(0, 50)),
                            float(scores[r]),
                            2,
                            3,
                            0,
                            1,
                            size - 1,
                            size + 1,
                        ]
                    )
        np.savez(run_dir / f"seed{seed}.npz", **arrays)
        columns = [
            "intervention",
            "model",
            "seed",
            "layer",
            "filter",
            "rank",
            "image",
            "score",
            "peak_y",
            "peak_x",
            "top",
            "left",
            "bottom",
            "right",
        ]
        pd.DataFrame(rows, columns=columns).to_csv(run_dir / f"seed{seed}.csv", index=False)
    meta = write_meta(root / "data")
    return {
        "study": study,
        "model": model,
        "per_seed": [str(run_dir / f"seed{s}.csv") for s in given],
        "arrays": [str(run_dir / f"seed{s}.npz") for s in given],
        "meta": str(meta),
    }


# --------------------------------------------------------------------------- tests


def test_notebooks_are_stored_clean():
    assert {p.stem for p in NOTEBOOKS} == {
        "baselines",
        "filter_ablation",
        "layer_swap",
        "occlusion",
        "retrain",
        "top_activations",
    }
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
        assert "out_dir" in tagged[0].source, f"{path.name}: no out_dir parameter"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec"
        source = "\n".join(c.source for c in code)
        # Inputs come from the parameters only, the helpers from knockout.analysis.
        assert "glob(" not in source and "iterdir(" not in source, f"{path.name} searches folders"
        assert "from knockout.analysis import" in source, f"{path.name} does not use knockout.analysis"
        assert "def t_ci" not in source and "Unpickler" not in source, f"{path.name} copies helpers"


def test_analysis_imports_without_torch():
    code = "import sys, knockout.analysis; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "False"


def test_analysis_readers(tmp_path):
    from knockout.analysis import Figures, read_arrays, read_split, read_tables

    # The seed comes from the file's own column, never from its name.
    pd.DataFrame({"intervention": ["s"], "model": ["m"], "seed": [3], "accuracy": [0.5]}).to_csv(
        tmp_path / "seed7.csv", index=False
    )
    pd.DataFrame({"intervention": ["s"], "model": ["m"], "seed": [4], "x": [1]}).to_parquet(tmp_path / "b.parquet")
    table = read_tables([tmp_path / "seed7.csv", str(tmp_path / "b.parquet")])
    assert table["seed"].tolist() == [3, 4] and read_tables([]).empty
    np.savez(tmp_path / "a.npz", seed=np.int64(2), model=np.str_("m"), x=np.arange(3))
    (arrays,) = read_arrays([tmp_path / "a.npz"])
    assert int(arrays["seed"]) == 2 and str(arrays["model"]) == "m" and arrays["x"].tolist() == [0, 1, 2]
    images = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    written = write_split(tmp_path, images, np.array([1, 0]), np.array([10, 20]))
    split = read_split(written["test_images"], written["test_indices"])
    assert split["images"].dtype == np.uint8 and split["images"].shape == (2, 1, 2, 2)
    assert split["indices"].tolist() == [10, 20] and (split["images"] == images).all()
    # Figures: PNG and PDF, without timestamps, the names remembered.
    import matplotlib.pyplot as plt

    figures = Figures(tmp_path / "figs")
    figures.save(plt.figure(), "empty")
    figures.placeholder("none", "nothing to show")
    assert figures.names == ["empty", "none"]
    assert b"CreationDate" not in (tmp_path / "figs" / "none.pdf").read_bytes()
    assert (tmp_path / "figs" / "none.png").read_bytes()[:4] == b"\x89PNG"


FILTER_FIGURES = [  # the synthetic filter study's figures, in the order the notebook saves them
    "sets",
    "single_unit",
    "volcano",
    "importance_selectivity",
    "cumulative",
    "per_class",
    "confusion_change",
    "flips",
    "flipped_images",
    "comparisons",
]


def test_filter_ablation_notebook_reads_only_given_seeds(tmp_path):
    params = write_filter_study(tmp_path / "study")
    out = tmp_path / "figures"
    nb = run_notebook("filter_ablation", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, FILTER_FIGURES)
    text = printed(nb)
    assert_seeds(nb, GIVEN)
    assert "low - rand" in text  # the comparison's verdict is printed
    assert "stale_set" not in text  # seed 2's leftover condition is on disk, not given
    assert re.findall(r"^(\w+): not drawn", text, flags=re.M) == ["values"]  # every set at zero: nothing else
    assert "ablation values: zero only" in text


def test_filter_ablation_notebook_without_test_images(tmp_path):
    params = write_filter_study(tmp_path / "study", given=ON_DISK)
    params["test_images"] = str(tmp_path / "missing.npy")
    out = tmp_path / "figures"
    params["units"] = []
    nb = run_notebook("filter_ablation", tmp_path, out_dir=str(out), **params)
    shown = [f for f in FILTER_FIGURES if f not in ("importance_selectivity", "flipped_images")]
    assert_clean_run(nb, out, shown)
    assert_seeds(nb, ON_DISK)
    text = printed(nb)
    assert f"no prepared test images at {tmp_path / 'missing.npy'}" in text
    assert "flipped_images: not drawn: no flipped images" in text
    assert "importance_selectivity: not drawn: no unit statistics" in text
    assert not (out / "flipped_images.png").exists()  # nothing drawn in its place


def test_layer_swap_notebook(tmp_path):
    params = write_layer_swap_study(tmp_path / "study")
    out = tmp_path / "figures"
    nb = run_notebook("layer_swap", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["modes", "rewind"])
    assert_seeds(nb, GIVEN)
    text = printed(nb)
    assert "chance 0.250" in text  # 4 classes, from meta.json
    assert "rewind: test accuracy" in text and "reinit" in text


@pytest.mark.parametrize("kind", ["ablate_then_train", "architecture", "factorize"])
def test_retrain_notebook(tmp_path, kind):
    params = write_retrain_study(tmp_path / "study", kind)
    out = tmp_path / "figures"
    nb = run_notebook("retrain", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["accuracy", "tradeoff", "learning_curves"])
    assert_seeds(nb, GIVEN)
    text = printed(nb)
    assert f"({kind})" in text and f"{len(params['runs'])} trained runs" in text
    assert "learning_curves:" not in text  # the histories were drawn, not a placeholder
    if kind == "factorize":  # the per-layer table from condition.json's details
        assert "factorised layers (factorized, seed 0)" in text
        assert "conv2.0, conv2.1" in text and "P1_module" in text
    if kind == "ablate_then_train":
        assert "low - rand" in text
    if kind == "architecture":
        assert '{"dense": []}' in text  # the variant's overrides in the summary


def test_baselines_notebook(tmp_path):
    params = write_baselines(tmp_path / "study")
    out = tmp_path / "figures"
    nb = run_notebook("baselines", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["learning_curves", "final_accuracy"])
    assert_seeds(nb, GIVEN)
    assert "12 epochs of 4 runs; models: mlp, cnn" in printed(nb)  # 2 models x 2 seeds x 3 epochs


def test_occlusion_notebook(tmp_path):
    params = write_occlusion_study(tmp_path / "study")  # given: seeds 1 then 0
    out = tmp_path / "figures"
    nb = run_notebook("occlusion", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["probability_maps", "attribution_maps", "window_summary"])
    assert_seeds(nb, GIVEN)
    text = printed(nb)
    assert "seed 1: 3 images of 8x8" in text  # the maps of the first file given
    assert "study table (" in text and "window3" in text


def test_top_activations_notebook(tmp_path):
    params = write_top_study(tmp_path / "study")  # given: seeds 1 then 0
    out = tmp_path / "figures"
    nb = run_notebook("top_activations", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["grid", "scores"])
    assert_seeds(nb, GIVEN)
    text = printed(nb)
    assert "seed 1, conv1: 3 filters" in text and "seed 1: top-3 images" in text
    # Seed s's images are numbered 100 s .. 100 s + 49 in the synthetic table: each key lists its own.
    for seed, block in zip((0, 1), text.split("seed 1: top-3 images")):
        listed = re.findall(r"^(?:conv\d)?\s+\d+\s+(\d+, \d+, \d+)\s", block, flags=re.M)
        assert len(listed) == 7 and all(100 * seed <= int(i) < 100 * seed + 50 for x in listed for i in x.split(", "))


def test_every_figure_has_one_caption():
    """The report's captions (knockout/captions.yaml) name exactly the figures each notebook's
    function can draw."""
    import inspect

    from knockout import figures

    assert set(figures.CAPTIONS) == set(figures.NOTEBOOKS)
    for notebook, draw in figures.NOTEBOOKS.items():
        source = inspect.getsource(draw)
        drawn = set(re.findall(r'drawn\.(?:add|skip)\(\s*"(\w+)"', source))
        assert drawn == set(figures.CAPTIONS[notebook]), notebook
        assert all(len(caption) > 80 for caption in figures.CAPTIONS[notebook].values())
