"""`factorize` (study 5): replace n x n convolutions of m filters on c channels by an n x 1 then a
1 x n convolution (m filters each), where that saves parameters, on any model's module tree.

With groups g, P0 = m(n^2 c/g + 1) parameters become P1 = m(nc/g) + m(nm/g) + 2m (without the
bias terms when the conv has none); the rule of thumb replaces a layer when n > 1 + m/c, or the
layers are listed (`knockout.factorization` does the rewrite). The factorised network is built
from the model's arch and trained from scratch per seed (no pretrained weights), and compared with
the original (`baseline`), trained the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from ..errors import ConfigError
from . import Condition, Context, Target, check_compare, compare_pairs

JOB = "retrain"
NOTEBOOK = "retrain"


@dataclass(frozen=True)
class Spec:
    model: str
    layers: tuple[str, ...] | str  # "auto": the n > 1 + m/c rule
    between: str  # the activation between the two halves, or "none"
    compare: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        layers = d["layers"]
        return cls(d["model"], layers if layers == "auto" else tuple(layers), d["between"], compare_pairs(d))


def needs(spec: Spec) -> set[str]:
    return set()


def _shown(names: list[str]) -> str:
    if len(names) <= 12:
        return ", ".join(names)
    return ", ".join(names[:6] + ["..."] + names[-3:]) + f"; {len(names)} in all, see `knockout summary`"


def check(spec: Spec, target: Target) -> None:
    """The model has n x n `nn.Conv2d` layers; each listed layer is one whose pair keeps its output
    shape (auto: the rule picks at least one); the factorised network builds and runs."""
    from ..factorization import functional_convs
    from ..models import build_like, check_output

    network = target.network
    input_shape = tuple(network.spec["input_shape"])
    rows = layer_rows(network, input_shape, spec.between, spec.layers)
    functional = functional_convs(network)
    calls = (
        f" (it calls conv2d as a function at {', '.join(functional)}: give it nn.Conv2d modules)" if functional else ""
    )
    if not rows:
        raise ConfigError(f"model: factorize splits nn.Conv2d layers, and model {target.name!r} has none{calls}")
    if functional:
        print(
            f"knockout: note: model {target.name!r} calls conv2d as a function ({', '.join(functional)}); factorize"
            " splits its nn.Conv2d modules only, those stay as they are",
            file=sys.stderr,
        )
    by_name = {r["layer"]: r for r in rows}
    if spec.layers == "auto":
        if not any(r["replace"] for r in rows):
            raise ConfigError(
                f"layers: auto picks no layer of model {target.name!r} (no n x n conv with n > 1 + m/c whose pair keeps its shape); list them"
            )
    else:
        modules = dict(network.named_modules())
        for i, layer in enumerate(spec.layers):
            if layer not in modules:
                raise ConfigError(
                    f"layers[{i}]: no layer {layer!r} in model {target.name!r} (conv layers: {_shown(list(by_name))})"
                )
            if layer not in by_name:
                raise ConfigError(f"layers[{i}]: {layer!r} is not a conv layer (a {type(modules[layer]).__name__})")
            if by_name[layer]["note"]:
                raise ConfigError(f"layers[{i}]: {layer!r}: {by_name[layer]['note']}")
    check_compare(spec.compare, {"baseline", "factorized"})
    try:
        arch = factorized_arch(network.spec["arch"], chosen_layers(rows), spec.between)
        check_output(build_like(network, arch), input_shape, network.spec["num_classes"])
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ConfigError(
            f"layers: the factorised network fails: {str(e).splitlines()[0].removeprefix('arch: ')}"
        ) from None


def condition_names(spec: Spec) -> list[str]:
    return ["baseline", "factorized"]


def layer_rows(network, input_shape: tuple[int, ...], between: str = "relu", layers="auto") -> list[dict]:
    """`factorization.conv_rows` of the built network, with `replace`: whether the layer is split
    (auto: the rule, where the pair keeps the shape; else listed)."""
    from ..factorization import chosen, conv_rows

    rows = conv_rows(network, input_shape, between)
    replaced = set(chosen(rows, layers))
    out = []
    for row in rows:  # `replace` beside `rule` and `keeps_shape`, what decides it
        items = list(row.items())
        at = [k for k, _ in items].index("keeps_shape") + 1
        out.append(dict(items[:at] + [("replace", row["layer"] in replaced)] + items[at:]))
    return out


def chosen_layers(rows: list[dict]) -> list[str]:
    return [r["layer"] for r in rows if r["replace"]]


def layer_table(arch, input_shape: tuple[int, ...], layers="auto", between: str = "relu", num_classes: int = 10):
    """One row per conv layer (a DataFrame) of a built network, or of an arch (a preset name or
    dict, built here): layer, n, m, c, m_over_c, groups, dilation, stride, rule (n > 1 + m/c),
    keeps_shape, replace, P0 and P1 by the formulas, and the parameters the built modules have."""
    import pandas as pd
    from torch import nn

    from ..models import build_model, without_weights

    network = arch if isinstance(arch, nn.Module) else build_model(without_weights(arch), input_shape, num_classes)
    return pd.DataFrame(layer_rows(network, tuple(input_shape), between, layers))


def factorized_arch(arch: dict | str, layers: list[str], between: str = "relu") -> dict:
    """The arch without pretrained weights, with its `layers` split (`models.build_model` reads
    `factorized`), so the factorised network is built, and its checkpoint rebuilt, from it."""
    from ..models import resolve_arch, without_weights

    return without_weights(resolve_arch(arch)) | {"factorized": {"layers": list(layers), "between": between}}


def replaced_layers(spec: Spec, context: Context) -> list[str]:
    trained = context.trained
    rows = layer_rows(trained, tuple(trained.spec["input_shape"]), spec.between, spec.layers)
    return chosen_layers(rows)


def conditions(spec: Spec, context: Context) -> list[Condition]:
    layers = replaced_layers(spec, context)
    return [
        Condition("baseline", "baseline", base="init", arch="{}"),
        Condition(
            "factorized",
            "factorized",
            base="init",
            arch=json.dumps({"factorized": {"layers": layers, "between": spec.between}}),
            info=(("layers", ",".join(layers)), ("between", spec.between)),
        ),
    ]


def details(condition: Condition, context: Context) -> list[dict]:
    """The per-layer table (P0, P1, which layers are replaced), for the condition's record."""
    trained = context.trained
    factorized = json.loads(condition.arch).get("factorized") or {"layers": [], "between": "relu"}
    table = layer_table(trained, tuple(trained.spec["input_shape"]), factorized["layers"], factorized["between"])
    return json.loads(table.to_json(orient="records"))


def apply(condition: Condition, context: Context):
    """A freshly initialised network (no pretrained weights), factorised as the condition says,
    seeded per seed."""
    import torch

    from ..models import build_like, resolve_arch, without_weights

    factorized = json.loads(condition.arch).get("factorized")
    arch = without_weights(resolve_arch(context.trained.spec["arch"]))
    if factorized:
        arch = factorized_arch(arch, factorized["layers"], factorized["between"])
    torch.manual_seed(context.seed)
    return build_like(context.trained, arch)
