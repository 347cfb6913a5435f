"""`filter_ablation`: silence sets of units (conv output channels, linear features) of a trained
network, without retraining (studies 1 and 3; Morcos et al. 2018's ablation curves).

Sets (`select`):
  units            explicit indices per layer (study 3's 10 filters across 4 layers)
  lowest_response  the k units with the smallest `statistic` (mean or max activation over the
                   training data, weight_l1, selectivity, importance) per layer (study 1's "bad"
                   filters)
  random           k units per layer, `repeats` seeded draws, optionally excluding another
                   set's units (study 1's control)
  each             every unit alone (the single-unit sweep)
  cumulative       a growing fraction of units, in random order (`repeats` draws) or by a
                   statistic (ascending, or descending with `descending: true`); `importance`,
                   the accuracy drop when a unit alone is silenced, is measured on the unit
                   statistics' images (`unit_stats`: training images by default), never on the
                   evaluated ones, so the curve it orders is not fitted to its own test set

Values (`value`, one or a list): what a silenced unit outputs. `zero` keeps today's names; any
other value's conditions are the set `{set}@{label}` (`low@mean`, `each@mean:conv2:17`), with
`:v{draw}` per draw of a value with `repeats` > 1 (`rand@resample:draw0:v2`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..errors import ConfigError
from . import (
    Condition,
    Context,
    Target,
    Value,
    apply_condition,
    check_compare,
    check_layer,
    compare_pairs,
    layer_units,
)

JOB = "evaluate"
NOTEBOOK = "filter_ablation"
SELECTS = ("units", "lowest_response", "random", "each", "cumulative")
STATISTICS = ("mean", "max", "weight_l1", "selectivity", "dead_fraction", "importance")


@dataclass(frozen=True)
class ValueSpec:
    """One configured ablation value: `studies.Value` without its draw, and how many draws."""

    kind: str = "zero"
    per: str = "channel"
    repeats: int = 1

    @classmethod
    def from_config(cls, entry) -> ValueSpec:
        if isinstance(entry, str):
            return cls(kind=entry)
        return cls(kind=entry["kind"], per=entry.get("per", "channel"), repeats=int(entry.get("repeats", 1)))

    @property
    def label(self) -> str:
        """Its name in set names and tables (`Value.label`: mean, mean-position, ...)."""
        return Value(self.kind, self.per).label

    def set_name(self, name: str) -> str:
        """The set its conditions form: the configured set's own name under zero."""
        return name if self.kind == "zero" else f"{name}@{self.label}"

    def values(self) -> list[Value]:
        """Its `studies.Value`s, one per draw."""
        return [Value(kind=self.kind, per=self.per, draw=draw) for draw in range(self.repeats)]


def value_specs(entry) -> tuple[ValueSpec, ...]:
    """A set's `value` (one, or a list) -> its values, in order, each once."""
    entries = entry if isinstance(entry, list) else [entry]
    return tuple(dict.fromkeys(ValueSpec.from_config(e) for e in entries))


@dataclass(frozen=True)
class FilterSet:
    name: str
    select: str
    layers: tuple[str, ...]
    k: int | None
    units: tuple[tuple[str, tuple[int, ...]], ...]
    statistic: str
    repeats: int
    exclude: str | None
    order: str
    descending: bool
    fractions: tuple[float, ...]
    values: tuple[ValueSpec, ...] = (ValueSpec(),)

    @classmethod
    def from_dict(cls, name: str, s: dict, study_layers: tuple[str, ...]) -> FilterSet:
        units = tuple((layer, tuple(int(u) for u in us)) for layer, us in (s.get("units") or {}).items())
        return cls(
            name=name,
            select=s["select"],
            layers=tuple(s.get("layers") or [layer for layer, _ in units] or study_layers),
            k=s.get("k"),
            units=units,
            statistic=s["statistic"],
            repeats=int(s["repeats"]),
            exclude=s.get("exclude"),
            order=s["order"],
            descending=bool(s["descending"]),
            fractions=tuple(s["fractions"]),
            values=value_specs(s.get("value", "zero")),
        )

    @property
    def ranked(self) -> bool:
        """Whether the set ranks units by a unit statistic (so it needs the statistics)."""
        return self.select == "lowest_response" or (self.select == "cumulative" and self.order != "random")

    @property
    def set_names(self) -> list[str]:
        """The sets its conditions form, one per value (`low`, `low@mean`)."""
        return [value.set_name(self.name) for value in self.values]

    @property
    def valued(self) -> bool:
        """Whether a value other than zero needs the units' values (`unit_values`)."""
        return any(value.kind != "zero" for value in self.values)


