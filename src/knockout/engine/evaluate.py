"""Batched evaluation of a model on a split (a `knockout.data.Split`, or tensors given): one
condition, or many sharing what does not change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import graph_of
from ..readout import Readout
from .conditions import Condition, ConditionOutput, Context, apply_condition
from .shared import empty_stacked, fast_layout, spread, spread_bytes, spread_forward, spread_stackable, stacked
from .values import Replacements, check_values, value_of


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # int64 (N,), predicted class per example
    correct: torch.Tensor  # bool (N,)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images, *, batch_size: int, amp: bool, readout: Readout | None = None
) -> torch.Tensor:
    """A split, or images (N, C, H, W) or (N, D) -> class-first logits (N, outputs) in float32, in
    eval mode (`readout`: how the model's output is read; by default the one its spec carries)."""
    from ..data import as_split

    data = (
        as_split(images, torch.zeros(len(images), dtype=torch.long))
        if isinstance(images, torch.Tensor)
        else as_split(images)
    )
    was_training = model.training
    model.eval()
    readout = readout or Readout.of(model)
    device = next(model.parameters()).device
    outs = []
    for _, batch, _ in data.chunks(batch_size, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(readout(model(batch)).float())
    model.train(was_training)
    return torch.cat(outs)


def evaluate(
    model: nn.Module,
    images,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int,
    amp: bool,
    readout: Readout | None = None,
) -> Evaluation:
    """Mean cross-entropy, accuracy and per-example predictions of `model` on a split (or on
    images (N, ...) with their labels (N,)); a prediction >= the number of classes is an output
    that is no class (`knockout.readout`)."""
    from ..data import as_split

    data = as_split(images, labels)
    logits = predict_logits(model, data, batch_size=batch_size, amp=amp, readout=readout)
    labels = data.labels.to(logits.device)
    predictions = logits.argmax(1)
    correct = predictions == labels
    return Evaluation(
        loss=F.cross_entropy(logits, labels).item(),
        accuracy=correct.float().mean().item(),
        predictions=predictions.cpu(),
        correct=correct.cpu(),
    )


# --- Many conditions of one network, sharing what does not change -------------------------------


@dataclass
class Route:
    """How one condition is evaluated: from which cut of its base network's graph, as channel
    masks on the unchanged network (`masks`: mask node -> (units, unit dim, silenced units)) or
    with its own weights (`weights`: the tensors `apply` changed, by state_dict name)."""

    condition: Condition
    cut: int
    masks: dict | None = None
    weights: dict | None = None
    rebuilt: bool = False  # apply() changed the architecture: the whole network runs
    spread: tuple | None = None  # (layer, units): one layer's units silenced, evaluated along `shared.spread`
    wanted: bool = True  # its output is asked for (`evaluate_conditions(only=...)`): else it runs only beside one


@torch.no_grad()
def evaluate_conditions(
    conditions: list[Condition],
    context: Context,
    images,
    labels: torch.Tensor | None = None,
    *,
    budget_mb: float,
    device: str | torch.device,
    apply: Callable[[Condition, Context], nn.Module] = apply_condition,
    only: set[str] | None = None,
) -> dict[str, ConditionOutput]:
    """Predictions and per-example losses of every condition on a split (a `knockout.data.Split`,
    or images (N, ...) and their labels (N,)), streamed chunk by chunk.

    The base network is traced (`knockout.graph`) and its intact activations are computed once
    per chunk of images; each condition reuses them and computes only what it changes:

      * units of one layer silenced: along `Graph.spread`, the units' channels alone (zero at the
        silence point, then through the per-channel operations after it: normalisation,
        activations, pooling, a residual add), each linear operation reached as its intact
        output plus its response to those channels (one input channel's work per unit), and
        then only the nodes that depend on those operations;
      * units of several layers silenced: 0/1 channel masks on the unchanged network from the
        cut before the first silence point (after the zero-preserving operations that follow
        it), later ones through forward hooks;
      * weights changed (`apply(condition, context)` gives them: the condition's layers replaced
        from their sources, `apply_condition`, or a study type's own): the rest of the network
        from the first changed module on, with those weights.

    Conditions that silence units run K at a time, stacked along the batch, in channels-last
    memory. `budget_mb` bounds the activations held at once. A network that cannot be traced
    runs every condition whole (masks through hooks), without sharing.

    A condition's `value` (`Value`, `engine.values`) is what its silenced units
    put out instead of zero, on every route: the spread starts from it at the silence point (a
    linear op then adds its response to value - intact), masks become x * mask + value * (1 - mask)
    (the cut at the silence point itself: a non-zero value does not commute with what follows).
    Mean and noise need `context.unit_values`, resample `context.donors`; donors go by the
    evaluated example's position, noise by its index in the split (`data.indices`).

    `only` (names): the conditions whose outputs are wanted (one shard of a study): chunks and
    stacks are those of all `conditions`, and only the stacks holding a wanted one run, so each
    output is bit-identical to the unsharded run's.
    """
    from ..data import as_split

    data = as_split(images, labels)
    device = torch.device(device)
    budget = budget_mb * 2**20
    check_values(conditions, context)
    n = len(data)
    preds = {c.name: torch.empty(n, dtype=torch.long) for c in conditions}
    losses = {c.name: torch.empty(n) for c in conditions}
    by_base: dict[str, list] = {}
    for condition in conditions:
        by_base.setdefault(condition.base, []).append(condition)
    for base_name, group in by_base.items():
        if only is not None and not any(c.name in only for c in group):
            continue
        base = context.network(base_name).eval().to(device)
        results = _Results(preds, losses, Readout.of(base))
        graph = graph_of(base, data.example(device))
        routes = [_route(c, graph, base, context, apply) for c in group]
        values = Replacements(group, context, base, graph, data, device) if any(value_of(c) for c in group) else None
        for route in routes:
            route.wanted = only is None or route.condition.name in only
        if graph.traced:
            _shared(routes, graph, base, context, apply, data, budget, device, results, values)
        else:
            _unshared(routes, graph, base, context, apply, data, budget, device, results, values)
    return {
        c.name: ConditionOutput(preds[c.name], losses[c.name]) for c in conditions if only is None or c.name in only
    }


def _route(condition, graph, base: nn.Module, context, apply) -> Route:
    silenced = dict(condition.silence)
    value = value_of(condition)
    if value is not None and any(graph.units[layer].layer_type == "heads" for layer in silenced):
        raise ValueError(f"condition {condition.name!r}: value {value.label} on attention heads is not supported")
    if graph.traced and not condition.replace and len(silenced) == 1:
        ((layer, units),) = silenced.items()
        if graph.units[layer].layer_type != "heads" and spread(graph, layer) is not None:
            return Route(condition, -1, spread=(layer, tuple(units)))
    if not condition.replace and all(graph.units[layer].layer_type != "heads" for layer in silenced):
        masks = _mask_nodes(graph, silenced, carry=value is None)
        if masks is not None:
            if not graph.traced:
                return Route(condition, 0, masks=masks)
            last = len(graph.nodes) - 1  # the output node: nothing silenced, only the logits are live
            return Route(condition, min((graph.position[node] + 1 for node in masks), default=last), masks=masks)
    if value is not None:
        raise ValueError(f"condition {condition.name!r}: value {value.label} needs silence points called once")
    changed = apply(condition, context).eval()
    base_state = base.state_dict()
    state = changed.state_dict()
    if state.keys() != base_state.keys() or any(state[k].shape != base_state[k].shape for k in state):
        return Route(condition, 0, weights={"network": changed}, rebuilt=True)
    weights = {k: v for k, v in state.items() if not torch.equal(v, base_state[k].to(v.device))}
    if not graph.traced:
        return Route(condition, 0, weights=weights)
    modules = {k.rpartition(".")[0] for k in weights}
    nodes = [graph.position[node] for name in modules for node in graph.module_nodes(name)]
    if len(nodes) < len(modules):  # a changed tensor not read through a module call: after the input
        return Route(condition, 1, weights=weights)
    return Route(condition, min(nodes, default=len(graph.nodes) - 1), weights=weights)


def _mask_nodes(graph, silenced: dict, carry: bool = True) -> dict | None:
    """Per mask node, (units, unit dim, silenced units, layer): the earliest layer's mask goes
    after the zero-preserving operations that follow its silence point (its value is live at the
    cut; `carry` False: on the silence point itself, for a non-zero value), the others on their
    silence points (applied by hooks); None when a silence point is called more than once (then
    the condition changes weights instead)."""

    def entry(layer):
        unit = graph.units[layer]
        return unit.count, 1 if unit.layer_type == "conv" else -1, tuple(silenced[layer]), layer

    if not graph.traced:
        return {graph.silence_point(layer): entry(layer) for layer in silenced}
    points = {}
    for layer in silenced:
        nodes = graph.module_nodes(graph.silence_point(layer))
        if len(nodes) != 1:
            return None
        points[layer] = nodes[0]
    if not points:
        return {}
    order = sorted(points, key=lambda layer: graph.position[points[layer]])
    first = graph.mask_node(order[0]) if carry else points[order[0]]
    if any(graph.position[points[layer]] <= graph.position[first] for layer in order[1:]):
        first = points[order[0]]  # another silence point lies within: no carrying on
    return {first: entry(order[0])} | {points[layer]: entry(layer) for layer in order[1:]}


def _shared(routes, graph, base, context, apply, data, budget, device, results, values=None) -> None:
    """Traced: one pass per image chunk computes every cut's live tensors; each cut's conditions
    then run the suffix, masked (K per forward) or with their own weights."""
    cuts: dict[int, list[Route]] = {}
    spreads: dict[str, list[Route]] = {}
    for route in routes:
        if route.spread is not None:
            spreads.setdefault(route.spread[0], []).append(route)
        else:
            cuts.setdefault(route.cut, []).append(route)
    needed = [node for layer in spreads for node in spread(graph, layer).needs()]
    live_nodes = list(dict.fromkeys([*(node for index in sorted(cuts) for node in graph.cut(index).live), *needed]))
    live_bytes = sum(graph.info(node).nbytes for node in live_nodes)
    widest = max(
        [graph.bytes_per_example(index) for index in cuts]
        + [spread_bytes(graph, spread(graph, layer)) for layer in spreads]
    )
    extra = values.bytes_per_example() if values is not None else 0  # donor outputs, noise fields
    chunk = max(1, min(len(data), int(budget / 2 // max(1, live_bytes + widest + extra))))
    prefix = graph.values(live_nodes)
    params = dict(base.named_parameters()) | dict(base.named_buffers())
    # the model's own tensors (a condition's weights replace them by name), else the trace's constants
    suffix_params = {
        index: {k: params.get(k, v) for k, v in graph.cut(index).suffix.state_dict().items()} for index in cuts
    }
    for start, x, y in data.chunks(chunk, device):
        x = fast_layout(x)
        live = {node: fast_layout(value) for node, value in zip(live_nodes, prefix(x))}
        if values is not None:
            values.begin(start, len(x))
        for index, group in sorted(cuts.items()):
            cut = graph.cut(index)
            inputs = [live[node] for node in cut.live]
            masked = [p for p in group if p.masks is not None]
            per_condition = graph.bytes_per_example(index) * len(x)
            k_max = max(1, int(budget / 2 // max(1, per_condition))) if cut.stackable else 1
            for i in range(0, len(masked), k_max):
                batch = masked[i : i + k_max]
                if not any(r.wanted for r in batch):
                    continue
                results.store(batch, _masked_forward(batch, graph, cut, inputs, len(x), values), y, start)
            for route in group:
                if route.masks is not None or not route.wanted:
                    continue
                if route.rebuilt:
                    logits = route.weights["network"].to(device)(x)
                else:
                    own = suffix_params[index] | {k: v for k, v in route.weights.items() if k in suffix_params[index]}
                    logits = torch.func.functional_call(cut.suffix, own, tuple(t.clone() for t in inputs))
                results.store([route], logits, y, start)
        plain: dict = {}  # the confined maps in channels-first memory, where a channel is one block
        for layer, group in spreads.items():
            found = spread(graph, layer)
            k_max = (
                max(1, int(budget / 2 // max(1, spread_bytes(graph, found) * len(x))))
                if spread_stackable(graph, found)
                else 1
            )
            for i in range(0, len(group), k_max):
                batch = group[i : i + k_max]
                if not any(r.wanted for r in batch):
                    continue
                results.store(
                    batch,
                    spread_forward(
                        [r.spread[1] for r in batch],
                        graph,
                        found,
                        live,
                        plain,
                        _spread_parts(batch, found, live, values),
                    ),
                    y,
                    start,
                )


def _masked_forward(batch: list[Route], graph, cut, inputs: list[torch.Tensor], b: int, values=None) -> torch.Tensor:
    """K silencing conditions at once on the cut's live tensors (B examples each): the live
    tensors stacked K times, a masked node's value multiplied by its (K, units) 0/1 mask (and a
    non-zero value put in its units' place), the masks of nodes after the cut applied by
    forward hooks on their modules."""
    k = len(batch)
    masks = _stacked_masks(batch, inputs[0].device)
    replaced = _replacements(batch, values)
    inputs_k = []
    for node, value in zip(cut.live, inputs):
        if node in masks:
            mask, dim = masks.pop(node)
            out = empty_stacked(value, k)
            torch.mul(value.unsqueeze(0), _mask_shape(mask, dim, value), out=out.view(k, *value.shape))
            _put(out.view(k, *value.shape), replaced.get(node, ()))
            inputs_k.append(out)
        else:
            inputs_k.append(stacked(value, k))
    handles = []
    for node, (mask, dim) in masks.items():  # later silence points: hooks on their modules
        module = graph.module.get_submodule(node.target)
        handles.append(
            module.register_forward_hook(
                lambda m, i, o, mask=mask, dim=dim, put=replaced.get(node, ()): _put(
                    _apply_mask(o.view(k, b, *o.shape[1:]), mask, dim, 1), put
                ).flatten(0, 1)
            )
        )
    try:
        return cut.suffix(*inputs_k)
    finally:
        for h in handles:
            h.remove()


def _stacked_masks(batch: list[Route], device) -> dict:
    """Per mask node, a (K, units) 0/1 mask over the K conditions of `batch`, and its unit dim."""
    out = {}
    for k, route in enumerate(batch):
        for node, (count, dim, units, _) in route.masks.items():
            if node not in out:
                out[node] = (torch.ones(len(batch), count, device=device), dim)
            out[node][0][k, list(units)] = 0
    return out


def _replacements(batch: list[Route], values) -> dict:
    """Per mask node, [(k, unit dim, units, replacement (1 or B, ...))] of the stack's conditions
    with a non-zero value; computed before any hook is set (donors run through the same modules)."""
    out: dict = {}
    if values is None:
        return out
    for k, route in enumerate(batch):
        if value_of(route.condition) is None:
            continue
        for node, (_, dim, units, layer) in route.masks.items():
            new = values.of(route.condition, layer, units)
            out.setdefault(node, []).append((k, dim, torch.as_tensor(units, device=new.device), new))
    return out


def _put(x: torch.Tensor, entries) -> torch.Tensor:
    """x (K, B, ...) with, for each entry (k, unit dim, units, replacement), stack k's units set
    to the replacement, in place: x * mask + value * (1 - mask), the masked units being 0."""
    for k, dim, index, new in entries:
        target = x[k]
        dim = dim % target.dim()
        shape = list(target.shape)
        shape[dim] = len(index)
        target.index_copy_(dim, index, new.to(target.dtype).expand(shape))
    return x


def _spread_parts(batch: list[Route], found, live: dict, values) -> list | None:
    """The source's new values per condition of a spread stack (None: zero, as today)."""
    if values is None or all(value_of(r.condition) is None for r in batch):
        return None
    return [values.of(r.condition, found.layer, r.spread[1]) for r in batch]


def _mask_shape(mask: torch.Tensor, dim: int, value: torch.Tensor) -> torch.Tensor:
    """A (K, units) mask shaped to multiply a (K, B, ...) stack of `value` (B, ...) along its unit dim."""
    shape = [mask.shape[0]] + [1] * value.dim()
    shape[2 if dim == 1 else -1] = mask.shape[1]
    return mask.to(value.dtype).view(shape)


def _apply_mask(x: torch.Tensor, mask: torch.Tensor, dim: int, batch_dims: int) -> torch.Tensor:
    """x (K, B, ...) times mask (K, units) along the unit dim of each (B, ...) tensor (1 or -1)."""
    k, units = mask.shape
    rest = x.dim() - 1 - batch_dims  # dims of one example
    shape = [k] + [1] * batch_dims + [1] * rest
    shape[1 + batch_dims if dim == 1 else -1] = units
    return x * mask.to(x.dtype).view(shape)


def _unshared(routes, graph, base, context, apply, data, budget, device, results, values=None) -> None:
    """Untraced: every condition runs the whole network; silencing through forward hooks on the
    silence points (K conditions stacked along the batch), weights through their own copy."""
    modules = dict(base.named_modules())
    with_masks = [p for p in routes if p.masks is not None]
    sample = 4 * data.example(device).numel() * 64  # no graph to measure activations: assume 64x the input
    chunk = max(1, min(len(data), int(budget / 2 // sample)))
    for start, x, y in data.chunks(chunk, device):
        if values is not None:
            values.begin(start, len(x))
        k_max = max(1, int(budget / 2 // (sample * len(x))))
        for i in range(0, len(with_masks), k_max):
            batch = with_masks[i : i + k_max]
            if not any(r.wanted for r in batch):
                continue
            k = len(batch)
            replaced = _replacements(batch, values)
            handles = [
                modules[point].register_forward_hook(
                    lambda m, a, o, mask=mask, dim=dim, put=replaced.get(point, ()): _put(
                        _apply_mask(o.view(k, len(x), *o.shape[1:]), mask, dim, 1), put
                    ).flatten(0, 1)
                )
                for point, (mask, dim) in _stacked_masks(batch, device).items()
            ]
            try:
                logits = base(x.repeat(k, *([1] * (x.dim() - 1))))
            finally:
                for h in handles:
                    h.remove()
            results.store(batch, logits, y, start)
        for route in routes:
            if route.masks is None and route.wanted:
                network = route.weights["network"] if route.rebuilt else None
                if network is None:
                    state = base.state_dict() | route.weights
                    logits = torch.func.functional_call(base, state, (x,))
                else:
                    logits = network.to(device)(x)
                results.store([route], logits, y, start)


@dataclass
class _Results:
    """Every condition's predictions and per-example losses, filled chunk by chunk; `readout`
    reads the base network's outputs as class-first logits."""

    predictions: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor]
    readout: Readout

    def store(self, batch: list[Route], output, y: torch.Tensor, start: int) -> None:
        """Predictions and per-example losses of K conditions' outputs (K * B examples), in one go."""
        k = len(batch)
        logits = self.readout(output).float()
        predicted = logits.argmax(1).view(k, len(y)).cpu()
        loss = F.cross_entropy(logits, y.repeat(k), reduction="none").view(k, len(y)).cpu()
        for i, route in enumerate(batch):
            name, end = route.condition.name, start + len(y)
            self.predictions[name][start:end] = predicted[i]
            self.losses[name][start:end] = loss[i]
