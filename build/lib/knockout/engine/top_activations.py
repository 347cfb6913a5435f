"""The images that excite a filter most, and the input patch under the peak (study 3).

For each chosen filter of a layer, `top_activations` streams a set of images through the model
and keeps the k images whose feature map responds most (its Frobenius norm, study 3's "matrix
norm", or its maximum), with the location of the map's maximum and the input patch under the
receptive field of that location. `receptive_field` computes the field from the layers' kernels,
strides, paddings and dilations.

Coordinates are pixel indices: input pixel (i, j) has its centre at (i, j), so the field of a
3x3 valid convolution's output (0, 0) is centred at (1, 1) and spans rows 0..2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models import Exp, chain

COLUMNS = ["layer", "filter", "rank", "image", "score", "peak_y", "peak_x", "top", "left", "bottom", "right"]

# Modules that act on each position separately (batch norm and dropout as in eval mode): they
# leave a receptive field, and a local perturbation's footprint, unchanged.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Identity, nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, Exp,
)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def spatial_params(module: nn.Module):
    """(kernel, stride, padding, dilation), each an (h, w) pair, of a Conv2d, MaxPool2d or
    AvgPool2d; None for any other module. A conv's string padding is resolved ('valid' = 0,
    'same' = (k - 1) * dilation / 2, which must be whole)."""
    if isinstance(module, nn.Conv2d):
        k, s, d = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
        p = module.padding
        if p == "valid":
            p = (0, 0)
        elif p == "same":
            if any((ki - 1) * di % 2 for ki, di in zip(k, d)):
                return None  # torch pads such a 'same' conv unevenly
            p = tuple((ki - 1) * di // 2 for ki, di in zip(k, d))
        return k, s, _pair(p), d
    if isinstance(module, nn.MaxPool2d):
        return (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding),
                _pair(module.dilation))
    if isinstance(module, nn.AvgPool2d):
        return _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), (1, 1)
    return None


def residual_blocks() -> tuple[type, ...]:
    """torchvision's ResNet blocks (imported lazily: torchvision is slow to import)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return BasicBlock, Bottleneck