@dataclass(frozen=True)
class Spec:
    model: str
    layers: tuple[str, ...]
    sets: tuple[FilterSet, ...]
    compare: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        layers = tuple(d["layers"])
        sets = tuple(FilterSet.from_dict(name, s, layers) for name, s in d["sets"].items())
        return cls(model=d["model"], layers=layers, sets=sets, compare=compare_pairs(d))


def needs(spec: Spec) -> set[str]:
    """Unit statistics when a set ranks units by one; the units' values when a set has a value
    other than zero; the reference split's images (`donors`) when one resamples."""
    values = {v.kind for s in spec.sets for v in s.values}
    return (
        ({"unit_stats"} if any(s.ranked for s in spec.sets) else set())
        | ({"unit_values"} if values - {"zero"} else set())
        | ({"donors"} if "resample" in values else set())
    )


def importance_layers(spec: Spec) -> set[str]:
    """The layers whose units a set ranks by importance (the unit statistics measure it there)."""
    return {
        layer
        for s in spec.sets
        if s.ranked and (s.order if s.select == "cumulative" else s.statistic) == "importance"
        for layer in s.layers
    }


def check(spec: Spec, target: Target) -> None:
    """Layers, units and k against the model; `exclude` and `compare` against the sets."""
    for i, layer in enumerate(spec.layers):
        check_layer(f"layers[{i}]", target, layer)
    check_sets(spec.sets, target)
    check_compare(spec.compare, {"baseline", *(n for s in spec.sets for n in s.set_names)})


def check_values(key: str, fset: FilterSet, target: Target) -> None:
    """A value's keys fit its kind, and a non-zero value is on a conv or linear layer."""
    from ..graph import units_of

    for value in fset.values:
        if value.repeats > 1 and value.kind not in ("resample", "noise"):
            raise ConfigError(f"{key}.value: {value.kind} is one value, repeats is for resample and noise")
        if value.per == "position" and value.kind not in ("mean", "noise"):
            raise ConfigError(f"{key}.value: per: position is for mean and noise, not {value.kind}")
    if fset.valued:
        units = units_of(target.network)
        for layer in fset.layers:
            if units[layer].layer_type == "heads":
                raise ConfigError(
                    f"{key}.value: {layer} is an attention layer; its heads are silenced by zero only "
                    "(a conv or linear layer takes mean, resample and noise)"
                )


def check_sets(sets: tuple[FilterSet, ...], target: Target) -> None:
    by_name = {s.name: s for s in sets}
    for fset in sets:
        key = f"sets.{fset.name}"
        sizes = {layer: check_layer(f"{key}.layers", target, layer) for layer in fset.layers}
        check_values(key, fset, target)
        for layer, units in fset.units:
            bad = [u for u in units if u >= sizes[layer]]
            if bad:
                raise ConfigError(f"{key}.units.{layer}: unit {bad[0]} out of range ({layer} has {sizes[layer]} units)")
        if fset.k is not None:
            for layer, n in sizes.items():
                if fset.k > n:
                    raise ConfigError(f"{key}.k: {fset.k} is more than the {n} units of {layer}")
        if fset.exclude is not None:
            other = by_name.get(fset.exclude)
            if other is None or other.select not in ("units", "lowest_response"):
                raise ConfigError(
                    f"{key}.exclude: {fset.exclude!r} is not a units or lowest_response set of this study"
                )


def _rng(seed: int, *keys: object):
    # A stable seed per (training seed, set, draw): reruns and other sets never share a draw.
    import torch

    text = ":".join(str(k) for k in keys)
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(text.encode()))


def _ranked(context: Context, layer: str, statistic: str, descending: bool) -> list[int]:
    """Units of `layer` ordered by a unit statistic, smallest first (ties by unit index)."""
    stats = context.unit_stats
    if stats is None:
        raise ValueError(f"{layer}: ranking by {statistic!r} needs unit statistics")
    rows = stats[stats["layer"] == layer].sort_values(["unit"])
    if rows.empty:
        raise ValueError(f"{layer}: no unit statistics for this layer")
    rows = rows.sort_values(statistic, ascending=not descending, kind="stable")
    return [int(u) for u in rows["unit"]]


