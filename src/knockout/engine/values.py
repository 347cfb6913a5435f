"""What silenced units output instead of zero (`knockout.studies.Value`): their mean or a Gaussian
of their mean and std on a reference split (`knockout.units.unit_values`), or their activation on
a drawn reference input (resample); the seeded draws, the replacement tensors, and the reference
every engine route is checked against (the whole network with hooks on the silence points).

Draws are common random numbers: donors depend on (seed, draw) and the evaluated example's
position, noise on (seed, layer, draw) and the example's index in its original split, never on
chunking, batching or which other conditions run beside.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import graph_of
from ..readout import Readout
from .conditions import PER, VALUE_KINDS, Condition, ConditionOutput, Value
from ..units import hooked_outputs, silence_outputs


def value_of(condition: Condition) -> Value | None:
    """The condition's `Value`, or None where it is zero."""
    return None if condition.value.kind == "zero" else condition.value


def _seed(*keys) -> int:
    """A 63-bit seed from `keys`, the same in every process (unlike Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") & (2**63 - 1)


def donor_indices(seed: int, draw: int, n: int, n_donors: int) -> torch.Tensor:
    """(n,) int64: the donor (a position of the reference split) of each evaluated position
    0..n-1, drawn uniformly with replacement, seeded by (seed, draw) alone."""
    generator = torch.Generator().manual_seed(_seed("donors", int(seed), int(draw)))
    return torch.randint(int(n_donors), (int(n),), generator=generator)


def noise(seed: int, layer: str, draw: int, example_indices: torch.Tensor, shape) -> torch.Tensor:
    """(B, *shape) float32 standard normal on the CPU: one field per evaluated example, seeded by
    (seed, layer, draw, its index in the original split)."""
    out = torch.empty(len(example_indices), *shape)
    generator = torch.Generator()
    for row, index in zip(out, example_indices.tolist()):
        generator.manual_seed(_seed("noise", int(seed), layer, int(draw), int(index)))
        torch.randn(tuple(shape), generator=generator, out=row)
    return out


def unit_dim(layer_type: str, shape) -> int:
    """The units' dim in one example's output: channels of a conv map, the last of a linear's."""
    return 0 if layer_type == "conv" else len(shape) - 1


def replacement(value, units: torch.Tensor, dim: int, shape, stats=None, donor=None, field=None) -> torch.Tensor:
    """The values `units` (u,) of a layer take, (1 or B, *shape with u along `dim`): `shape` is
    one example's output at the silence point and `dim` its unit dim. mean: `stats` (the layer's
    `unit_values`, on the device in the output's dtype), per channel broadcast or per position;
    noise: mean + std * `field` (B, *shape); resample: `donor` (B, *shape), the silence point's
    output on the examples' donors."""
    if value.kind == "resample":
        return donor.index_select(dim + 1, units)
    per = value.per
    mean, std = stats[f"mean_{per}"], stats[f"std_{per}"]
    if per == "channel":
        view = [1] * len(shape)
        view[dim] = len(units)
        target = list(shape)
        target[dim] = len(units)
        mean = mean[units].view(view).expand(target)
        std = std[units].view(view).expand(target)
    else:
        mean, std = mean.index_select(dim, units), std.index_select(dim, units)
    if value.kind == "mean":
        return mean.unsqueeze(0)
    return torch.addcmul(mean.unsqueeze(0), std.unsqueeze(0), field.index_select(dim + 1, units))


def check_values(conditions, context) -> None:
    """A one-line ValueError for a value the evaluation cannot give: an unknown kind, or what it
    needs missing from the context (unit values for mean and noise, donors for resample)."""
    for condition in conditions:
        value = value_of(condition)
        if value is None:
            continue
        if value.kind not in VALUE_KINDS or value.per not in PER:
            raise ValueError(f"condition {condition.name!r}: unknown value {value.kind!r} per {value.per!r}")
        if condition.replace:
            raise ValueError(f"condition {condition.name!r}: value {value.label} applies to silenced units only")
        if value.kind in ("mean", "noise"):
            if context.unit_values is None:
                raise ValueError(
                    f"condition {condition.name!r}: value {value.label} needs context.unit_values "
                    "(knockout.units.unit_values on the reference split)"
                )
            missing = [layer for layer, _ in condition.silence if layer not in context.unit_values]
            if missing:
                raise ValueError(f"condition {condition.name!r}: no unit values of layer {missing[0]!r}")
        if value.kind == "resample" and context.donors is None:
            raise ValueError(f"condition {condition.name!r}: value resample needs context.donors (the reference split)")