def main_path(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """A residual block's main path in forward order, by name (conv1, bn1, relu, conv2, ...),
    without the final activation that follows the addition."""
    names = ["conv1", "bn1", "relu", "conv2", "bn2"]
    if hasattr(block, "conv3"):  # Bottleneck
        names += ["relu", "conv3", "bn3"]
    return [(n, getattr(block, n)) for n in names]


# --------------------------------------------------------------------------- receptive field


@dataclass(frozen=True)
class RF:
    """Receptive field of a layer's feature-map positions, in input pixels.

    size: the field's height and width; jump: input pixels between neighbouring map positions;
    start: input coordinates of the centre of map position (0, 0) (may be x.5 or negative).
    Map position (y, x) is centred at start + (y, x) * jump.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


def _grow(rf: RF, module: nn.Module, name: str) -> RF:
    """rf after one more module: the standard recurrences for a conv or pool, unchanged for an
    elementwise module; ValueError for anything else."""
    if isinstance(module, ELEMENTWISE):
        return rf
    params = spatial_params(module)
    if params is None:
        raise ValueError(f"receptive_field: cannot follow {name!r} ({type(module).__name__}): "
                         "only convolutions, pools, elementwise modules and ResNet blocks")
    size, jump, start = [], [], []
    for a, (k, s, p, d) in enumerate(zip(*params)):
        size.append(rf.size[a] + (k - 1) * d * rf.jump[a])
        start.append(rf.start[a] + ((k - 1) * d / 2 - p) * rf.jump[a])
        jump.append(rf.jump[a] * s)
    return RF(tuple(size), tuple(jump), tuple(start))


def _walk_block(rf: RF, name: str, block: nn.Module, stop: str | None) -> RF:
    """rf through a residual block's main path (the larger field: the shortcut adds none), or
    up to and including its submodule `stop` (a relative name; `downsample.*` follows the
    shortcut)."""
    if stop is not None and stop.startswith("downsample"):
        for sub, m in block.downsample.named_children():
            rf = _grow(rf, m, f"{name}.downsample.{sub}")
            if f"downsample.{sub}" == stop:
                return rf
        return rf
    for sub, m in main_path(block):
        rf = _grow(rf, m, f"{name}.{sub}")
        if sub == stop:
            return rf
    if stop is not None and stop != "relu":
        raise ValueError(f"receptive_field: no module {name}.{stop}")
    return rf


def receptive_field(model: nn.Module, layer: str) -> RF:
    """The receptive field of `layer`'s output positions, computed from the modules of
    `chain(model)` up to and including `layer`: a stage of the chain (`conv2`, `conv2_pool`,
    `layer1.0`), a nested stage (`layer1`: through its last block), or a module inside a ResNet
    block (`layer2.0.conv1`, `layer2.0.downsample.0`). ValueError when a module on the way is not
    a conv, pool, elementwise module or ResNet block (e.g. Flatten, Linear: no spatial field)."""
    links = chain(model)
    names = [n for n, _ in links]
    inside = [i for i, n in enumerate(names) if n == layer or n.startswith(layer + ".")]
    if inside:
        last, rest = inside[-1], None
    else:
        owners = [i for i, n in enumerate(names) if layer.startswith(n + ".")]
        if not owners:
            raise KeyError(f"no layer {layer!r} in the model")
        last, rest = owners[0], layer[len(names[owners[0]]) + 1 :]
    rf = RF((1, 1), (1, 1), (0.0, 0.0))
    for i, (name, module) in enumerate(links[: last + 1]):
        stop = rest if i == last else None
        if isinstance(module, residual_blocks()):
            rf = _walk_block(rf, name, module, stop)
        elif stop is not None:
            raise ValueError(f"receptive_field: cannot look inside {name!r} ({type(module).__name__})")
        else:
            rf = _grow(rf, module, name)
    return rf


def _field_top(rf: RF, pos: int, axis: int) -> int:
    """First input row (axis 0) or column (axis 1) of map position `pos`'s field, unclipped."""
    return int(round(rf.start[axis] + pos * rf.jump[axis] - (rf.size[axis] - 1) / 2))


def patch_bounds(rf: RF, y: int, x: int, H: int, W: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right): the input rows top..bottom-1 and columns left..right-1 under
    feature-map position (y, x)'s receptive field, clipped to an H x W image."""
    top, left = _field_top(rf, y, 0), _field_top(rf, x, 1)
    return max(0, top), max(0, left), min(H, top + rf.size[0]), min(W, left + rf.size[1])


# --------------------------------------------------------------------------- choosing filters


def _own_count(module: nn.Module) -> int | None:
    """Output channels of the last conv, linear or batch norm in `module` (itself included)."""
    for m in reversed(list(module.modules())):
        if isinstance(m, nn.Conv2d):
            return m.out_channels
        if isinstance(m, nn.Linear):
            return m.out_features
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m.num_features
    return None


def filter_count(model: nn.Module, layer: str) -> int:
    """Output channels (features) of `layer`: its own for a conv, linear or batch norm (or the
    last one inside it, a ResNet block), else those of the closest stage before it that has
    them (`conv2_act`, `conv2_pool` -> conv2's)."""
    count = _own_count(model.get_submodule(layer))
    links = chain(model)
    names = [n for n, _ in links]
    if count is None and layer in names:
        for _, m in reversed(links[: names.index(layer)]):
            count = _own_count(m)
            if count is not None:
                break
    if count is None:
        raise ValueError(f"cannot tell how many filters {layer!r} has")
    return count


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


def _capture(model: nn.Module, x: torch.Tensor, filters: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The chosen filters' outputs {layer: (B, F, h, w) or (B, F)} for a batch, via forward
    hooks; a Sequential model stops running once every layer has been seen."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for layer, idx in filters.items():
        index = torch.as_tensor(idx, dtype=torch.long, device=x.device)
        hook = lambda m, i, o, layer=layer, index=index: seen.__setitem__(layer, o.index_select(1, index))  # noqa: E731
        hooks.append(model.get_submodule(layer).register_forward_hook(hook))
    try:
        if isinstance(model, nn.Sequential):
            for module in model:  # top-level stages, so hooks on nested ones (layer2) fire too
                x = module(x)
                if len(seen) == len(filters):  # the rest of the network is not needed
                    break
        else:
            model(x)
    finally:
        for h in hooks:
            h.remove()
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
    images: torch.Tensor,
    filters: dict[str, list[int]],
    k: int = 5,
    score: str = "norm",
    *,
    device: str | torch.device,
    batch_size: int = 256,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The k images (of `images` (N, C, H, W)) that excite each chosen filter most.

    score: 'norm' (Frobenius norm of the filter's feature map) or 'max' (its maximum); ties go
    to the lower image index; k is capped at N. Only a running top-k per filter is kept while
    streaming over batches. The peak (peak_y, peak_x) is the map's maximum (first in row-major
    order); top/left/bottom/right bound the input under its receptive field (clipped; the whole
    image for a layer without a spatial map, e.g. linear).

    Returns the table (COLUMNS, one row per layer, filter and rank; rank 1 = highest) and arrays
    `filters_{layer}` (F,) and `patches_{layer}` float32 (k, F, C, ph, pw) with (ph, pw) the
    field's size clipped to the image, NaN where the field leaves the image.
    """
    if score not in ("norm", "max"):
        raise ValueError(f"score must be 'norm' or 'max', not {score!r}")
    was_training = model.training
    model.eval()
    N, C, H, W = images.shape
    k = min(k, N)
    best: dict[str, tuple[torch.Tensor, ...]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for start in range(0, N, batch_size):
            x = images[start : start + batch_size].to(device)
            seen = _capture(model, x, filters)
            missing = sorted(set(filters) - set(seen))
            if missing:
                raise ValueError(f"top_activations: layers {missing} did not run in the forward")
            for layer, out in seen.items():
                fmap = out.cpu()
                shapes[layer] = tuple(fmap.shape[2:])
                if fmap.dim() == 2:
                    fmap = fmap[:, :, None, None]  # a linear layer: a 1x1 "map"
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
        rf = receptive_field(model, layer) if len(shapes[layer]) == 2 else None
        ph = min(rf.size[0], H) if rf else H
        pw = min(rf.size[1], W) if rf else W
        patches = np.full((k, len(idx), C, ph, pw), np.nan, dtype=np.float32)
        for f, filt in enumerate(idx):
            for r in range(k):
                n, p = int(img[f, r]), int(peak[f, r])
                y, x = divmod(p, width)
                bounds = patch_bounds(rf, y, x, H, W) if rf else (0, 0, H, W)
                rows.append([layer, int(filt), r + 1, n, float(sc[f, r]), y, x, *bounds])
                patches[r, f] = _patch(images[n].cpu(), rf, y, x, ph, pw).numpy()
        arrays[f"patches_{layer}"] = patches
        arrays[f"filters_{layer}"] = np.asarray(idx, dtype=np.int64)
    return pd.DataFrame(rows, columns=COLUMNS), arrays
