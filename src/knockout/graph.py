"""The traced network: its addressable units, silence points, cuts and the live tensors that
cross them, and receptive fields, found on the graph rather than by layer names, so they hold for
any model a user brings (a torchvision classifier, their own module), not only the presets.

The network is traced with torch.fx as `torchvision.models.feature_extraction` traces it
(torchvision.ops and math wrapped, torch.nn modules kept whole); the traced module is made free
of in-place operations (an in-place ReLU would write into an activation cached for several
conditions) and shares every parameter with the network. A network that cannot be traced gets a
`Graph` with `traced = False`: its units still come from its modules and every study runs through
forward hooks, correct but without sharing.

Units: the output channels of a convolution, the output features of a linear layer, the heads of
an `nn.MultiheadAttention` (a head silenced = its slice of the attention output is zero).
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import weakref
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import fx, nn

log = logging.getLogger("knockout")

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.modules.batchnorm._BatchNorm,)  # per-channel affine in eval mode: part of a unit's output

# Elementwise functions that map 0 to 0 (so a silenced channel stays silenced through them) and
# per-channel pooling: a 0/1 channel mask commutes with both.
ZERO_PRESERVING_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Tanhshrink,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
ZERO_PRESERVING_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.celu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    torch.tanh,
    F.hardswish,
    F.hardtanh,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool2d,
}
ZERO_PRESERVING_METHODS = {"relu", "tanh"}
INPLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


# Modules that act on each position separately (batch norm and dropout as in eval mode): they
# leave a receptive field, and a local perturbation's footprint, unchanged.
ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Identity,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
)
ELEMENTWISE_FUNCTIONS = {
    operator.add,
    operator.mul,
    operator.sub,
    operator.truediv,
    torch.add,
    torch.mul,
    torch.sigmoid,
    F.sigmoid,
    F.hardsigmoid,
    F.dropout,
    *(f for f in ZERO_PRESERVING_FUNCTIONS if "pool" not in f.__name__),
}
ELEMENTWISE_METHODS = {"relu", "sigmoid", "add", "mul", "sub", "div", "contiguous", "clone", "tanh"}


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
        return (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding), _pair(module.dilation))
    if isinstance(module, nn.AvgPool2d):
        return _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), (1, 1)
    return None


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

    def grow(self, params) -> RF:
        """The field after a conv or pool of (kernel, stride, padding, dilation)."""
        size, jump, start = [], [], []
        for a, (k, s, p, d) in enumerate(zip(*params)):
            size.append(self.size[a] + (k - 1) * d * self.jump[a])
            start.append(self.start[a] + ((k - 1) * d / 2 - p) * self.jump[a])
            jump.append(self.jump[a] * s)
        return RF(tuple(size), tuple(jump), tuple(start))


class _Tracer(fx.Tracer):
    """torch.fx's tracer as torchvision's feature extraction sets it up: torchvision.ops and math
    functions are traced as calls, torch.nn modules are kept whole (so every conv is a node)."""

    def __init__(self):
        import torchvision.ops

        super().__init__(autowrap_modules=(math, torchvision.ops))


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


@dataclass
class Unit:
    """An addressable layer: its module, how many units it has, and along which dim of its
    output they lie (1: channels of a conv or batch norm; -1: features of a linear layer)."""

    name: str
    layer_type: str  # conv | linear | heads
    count: int
    module: nn.Module


def units_of(model: nn.Module) -> dict[str, Unit]:
    """Every addressable layer of `model`, by module name, in module order."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, CONVS):
            out[name] = Unit(name, "conv", module.out_channels, module)
        elif isinstance(module, nn.Linear) and not _inside_attention(model, name):
            out[name] = Unit(name, "linear", module.out_features, module)
        elif isinstance(module, nn.MultiheadAttention):
            out[name] = Unit(name, "heads", module.num_heads, module)
    return out


def _inside_attention(model: nn.Module, name: str) -> bool:
    # nn.MultiheadAttention's out_proj is read by the attention function, never called: its heads
    # are the attention's units.
    head, _, leaf = name.rpartition(".")
    return leaf == "out_proj" and isinstance(model.get_submodule(head) if head else model, nn.MultiheadAttention)


@dataclass(frozen=True)
class NodeInfo:
    """One example's value of a traced node (`Graph.info`): the shape and sizes leave out the
    batch dim, found by running batches of 2 and 3."""

    tensor: bool  # False: a shape, a size, a tuple
    batch_dim: int | None
    nbytes: int
    numel: int
    shape: tuple


