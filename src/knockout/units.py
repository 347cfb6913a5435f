"""Per-unit statistics of a trained network over a dataset (`unit_stats`; Morcos et al. 2018).

A unit is a conv output channel or a linear output feature. Its response is the output of the
activation that alone reads the layer's silence point (its batch norm, or the layer itself; see
`knockout.graph`), or the silence point's output where no activation follows it.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .graph import graph_of

COLUMNS = ["layer", "unit", "mean", "max", "dead_fraction", "weight_l1", "selectivity", "preferred_class", "importance"]


def _responses(model: nn.Module, graph, layers: list[str]):
    """A function batch -> {layer: response (B, units, ...)}: traced, the response nodes only;
    untraced, forward hooks on the silence points."""
    if graph.traced:
        nodes = [graph.response_node(layer) for layer in layers]
        values = graph.values(nodes)
        return lambda x: dict(zip(layers, values(x)))
    points = {layer: graph.silence_point(layer) for layer in layers}
    return lambda x: hooked_outputs(model, points, x)


@torch.no_grad()
def unit_statistics(
    model: nn.Module,
    images,
    labels: torch.Tensor | None,
    num_classes: int,
    layers: list[str] | None = None,
    batch_size: int = 512,
) -> pd.DataFrame:
    """A split (`knockout.data.Split`), or images (N, ...) and labels (N,) -> one row per unit of
    `layers` (default: all conv and linear layers) with: mean (over inputs of the spatial mean
    response), max (over inputs and positions), dead_fraction (inputs where the response is <= 0
    everywhere), weight_l1 (sum of the unit's |weights|), selectivity ((mu_max - mu_-max) /
    (mu_max + mu_-max) over class means of the response), preferred_class (the argmax class); importance (the
    accuracy drop when the unit alone is silenced) is the engine's, filled in by
    `knockout.api.unit_statistics` where asked (NaN here)."""
    from .data import as_split

    data = as_split(images, labels)
    model.eval()
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    graph = graph_of(model, data.example(device))
    layers = layers or [name for name, unit in graph.units.items() if unit.layer_type != "heads"]
    responses = _responses(model, graph, layers)
    sums = {}
    maxima = {}
    dead = {}
    class_sums = {}
    counts = torch.zeros(num_classes)
    for _, x, y in data.chunks(batch_size, device):
        y = y.cpu()
        captured = responses(x)
        counts += torch.bincount(y, minlength=num_classes).float()
        onehot = torch.nn.functional.one_hot(y, num_classes).float()  # (B, classes)
        for layer in layers:
            out = captured[layer].float().cpu()
            if graph.units[layer].layer_type == "linear":
                out = out.movedim(-1, 1)  # features first, then positions (tokens), if any
            flat = out.flatten(2) if out.dim() > 2 else out.unsqueeze(-1)  # (B, units, positions)
            per_input = flat.mean(2)  # (B, units)
            sums[layer] = sums.get(layer, 0) + per_input.sum(0)
            peak = flat.amax(2)
            maxima[layer] = torch.maximum(maxima[layer], peak.amax(0)) if layer in maxima else peak.amax(0)
            dead[layer] = dead.get(layer, 0) + (peak <= 0).float().sum(0)
            class_sums[layer] = class_sums.get(layer, 0) + onehot.T @ per_input  # (classes, units)
    rows = []
    n = len(data)
    for layer in layers:
        weight = modules[layer].weight.detach().cpu()
        l1 = weight.abs().flatten(1).sum(1)
        class_means = class_sums[layer] / counts.clamp(min=1)[:, None]  # (classes, units)
        top, preferred = class_means.max(0)
        others = (class_means.sum(0) - top) / max(num_classes - 1, 1)
        selectivity = (top - others) / (top + others).where((top + others).abs() > 1e-12, torch.ones_like(top))
        for unit in range(len(l1)):
            rows.append(
                {
                    "layer": layer,
                    "unit": unit,
                    "mean": (sums[layer][unit] / n).item(),
                    "max": maxima[layer][unit].item(),
                    "dead_fraction": (dead[layer][unit] / n).item(),
                    "weight_l1": l1[unit].item(),
                    "selectivity": selectivity[unit].item(),
                    "preferred_class": int(preferred[unit]),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def silence_outputs(model: nn.Module, graph, layers: list[str]):
    """A function batch -> {layer: its silence point's output (B, ...)}: traced, those nodes
    only; untraced, forward hooks on the silence points (a copy: an in-place op may follow)."""
    if graph.traced:
        nodes = []
        for layer in layers:
            calls = graph.module_nodes(graph.silence_point(layer))
            if len(calls) != 1:
                raise ValueError(f"{layer}: its silence point is called {len(calls)} times, it has no single output")
            nodes.append(calls[0])
        values = graph.values(nodes)
        return lambda x: dict(zip(layers, values(x)))
    points = {layer: graph.silence_point(layer) for layer in layers}
    return lambda x: hooked_outputs(model, points, x)


def hooked_outputs(model: nn.Module, points: dict, x: torch.Tensor) -> dict:
    """{layer: a copy of the output of module `points[layer]`} of `model` run on `x` (a copy:
    an in-place op after it, torchvision's ReLU(inplace=True) or `out += identity`, would
    overwrite the captured tensor)."""
    seen = {}
    modules = dict(model.named_modules())
    handles = [
        modules[point].register_forward_hook(lambda m, a, o, layer=layer: seen.__setitem__(layer, o.clone()))
        for layer, point in points.items()
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _merge(total: tuple | None, count: int, mean: torch.Tensor, m2: torch.Tensor) -> tuple:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations), float64."""
    if total is None:
        return count, mean, m2
    n, mu, s = total
    delta = mean - mu
    both = n + count
    return both, mu + delta * (count / both), s + m2 + delta.square() * (n * count / both)


@torch.no_grad()
def unit_values(model: nn.Module, split, layers: list[str] | None = None, batch_size: int = 512) -> dict:
    """The statistics of each layer's silence point output over a split (the reference for the
    mean and noise ablation values), streamed chunk by chunk in float64:
    {layer: {"mean_channel": (C,), "std_channel": (C,), "mean_position": (C, H, W),
    "std_position": (C, H, W), "count": examples}} (population std; a linear layer's
    position statistics are per feature, and per token where it has tokens). `layers`:
    default every conv and linear layer whose silence point is called once."""
    from .data import as_split

    data = as_split(split)
    model.eval()
    device = next(model.parameters()).device
    graph = graph_of(model, data.example(device))
    if layers is None:
        layers = [
            name
            for name, unit in graph.units.items()
            if unit.layer_type != "heads"
            and (not graph.traced or len(graph.module_nodes(graph.silence_point(name))) == 1)
        ]
    outputs = silence_outputs(model, graph, layers)
    position: dict = {}  # layer -> (count, mean, m2) over examples, per element of one example's output
    channel: dict = {}  # layer -> (count, mean, m2) over examples and positions, per unit
    for _, x, _ in data.chunks(batch_size, device):
        captured = outputs(x)
        for layer in layers:
            out = captured[layer].detach().to(torch.float64)
            mean = out.mean(0)
            position[layer] = _merge(position.get(layer), len(out), mean, (out - mean).square().sum(0))
            per_unit = out.movedim(1, -1) if graph.units[layer].layer_type == "conv" else out
            per_unit = per_unit.reshape(-1, per_unit.shape[-1])  # (examples x positions, units)
            mean = per_unit.mean(0)
            channel[layer] = _merge(channel.get(layer), len(per_unit), mean, (per_unit - mean).square().sum(0))
    out = {}
    for layer in layers:
        n, mean_p, m2_p = position[layer]
        count, mean_c, m2_c = channel[layer]
        out[layer] = {
            "mean_channel": mean_c.cpu(),
            "std_channel": (m2_c / count).sqrt().cpu(),
            "mean_position": mean_p.cpu(),
            "std_position": (m2_p / n).sqrt().cpu(),
            "count": int(n),
        }
    return out


def save_unit_values(values: dict, path) -> None:
    """Write `unit_values`' statistics (CPU tensors) with torch.save, atomically."""
    from .io import atomic_write

    atomic_write(path, lambda tmp: torch.save({layer: dict(stats) for layer, stats in values.items()}, tmp))


def load_unit_values(path) -> dict:
    """The statistics `save_unit_values` wrote, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)
