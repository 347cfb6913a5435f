"""The analysis notebooks: stored clean (no outputs, a `parameters` cell, a kernelspec), and run
through papermill on tiny synthetic study files written in the workflow's formats, making every
figure as PNG and PDF without an error."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from knockout.stats import comparisons, summarize

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]


def run_notebook(name: str, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    """Execute notebooks/{name}.ipynb with papermill (kernel python3, cwd = repo root)."""
    papermill = pytest.importorskip("papermill")
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=parameters,
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def assert_clean_run(nb: nbformat.NotebookNode, out_dir: Path, figures: list[str]) -> None:
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    for name in figures:
        for suffix in (".png", ".pdf"):
            path = out_dir / f"{name}{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path


# --------------------------------------------------------------------------- synthetic studies


def write_meta(folder: Path, channels: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": "synthetic", "classes": CLASSES, "num_classes": len(CLASSES),
            "shape": [channels, 8, 8], "mean": [0.3] * channels, "std": [0.35] * channels}
    path = folder / "meta.json"
    path.write_text(json.dumps(meta))
    return path


def write_filter_study(root: Path, study="toy_filters", model="toy", seeds=(0, 1, 2)) -> dict:
    """A filter_ablation study's per-seed files, tables (via knockout.stats) and test.pt."""
    rng = np.random.default_rng(0)
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    conditions = [("baseline", "baseline", {}), ("low", "low", {"k": 2})]
    conditions += [(f"rand:draw{d}", "rand", {"k": 2, "draw": d}) for d in range(2)]
    conditions += [(f"each:conv2:{u}", "each", {"layer": "conv2", "unit": u}) for u in range(5)]
    conditions += [(f"curve:conv2:f{f}:draw{d}", "curve", {"layer": "conv2", "fraction": f, "draw": d})
                   for d in range(2) for f in (0.25, 0.5, 0.75)]
    n_test = 40
    labels = np.arange(n_test) % len(CLASSES)
    examples = 1000 + 3 * np.arange(n_test)  # indices into the original test set
    frames = []
    for seed in seeds:
        base_pred = np.where(rng.random(n_test) < 0.8, labels, (labels + 1) % len(CLASSES))
        rows, per_class, flips = [], [], []
        for name, set_, info in conditions:
            drop = 0.0 if name == "baseline" else 0.5 * info.get("fraction", 0.1) * rng.random()
            pred = np.where(rng.random(n_test) < drop, (labels + 2) % len(CLASSES), base_pred)
            if name == "low":
                pred[labels == 0] = labels[labels == 0]  # some flips the other way
            right, base_right = pred == labels, base_pred == labels
            rows.append({"intervention": study, "model": model, "seed": seed, "condition": name, "set": set_,
                         "accuracy": right.mean(), "loss": 1.0 - right.mean(), "baseline_accuracy": base_right.mean(),
                         "delta": right.mean() - base_right.mean(), "n_silenced": 2, "units": "conv2:0,1",
                         "base": "trained", **info})
            for k, cls in enumerate(CLASSES):
                m = labels == k
                per_class.append({"condition": name, "class": k, "class_name": cls, "n": int(m.sum()),
                                  "accuracy": right[m].mean(), "baseline_accuracy": base_right[m].mean(),
                                  "delta": right[m].mean() - base_right[m].mean()})
            for i in np.flatnonzero(right != base_right):
                flips.append({"condition": name, "example": int(examples[i]), "label": int(labels[i]),
                              "baseline_prediction": int(base_pred[i]), "prediction": int(pred[i]),
                              "flip": "right_to_wrong" if base_right[i] else "wrong_to_right"})
        frame = pd.DataFrame(rows)
        frame.to_csv(run_dir / f"seed{seed}.csv", index=False)
        frames.append(frame)
        pd.DataFrame(per_class).to_csv(run_dir / f"seed{seed}.per_class.csv", index=False)
        columns = ["condition", "example", "label", "baseline_prediction", "prediction", "flip"]
        pd.DataFrame(flips, columns=columns).to_parquet(run_dir / f"seed{seed}.examples.parquet", index=False)
    per_seed = pd.concat(frames, ignore_index=True)
    tables = root / "tables"
    tables.mkdir()
    summarize(per_seed).to_csv(tables / f"{study}.csv", index=False)
    comparisons(per_seed, [("low", "rand")]).to_csv(tables / f"{study}.comparisons.csv", index=False)
    data = root / "data"
    write_meta(data)
    try:
        import torch

        images = (rng.random((n_test, 1, 8, 8)) * 255).astype(np.uint8)
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
                    "indices": torch.from_numpy(examples)}, data / "test.pt")
    except ImportError:  # the notebook then says so instead of drawing the images
        pass
    return {"study": study, "model": model, "tables_dir": str(tables),
            "interventions_dir": str(root / "interventions"), "data_dir": str(data)}