NO_VALUE = NodeInfo(False, None, 0, 0, ())


@dataclass
class Cut:
    """The network split before node `index`: `live` are the nodes computed before it and read
    after it (the block input and the main path, inside a residual block); `suffix` computes the
    logits from them. `stackable`: every live tensor has the batch on dim 0, so K conditions can
    run as one batch of K x B."""

    index: int
    live: list[fx.Node]
    suffix: fx.GraphModule
    stackable: bool


@dataclass
class Graph:
    """A traced network (see the module docstring)."""

    module: fx.GraphModule | None  # None when the network cannot be traced
    reason: str = ""  # why it cannot
    units: dict[str, Unit] = field(default_factory=dict)
    norms: dict[str, str] = field(default_factory=dict)  # untraced: layer -> the norm reading it
    example: torch.Tensor | None = field(default=None, repr=False)  # one input, for probing
    _cuts: dict = field(default_factory=dict, repr=False)
    memo: dict = field(default_factory=dict, repr=False)  # what the engines derive from it, by key

    @property
    def traced(self) -> bool:
        return self.module is not None

    @cached_property
    def nodes(self) -> list[fx.Node]:
        return list(self.module.graph.nodes)

    @cached_property
    def position(self) -> dict[fx.Node, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    def module_nodes(self, name: str) -> list[fx.Node]:
        """The nodes that call module `name` (a module called twice has two)."""
        return [n for n in self.nodes if n.op == "call_module" and n.target == name]

    def output_node(self, name: str) -> fx.Node:
        """The node whose value is module `name`'s output: its call, or for a module traced
        through (a block, a stage) the last node inside it."""
        inside = [n for n in self.nodes if any(k.split("@")[0] == name for k in n.meta.get("nn_module_stack", {}))]
        if not inside:
            raise KeyError(f"no module {name!r} in the traced network")
        return inside[-1]

    # --- receptive fields ---------------------------------------------------------------------

    def receptive_field(self, name: str) -> RF | None:
        """The receptive field of module `name`'s output positions (an image input), followed
        through convolutions, pooling, elementwise operations and branches (the largest field
        where branches meet); None where the output has no spatial map any more (a linear layer
        after flattening, global pooling) or an operation is not understood. Untraced: None."""
        if not self.traced:
            return None
        target = self.output_node(name)
        fields: dict[fx.Node, RF | None] = {}
        for node in self.nodes[: self.position[target] + 1]:
            fields[node] = self._field(node, fields)
        return fields[target]

    def _field(self, node: fx.Node, fields: dict) -> RF | None:
        if node.op == "placeholder":
            return RF((1, 1), (1, 1), (0.0, 0.0))
        spatial = [fields.get(a) for a in node.all_input_nodes if a in self.dependent and self._is_tensor_node(a)]
        if node.op == "call_module":
            module = self.module.get_submodule(node.target)
            params = spatial_params(module)
            if params is not None:
                return spatial[0].grow(params) if spatial and spatial[0] else None
            elementwise = isinstance(module, ELEMENTWISE)
        elif node.op == "call_function":
            elementwise = node.target in ELEMENTWISE_FUNCTIONS or (
                node.target is torch.cat and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1
            )
        else:
            elementwise = node.op == "call_method" and node.target in ELEMENTWISE_METHODS
        if not elementwise or not spatial or None in spatial:
            return None  # a branch through global pooling (a squeeze-excitation gate) sees the whole image
        return max(spatial, key=lambda f: f.size)  # where branches meet: the larger field

    def _is_tensor_node(self, node: fx.Node) -> bool:
        """Whether `node`'s value is a tensor (not a shape or a size): known once probed."""
        return self.example is None or self.info(node).tensor

    # --- silence points -----------------------------------------------------------------------

    def silence_point(self, layer: str) -> str:
        """The module whose output must be zero for `layer`'s units to be silent: a batch norm
        that alone reads the layer's output (a zero channel would come out of it as its bias),
        else the layer itself."""
        if not self.traced:
            return self.norms.get(layer, layer)
        point = layer
        for node in self.module_nodes(layer):
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(self.module.get_submodule(users[0].target), NORMS)
            ):
                point = users[0].target
        return point

    def mask_node(self, layer: str) -> fx.Node:
        """The node after which a channel mask of `layer`'s units can be applied with the same
        result as silencing them: the silence point, carried on through single-reader,
        zero-preserving, per-channel operations (activations, pooling, dropout) so that these are
        shared by every condition too."""
        nodes = self.module_nodes(self.silence_point(layer))
        if len(nodes) != 1:
            raise ValueError(f"{layer}: its silence point is called {len(nodes)} times")
        node = nodes[0]
        while len(node.users) == 1:
            user = next(iter(node.users))
            if not self.zero_preserving(user, node):
                break
            node = user
        return node

    def flattens(self, node: fx.Node, source: fx.Node) -> bool:
        """nn.Flatten(), torch.flatten(x, 1) or x.flatten(1): the map of each example as one vector."""
        if not node.args or node.args[0] is not source:
            return False
        if node.op == "call_module":
            module = self.module.get_submodule(node.target)
            return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        is_flatten = (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"
        )
        return is_flatten and start == 1 and end == -1

    def response_node(self, layer: str) -> fx.Node:
        """The node whose value is `layer`'s response: the activation that alone reads its
        silence point, else the silence point itself."""
        node = self.module_nodes(self.silence_point(layer))[-1]
        if len(node.users) == 1:
            user = next(iter(node.users))
            module = self.module.get_submodule(user.target) if user.op == "call_module" else None
            activation = (
                module is not None
                and isinstance(module, ELEMENTWISE)
                and not isinstance(module, (*NORMS, nn.Identity, nn.modules.dropout._DropoutNd))
            ) or (
                user.op == "call_function"
                and user.target in ELEMENTWISE_FUNCTIONS
                and user.target
                not in (operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, F.dropout)
            )
            if activation and user.args and user.args[0] is node:
                return user
        return node

    def zero_preserving(self, node: fx.Node, source: fx.Node) -> bool:
        if not node.args or node.args[0] is not source or any(isinstance(a, fx.Node) for a in node.args[1:]):
            return False
        if node.op == "call_module":
            module = self.module.get_submodule(node.target)
            if isinstance(module, nn.Hardtanh):
                return module.min_val <= 0 <= module.max_val
            return isinstance(module, ZERO_PRESERVING_MODULES)
        if node.op == "call_function":
            return node.target in ZERO_PRESERVING_FUNCTIONS
        return node.op == "call_method" and node.target in ZERO_PRESERVING_METHODS

    # --- cuts ---------------------------------------------------------------------------------

    def cut(self, index: int) -> Cut:
        """The network split before node `index` (cached)."""
        if index not in self._cuts:
            self._cuts[index] = self._split(index)
        return self._cuts[index]

    @cached_property
    def _probed(self) -> dict[fx.Node, NodeInfo]:
        return _probe(self)

    def info(self, node: fx.Node) -> NodeInfo:
        """What one example's value of `node` is (tensor or not, batch dim, bytes, elements,
        shape), from two example batches (2 and 3 images) pushed through the traced module."""
        return self._probed.get(node, NO_VALUE)

    def _split(self, index: int) -> Cut:
        live, suffix, stackable = self.split(set(self.nodes[index:]))
        return Cut(index, live, suffix, stackable)

    def split(self, run: set[fx.Node]) -> tuple[list[fx.Node], fx.GraphModule, bool]:
        """(live, suffix, stackable): the nodes `run` as a module of the input-dependent tensors
        they read from outside (`live`, in graph order); parameters, constants and shapes they
        read are recomputed inside it (cheap, and free of the batch). `stackable`: every live
        tensor has the batch on dim 0."""
        needed: dict[fx.Node, None] = {}
        pulled: set[fx.Node] = set()

        def need(node: fx.Node) -> None:
            if (node in run and node.op != "placeholder") or node in pulled or node in needed:
                return
            if node in self.dependent and self.info(node).tensor or node.op == "placeholder":
                needed[node] = None
                return
            pulled.add(node)
            for arg in node.all_input_nodes:
                need(arg)

        for node in run:
            for arg in node.all_input_nodes:
                need(arg)
        live = sorted(needed, key=self.position.get)
        body = [n for n in self.nodes if n.op != "placeholder" and (n in run or n in pulled)]
        return live, self.subgraph(live, body), all(self.info(n).batch_dim == 0 for n in live)

    @cached_property
    def dependent(self) -> set[fx.Node]:
        """The nodes whose value depends on the input."""
        out = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(a in out for a in node.all_input_nodes):
                out.add(node)
        return out

    def values(self, nodes: list[fx.Node]) -> fx.GraphModule:
        """A module computing the values of `nodes` (a tuple, in that order) from the input,
        running only what they need."""
        wanted = set()
        todo = list(nodes)
        while todo:
            node = todo.pop()
            if node not in wanted:
                wanted.add(node)
                todo += node.all_input_nodes
        return self.subgraph([], [n for n in self.nodes if n in wanted], result=tuple(nodes))

    def subgraph(self, inputs: list[fx.Node], body: list[fx.Node], result=None) -> fx.GraphModule:
        """`body` (nodes of this graph, in order) copied into a module taking `inputs` as its
        arguments and returning `result` (a node or a tuple of them; else body's own output)."""
        graph = fx.Graph()
        env = {n: graph.placeholder(f"in_{n.name}") for n in inputs}
        for node in body:
            env[node] = graph.node_copy(node, env.__getitem__)
        if result is not None:
            graph.output(fx.node.map_arg(result, env.__getitem__))
        return fx.GraphModule(self.module, graph)

    # --- arithmetic: multiply-adds per example -----------------------------------------------------

    def macs(self, node: fx.Node) -> int:
        """Multiply-adds of one example through `node`: a conv or linear module's (output
        elements x inputs per output), 0 for anything else."""
        if node.op != "call_module":
            return 0
        module = self.module.get_submodule(node.target)
        outputs = self.info(node).numel
        if isinstance(module, CONVS):
            return outputs * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        if isinstance(module, nn.Linear):
            return outputs * module.in_features
        return 0

    @cached_property
    def forward_macs(self) -> int:
        """Multiply-adds of one example's whole forward."""
        return sum(self.macs(n) for n in self.nodes)

    def descendants(self, node: fx.Node) -> set[fx.Node]:
        out, todo = set(), list(node.users)
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += list(n.users)
        return out

    def window_macs(self, rects: torch.Tensor) -> int:
        """Multiply-adds that occluding the input rectangles `rects` (P, 4: rows r0..r1-1, cols
        c0..c1-1), one forward each, cannot avoid: of each conv, the output positions whose
        receptive field meets the rectangle (the rest equal the intact image's); every other
        operation with multiply-adds (a linear layer, a conv past an operation whose field is
        not known) in full. Summed over the rectangles."""
        fields: dict[fx.Node, RF | None] = {}
        rects = rects.to(torch.float64)
        total = 0.0
        for node in self.nodes:
            fields[node] = self._field(node, fields)
            macs = self.macs(node)
            field, shape = fields[node], self.info(node).shape
            if not macs:
                continue
            if field is None or len(shape) != 3:
                total += macs * len(rects)
                continue
            share = torch.ones(len(rects), dtype=torch.float64)
            for axis, n in enumerate(shape[1:]):
                centre = field.start[axis] + torch.arange(n, dtype=torch.float64) * field.jump[axis]
                lo, hi = centre - (field.size[axis] - 1) / 2, centre + (field.size[axis] - 1) / 2
                meets = (hi[None] >= rects[:, 2 * axis, None]) & (lo[None] <= rects[:, 2 * axis + 1, None] - 1)
                share = share * meets.sum(1).double() / n
            total += macs * float(share.sum())
        return int(total)

    def bytes_per_example(self, index: int) -> int:
        """Bytes one example needs running the suffix from `index`: its live tensors and the
        largest two node outputs after the cut (an op's input and output)."""
        live = sum(self.info(n).nbytes for n in self.cut(index).live)
        after = sorted((self.info(n).nbytes for n in self.nodes[index:] if self.info(n).tensor), reverse=True)
        return live + sum(after[:2])