class Replacements:
    """The replacement values of one evaluation (one base network on one split), chunk by
    chunk: statistics moved to the device once, donor outputs and noise fields computed once
    per chunk and (layer, draw) and shared by every condition of the chunk."""

    def __init__(self, conditions, context, model: nn.Module, graph, data, device):
        self.context, self.model, self.graph, self.data, self.device = context, model, graph, data, device
        self.dtype = next(model.parameters()).dtype
        self.shapes, self.dims = {}, {}
        donors: dict[int, set] = {}  # draw -> layers resampled with it
        fields: set = set()  # (layer, draw) with noise
        for condition in conditions:
            value = value_of(condition)
            for layer, _ in condition.silence if value is not None else ():
                if value.kind == "resample":
                    donors.setdefault(value.draw, set()).add(layer)
                elif value.kind == "noise":
                    fields.add((layer, value.draw))
        self.donor_layers = {draw: sorted(layers) for draw, layers in donors.items()}
        self.fields = fields
        self._outputs = {}  # draw -> batch -> {layer: silence point output}
        self._stats = {}
        self._chunk: dict = {}
        self.start, self.b = 0, 0

    def shape(self, layer: str) -> tuple:
        """One example's output shape at `layer`'s silence point."""
        if layer not in self.shapes:
            if self.graph.traced:
                point = self.graph.module_nodes(self.graph.silence_point(layer))[0]
                self.shapes[layer] = tuple(self.graph.info(point).shape)
            elif self.context.unit_values is not None and layer in self.context.unit_values:
                self.shapes[layer] = tuple(self.context.unit_values[layer]["mean_position"].shape)
            elif self.b and any(layer in group for group in self.donor_layers.values()):
                draw = next(d for d, group in self.donor_layers.items() if layer in group)
                self.shapes[layer] = tuple(self.donors(layer, draw).shape[1:])
            else:
                raise KeyError(f"{layer}: its output shape is not known before the first chunk")
        return self.shapes[layer]

    def bytes_per_example(self) -> int:
        """Bytes one evaluated example's donor outputs and noise fields take (4-byte floats)."""
        import math

        layers = [layer for draw, group in self.donor_layers.items() for layer in group]
        layers += [layer for layer, _ in self.fields] * 2  # the field and its replacement
        total = 0
        for layer in layers:
            try:
                total += 4 * math.prod(self.shape(layer))
            except KeyError:  # untraced: not known before the first chunk
                pass
        if self.donor_layers:
            total += 2 * self.data.example("cpu").numel() * 4  # the donors' inputs
        return total

    def begin(self, start: int, b: int) -> None:
        """Set the chunk of evaluated positions start..start+b-1 (drops the last chunk's caches)."""
        self.start, self.b, self._chunk = start, b, {}

    def donors(self, layer: str, draw: int) -> torch.Tensor:
        """(B, *shape): the silence point's output at `layer` on this chunk's donors for `draw`
        (every layer of the draw computed in one pass)."""
        key = ("donors", draw)
        if key not in self._chunk:
            if draw not in self._outputs:
                self._outputs[draw] = silence_outputs(self.model, self.graph, self.donor_layers[draw])
            donors = self.context.donors
            index = donor_indices(self.context.seed, draw, len(self.data), len(donors))[
                self.start : self.start + self.b
            ]
            self._chunk[key] = self._outputs[draw](donors.inputs(index, self.device))
        return self._chunk[key][layer]

    def field(self, layer: str, draw: int) -> torch.Tensor:
        key = ("noise", layer, draw)
        if key not in self._chunk:
            indices = self.data.indices[self.start : self.start + self.b]
            self._chunk[key] = noise(self.context.seed, layer, draw, indices, self.shape(layer)).to(self.device)
        return self._chunk[key]

    def stats(self, layer: str, dtype) -> dict:
        if layer not in self._stats:
            stats = self.context.unit_values[layer]
            self._stats[layer] = {
                k: v.to(self.device, dtype) for k, v in stats.items() if isinstance(v, torch.Tensor) and k != "count"
            }
        return self._stats[layer]

    def of(self, condition, layer: str, units) -> torch.Tensor | None:
        """The replacement of `units` of `layer` for `condition` on this chunk, (1 or B, *shape
        with u units) on the device in the network's dtype: None where its value is zero."""
        value = value_of(condition)
        if value is None:
            return None
        if self.graph.units[layer].layer_type == "heads":
            raise ValueError(f"condition {condition.name!r}: value {value.label} on attention heads is not supported")
        shape = self.shape(layer)
        dim = unit_dim(self.graph.units[layer].layer_type, shape)
        units = torch.as_tensor(list(units), dtype=torch.long, device=self.device)
        if value.kind == "resample":
            return replacement(value, units, dim, shape, donor=self.donors(layer, value.draw).to(self.dtype))
        field = self.field(layer, value.draw).to(self.dtype) if value.kind == "noise" else None
        return replacement(value, units, dim, shape, stats=self.stats(layer, self.dtype), field=field)


