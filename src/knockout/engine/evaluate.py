"""Batched evaluation of a model on a split (a `knockout.data.Split`, or tensors given): one
condition, or many sharing what does not change."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch import fx
from torch.nn import functional as F

from ..graph import logits_of


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # int64 (N,), predicted class per example
    correct: torch.Tensor  # bool (N,)


@torch.no_grad()
def predict_logits(model: nn.Module, images, *, batch_size: int, amp: bool) -> torch.Tensor:
    """A split, or images (N, C, H, W) or (N, D) -> logits (N, classes) in float32, in eval mode."""
    from ..data import as_split

    data = as_split(images, torch.zeros(len(images), dtype=torch.long)) if isinstance(images, torch.Tensor) else as_split(images)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for _, batch, _ in data.chunks(batch_size, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(logits_of(model(batch)).float())
    model.train(was_training)
    return torch.cat(outs)


def evaluate(model: nn.Module, images, labels: torch.Tensor | None = None, *, batch_size: int, amp: bool) -> Evaluation:
    """Mean cross-entropy, accuracy and per-example predictions of `model` on a split (or on
    images (N, ...) with their labels (N,))."""
    from ..data import as_split

    data = as_split(images, labels)
    logits = predict_logits(model, data, batch_size=batch_size, amp=amp)
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


@dataclass(frozen=True)
class ConditionOutput:
    predictions: torch.Tensor  # int64 (N,)
    losses: torch.Tensor  # float32 (N,), per-example cross-entropy


@dataclass
class _Plan:
    """How one condition is evaluated: from which cut of its base network's graph, as channel
    masks on the unchanged network (`masks`: mask node -> (units, unit dim, silenced units)) or
    with its own weights (`weights`: the tensors `apply` changed, by state_dict name)."""

    condition: object
    cut: int
    masks: dict | None = None
    weights: dict | None = None
    rebuilt: bool = False  # apply() changed the architecture: the whole network runs
    spread: tuple | None = None  # (layer, units): one layer's units silenced, evaluated along `Graph.spread`


@torch.no_grad()
def evaluate_conditions(
    conditions,
    context,
    images,
    labels: torch.Tensor | None = None,
    *,
    budget_mb: float,
    device: str | torch.device,
    apply=None,
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
      * weights changed (`apply(condition, context)` gives them; default
        `studies.apply_condition`): the rest of the network from the first changed module on,
        with those weights.

    Conditions that silence units run K at a time, stacked along the batch, in channels-last
    memory. `budget_mb` bounds the activations held at once. A network that cannot be traced
    runs every condition whole (masks through hooks), without sharing.
    """
    from ..data import as_split
    from ..graph import graph_of
    from ..studies import apply_condition

    data = as_split(images, labels)
    apply = apply or apply_condition
    device = torch.device(device)
    budget = budget_mb * 2**20
    n = len(data)
    preds = {c.name: torch.empty(n, dtype=torch.long) for c in conditions}
    losses = {c.name: torch.empty(n) for c in conditions}
    by_base: dict[str, list] = {}
    for condition in conditions:
        by_base.setdefault(condition.base, []).append(condition)
    for base_name, group in by_base.items():
        base = context.network(base_name).eval().to(device)
        graph = graph_of(base, data.example(device))
        plans = [_plan(c, graph, base, context, apply) for c in group]
        if graph.traced:
            _shared(plans, graph, base, context, apply, data, budget, device, preds, losses)
        else:
            _unshared(plans, graph, base, context, apply, data, budget, device, preds, losses)
    return {c.name: ConditionOutput(preds[c.name], losses[c.name]) for c in conditions}


