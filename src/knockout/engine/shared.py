"""A change followed along the traced graph, and only what it changes recomputed: the shared
evaluation behind every family (`engine.evaluate` for conditions, `engine.occlusion` for
occluded windows), planned here and run here.

Two kinds of change are followed (`knockout.graph` gives the graph, its node shapes and its cuts):

  * `Spread`: units of one layer silenced. The change stays in the units' channels through the
    per-channel operations after the silence point (normalisation, activations, pooling, a
    residual add, concatenation, flattening); each linear operation it reaches is its intact
    output plus its response to those channels (one input channel's work per unit); only the
    nodes that depend on those operations run whole.
  * `Footprint`: a rectangle of the input changed (an occluded window). The change stays in a
    region of each feature map, which grows through each convolution and pooling as its
    receptive field says; each op on the way is computed on a crop of its intact input with
    the changed region pasted in, until the region covers the map or an op is not local; the
    rest runs on whole maps.

Both stack K changes along the batch and keep maps in channels-last memory (oneDNN's
convolutions and pooling are 2-3x faster on the CPU that way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..graph import (
    ELEMENTWISE,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    NORMS,
    ZERO_PRESERVING_FUNCTIONS,
    ZERO_PRESERVING_MODULES,
    Graph,
    spatial_params,
)

# --- memory layout and stacking -----------------------------------------------------------------


def fast_layout(x):
    """A map in channels-last memory (every activation computed from it keeps the layout)."""
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A copy with channels-last strides even for one channel (where `contiguous` keeps
    channels-first strides, and a convolution then answers channels-first)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)


def empty_stacked(value: torch.Tensor, k: int) -> torch.Tensor:
    """An empty (K * B, ...) tensor in `value`'s memory layout (channels-last maps stay so)."""
    layout = (
        torch.channels_last
        if value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return torch.empty(
        (k * value.shape[0], *value.shape[1:]), dtype=value.dtype, device=value.device, memory_format=layout
    )


def stacked(value: torch.Tensor, k: int) -> torch.Tensor:
    """`value` (B, ...) repeated K times along the batch, a fresh tensor in its memory layout."""
    out = empty_stacked(value, k)
    out.view(k, *value.shape).copy_(value.unsqueeze(0).expand(k, *value.shape))
    return out


def _constant(graph: Graph, node: fx.Node):
    """The value of a node that does not depend on the input (a parameter or buffer)."""
    if node.op != "get_attr":
        raise ValueError(f"{node}: its value was not computed")
    value = graph.module
    for name in node.target.split("."):
        value = getattr(value, name)
    return value


# --- units of one layer silenced: the spread --------------------------------------------------------


@dataclass
class Spread:
    """How silencing units of one layer changes the network (`spread`).

    source: its silence point; confined: the nodes whose change stays in the units' channels,
    each (op, unit dim, channel offset, width: features per unit after flattening, else 1);
    linear: the linear operations the change first reaches, each (layer type, channels it reads);
    changed: the nodes that change everywhere, in order (ending with the output), run by
    `suffix` from `inputs`: linear, confined and unchanged nodes' values."""

    layer: str
    source: fx.Node
    dim: int
    confined: dict
    linear: dict
    changed: list
    inputs: list
    suffix: fx.GraphModule

    def needs(self) -> list[fx.Node]:
        """The intact values the spread is computed from: the confined nodes and what they read,
        the linear operations' outputs, and the suffix's inputs."""
        nodes = list(self.confined) + list(self.linear) + list(self.inputs)
        for node in self.confined:
            nodes += [arg for arg in node.all_input_nodes if arg not in self.confined]
        return list(dict.fromkeys(n for n in nodes if n.op != "get_attr"))


def spread(graph: Graph, layer: str) -> Spread | None:
    """How silencing units of `layer` spreads through the network (cached on the graph): from
    its silence point, whose units become 0, through per-channel operations that keep the change
    in those units' channels (normalisation, activations, pooling, dropout, adds and products
    with unchanged tensors, concatenation, flattening), to the linear operations it first reaches
    (convolutions, linear layers), whose outputs change everywhere, as does all that depends on
    them. None when the layer's silence point is called more than once."""
    key = ("spread", layer)
    if key not in graph.memo:
        graph.memo[key] = _spread(graph, layer)
    return graph.memo[key]


def _spread(graph: Graph, layer: str) -> Spread | None:
    points = graph.module_nodes(graph.silence_point(layer))
    if len(points) != 1:
        return None
    source = points[0]
    dim = 1 if graph.units[layer].layer_type == "conv" else -1
    confined: dict[fx.Node, tuple] = {source: ("source", dim, 0, 1)}  # node -> (op, dim, offset, per-unit width)
    linear: dict[fx.Node, tuple] = {}  # node -> (layer type, channels it reads: the share one unit costs)
    changed: list[fx.Node] = []
    for node in graph.nodes[graph.position[source] + 1 :]:
        inputs = node.all_input_nodes
        if any(n in linear or n in changed for n in inputs):
            changed.append(node)
            continue
        read = [n for n in inputs if n in confined]
        if not read:
            continue
        entry = _confinable(graph, node, read[0], confined) if len(read) == 1 else None
        reader = _linear_reader(graph, node, read[0], confined) if len(read) == 1 and entry is None else None
        if entry is not None:
            confined[node] = entry
        elif reader is not None:
            linear[node] = reader
        else:
            changed.append(node)
    if not linear and not changed:
        return None
    return Spread(layer, source, dim, confined, linear, changed, *_changed_module(graph, changed))


def _confinable(graph: Graph, node: fx.Node, source: fx.Node, confined: dict):
    """(op, dim, offset, width) when `node` keeps a change of `source`'s units in their channels
    (reading them once, as its first argument or an operand), else None."""
    _, dim, offset, width = confined[source]
    args = [a for a in node.args if isinstance(a, fx.Node)]
    if dim == 1 and graph.flattens(node, source):  # nn.Flatten, torch.flatten or .flatten from dim 1
        return ("flatten", 1, offset, None)
    if node.op == "call_module":
        module = graph.module.get_submodule(node.target)
        if not node.args or node.args[0] is not source or len(node.all_input_nodes) != 1:
            return None
        if isinstance(module, NORMS) and dim == 1 and width == 1:
            return ("norm", dim, offset, width)
        if isinstance(module, (ELEMENTWISE, ZERO_PRESERVING_MODULES)) and width == 1:
            return ("module", dim, offset, width)
        return None
    if node.op == "call_function" and node.target is torch.cat and width == 1:
        tensors, cat_dim = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if (
            cat_dim not in (dim, dim % 4 if dim < 0 else dim)
            or cat_dim != 1
            or [t is source for t in tensors].count(True) != 1
        ):
            return None
        before = tensors[: [t is source for t in tensors].index(True)]
        shift = sum(graph.info(t).shape[0] for t in before)
        return ("cat", dim, offset + shift, width)
    functions = (ELEMENTWISE_FUNCTIONS | ZERO_PRESERVING_FUNCTIONS) - {torch.cat}
    if (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in ELEMENTWISE_METHODS
    ):
        if width == 1 and args.count(source) == 1 and all(a is source or a not in confined for a in args):
            return ("function", dim, offset, width)
    return None


def _linear_reader(graph: Graph, node: fx.Node, source: fx.Node, confined: dict):
    """(layer type, channels) when `node` is a linear operation reading `source` alone."""
    if node.op != "call_module" or not node.args or node.args[0] is not source or len(node.all_input_nodes) != 1:
        return None
    module = graph.module.get_submodule(node.target)
    op, dim, _, width = confined[source]
    if (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and dim == 1
        and width == 1
    ):
        return ("conv", module.in_channels)
    if isinstance(module, nn.Linear) and op == "flatten":
        return ("flat", graph.info(source).shape[0] // max(1, _flat_width(graph, source)))
    if isinstance(module, nn.Linear) and dim == -1:
        return ("linear", module.in_features)
    if isinstance(module, nn.Linear) and dim == 1 and len(graph.info(source).shape) == 1:  # (B, F): a Linear's units
        return ("linear", module.in_features)
    return None


def _flat_width(graph: Graph, node: fx.Node) -> int:
    """Features per unit after flattening a (C, H, W) map: H x W."""
    shape = graph.info(node.args[0]).shape
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _changed_module(graph: Graph, changed: list[fx.Node]) -> tuple[list[fx.Node], fx.GraphModule]:
    """(inputs, module): the changed nodes as a module of their outside inputs (in order)."""
    inside = set(changed)
    inputs: dict[fx.Node, None] = {}
    constants: dict[fx.Node, None] = {}  # parameters and traced constants: read in the module
    for node in changed:
        for arg in node.all_input_nodes:
            if arg not in inside:
                (constants if arg.op == "get_attr" else inputs)[arg] = None
    result = changed[-1] if changed and changed[-1].op != "output" else None
    return list(inputs), graph.subgraph(list(inputs), [*constants, *changed], result)


def unit_bound(graph: Graph, layer: str) -> tuple[int, int]:
    """(full, unavoidable): the multiply-adds of one example's forward, and those a condition
    silencing one unit of `layer` cannot avoid: one input channel's share of each linear
    operation the change first reaches, and all of what depends on those operations."""
    full = graph.forward_macs
    found = spread(graph, layer)
    if found is None:
        return full, sum(graph.macs(n) for n in graph.descendants(graph.mask_node(layer)))
    unavoidable = sum(graph.macs(n) for n in found.changed)
    for node in found.linear:
        unavoidable += graph.macs(node) // max(1, found.linear[node][1])
    return full, unavoidable


def spread_bytes(graph: Graph, found: Spread) -> int:
    """Bytes one example needs per condition: the suffix's inputs and its largest two outputs."""
    inputs = sum(graph.info(n).nbytes for n in found.inputs)
    outputs = sorted((graph.info(n).nbytes for n in found.changed), reverse=True)
    return inputs + sum(outputs[:2])


def spread_stackable(graph: Graph, found: Spread) -> bool:
    """Whether K conditions can run as one stacked batch (every tensor input batched on dim 0)."""
    return all(graph.info(n).batch_dim == 0 for n in found.inputs)


def spread_forward(
    units: list[tuple[int, ...]], graph: Graph, found: Spread, intact: dict, plain: dict, parts: list | None = None
) -> torch.Tensor:
    """Logits of K conditions that each silence `units[k]` of the spread's layer: along the
    spread, the new values of the units' channels alone (zero at the silence point, then each
    per-channel operation on that slice), each linear operation's intact output plus its
    response to the slice's change (one input channel's work per unit), then the nodes that
    change everywhere, for the K conditions at once (stacked along the batch). `intact`: the
    intact values of `found.needs()`; `plain`: a cache of them in channels-first memory.
    `parts`: per condition, its units' new values at the silence point (1 or B, u, ...) in place
    of zero (`engine.values`), or None (zero); each linear op then adds its response to
    value - intact."""
    k = len(units)
    for node in found.confined:
        if node not in plain:
            plain[node] = intact[node].contiguous()
    parts = parts or [None] * k
    new = [_spread_values(graph, found, intact, plain, list(u), part) for u, part in zip(units, parts)]
    inputs = []
    for node in found.inputs:
        value = intact[node]
        if not isinstance(value, torch.Tensor):  # a size read off a map (then K is 1: not stackable)
            inputs.append(value)
            continue
        out = empty_stacked(value, k)
        slices = out.view(k, *value.shape)
        for i, values in enumerate(new):
            if node in found.linear:
                torch.add(value, values[node], out=slices[i])
            elif node in found.confined:
                slices[i].copy_(value)
                index, part = values[node]
                dim = found.confined[node][1] % value.dim()
                if part is None:
                    slices[i].index_fill_(dim, index, 0.0)
                else:
                    slices[i].index_copy_(dim, index, part.expand(_slice_shape(value, dim, len(index))))
            else:
                slices[i].copy_(value)
        inputs.append(out)
    return found.suffix(*inputs)


def _spread_values(graph: Graph, found: Spread, intact: dict, plain: dict, units: list[int], source_part=None) -> dict:
    """For one condition: per confined node, (channel index, new values of those channels), and
    per linear operation, its response to the change. `source_part`: the units' new values at
    the silence point (None: zero)."""
    values = {}  # node -> (channel index, new values; None: all zero, as long as the silence lasts)
    for node, (op, dim, offset, width) in found.confined.items():
        if op == "source":
            values[node] = (torch.as_tensor(units, device=intact[node].device), source_part)
            continue
        source = next(a for a in node.all_input_nodes if a in found.confined and a in values)
        index, part = values[source]
        if op == "flatten":
            per_unit = _flat_width(graph, node)
            index = (index[:, None] * per_unit + torch.arange(per_unit, device=index.device)).flatten()
            values[node] = (index, None if part is None else part.flatten(1))
        elif op == "cat":
            values[node] = (index + (offset - found.confined[source][2]), part)
        elif part is None and graph.zero_preserving(node, source):
            values[node] = (index, None)
        else:
            if part is None:
                part = _zeros_slice(intact[source], dim, len(index))
            values[node] = (index, _on_slice(graph, node, op, source, part, index, dim, intact, plain))
    for node, (layer_type, _) in found.linear.items():
        source = node.args[0]
        index, part = values[source]
        old = plain[source].index_select(found.confined[source][1] % plain[source].dim(), index)
        change = -old if part is None else part - old
        module = graph.module.get_submodule(node.target)
        if layer_type == "conv":  # channels-last in, channels-last out: the layout of the stack it is added into
            weight, change = channels_last(module.weight[:, index]), channels_last(change)
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


def _on_slice(
    graph: Graph, node, op: str, source, part: torch.Tensor, index: torch.Tensor, dim: int, intact: dict, plain: dict
):
    """`node`'s operation on the channels `index` alone: `part` in place of its source, every
    other tensor it reads sliced the same way where it has those channels."""
    if op == "norm":
        norm = graph.module.get_submodule(node.target)
        return F.batch_norm(
            part,
            norm.running_mean[index],
            norm.running_var[index],
            None if norm.weight is None else norm.weight[index],
            None if norm.bias is None else norm.bias[index],
            False,
            0.0,
            norm.eps,
        )
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

    return run_node(graph, node, value)


# --- a rectangle of the input changed: the footprint -------------------------------------------


@dataclass
class Region:
    """The changed part of an (H, W) feature map per change: rows y0..y1-1, cols x0..x1-1 (each
    (P,) long, exact); computed as patches of one common size h x w at rows y.., cols x.. (the
    exact span shifted back inside the map where the common size reaches past its border)."""

    y0: torch.Tensor
    y1: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    H: int
    W: int

    def __post_init__(self):
        self.h = min(self.H, max(1, int((self.y1 - self.y0).max()))) if len(self.y0) else 1
        self.w = min(self.W, max(1, int((self.x1 - self.x0).max()))) if len(self.x0) else 1
        self.y, self.x = self.y0.clamp(max=self.H - self.h), self.x0.clamp(max=self.W - self.w)

    @property
    def full(self) -> bool:
        return self.h == self.H and self.w == self.W

    def same(self, other: Region) -> bool:
        return all(
            torch.equal(a, b)
            for a, b in zip((self.y0, self.y1, self.x0, self.x1), (other.y0, other.y1, other.x0, other.x1))
        )


def _affected(
    lo: torch.Tensor, hi: torch.Tensor, k: int, s: int, p: int, d: int, n_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows first..last-1 of a k/s/p/d conv or pool that read input rows lo..hi-1."""
    first = (-torch.div(-(lo + p - (k - 1) * d), s, rounding_mode="floor")).clamp(min=0)  # ceil division
    last = torch.div(hi - 1 + p, s, rounding_mode="floor").clamp(max=n_out - 1) + 1
    return first, torch.maximum(last, first + 1)


def _union(regions: list[Region]) -> Region:
    """Each change's smallest span holding its span in every one of `regions`."""
    first = regions[0]
    if all(r.same(first) for r in regions[1:]):
        return first
    lo = lambda name: torch.stack([getattr(r, name) for r in regions]).amin(0)  # noqa: E731
    hi = lambda name: torch.stack([getattr(r, name) for r in regions]).amax(0)  # noqa: E731
    return Region(lo("y0"), hi("y1"), lo("x0"), hi("x1"), first.H, first.W)


def _spatial(module: nn.Module):
    """(fn on an unpadded crop, (kernel, stride, padding, dilation), padding value) of a conv or
    pool that can run on crops, else None."""
    params = spatial_params(module)
    if params is None:
        return None
    k, s, _, d = params
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return (lambda t, m=module: F.conv2d(t, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)), params, 0.0
    if isinstance(module, nn.MaxPool2d) and not module.ceil_mode and not module.return_indices:
        return (lambda t: F.max_pool2d(t, k, s, 0, d)), params, float("-inf")
    if isinstance(module, nn.AvgPool2d) and not module.ceil_mode and (module.count_include_pad or params[2] == (0, 0)):
        return (lambda t, div=module.divisor_override: F.avg_pool2d(t, k, s, 0, False, True, div)), params, 0.0
    return None


@dataclass
class Step:
    """One node computed on patches: `input` (the image's changed rectangle), `spatial` (a conv
    or pool on a crop of its padded intact input, the input's patch pasted in) or `pointwise`
    (its own operation on its inputs' patches, each widened to its region where smaller)."""

    node: fx.Node
    how: str  # input | spatial | pointwise
    region: Region
    reads: tuple[fx.Node, ...] = ()
    spatial: tuple | None = None  # (fn, (kernel, stride, padding, dilation), padding value)
    widen: tuple[bool, ...] = ()


@dataclass
class Footprint:
    """How changing rectangles of the input changes the network (`footprint`): the steps run on
    patches, in graph order; `live`: the patched nodes the rest reads, pasted into their intact
    maps; `suffix` runs the rest on whole maps; `stores`: the intact maps the steps read, by
    (node, padding, padding value)."""

    steps: list[Step]
    regions: dict
    live: list
    suffix: fx.GraphModule
    stores: set
    edge: Region | None = None  # where the change first covers a whole map (the rest runs whole from there)


def footprint(graph: Graph, rects: torch.Tensor) -> Footprint:
    """How changing each rectangle `rects` (P, 4: rows r0..r1-1, cols c0..c1-1) of the input
    spreads: every op after the input that is local (a conv with zero padding, a max or average
    pool, an elementwise module, function or method, a concatenation of channels) and reads
    only patched nodes runs on patches while its region is not its whole map; all else runs on
    whole maps."""
    nodes = graph.nodes
    source = nodes[0]
    _, H, W = graph.info(source).shape
    region = Region(rects[:, 0], rects[:, 1], rects[:, 2], rects[:, 3], H, W)
    steps, regions, rest, edge = [Step(source, "input", region)], {source: region}, set(), None
    for node in nodes[1:]:
        if node not in graph.dependent:
            continue
        reads = [a for a in node.all_input_nodes if a in graph.dependent]
        step = _local_step(graph, node, reads, regions) if all(a in regions for a in reads) else None
        if step is None or step.region.full:
            rest.add(node)
            edge = edge or (step and step.region)
        else:
            steps.append(step)
            regions[node] = step.region
    key = ("split", frozenset(rest))
    if key not in graph.memo:
        graph.memo[key] = graph.split(rest)
    live, suffix, _ = graph.memo[key]
    stores = {(source, (0, 0), 0.0)} | {(n, (0, 0), 0.0) for n in live}
    for step in steps:
        if step.how == "spatial":
            stores.add((step.reads[0], step.spatial[1][2], step.spatial[2]))
        stores |= {(a, (0, 0), 0.0) for a, wide in zip(step.reads, step.widen) if wide}
    return Footprint(steps, regions, live, suffix, stores, edge)


def footprints(graph: Graph, rects: torch.Tensor, classes: int = 4) -> list[tuple[torch.Tensor, Footprint]]:
    """The rectangles grouped by how far their change reaches where it first covers a whole map
    (a window near the border reaches less of each map), each group (the indices into `rects`)
    with its own footprint: patches have one size per group, so grouping saves what one common
    size would compute in vain. Per axis, the reaches are merged into at most `classes` ranges
    of about equal counts, so that a group still fills a forward with many rows."""
    whole = footprint(graph, rects)
    if whole.edge is None:
        return [(torch.arange(len(rects), device=rects.device), whole)]
    edge = whole.edge
    key = _reach_class(edge.y1 - edge.y0, classes) * classes + _reach_class(edge.x1 - edge.x0, classes)
    groups = [(key == k).nonzero()[:, 0] for k in key.unique()]
    return [(index, footprint(graph, rects[index])) for index in groups]


def footprint_macs(graph: Graph, groups: list[tuple[torch.Tensor, Footprint]]) -> int:
    """Multiply-adds the grouped footprints compute (each patched node on its patches, the
    rest on whole maps), summed over the rectangles."""
    total = 0.0
    for index, found in groups:
        for node in graph.nodes:
            macs, region = graph.macs(node), found.regions.get(node)
            share = 1.0 if region is None else region.h * region.w / (region.H * region.W)
            total += macs * share * len(index)
    return int(total)


def _reach_class(sizes: torch.Tensor, classes: int) -> torch.Tensor:
    """Each size's class: consecutive sizes (ascending) merged until a class holds 1/`classes`
    of them."""
    values, counts = sizes.unique(return_counts=True)
    out, total, current = torch.empty_like(values), 0, 0
    for i, n in enumerate(counts.tolist()):
        if total >= (current + 1) * len(sizes) / classes:
            current += 1
        out[i] = current
        total += n
    return out[torch.searchsorted(values, sizes)]


def _is_map(graph: Graph, node: fx.Node) -> bool:
    info = graph.info(node)
    return info.tensor and info.batch_dim == 0 and len(info.shape) == 3


def _local_step(graph: Graph, node: fx.Node, reads: list, regions: dict) -> Step | None:
    if not _is_map(graph, node) or not reads or not all(_is_map(graph, a) for a in reads):
        return None
    _, H, W = graph.info(node).shape
    if node.op == "call_module":
        if len(reads) != 1 or len(node.args) != 1 or node.args[0] is not reads[0] or node.kwargs:
            return None
        module, region = graph.module.get_submodule(node.target), regions[reads[0]]
        if isinstance(module, ELEMENTWISE):
            return Step(node, "pointwise", region, (reads[0],), widen=(False,))
        spatial = _spatial(module)
        if spatial is None:
            return None
        k, s, p, d = spatial[1]
        y0, y1 = _affected(region.y0, region.y1, k[0], s[0], p[0], d[0], H)
        x0, x1 = _affected(region.x0, region.x1, k[1], s[1], p[1], d[1], W)
        return Step(node, "spatial", Region(y0, y1, x0, x1, H, W), (reads[0],), spatial)
    if node.op == "call_function" and node.target is torch.cat:
        local = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) in (1, -3)
    else:
        local = (node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS) or (
            node.op == "call_method" and node.target in ELEMENTWISE_METHODS
        )
    for arg in node.all_input_nodes:  # a constant must act the same at every position
        if arg not in graph.dependent:
            shape = graph.info(arg).shape if graph.info(arg).tensor else ()
            local &= arg.op == "get_attr" and (math.prod(shape) == 1 or (len(shape) >= 2 and shape[-2:] == (1, 1)))
    inputs = [regions[a] for a in reads]
    if not local or any((r.H, r.W) != (H, W) for r in inputs):
        return None
    region = _union(inputs)
    return Step(node, "pointwise", region, tuple(reads), widen=tuple(not r.same(region) for r in inputs))


def footprint_stores(graph: Graph, found: list[Footprint], images: torch.Tensor) -> dict:
    """The intact maps the footprints read, for `images`: padded, in channels-last memory
    (N, H + 2p, W + 2p, C), by (node, padding, padding value)."""
    keys = sorted(set().union(*(f.stores for f in found)), key=lambda k: (graph.position[k[0]], k[1], k[2]))
    nodes = list(dict.fromkeys(k[0] for k in keys))
    key = ("values", tuple(nodes))
    if key not in graph.memo:  # built once per graph, not per group of images
        graph.memo[key] = graph.values(nodes)
    values = dict(zip(nodes, graph.memo[key](images)))
    out = {}
    for node, (ph, pw), fill in keys:
        out[(node, (ph, pw), fill)] = F.pad(values[node], (pw, pw, ph, ph), value=fill).permute(0, 2, 3, 1).contiguous()
    return out


def store_bytes(graph: Graph, found: list[Footprint]) -> int:
    """Bytes of one image's intact maps (`footprint_stores`)."""
    total = 0
    for node, (ph, pw), _ in set().union(*(f.stores for f in found)):
        c, h, w = graph.info(node).shape
        total += c * (h + 2 * ph) * (w + 2 * pw) * graph.info(node).nbytes // max(1, graph.info(node).numel)
    return total


def row_bytes(graph: Graph, found: Footprint) -> int:
    """Bytes one changed image needs on whole maps: its live maps and 3 of the largest after."""
    live = sum(graph.info(n).nbytes for n in found.live)
    after = max((graph.info(n).nbytes for n in graph.nodes if n not in found.regions), default=0)
    return live + 3 * after


def _crop(store: torch.Tensor, img, top, left, ch: int, cw: int) -> torch.Tensor:
    """Crops (B, ch, cw, C) of the stored maps of images `img`, at rows top.., cols left.. (B,);
    gathered as rows of C values from the flattened store (5x faster than indexing 3 dims)."""
    if ch == store.shape[1] and cw == store.shape[2]:
        return store[img]
    _, hp, wp, c = store.shape
    rows = top[:, None] + torch.arange(ch, device=img.device)
    cols = left[:, None] + torch.arange(cw, device=img.device)
    flat = ((img[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]).view(-1)
    return store.view(-1, c).index_select(0, flat).view(len(img), ch, cw, c)


def _paste(crop: torch.Tensor, top, left, patch: torch.Tensor, y, x) -> torch.Tensor:
    """`patch` (B, C, h, w), at rows y.., cols x.. of the stored map, pasted into `crop` (at
    top, left), keeping only what lies inside the crop (a stride may skip rows)."""
    b, ch, cw, c = crop.shape
    u = (y - top)[:, None] + torch.arange(patch.shape[2], device=y.device)
    v = (x - left)[:, None] + torch.arange(patch.shape[3], device=y.device)
    flat = (torch.arange(b, device=y.device)[:, None, None] * ch + u[:, :, None]) * cw + v[:, None, :]
    values = patch.permute(0, 2, 3, 1).reshape(-1, c)
    if bool((u >= 0).all() & (u < ch).all() & (v >= 0).all() & (v < cw).all()):
        crop.view(-1, c).index_copy_(0, flat.view(-1), values)
    else:
        keep = (((u >= 0) & (u < ch))[:, :, None] & ((v >= 0) & (v < cw))[:, None, :]).view(-1)
        crop.view(-1, c).index_copy_(0, flat.view(-1)[keep], values[keep])
    return crop


def footprint_forward(
    graph: Graph, found: Footprint, stores: dict, rects: torch.Tensor, sel, img, fill
) -> torch.Tensor:
    """Logits (B, classes) of the stored images `img` (B,) with rectangles `rects[sel]` filled
    with `fill` (C,): the steps on patches, then the rest on whole maps."""
    patches = {}
    zero = torch.zeros_like(sel)
    for step in found.steps:
        r = step.region
        y, x = r.y[sel], r.x[sel]
        if step.how == "input":
            crop = _crop(stores[(step.node, (0, 0), 0.0)], img, y, x, r.h, r.w)
            rows = y[:, None] + torch.arange(r.h, device=y.device)
            cols = x[:, None] + torch.arange(r.w, device=y.device)
            filled = inside(rects[sel], rows, cols)
            patches[step.node] = torch.where(filled[..., None], fill, crop).permute(0, 3, 1, 2)
        elif step.how == "spatial":
            source = step.reads[0]
            fn, (k, s, p, d), value = step.spatial
            rin = found.regions[source]
            top, left = y * s[0], x * s[1]  # the crop's origin in the padded map
            ch, cw = (r.h - 1) * s[0] + (k[0] - 1) * d[0] + 1, (r.w - 1) * s[1] + (k[1] - 1) * d[1] + 1
            crop = _crop(stores[(source, p, value)], img, top, left, ch, cw)
            crop = _paste(crop, top, left, patches[source], rin.y[sel] + p[0], rin.x[sel] + p[1])
            patches[step.node] = fn(crop.permute(0, 3, 1, 2))
        else:
            widened = {}
            for arg, wide in zip(step.reads, step.widen):
                patch = patches[arg]
                if wide:
                    rin = found.regions[arg]
                    crop = _crop(stores[(arg, (0, 0), 0.0)], img, y, x, r.h, r.w)
                    patch = _paste(crop, y, x, patch, rin.y[sel], rin.x[sel]).permute(0, 3, 1, 2)
                widened[arg] = patch
            patches[step.node] = run_node(graph, step.node, lambda arg: _patch_or_constant(graph, arg, widened))
    inputs = []
    for node in found.live:
        r = found.regions[node]
        full = _paste(stores[(node, (0, 0), 0.0)][img], zero, zero, patches[node], r.y[sel], r.x[sel])
        inputs.append(full.permute(0, 3, 1, 2))
    return found.suffix(*inputs)


def run_node(graph: Graph, node: fx.Node, value) -> object:
    """`node`'s own operation with `value(arg)` in place of each argument (a node or a constant)."""
    args = fx.node.map_aggregate(node.args, value)
    kwargs = fx.node.map_aggregate(node.kwargs, value)
    if node.op == "call_module":
        return graph.module.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _patch_or_constant(graph: Graph, arg, patches: dict):
    if isinstance(arg, fx.Node):
        return patches[arg] if arg in patches else _constant(graph, arg)
    return arg


def inside(rects: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool: whether pixel (rows[b, i], cols[b, j]) lies in rectangle rects[b] (rows
    r0..r1-1, cols c0..c1-1); rows (B, h) and cols (B, w), or (h,) and (w,) for every b."""
    rows, cols = rows.expand(len(rects), -1), cols.expand(len(rects), -1)
    in_rows = (rows >= rects[:, 0:1]) & (rows < rects[:, 1:2])
    in_cols = (cols >= rects[:, 2:3]) & (cols < rects[:, 3:4])
    return in_rows[:, :, None] & in_cols[:, None, :]
