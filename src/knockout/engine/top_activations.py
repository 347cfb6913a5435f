"""The images that excite a filter most, and the input patch under the peak (study 3).

For each chosen filter of a layer, `top_activations` streams a set of images through the model
and keeps the k images whose feature map responds most (its Frobenius norm, study 3's "matrix
norm", or its maximum), with the location of the map's maximum and the input patch under the
receptive field of that location (`knockout.graph`: kernels, strides, paddings and dilations
followed along the traced network).

Coordinates are pixel indices: input pixel (i, j) has its centre at (i, j), so the field of a
3x3 valid convolution's output (0, 0) is centred at (1, 1) and spans rows 0..2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..graph import RF, graph_of

COLUMNS = ["layer", "filter", "rank", "image", "score", "peak_y", "peak_x", "top", "left", "bottom", "right"]

# --------------------------------------------------------------------------- receptive field


def receptive_field(model: nn.Module, name: str) -> RF | None:
    """The receptive field of module `name`'s output positions (`knockout.graph`)."""
    return graph_of(model).receptive_field(name)


def _field_top(rf: RF, pos: int, axis: int) -> int:
    """First input row (axis 0) or column (axis 1) of map position `pos`'s field, unclipped."""
    return int(round(rf.start[axis] + pos * rf.jump[axis] - (rf.size[axis] - 1) / 2))


def patch_bounds(rf: RF, y: int, x: int, H: int, W: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right): the input rows top..bottom-1 and columns left..right-1 under
    feature-map position (y, x)'s receptive field, clipped to an H x W image."""
    top, left = _field_top(rf, y, 0), _field_top(rf, x, 1)
    return max(0, top), max(0, left), min(H, top + rf.size[0]), min(W, left + rf.size[1])


# --------------------------------------------------------------------------- choosing filters


def filter_count(model: nn.Module, layer: str) -> int:
    """Units (output channels, features) of an addressable layer."""
    units = graph_of(model).units
    if layer not in units:
        raise ValueError(f"{layer!r} is not a conv or linear layer of the model")
    return units[layer].count


def choose_filters(model: nn.Module, layers: dict[str, list[int] | int], seed: int = 0) -> dict[str, list[int]]:
    """Filters per layer: an explicit list is kept (checked against the layer's size); an int n
    draws n distinct filters with torch.Generator seeded `seed` (a fresh one per layer, so a
    layer's draw does not depend on the other layers), returned sorted."""
    out = {}
    for layer, spec in layers.items():
        count = filter_count(model, layer)
        if isinstance(spec, int):
            if not 0 < spec <= count:
                raise ValueError(f"{layer}: cannot draw {spec} of {count} filters")
            g = torch.Generator().manual_seed(seed)
            out[layer] = sorted(torch.randperm(count, generator=g)[:spec].tolist())
        else:
            bad = [f for f in spec if not 0 <= int(f) < count]
            if bad:
                raise ValueError(f"{layer}: filters {bad} out of range (it has {count})")
            out[layer] = [int(f) for f in spec]
    return out


# --------------------------------------------------------------------------- top activations