def write_occlusion_study(root: Path, study="toy_occlusion", model="toy", seed=0, n=3, windows=(3, 5)) -> dict:
    """seed{seed}.npz and .csv in the format of knockout.occlusion (maps and summary)."""
    rng = np.random.default_rng(1)
    H = W = 8
    C = 1
    labels = np.arange(n) % len(CLASSES)
    yy, xx = np.mgrid[:H, :W]
    base_prob = (0.6 + 0.3 * rng.random(n)).astype(np.float32)
    prob = np.empty((n, len(windows), H, W), np.float32)
    for i in range(n):
        cy, cx = rng.integers(2, H - 2, size=2)
        for wi, w in enumerate(windows):
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * w))
            prob[i, wi] = base_prob[i] * (1 - 0.9 * w / (w + 2) * bump)
    pred = np.where(prob < 0.4, (labels[:, None, None, None] + 1) % len(CLASSES), labels[:, None, None, None])
    maps = {
        "inputs": rng.normal(size=(n, C, H, W)).astype(np.float32),
        "labels": labels.astype(np.int64),
        "windows": np.asarray(windows, dtype=np.int64),
        "stride": np.int64(1),
        "fill": np.zeros(C, np.float32),
        "baseline_prob": base_prob,
        "baseline_pred": labels.astype(np.int64),
        "prob_centred": prob,
        "pred_centred": pred.astype(np.int16),
        "attribution": (base_prob[:, None, None, None] - prob).astype(np.float32),
    }
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    np.savez(run_dir / f"seed{seed}.npz", **maps)
    rows = []
    for i in range(n):
        for wi, w in enumerate(windows):
            p, c = prob[i, wi].reshape(-1), pred[i, wi].reshape(-1).astype(np.int64)
            changed = c != labels[i]
            arg = int(p.argmin())
            takeover = int(np.bincount(c[changed]).argmax()) if changed.any() else -1
            rows.append([i, int(labels[i]), w, float(base_prob[i]), float(p[arg]), arg // W, arg % W,
                         float(changed.mean()), takeover])
    columns = ["image", "label", "window", "baseline_prob", "min_prob", "argmin_y", "argmin_x", "changed_area",
               "takeover_class"]
    pd.DataFrame(rows, columns=columns).to_csv(run_dir / f"seed{seed}.csv", index=False)
    meta = write_meta(root / "data")
    return {"study": study, "model": model, "interventions_dir": str(root / "interventions"),
            "data_meta": str(meta), "seed": seed}


def write_top_study(root: Path, study="toy_top", model="toy", seed=0, k=3) -> dict:
    """seed{seed}.npz and .csv in the format of knockout.top_activations."""
    rng = np.random.default_rng(2)
    arrays, rows = {}, []
    for layer, filters, size in [("conv1", [0, 2, 5], 3), ("conv2", [1, 4, 6, 7], 6)]:
        patches = rng.normal(size=(k, len(filters), 1, size, size)).astype(np.float32)
        patches[:, :, :, :1, :] = np.nan  # the field leaves the image at the top
        arrays[f"patches_{layer}"] = patches
        arrays[f"filters_{layer}"] = np.asarray(filters, dtype=np.int64)
        for f in filters:
            scores = np.sort(rng.random(k))[::-1] * 10
            for r in range(k):
                rows.append([layer, f, r + 1, int(rng.integers(0, 50)), float(scores[r]), 2, 3, 0, 1, size - 1, size + 1])
    run_dir = root / "interventions" / study / model
    run_dir.mkdir(parents=True)
    np.savez(run_dir / f"seed{seed}.npz", **arrays)
    columns = ["layer", "filter", "rank", "image", "score", "peak_y", "peak_x", "top", "left", "bottom", "right"]
    pd.DataFrame(rows, columns=columns).to_csv(run_dir / f"seed{seed}.csv", index=False)
    meta = write_meta(root / "data")
    return {"study": study, "model": model, "interventions_dir": str(root / "interventions"),
            "data_meta": str(meta), "seed": seed}


# --------------------------------------------------------------------------- tests


def test_notebooks_are_stored_clean():
    assert NOTEBOOKS, "no notebooks in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
        assert "out_dir" in tagged[0].source, f"{path.name}: no out_dir parameter"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec"


def test_filter_ablation_notebook(tmp_path):
    params = write_filter_study(tmp_path / "study")
    out = tmp_path / "figures"
    nb = run_notebook("filter_ablation", tmp_path, out_dir=str(out), n_examples=3, **params)
    assert_clean_run(nb, out, ["sets", "single_unit", "cumulative", "per_class", "flips", "flipped_images"])
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "low - rand" in text  # the comparison's verdict is printed


def test_occlusion_notebook(tmp_path):
    params = write_occlusion_study(tmp_path / "study")
    out = tmp_path / "figures"
    nb = run_notebook("occlusion", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["probability_maps", "attribution_maps", "window_summary"])


def test_top_activations_notebook(tmp_path):
    params = write_top_study(tmp_path / "study")
    out = tmp_path / "figures"
    nb = run_notebook("top_activations", tmp_path, out_dir=str(out), **params)
    assert_clean_run(nb, out, ["grid", "scores"])
