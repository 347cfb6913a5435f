"""Study types: one module each, all of one protocol (like Captum's single `attribute()` verb).

A study type is the module of this package named as its `type` in config.yaml. It has:

  KIND                   "evaluate": its conditions are evaluated on the test set;
                         "retrain": each condition is trained, then evaluated;
                         "probe": arrays are computed per seed (maps, patches)
  NOTEBOOK               the notebook of notebooks/ that analyses it
  AGGREGATE              (optional, default True) whether its per-seed tables are summarised
                         over seeds (`results/tables/{name}.csv`)
  Spec                   a frozen dataclass; `Spec.from_dict(entry)` from the validated config
                         entry (every default filled by the schema); the functions below take it
  needs(spec) -> set     what its jobs read besides the trained network and the data, a subset
                         of NEEDS
  check(spec, target)    checks against the model the study names (a `Target`); raises
                         ConfigError("key: problem") with the key relative to the study
  conditions(spec, context) -> list[Condition]             (evaluate, retrain)
  apply(condition, context) -> nn.Module                   (evaluate, retrain): the network to
                         evaluate, or to train, for one condition
  condition_names(spec) -> list[str]                       (retrain): the conditions' names,
                         one training job each (in the folder `Condition.slug`)
  details(condition, context) -> list[dict]                (retrain, optional): more of the
                         condition's record (`condition.json`), e.g. factorize's layer table
  compute(spec, context, test, meta, budget_mb) -> (table, arrays)    (probe)

The workflow plans from KIND, NOTEBOOK, AGGREGATE, needs() and condition_names() alone
(`knockout.plan`, without torch), so a study module imports torch inside its functions only.
A condition is plain data (what it silences, which layers' weights it takes from where): the
evaluator reads that data to share work across conditions; `apply` is the reference it is
tested against. To add a type: one module here and its entry in `knockout/schema.yaml`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..catalog import DataInfo  # noqa: F401  (re-exported: a Target's data)
from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

KINDS = ("evaluate", "retrain", "probe")
NEEDS = ("init", "checkpoints", "unit_stats", "unit_values", "donors")  # what a study's jobs may read besides final.pt
PROTOCOL = {
    "evaluate": ("Spec", "needs", "check", "conditions", "apply"),
    "retrain": ("Spec", "needs", "check", "conditions", "apply", "condition_names"),
    "probe": ("Spec", "needs", "check", "compute"),
}


def study_type(name: str) -> ModuleType:
    """The module of study type `name`, checked against the protocol; ConfigError if unknown."""
    known = study_types()
    if name not in known:
        raise ConfigError(f"unknown study type {name!r}; choose from {', '.join(sorted(known))}")
    module = importlib.import_module(f"{__name__}.{name}")
    kind = getattr(module, "KIND", None)
    if kind not in KINDS:
        raise ConfigError(f"study type {name!r}: KIND must be one of {KINDS}, not {kind!r}")
    missing = [attr for attr in ("NOTEBOOK", *PROTOCOL[kind]) if not hasattr(module, attr)]
    if missing:
        raise ConfigError(f"study type {name!r} ({kind}) lacks {', '.join(missing)}")
    return module


def study_types() -> list[str]:
    """The modules of this package, by name (each is a study type)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


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


@dataclass(frozen=True)
class Target:
    """The model a study names, as its checks see it: freshly built from its spec."""

    name: str  # its key in config.yaml
    network: nn.Module
    train: dict  # its resolved training settings
    data: DataInfo
    provides: frozenset[str] = frozenset(NEEDS)  # of NEEDS, what its runs have (init, checkpoints)


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


# --- Checks shared by the types ------------------------------------------------------------------


def check_layer(key: str, target: Target, layer: str) -> int:
    """The number of units of `layer` in the target model; ConfigError naming `key` otherwise."""
    from ..graph import units_of

    units = units_of(target.network)
    if layer not in units:
        valid = list(units)
        shown = (
            ", ".join(valid)
            if len(valid) <= 12
            else ", ".join(valid[:6] + ["..."] + valid[-3:]) + f"; {len(valid)} in all, see `knockout summary`"
        )
        raise ConfigError(f"{key}: no layer {layer!r} in model {target.name!r} (layers: {shown})")
    return units[layer].count


def check_compare(pairs, names) -> None:
    """Every name of the `compare` pairs is one of `names` (the study's sets)."""
    for i, pair in enumerate(pairs):
        for name in pair:
            if name not in names:
                raise ConfigError(f"compare[{i}]: no set {name!r} (have {', '.join(sorted(names))})")


def compare_pairs(d: dict) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(p) for p in d["compare"])


# --- The reference implementation of applying a condition ----------------------------------------


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