def _plan(condition, graph, base: nn.Module, context, apply) -> _Plan:
    silenced = dict(condition.silence)
    if graph.traced and not condition.replace and len(silenced) == 1:
        (layer, units), = silenced.items()
        if graph.units[layer].kind != "heads" and graph.spread(layer) is not None:
            return _Plan(condition, -1, spread=(layer, tuple(units)))
    if not condition.replace and all(graph.units[layer].kind != "heads" for layer in silenced):
        masks = _mask_nodes(graph, silenced)
        if masks is not None:
            if not graph.traced:
                return _Plan(condition, 0, masks=masks)
            last = len(graph.nodes) - 1  # the output node: nothing silenced, only the logits are live
            return _Plan(condition, min((graph.position[node] + 1 for node in masks), default=last), masks=masks)
    changed = apply(condition, context).eval()
    base_state = base.state_dict()
    state = changed.state_dict()
    if state.keys() != base_state.keys() or any(state[k].shape != base_state[k].shape for k in state):
        return _Plan(condition, 0, weights={"network": changed}, rebuilt=True)
    weights = {k: v for k, v in state.items() if not torch.equal(v, base_state[k].to(v.device))}
    if not graph.traced:
        return _Plan(condition, 0, weights=weights)
    modules = {k.rpartition(".")[0] for k in weights}
    nodes = [graph.position[node] for name in modules for node in graph.module_nodes(name)]
    if len(nodes) < len(modules):  # a changed tensor not read through a module call: after the input
        return _Plan(condition, 1, weights=weights)
    return _Plan(condition, min(nodes, default=len(graph.nodes) - 1), weights=weights)


def _mask_nodes(graph, silenced: dict) -> dict | None:
    """Per mask node, (units, unit dim, silenced units): the earliest layer's mask goes after the
    zero-preserving operations that follow its silence point (its value is live at the cut), the
    others on their silence points (applied by hooks); None when a silence point is called more
    than once (then the condition changes weights instead)."""
    def entry(layer):
        unit = graph.units[layer]
        return unit.count, 1 if unit.kind == "conv" else -1, tuple(silenced[layer])

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
    first = graph.mask_node(order[0])
    if any(graph.position[points[layer]] <= graph.position[first] for layer in order[1:]):
        first = points[order[0]]  # another silence point lies within: no carrying on
    return {first: entry(order[0])} | {points[layer]: entry(layer) for layer in order[1:]}


