"""Visual probes of one trained model and seed (study 3): occlusion maps and top-activating
patches. Arrays go to `seed{seed}.npz`, a tidy summary to `seed{seed}.csv` beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import load_prepared
from .models import load_model


def fill_value(fill: str | float, mean: list[float], std: list[float]) -> torch.Tensor:
    """`mean` (dataset-mean grey, as study 3), `zero` (black) or a pixel value in [0, 1] ->
    the per-channel value in the normalised space the model sees."""
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)
    if fill == "mean":
        return torch.zeros(len(mean))
    pixel = 0.0 if fill == "zero" else float(fill)
    return (pixel - mean_t) / std_t


def _save(arrays: dict, table: pd.DataFrame, ident: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    npz = out.with_suffix(".npz")
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    tmp.replace(npz)
    table = pd.concat([pd.DataFrame([ident] * len(table)), table.reset_index(drop=True)], axis=1)
    tmp = out.with_name(out.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out)  # the CSV last: its presence means the npz is complete


def occlusion(name: str, spec: dict, model_name: str, seed: int, model_dir: Path, data_dir: Path, out: Path, device="cpu") -> pd.DataFrame:
    from .occlusion import occlusion_maps, select_images, summary

    model = load_model(Path(model_dir) / "final.pt", map_location=device)
    _, test, meta = load_prepared(Path(data_dir))
    images = spec.get("images", {})
    idx = select_images(test.labels, images.get("n", 8), images.get("per_class", False), images.get("seed", 0))
    maps = occlusion_maps(
        model, test.images[idx], test.labels[idx], windows=spec.get("windows", (3, 5, 7, 9)),
        stride=spec.get("stride", 1), fill=fill_value(spec.get("fill", "mean"), meta["mean"], meta["std"]),
        budget_mb=spec.get("budget_mb", 512), device=device,
    )
    maps["examples"] = idx.numpy()  # indices into the prepared test split
    maps["mean"], maps["std"] = np.array(meta["mean"]), np.array(meta["std"])
    table = summary(maps)
    # Tidy for the aggregate over seeds: one condition per image and window, one set per window.
    table.insert(0, "condition", [f"w{w}:image{i}" for w, i in zip(table["window"], table["image"])])
    table.insert(1, "set", [f"w{w}" for w in table["window"]])
    table["class_name"] = [meta["classes"][c] for c in table["label"]]
    table["takeover_name"] = [meta["classes"][c] if c >= 0 else "" for c in table["takeover_class"]]
    _save(maps, table, {"intervention": name, "model": model_name, "seed": seed}, Path(out))
    return table


def top_activations(name: str, spec: dict, model_name: str, seed: int, model_dir: Path, data_dir: Path, out: Path, device="cpu") -> pd.DataFrame:
    from .top_activations import choose_filters, save_grid
    from .top_activations import top_activations as find

    model = load_model(Path(model_dir) / "final.pt", map_location=device)
    _, test, meta = load_prepared(Path(data_dir))
    filters = choose_filters(model, spec["layers"], seed=spec.get("seed", 0))
    table, arrays = find(model, test.images, filters, k=spec.get("k", 5), score=spec.get("score", "norm"), device=device)
    out = Path(out)
    grids = out.with_name(out.stem + ".grids")
    grids.mkdir(parents=True, exist_ok=True)
    for layer in filters:
        save_grid(arrays[f"patches_{layer}"], grids / f"{layer}.png", meta["mean"], meta["std"])
    _save(arrays, table, {"intervention": name, "model": model_name, "seed": seed}, out)
    return table