# --- folding batch norms ------------------------------------------------------------------------


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` for evaluation with every batch norm that alone reads a convolution
    folded into it (the convolution's weights and bias scaled and shifted, the norm an
    identity): the same function in eval mode, one memory pass fewer per norm."""
    folded = copy.deepcopy(model).eval()
    graph = graph_of(folded)
    for name, unit in graph.units.items():
        if unit.layer_type != "conv":
            continue
        point = graph.silence_point(name)
        if point == name or len(graph.module_nodes(name)) != 1:
            continue
        conv, norm = unit.module, folded.get_submodule(point)
        if not norm.track_running_stats or norm.running_mean is None:
            continue
        with torch.no_grad():
            scale = (norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)) / torch.sqrt(
                norm.running_var + norm.eps
            )
            shift = (
                norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
            ) - norm.running_mean * scale
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias = nn.Parameter(bias * scale + shift)
        parent, _, leaf = point.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, leaf, nn.Identity())
    _GRAPHS.pop(folded, None)  # traced before the norms became identities
    return folded


# --- tracing ------------------------------------------------------------------------------------

_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graph_of(model: nn.Module, example: torch.Tensor | None = None) -> Graph:
    """The (cached) traced graph of `model`; `example`: one input batch, needed the first time
    (its shape is what the network is probed with)."""
    graph = _GRAPHS.get(model)
    if graph is None:
        graph = _GRAPHS[model] = _trace(model)
    if example is not None and graph.example is None:
        graph.example = example[:1].detach()
        if not graph.traced:
            graph.norms = _norms_by_hooks(model, graph.example)
    return graph


def _trace(model: nn.Module) -> Graph:
    units = units_of(model)
    was_training = model.training
    model.eval()
    try:
        traced = _Tracer().trace(model)
        module = fx.GraphModule(model, traced, class_name=type(model).__name__)
        _functional(module)
        return Graph(module, units=units)
    except Exception as e:  # any failure to trace: hooks it is
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning(
            "%s cannot be traced (%s); its studies run through forward hooks, without sharing",
            type(model).__name__,
            reason,
        )
        return Graph(None, reason=reason, units=units)
    finally:
        model.train(was_training)


def _functional(module: fx.GraphModule) -> None:
    """Rewrite in-place operations as out-of-place ones, so no node writes into another's value."""
    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in INPLACE_FUNCTIONS:
            node.target = INPLACE_FUNCTIONS[node.target]
        elif node.op in ("call_function", "call_method") and node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_module" and getattr(module.get_submodule(node.target), "inplace", False):
            # a parameter-free activation: an out-of-place copy of it, beside the original
            copy_ = copy.copy(module.get_submodule(node.target))
            copy_.inplace = False
            name = node.target.replace(".", "_") + "_out_of_place"
            module.add_submodule(name, copy_)
            node.target = name
        elif node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__"):
            raise ValueError(f"in-place {node.target} on {node.args[0]}")
    graph.lint()
    module.recompile()


def _probe(graph: Graph) -> dict[fx.Node, NodeInfo]:
    """Run the traced module on 2 and then 3 copies of the example input, recording each node's
    output: whether it is a tensor, which dim is the batch, and its bytes per example."""
    if graph.example is None:
        raise ValueError("the graph has no example input yet (graph_of(model, example))")
    runs = []
    for batch in (2, 3):
        seen: dict[fx.Node, object] = {}
        interpreter = _Recorder(graph.module, seen)
        with torch.no_grad():
            interpreter.run(graph.example.expand(batch, *graph.example.shape[1:]).clone())
        runs.append(seen)
    info = {}
    for node, a in runs[0].items():
        b = runs[1][node]
        if _is_tensor(a) and _is_tensor(b) and a.dim() == b.dim():
            dims = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
            batch = dims[0] if len(dims) == 1 and b.shape[dims[0]] * 2 == a.shape[dims[0]] * 3 else None
            shape = tuple(n for d, n in enumerate(b.shape) if d != batch)
            numel = b.numel() - a.numel()
            info[node] = NodeInfo(True, batch, numel * a.element_size(), numel, shape)
        else:
            info[node] = NO_VALUE
    return info


class _Recorder(fx.Interpreter):
    def __init__(self, module, seen):
        super().__init__(module)
        self.seen = seen

    def run_node(self, node):
        value = super().run_node(node)
        self.seen[node] = value
        return value


# --- networks that cannot be traced: hooks ------------------------------------------------------


def _norms_by_hooks(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Without a graph: for each conv or linear layer, the batch norm whose input is the very
    tensor the layer put out, found by running the network once with forward hooks."""
    outputs: dict[str, torch.Tensor] = {}
    inputs: list[tuple[str, torch.Tensor]] = []

    def record(name):
        def hook(module, args, output):
            if isinstance(module, NORMS) and args and _is_tensor(args[0]):
                inputs.append((name, args[0]))
            elif _is_tensor(output):
                outputs[name] = output

        return hook

    handles = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, (*CONVS, nn.Linear, *NORMS))
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {layer: norm for layer, out in outputs.items() for norm, arg in inputs if arg is out}
