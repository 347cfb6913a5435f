"""`occlusion` (study 3; Zeiler & Fergus 2014): a grey window slid over test images, the
probability of the true class with the window centred at each pixel, which class takes over, and
Captum's occlusion attribution, per window size. The maps are arrays (`seed{seed}.npz`); the
table has one row per image and window, aggregated over seeds per window (`set` = `w{size}`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from . import Context, Target

JOB = "probe"
NOTEBOOK = "occlusion"
SHARDS = "forwards"  # `shards: N` splits the occluded forwards over images and windows (`compute(shard=...)`, `merge`)


@dataclass(frozen=True)
class Spec:
    model: str
    n_images: int
    per_class: bool
    image_seed: int
    windows: tuple[int, ...]
    stride: int
    fill: str | float

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        images = d["images"]
        return cls(
            d["model"], images["n"], images["per_class"], images["seed"], tuple(d["windows"]), d["stride"], d["fill"]
        )


def needs(spec: Spec) -> set[str]:
    return set()


def check(spec: Spec, target: Target) -> None:
    _, height, width = target.data.shape
    for i, w in enumerate(spec.windows):
        if w > min(height, width):
            raise ConfigError(f"windows[{i}]: window {w} does not fit the {height}x{width} images")


def fill_pixels(fill: str | float, dataset_mean: list[float]):
    """`mean` (the dataset-mean grey, as study 3), `zero` (black) or a pixel value in [0, 1] ->
    the per-channel fill (C,) in pixel space ([0, 1])."""
    import torch

    if fill == "mean":
        return torch.tensor(dataset_mean, dtype=torch.float32)
    return torch.full((len(dataset_mean),), 0.0 if fill == "zero" else float(fill))


def compute(spec: Spec, context: Context, test, meta: dict, budget_mb: float, shard: tuple[int, int] | None = None):
    """The maps of the chosen test images -> (table, arrays); `test` is the prepared split
    (`inputs` in the arrays: the images in pixel space, [0, 1]). `shard=(i, n)`: (None, the
    partial arrays of the i-th of n blocks of the occluded forwards), which `merge` joins."""
    from ..engine.occlusion import select_images

    idx = select_images(test.labels.cpu(), spec.n_images, spec.per_class, spec.image_seed)
    maps = _maps(spec, context, test, meta, budget_mb, idx, shard)
    return (None if shard else _table(maps, meta)), maps


def image_count(spec: Spec, test) -> int:
    """How many test images the study occludes (what its shards split)."""
    from ..engine.occlusion import select_images

    return len(select_images(test.labels.cpu(), spec.n_images, spec.per_class, spec.image_seed))


def merge(parts: list[dict], meta: dict):
    """The partial arrays of all the shards of one seed -> (table, arrays), as one `compute`
    gives them (`knockout.engine.occlusion.merge_shards`)."""
    from ..engine.occlusion import merge_shards

    first = parts[0]
    maps = merge_shards(parts, first["inputs"])
    maps["examples"], maps["mean"], maps["std"] = first["examples"], first["mean"], first["std"]
    return _table(maps, meta), maps


def _maps(spec: Spec, context: Context, test, meta: dict, budget_mb: float, idx, shard=None):
    from ..engine.occlusion import occlusion_maps

    device = next(context.trained.parameters()).device
    fill = fill_pixels(spec.fill, meta["mean"])
    maps = occlusion_maps(
        context.trained,
        test.inputs(idx, device),
        test.labels[idx.to(test.labels.device)],
        windows=spec.windows,
        stride=spec.stride,
        fill=test.preprocess.normalise(fill),  # the network's space
        budget_mb=budget_mb,
        device=device,
        shard=shard,
    )
    maps["fill"] = fill.numpy()  # every array in pixel space: the images and the fill alike
    maps["inputs"] = test.pixels(idx).numpy()
    maps["examples"] = idx.numpy()  # indices into the prepared test split
    maps["mean"], maps["std"] = test.preprocess.record["mean"], test.preprocess.record["std"]
    return maps


def _table(maps: dict, meta: dict):
    from ..engine.occlusion import summary

    table = summary(maps)
    # Tidy for the aggregate over seeds: one condition per image and window, one set per window.
    table.insert(0, "condition", [f"w{w}:image{i}" for w, i in zip(table["window"], table["image"])])
    table.insert(1, "set", [f"w{w}" for w in table["window"]])
    classes = meta["classes"]
    table["class_name"] = [classes[c] for c in table["label"]]
    # a class the network's other outputs (`knockout.readout`) are none of: "another output"
    table["takeover_name"] = [
        "" if c < 0 else classes[c] if c < len(classes) else "another output" for c in table["takeover_class"]
    ]
    return table


def image_macs(spec: Spec, graph, shape) -> int:
    """Multiply-adds per image the occlusion cannot avoid (`Graph.window_macs` over every
    window position, plus the intact forward): the cost `shards: auto` divides."""
    from ..engine.occlusion import window_positions

    _, height, width = shape
    rects = [window_positions(height, width, w, spec.stride).rects for w in spec.windows]
    return graph.forward_macs + sum(graph.window_macs(r) for r in rects)
