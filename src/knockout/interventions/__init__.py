"""Intervention families, all of one shape (like Captum's single `attribute()` verb).

A family is a module with:
  - `Spec`: a frozen dataclass built from the config entry with `Spec.from_dict(d)`;
  - `conditions(spec, context) -> list[Condition]`: the named conditions the spec expands to;
  - `apply(condition, context) -> nn.Module`: the model to evaluate for one condition.

A `Condition` is plain data: which network it starts from, which units it silences and which
layers' weights it takes from elsewhere. The evaluator reads that data to share work across
conditions (prefix caching, batched masks); `apply` is the reference it is tested against.
To add a family: write one module here with those three names (it is found by its file name)
and add its keys to the schema.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import silence_point


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
    arch: for families that build a new network (architecture variants, factorisation), the
        overrides of the model's spec, as JSON.
    """

    name: str
    set: str
    base: str = "trained"
    silence: tuple[tuple[str, tuple[int, ...]], ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    info: tuple[tuple[str, Any], ...] = field(default=())
    arch: str = ""

    @property
    def slug(self) -> str:
        """The name as a folder name (`rand:draw2` -> `rand-draw2`)."""
        return self.name.replace(":", "-")

    @property
    def changed_layers(self) -> list[str]:
        return [layer for layer, _ in self.silence] + [layer for layer, _ in self.replace]


@dataclass
class Context:
    """What a family needs to expand and apply conditions for one model and seed.

    trained / init: the final and step-0 networks; checkpoints: `epoch{e}` -> network;
    rerandom: the network a fresh seed would have started from (for `rerandomize`);
    unit_stats: per-unit statistics (a DataFrame, `knockout.units`), when a set needs them;
    seed: the training seed (draws of random sets are seeded from it).
    """

    trained: nn.Module
    init: nn.Module | None = None
    checkpoints: dict[str, nn.Module] = field(default_factory=dict)
    rerandom: nn.Module | None = None
    unit_stats: Any = None
    seed: int = 0

    def network(self, source: str) -> nn.Module:
        sources = {"trained": self.trained, "init": self.init, "rerandom": self.rerandom}
        net = sources.get(source, self.checkpoints.get(source))
        if net is None:
            raise KeyError(f"no {source!r} network in this context")
        return net


def layer_units(model: nn.Module, layer: str) -> int:
    """Number of units of a conv (output channels) or linear (output features) layer."""
    module = dict(model.named_modules())[layer]
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


@torch.no_grad()
def silence_units(model: nn.Module, layer: str, units: list[int] | tuple[int, ...]) -> None:
    """Make `units` of `layer` output 0 for every input, in place: their weights and bias, and a
    following batch norm's scale and shift (which would otherwise turn 0 into its bias)."""
    modules = dict(model.named_modules())
    idx = torch.as_tensor(list(units), dtype=torch.long)
    target = modules[layer]
    target.weight[idx] = 0
    if target.bias is not None:
        target.bias[idx] = 0
    norm_name = silence_point(model, layer)
    if norm_name != layer:
        norm = modules[norm_name]
        norm.weight[idx] = 0
        norm.bias[idx] = 0


@torch.no_grad()
def copy_layer(dst: nn.Module, src: nn.Module, layer: str) -> None:
    """Copy every parameter and buffer of `layer` (and its following batch norm) from src to dst."""
    names = {layer, silence_point(dst, layer)}
    src_modules = dict(src.named_modules())
    for name, module in dst.named_modules():
        if name in names:
            module.load_state_dict(src_modules[name].state_dict())


def apply_condition(condition: Condition, context: Context) -> nn.Module:
    """The reference implementation of every family's `apply`: a new model for `condition`."""
    model = copy.deepcopy(context.network(condition.base))
    for layer, source in condition.replace:
        copy_layer(model, context.network(source), layer)
    for layer, units in condition.silence:
        silence_units(model, layer, units)
    return model.eval()


def families() -> dict:
    """Every module of this package that has the family shape, by module name."""
    import importlib
    import pkgutil

    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in ("Spec", "conditions", "apply")):
            found[info.name] = module
    return found


def family(kind: str):
    found = families()
    if kind not in found:
        raise ValueError(f"unknown intervention type {kind!r}; choose from {sorted(found)}")
    return found[kind]