@torch.no_grad()
def reference(condition, context, split, batch_size: int):
    """The condition applied on its own (`ConditionOutput`): its base network (with the weights
    it replaces) run whole on each chunk, a forward hook on each silence point putting the
    replacement (zero included) in its units' place; donor outputs from forward hooks on the
    same network run on the donors. What the shared evaluator is checked against."""
    import copy

    from ..data import as_split

    data = as_split(split)
    base = context.network(condition.base).eval()
    device = next(base.parameters()).device
    graph = graph_of(base, data.example(device))
    model = copy.deepcopy(base).eval()
    for layer, source in condition.replace:
        for name in dict.fromkeys([layer, graph.silence_point(layer)]):
            model.get_submodule(name).load_state_dict(context.network(source).get_submodule(name).state_dict())
    value = getattr(condition, "value", None)
    kind = "zero" if value is None else value.kind
    points = {layer: graph.silence_point(layer) for layer, _ in condition.silence}
    dims = {}
    predictions, losses = [], []
    for start, x, y in data.chunks(batch_size, device):
        donor_out = {}
        if kind == "resample":
            index = donor_indices(context.seed, value.draw, len(data), len(context.donors))[start : start + len(x)]
            donor_out = hooked_outputs(model, points, context.donors.inputs(index, device))
        indices = data.indices[start : start + len(x)]

        def replace(module, args, out, layer):
            shape = tuple(out.shape[1:])
            dim = dims.setdefault(layer, unit_dim(graph.units[layer].layer_type, shape))
            units = torch.as_tensor(list(dict(condition.silence)[layer]), dtype=torch.long, device=out.device)
            if kind == "zero":
                new = out.new_zeros(())
            else:
                stats = field = None
                if kind in ("mean", "noise"):
                    stats = {
                        k: v.to(out.device, out.dtype)
                        for k, v in context.unit_values[layer].items()
                        if isinstance(v, torch.Tensor)
                    }
                if kind == "noise":
                    field = noise(context.seed, layer, value.draw, indices, shape).to(out.device, out.dtype)
                donor = donor_out.get(layer)
                new = replacement(value, units, dim, shape, stats=stats, donor=donor, field=field)
            out = out.clone()
            target = [len(out)] + list(shape)
            target[dim + 1] = len(units)
            out.index_copy_(dim + 1, units, new.to(out.dtype).expand(target).contiguous())
            return out

        modules = dict(model.named_modules())
        handles = [
            modules[point].register_forward_hook(lambda m, a, o, layer=layer: replace(m, a, o, layer))
            for layer, point in points.items()
        ]
        try:
            logits = Readout.of(model)(model(x)).float()
        finally:
            for h in handles:
                h.remove()
        predictions.append(logits.argmax(1).cpu())
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
    return ConditionOutput(torch.cat(predictions), torch.cat(losses))
