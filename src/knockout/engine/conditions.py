"""What the engine evaluates: a condition (one named variant of a trained network, as plain
data: what it silences, which layers' weights it takes from where, what the silenced units put
out), the networks and statistics it is applied with (`Context`), its outputs, and the
reference implementation of applying it (`apply_condition`), which the shared evaluation is
tested against. The study types (`knockout.studies`) build conditions; nothing here knows them.

No torch at import: the workflow plans with the study types, which build these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


VALUE_KINDS = ("zero", "mean", "resample", "noise")  # what a silenced unit can put out
PER = ("channel", "position")  # what mean and noise values are taken over


@dataclass(frozen=True)
class Value:
    """What silenced units output instead of their activation (at the silence point).

    kind: zero | mean (the unit's mean on a reference split) | resample (its activation on a
    drawn reference input) | noise (a Gaussian of the unit's mean and std);
    per: mean and noise statistics per `channel` (C,) or per `position` (C, H, W);
    draw: resample and noise: which seeded draw (0..repeats-1)."""

    kind: str = "zero"
    per: str = "channel"
    draw: int = 0

    @property
    def label(self) -> str:
        """The value as the tables name it: zero, mean, mean-position, resample, noise, noise-position."""
        if self.kind in ("mean", "noise") and self.per == "position":
            return f"{self.kind}-position"
        return self.kind


@dataclass(frozen=True)
class Condition:
    """One named variant of a trained network.

    name: unique in its study, e.g. `low`, `rand:draw2`, `each:conv2:17`, `reinit:fc2`.
    set: the group it is aggregated and compared in (`low`, `rand`, `reinit`, ...).
    base: the network it starts from: `trained` or `init`.
    silence: per layer, the units (output channels / features) whose output is zeroed.
    replace: per layer, the source its weights come from: `init`, `trained`, `rerandom` or
        `epoch{e}`.
    info: descriptive columns for the tables (layer, unit, k, draw, fraction, epoch, mode).
    arch: for types that build a new network (architecture variants, factorisation), the
        overrides of the model's spec, as JSON.
    value: what the silenced units output (`Value`; zero by default).
    """

    name: str
    set: str
    base: str = "trained"
    silence: tuple[tuple[str, tuple[int, ...]], ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    info: tuple[tuple[str, Any], ...] = field(default=())
    arch: str = ""
    value: Value = Value()

    @property
    def slug(self) -> str:
        """The name as a folder name (`rand:draw2` -> `rand-draw2`)."""
        return slug(self.name)

    @property
    def changed_layers(self) -> list[str]:
        return [layer for layer, _ in self.silence] + [layer for layer, _ in self.replace]


def slug(name: str) -> str:
    """A condition name as a folder name (`rand:draw2` -> `rand-draw2`)."""
    return name.replace(":", "-")


@dataclass
class Context:
    """What a study needs to expand and apply conditions for one model and seed.

    trained / init: the final and step-0 networks; checkpoints: `epoch{e}` -> network;
    rerandom: the network a fresh seed would have started from (for `rerandomize`);
    unit_stats: per-unit statistics (a DataFrame, `knockout.units`), when a set needs them;
    seed: the training seed (draws of random sets are seeded from it);
    unit_values: per layer, the silence points' statistics (`knockout.units.unit_values`), for
    the mean and noise values; donors: the reference split (`knockout.data.Split`, with the
    model's preprocessing) that resample draws its inputs from.
    """

    trained: nn.Module
    init: nn.Module | None = None
    checkpoints: dict[str, nn.Module] = field(default_factory=dict)
    rerandom: nn.Module | None = None
    unit_stats: Any = None
    seed: int = 0
    unit_values: dict | None = None
    donors: Any = None

    def network(self, source: str) -> nn.Module:
        sources = {"trained": self.trained, "init": self.init, "rerandom": self.rerandom}
        net = sources.get(source, self.checkpoints.get(source))
        if net is None:
            raise KeyError(f"no {source!r} network in this context")
        return net


@dataclass(frozen=True)
class ConditionOutput:
    """One condition's outputs on a split: what the tables are made of."""

    predictions: torch.Tensor  # int64 (N,), the predicted class (>= the classes: another output)
    losses: torch.Tensor  # float32 (N,), per-example cross-entropy


def layer_units(model: nn.Module, layer: str) -> int:
    """Number of units of an addressable layer: conv output channels, linear output features,
    attention heads."""
    from ..graph import units_of

    return units_of(model)[layer].count


def silence_point(model: nn.Module, layer: str) -> str:
    """The module whose output is zero for `layer`'s silenced units (`knockout.graph`)."""
    from ..graph import graph_of

    return graph_of(model).silence_point(layer)


def silence_units(model: nn.Module, layer: str, units, point: str | None = None) -> None:
    """Make `units` of `layer` output 0 for every input, in place: their weights and bias, and
    those of the batch norm that reads the layer (`point`, its silence point), which would
    otherwise turn 0 into its bias. An attention head: its value projection, so its slice of the
    attention output is 0."""
    import torch
    from torch import nn

    modules = dict(model.named_modules())
    idx = torch.as_tensor(list(units), dtype=torch.long)
    with torch.no_grad():
        if isinstance(modules[layer], nn.MultiheadAttention):
            attention = modules[layer]
            size = attention.head_dim
            rows = (idx[:, None] * size + torch.arange(size)).flatten()
            weight, offset = (
                (attention.in_proj_weight, 2 * attention.embed_dim)
                if attention._qkv_same_embed_dim
                else (attention.v_proj_weight, 0)
            )
            weight[offset + rows] = 0
            if attention.in_proj_bias is not None:
                attention.in_proj_bias[2 * attention.embed_dim + rows] = 0
            return
        for name in dict.fromkeys([layer, point or layer]):
            for param in ("weight", "bias"):
                tensor = getattr(modules[name], param, None)
                if tensor is not None:
                    tensor[idx] = 0


def copy_layer(dst: nn.Module, src: nn.Module, layer: str, point: str | None = None) -> None:
    """Copy every parameter and buffer of `layer` (and of `point`, its silence point) from src."""
    import torch

    src_modules = dict(src.named_modules())
    with torch.no_grad():
        for name in dict.fromkeys([layer, point or layer]):
            dst.get_submodule(name).load_state_dict(src_modules[name].state_dict())


def apply_condition(condition: Condition, context: Context) -> nn.Module:
    """A new network for `condition`: its base, the replaced layers' weights from their sources,
    the silenced units zeroed. The reference the shared-prefix evaluator is tested against."""
    import copy

    base = context.network(condition.base)
    model = copy.deepcopy(base)
    for layer, source in condition.replace:
        copy_layer(model, context.network(source), layer, silence_point(base, layer))
    for layer, units in condition.silence:
        silence_units(model, layer, units, silence_point(base, layer))
    return model.eval()