def _shared(plans, graph, base, context, apply, data, budget, device, preds, losses) -> None:
    """Traced: one pass per image chunk computes every cut's live tensors; each cut's conditions
    then run the suffix, masked (K per forward) or with their own weights."""
    cuts: dict[int, list[_Plan]] = {}
    spreads: dict[str, list[_Plan]] = {}
    for plan in plans:
        if plan.spread is not None:
            spreads.setdefault(plan.spread[0], []).append(plan)
        else:
            cuts.setdefault(plan.cut, []).append(plan)
    needed = [node for layer in spreads for node in _spread_needs(graph.spread(layer))]
    live_nodes = list(dict.fromkeys([*(node for index in sorted(cuts) for node in graph.cut(index).live), *needed]))
    live_bytes = sum(graph._info[node][2] for node in live_nodes)
    widest = max([graph.bytes_per_example(index) for index in cuts] + [_spread_bytes(graph, graph.spread(layer)) for layer in spreads])
    chunk = max(1, min(len(data), int(budget / 2 // max(1, live_bytes + widest))))
    prefix = graph.values(live_nodes)
    params = dict(base.named_parameters()) | dict(base.named_buffers())
    # the model's own tensors (a condition's weights replace them by name), else the trace's constants
    suffix_params = {index: {k: params.get(k, v) for k, v in graph.cut(index).suffix.state_dict().items()} for index in cuts}
    for start, x, y in data.chunks(chunk, device):
        x = _fast_layout(x)
        live = {node: _fast_layout(value) for node, value in zip(live_nodes, prefix(x))}
        for index, group in sorted(cuts.items()):
            cut = graph.cut(index)
            inputs = [live[node] for node in cut.live]
            masked = [p for p in group if p.masks is not None]
            per_condition = graph.bytes_per_example(index) * len(x)
            k_max = max(1, int(budget / 2 // max(1, per_condition))) if cut.stackable else 1
            for i in range(0, len(masked), k_max):
                batch = masked[i : i + k_max]
                _store(preds, losses, batch, _masked_forward(batch, graph, cut, inputs, len(x)), y, start)
            for plan in group:
                if plan.masks is not None:
                    continue
                if plan.rebuilt:
                    logits = plan.weights["network"].to(device)(x)
                else:
                    own = suffix_params[index] | {k: v for k, v in plan.weights.items() if k in suffix_params[index]}
                    logits = torch.func.functional_call(cut.suffix, own, tuple(t.clone() for t in inputs))
                _store(preds, losses, [plan], logits, y, start)
        plain: dict = {}  # the confined maps in channels-first memory, where a channel is one block
        for layer, group in spreads.items():
            spread = graph.spread(layer)
            stackable = all(graph._info[n][1] == 0 for n in spread.inputs if n in graph._info)
            k_max = max(1, int(budget / 2 // max(1, _spread_bytes(graph, spread) * len(x)))) if stackable else 1
            for i in range(0, len(group), k_max):
                batch = group[i : i + k_max]
                _store(preds, losses, batch, _spread_forward(batch, graph, spread, live, plain), y, start)


def _masked_forward(batch: list[_Plan], graph, cut, inputs: list[torch.Tensor], b: int) -> torch.Tensor:
    """K silencing conditions at once on the cut's live tensors (B examples each): the live
    tensors stacked K times, a masked node's value multiplied by its (K, units) 0/1 mask, the
    masks of nodes after the cut applied by forward hooks on their modules."""
    k = len(batch)
    masks = _stacked_masks(batch, inputs[0].device)
    stacked = []
    for node, value in zip(cut.live, inputs):
        if node in masks:
            mask, dim = masks.pop(node)
            out = _empty_like_stacked(value, k)
            torch.mul(value.unsqueeze(0), _mask_shape(mask, dim, value), out=out.view(k, *value.shape))
            stacked.append(out)
        else:
            stacked.append(_stack(value, k))
    handles = []
    for node, (mask, dim) in masks.items():  # later silence points: hooks on their modules
        module = graph.module.get_submodule(node.target)
        handles.append(module.register_forward_hook(lambda m, i, o, mask=mask, dim=dim: _apply_mask(o.view(k, b, *o.shape[1:]), mask, dim, 1).flatten(0, 1)))
    try:
        return logits_of(cut.suffix(*stacked))
    finally:
        for h in handles:
            h.remove()


def _fast_layout(x: torch.Tensor) -> torch.Tensor:
    """A map in channels-last memory: oneDNN's convolutions and pooling are 2-3x faster on the
    CPU that way, and every activation computed from it keeps the layout."""
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


def _spread_needs(spread) -> list:
    """The intact values a spread condition is computed from: the confined nodes and what they
    read, the linear operations' outputs, and the suffix's inputs."""
    nodes = list(spread.confined) + list(spread.linear) + list(spread.inputs)
    for node in spread.confined:
        nodes += [arg for arg in node.all_input_nodes if arg not in spread.confined]
    return list(dict.fromkeys(n for n in nodes if n.op != "get_attr"))


def _spread_bytes(graph, spread) -> int:
    """Bytes one example needs per condition: the suffix's inputs and its largest two outputs."""
    inputs = sum(graph._info[n][2] for n in spread.inputs if n in graph._info)
    outputs = sorted((graph._info[n][2] for n in spread.changed if n in graph._info), reverse=True)
    return inputs + sum(outputs[:2])


def _spread_forward(batch: list[_Plan], graph, spread, intact: dict, plain: dict) -> torch.Tensor:
    """K conditions that each silence units of one layer: along the spread, the new values of
    the units' channels alone (zero at the silence point, then each per-channel operation on
    that slice), each linear operation's intact output plus its response to the slice's change
    (one input channel's work per unit), then the nodes that change everywhere, for the K
    conditions at once (stacked along the batch)."""
    k = len(batch)
    for node in spread.confined:
        if node not in plain:
            plain[node] = intact[node].contiguous()
    new = [_spread_values(graph, spread, intact, plain, list(plan.spread[1])) for plan in batch]
    stacked = []
    for node in spread.inputs:
        value = intact[node]
        if not isinstance(value, torch.Tensor):  # a size read off a map (then K is 1: not stackable)
            stacked.append(value)
            continue
        out = _empty_like_stacked(value, k)
        slices = out.view(k, *value.shape)
        for i, values in enumerate(new):
            if node in spread.linear:
                torch.add(value, values[node], out=slices[i])
            elif node in spread.confined:
                slices[i].copy_(value)
                index, part = values[node]
                dim = spread.confined[node][1] % value.dim()
                if part is None:
                    slices[i].index_fill_(dim, index, 0.0)
                else:
                    slices[i].index_copy_(dim, index, part.expand(_slice_shape(value, dim, len(index))))
            else:
                slices[i].copy_(value)
        stacked.append(out)
    return logits_of(spread.suffix(*stacked))


def _spread_values(graph, spread, intact: dict, plain: dict, units: list[int]) -> dict:
    """For one condition: per confined node, (channel index, new values of those channels), and
    per linear operation, its response to the change."""
    values = {}  # node -> (channel index, new values; None: all zero, as long as the silence lasts)
    for node, (op, dim, offset, width) in spread.confined.items():
        if op == "source":
            values[node] = (torch.as_tensor(units, device=intact[node].device), None)
            continue
        source = next(a for a in node.all_input_nodes if a in spread.confined and a in values)
        index, part = values[source]
        if op == "flatten":
            per_unit = graph._flat_width(node)
            index = (index[:, None] * per_unit + torch.arange(per_unit, device=index.device)).flatten()
            values[node] = (index, None if part is None else part.flatten(1))
        elif op == "cat":
            values[node] = (index + (offset - spread.confined[source][2]), part)
        elif part is None and graph._zero_preserving(node, source):
            values[node] = (index, None)
        else:
            if part is None:
                part = _zeros_slice(intact[source], dim, len(index))
            values[node] = (index, _on_slice(graph, node, op, source, part, index, dim, intact, plain))
    for node, (kind, _) in spread.linear.items():
        source = node.args[0]
        index, part = values[source]
        old = plain[source].index_select(spread.confined[source][1] % plain[source].dim(), index)
        change = -old if part is None else part - old
        module = graph.module.get_submodule(node.target)
        if kind == "conv":  # channels-last in, channels-last out: the layout of the stack it is added into
            weight, change = _channels_last(module.weight[:, index]), _channels_last(change)
            values[node] = F.conv2d(change, weight, None, module.stride, module.padding, module.dilation)
        else:
            values[node] = change @ module.weight[:, index].T
    return values


def _slice_shape(value: torch.Tensor, dim: int, size: int) -> list[int]:
    """`value`'s shape with `size` entries along `dim`."""
    shape = list(value.shape)
    shape[dim % value.dim()] = size
    return shape


def _zeros_slice(value: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zeros shaped as `value` with `size` entries along `dim` (a broadcast view: no memory)."""
    return value.new_zeros(()).expand(_slice_shape(value, dim, size))


def _on_slice(graph, node, op: str, source, part: torch.Tensor, index: torch.Tensor, dim: int, intact: dict, plain: dict) -> torch.Tensor:
    """`node`'s operation on the channels `index` alone: `part` in place of its source, every
    other tensor it reads sliced the same way where it has those channels."""
    if op == "norm":
        norm = graph.module.get_submodule(node.target)
        return F.batch_norm(part, norm.running_mean[index], norm.running_var[index],
                            None if norm.weight is None else norm.weight[index], None if norm.bias is None else norm.bias[index],
                            False, 0.0, norm.eps)
    if op == "module":
        return graph.module.get_submodule(node.target)(part)
    full = intact[source].shape[dim % intact[source].dim()]

    def value(arg):
        if arg is source:
            return part
        if isinstance(arg, fx.Node):
            if arg in intact and arg not in plain and isinstance(intact[arg], torch.Tensor):
                plain[arg] = intact[arg].contiguous()
            arg = plain[arg] if arg in plain else _constant(graph, arg)
        if isinstance(arg, torch.Tensor) and arg.dim() >= part.dim() and arg.shape[dim % arg.dim()] == full:
            return arg.index_select(dim % arg.dim(), index)
        return arg

    args = fx.node.map_aggregate(node.args, value)
    kwargs = fx.node.map_aggregate(node.kwargs, value)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _constant(graph, node):
    """The value of a node that does not depend on the input (a parameter or buffer)."""
    if node.op != "get_attr":
        raise ValueError(f"{node}: its value was not computed")
    value = graph.module
    for name in node.target.split("."):
        value = getattr(value, name)
    return value


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """A copy with channels-last strides even for one channel (where `contiguous` keeps
    channels-first strides, and a convolution then answers channels-first)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)


def _empty_like_stacked(value: torch.Tensor, k: int) -> torch.Tensor:
    """An empty (K * B, ...) tensor in `value`'s memory layout (channels-last maps stay so)."""
    layout = torch.channels_last if value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return torch.empty((k * value.shape[0], *value.shape[1:]), dtype=value.dtype, device=value.device, memory_format=layout)


def _stack(value: torch.Tensor, k: int) -> torch.Tensor:
    """`value` (B, ...) repeated K times along the batch, a fresh tensor in its memory layout."""
    out = _empty_like_stacked(value, k)
    out.view(k, *value.shape).copy_(value.unsqueeze(0).expand(k, *value.shape))
    return out


def _stacked_masks(batch: list[_Plan], device) -> dict:
    """Per mask node, a (K, units) 0/1 mask over the K conditions of `batch`, and its unit dim."""
    out = {}
    for k, plan in enumerate(batch):
        for node, (count, dim, units) in plan.masks.items():
            if node not in out:
                out[node] = (torch.ones(len(batch), count, device=device), dim)
            out[node][0][k, list(units)] = 0
    return out


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


def _unshared(plans, graph, base, context, apply, data, budget, device, preds, losses) -> None:
    """Untraced: every condition runs the whole network; silencing through forward hooks on the
    silence points (K conditions stacked along the batch), weights through their own copy."""
    modules = dict(base.named_modules())
    with_masks = [p for p in plans if p.masks is not None]
    sample = 4 * data.example(device).numel() * 64  # no graph to measure activations: assume 64x the input
    chunk = max(1, min(len(data), int(budget / 2 // sample)))
    for start, x, y in data.chunks(chunk, device):
        k_max = max(1, int(budget / 2 // (sample * len(x))))
        for i in range(0, len(with_masks), k_max):
            batch = with_masks[i : i + k_max]
            k = len(batch)
            handles = [
                modules[point].register_forward_hook(lambda m, a, o, mask=mask, dim=dim: _apply_mask(o.view(k, len(x), *o.shape[1:]), mask, dim, 1).flatten(0, 1))
                for point, (mask, dim) in _stacked_masks(batch, device).items()
            ]
            try:
                logits = logits_of(base(x.repeat(k, *([1] * (x.dim() - 1)))))
            finally:
                for h in handles:
                    h.remove()
            _store(preds, losses, batch, logits, y, start)
        for plan in plans:
            if plan.masks is None:
                network = plan.weights["network"] if plan.rebuilt else None
                if network is None:
                    state = base.state_dict() | plan.weights
                    logits = torch.func.functional_call(base, state, (x,))
                else:
                    logits = network.to(device)(x)
                _store(preds, losses, [plan], logits_of(logits), y, start)


def _store(preds, losses, batch: list[_Plan], logits: torch.Tensor, y: torch.Tensor, start: int) -> None:
    """Predictions and per-example losses of K conditions' logits (K * B, classes), in one go."""
    k = len(batch)
    logits = logits_of(logits).float()
    predicted = logits.argmax(1).view(k, len(y)).cpu()
    loss = F.cross_entropy(logits, y.repeat(k), reduction="none").view(k, len(y)).cpu()
    for i, plan in enumerate(batch):
        name, end = plan.condition.name, start + len(y)
        preds[name][start:end] = predicted[i]
        losses[name][start:end] = loss[i]
