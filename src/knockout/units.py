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

COLUMNS = ["layer", "unit", "mean", "max", "dead_fraction", "weight_l1", "selectivity", "preferred_class"]


def _responses(model: nn.Module, graph, layers: list[str]):
    """A function batch -> {layer: response (B, units, ...)}: traced, the response nodes only;
    untraced, forward hooks on the silence points."""
    if graph.traced:
        nodes = [graph.response_node(layer) for layer in layers]
        values = graph.values(nodes)
        return lambda x: dict(zip(layers, values(x)))
    modules = dict(model.named_modules())

    def run(x):
        seen = {}
        handles = [
            modules[graph.silence_point(layer)].register_forward_hook(
                lambda m, i, o, layer=layer: seen.__setitem__(layer, o)
            )
            for layer in layers
        ]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        return seen

    return run


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
    response), max (over inputs and positions), dead_fraction (inputs where the response is <= 0 everywhere), weight_l1 (sum of
    the unit's |weights|), selectivity ((mu_max - mu_-max) / (mu_max + mu_-max) over class means
    of the response) and preferred_class (the argmax class)."""
    from .data import as_split

    data = as_split(images, labels)
    model.eval()
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    graph = graph_of(model, data.example(device))
    layers = layers or [name for name, unit in graph.units.items() if unit.kind != "heads"]
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
            if graph.units[layer].kind == "linear":
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