def _fixed_units(fset: FilterSet, context: Context) -> dict[str, list[int]]:
    """The units of a set that is one fixed choice (`units` or `lowest_response`)."""
    if fset.select == "units":
        return {layer: list(us) for layer, us in fset.units}
    if fset.select == "lowest_response":
        return {layer: _ranked(context, layer, fset.statistic, False)[: fset.k] for layer in fset.layers}
    raise ValueError(f"set {fset.name!r} ({fset.select}) is not a fixed set of units and can't be excluded")


def _condition(name: str, fset: FilterSet, units: dict[str, list[int]], **info) -> Condition:
    silence = tuple((layer, tuple(sorted(us))) for layer, us in units.items() if us)
    return Condition(name=name, set=fset.name, silence=silence, info=tuple(info.items()))


def _under_values(fset: FilterSet, zeroed: list[Condition]) -> list[Condition]:
    """A set's conditions (as under zero) under each of its values: zero keeps them as they are;
    another value renames `{set}` to `{set}@{label}` (a suffix `:v{draw}` per draw) and carries
    its `studies.Value`."""
    import dataclasses

    out = []
    for spec in fset.values:
        if spec.kind == "zero":  # today's conditions, names and all
            out += [dataclasses.replace(c, info=c.info + (("value", "zero"),)) for c in zeroed]
            continue
        name = spec.set_name(fset.name)
        for value in spec.values():
            draw = (("value_draw", value.draw),) if spec.repeats > 1 else ()
            suffix = f":v{value.draw}" if spec.repeats > 1 else ""
            for c in zeroed:
                out.append(
                    dataclasses.replace(
                        c,
                        name=name + c.name[len(fset.name) :] + suffix,
                        set=name,
                        info=c.info + (("value", spec.label),) + draw,
                        value=value,
                    )
                )
    return out


def conditions(spec: Spec, context: Context) -> list[Condition]:
    """`baseline` first, then each set's conditions under each of its values."""
    by_name = {s.name: s for s in spec.sets}
    out = [Condition(name="baseline", set="baseline", info=(("value", "zero"),))]
    for fset in spec.sets:
        out += _under_values(fset, _zeroed(fset, context, by_name))
    return out


def _zeroed(fset: FilterSet, context: Context, by_name: dict[str, FilterSet]) -> list[Condition]:
    """A set's conditions under zero (names in the module docstring's order)."""
    import torch

    out = []
    sizes = {layer: layer_units(context.trained, layer) for layer in fset.layers}
    if fset.select in ("units", "lowest_response"):
        units = _fixed_units(fset, context)
        k = fset.k if fset.k is not None else sum(len(u) for u in units.values())
        out.append(
            _condition(
                fset.name, fset, units, k=k, statistic=fset.statistic if fset.select == "lowest_response" else None
            )
        )
    elif fset.select == "random":
        excluded = _fixed_units(by_name[fset.exclude], context) if fset.exclude else {}
        for draw in range(fset.repeats):
            units = {}
            for layer, n in sizes.items():
                allowed = torch.tensor([u for u in range(n) if u not in set(excluded.get(layer, ()))])
                pick = torch.randperm(len(allowed), generator=_rng(context.seed, fset.name, layer, draw))
                units[layer] = allowed[pick[: fset.k]].tolist()
            out.append(_condition(f"{fset.name}:draw{draw}", fset, units, k=fset.k, draw=draw))
    elif fset.select == "each":
        for layer, n in sizes.items():
            for unit in range(n):
                out.append(
                    _condition(f"{fset.name}:{layer}:{unit}", fset, {layer: [unit]}, layer=layer, unit=unit, k=1)
                )
    elif fset.select == "cumulative":
        draws = fset.repeats if fset.order == "random" else 1
        for layer, n in sizes.items():
            for draw in range(draws):
                if fset.order == "random":
                    order = torch.randperm(n, generator=_rng(context.seed, fset.name, layer, draw)).tolist()
                else:
                    order = _ranked(context, layer, fset.order, fset.descending)
                for fraction in fset.fractions:
                    k = round(fraction * n)
                    name = f"{fset.name}:{layer}:f{fraction:g}" + (f":draw{draw}" if fset.order == "random" else "")
                    out.append(
                        _condition(name, fset, {layer: order[:k]}, layer=layer, fraction=fraction, k=k, draw=draw)
                    )
    else:
        raise ValueError(f"set {fset.name!r}: unknown select {fset.select!r}; choose from {SELECTS}")
    return out


def apply(condition: Condition, context: Context):
    """The trained network with the condition's units silenced (a new module)."""
    return apply_condition(condition, context)