def _capture(model: nn.Module, graph, x: torch.Tensor, filters: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The chosen filters' outputs {layer: (B, F, ...)} for a batch (a linear layer's features
    moved to dim 1): traced, only what the layers need is computed; untraced, forward hooks."""
    if graph.traced:
        nodes = [graph.output_node(layer) for layer in filters]
        outputs = dict(zip(filters, graph.values(nodes)(x)))
    else:
        outputs = {}
        hooks = [
            model.get_submodule(layer).register_forward_hook(lambda m, i, o, layer=layer: outputs.__setitem__(layer, o))
            for layer in filters
        ]
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
    seen = {}
    for layer, out in outputs.items():
        if layer in graph.units and graph.units[layer].layer_type == "linear":
            out = out.movedim(-1, 1)
        seen[layer] = out.index_select(1, torch.as_tensor(filters[layer], dtype=torch.long, device=out.device))
    return seen


def _score(fmap: torch.Tensor, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """fmap (B, F, h, w) -> score (B, F) and the flat index of the map's maximum (B, F)
    (the first one in row-major order on ties)."""
    flat = fmap.flatten(2).float()
    peak = flat.argmax(2)
    if score == "norm":
        return torch.linalg.vector_norm(flat, dim=2), peak
    return flat.amax(2), peak


def _merge(best: tuple[torch.Tensor, ...], new: tuple[torch.Tensor, ...], k: int) -> tuple[torch.Tensor, ...]:
    """Running top-k per filter: (score, image, peak) each (F, k') merged with a batch's (F, B);
    higher score first, ties by lower image index."""
    score, image, peak = (torch.cat([a, b], 1) for a, b in zip(best, new))
    by_image = image.argsort(dim=1, stable=True)  # sort by index first, then a stable sort by score
    score, image, peak = (t.gather(1, by_image) for t in (score, image, peak))
    order = score.argsort(dim=1, descending=True, stable=True)[:, :k]
    return tuple(t.gather(1, order) for t in (score, image, peak))


def _patch(image: torch.Tensor, rf: RF | None, y: int, x: int, ph: int, pw: int) -> torch.Tensor:
    """The (C, ph, pw) cell for position (y, x): the input under its field, NaN where the field
    leaves the image. A field taller (wider) than the image shows the whole image height
    (width), NaN outside the field."""
    if rf is None:  # no spatial map (a linear layer): the whole image
        return image.float().clone()
    C, H, W = image.shape
    cell = torch.full((C, ph, pw), float("nan"))
    tops = []
    for axis, pos, n, size in ((0, y, H, rf.size[0]), (1, x, W, rf.size[1])):
        top = _field_top(rf, pos, axis)
        tops.append((top, top if size <= n else 0, top + size))
    (fy, cy, fy2), (fx, cx, fx2) = tops
    r0, r1 = max(0, fy, cy), min(H, fy2, cy + ph)
    c0, c1 = max(0, fx, cx), min(W, fx2, cx + pw)
    if r0 < r1 and c0 < c1:
        cell[:, r0 - cy : r1 - cy, c0 - cx : c1 - cx] = image[:, r0:r1, c0:c1].float()
    return cell


@torch.no_grad()
def top_activations(
    model: nn.Module,
    images,
    filters: dict[str, list[int]],
    k: int = 5,
    score: str = "norm",
    *,
    device: str | torch.device,
    batch_size: int = 256,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The k images (of a split, or of `images` (N, C, H, W) as model inputs) that excite each
    chosen filter most.

    score: 'norm' (Frobenius norm of the filter's feature map) or 'max' (its maximum); ties go
    to the lower image index; k is capped at N. Only a running top-k per filter is kept while
    streaming over batches. The peak (peak_y, peak_x) is the map's maximum (first in row-major
    order); top/left/bottom/right bound the input under its receptive field (clipped; the whole
    image for a layer without a spatial map, e.g. linear).

    Returns the table (COLUMNS, one row per layer, filter and rank; rank 1 = highest) and arrays
    `filters_{layer}` (F,) and `patches_{layer}` float32 (k, F, C, ph, pw) with (ph, pw) the
    field's size clipped to the image, NaN where the field leaves the image: in pixel space
    ([0, 1]) for a prepared split, the tensors' own values for tensors given.
    """
    from ..data import as_split

    data = as_split(images, torch.zeros(len(images), dtype=torch.long)) if isinstance(images, torch.Tensor) else images
    if score not in ("norm", "max"):
        raise ValueError(f"score must be 'norm' or 'max', not {score!r}")
    was_training = model.training
    model.eval()
    N, (C, H, W) = len(data), data.shape
    k = min(k, N)
    graph = graph_of(model, data.example(device))
    best: dict[str, tuple[torch.Tensor, ...]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for start, x, _ in data.chunks(batch_size, device):
            seen = _capture(model, graph, x, filters)
            missing = sorted(set(filters) - set(seen))
            if missing:
                raise ValueError(f"top_activations: layers {missing} did not run in the forward")
            for layer, out in seen.items():
                fmap = out.cpu()
                shapes[layer] = tuple(fmap.shape[2:])
                if fmap.dim() == 2:
                    fmap = fmap[:, :, None, None]  # a linear layer: a 1x1 "map"
                elif fmap.dim() == 3:
                    fmap = fmap[..., None]  # features of a sequence (tokens): an L x 1 "map"
                s, peak = (t.T for t in _score(fmap, score))  # (F, B)
                idx = torch.arange(start, start + len(x)).expand_as(s)
                if layer not in best:
                    empty = s[:, :0]
                    best[layer] = (empty, idx[:, :0], peak[:, :0])
                best[layer] = _merge(best[layer], (s, idx, peak), k)
    finally:
        model.train(was_training)

    rows, arrays = [], {}
    for layer, idx in filters.items():
        sc, img, peak = best[layer]
        width = shapes[layer][1] if len(shapes[layer]) == 2 else 1
        rf = graph.receptive_field(layer) if len(shapes[layer]) == 2 else None
        ph = min(rf.size[0], H) if rf else H
        pw = min(rf.size[1], W) if rf else W
        patches = np.full((k, len(idx), C, ph, pw), np.nan, dtype=np.float32)
        for f, filt in enumerate(idx):
            for r in range(k):
                n, p = int(img[f, r]), int(peak[f, r])
                y, x = divmod(p, width)
                bounds = patch_bounds(rf, y, x, H, W) if rf else (0, 0, H, W)
                rows.append([layer, int(filt), r + 1, n, float(sc[f, r]), y, x, *bounds])
                patches[r, f] = _patch(data.pixels([n])[0].cpu(), rf, y, x, ph, pw).numpy()
        arrays[f"patches_{layer}"] = patches
        arrays[f"filters_{layer}"] = np.asarray(idx, dtype=np.int64)
    return pd.DataFrame(rows, columns=COLUMNS), arrays
