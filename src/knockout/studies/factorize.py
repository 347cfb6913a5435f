"""`factorize` (study 5): replace an n x n convolution of m filters on c channels by an n x 1
then a 1 x n convolution (m filters each), where that saves parameters.

P0 = m(n^2 c + 1) parameters become P1 = m(nc + nm + 2); the rule of thumb replaces a layer when
n > 1 + m/c, or the layers are listed. The factorised network is trained from scratch per seed
and compared with the original (`baseline`), trained the same way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from ..errors import ConfigError
from . import Condition, Context, Target, check_compare, check_layer, compare_pairs

KIND = "retrain"
NOTEBOOK = "retrain"


@dataclass(frozen=True)
class Spec:
    model: str
    layers: tuple[str, ...] | str  # "auto": the n > 1 + m/c rule
    compare: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        layers = d["layers"]
        return cls(d["model"], layers if layers == "auto" else tuple(layers), compare_pairs(d))


def needs(spec: Spec) -> set[str]:
    return set()


def check(spec: Spec, target: Target) -> None:
    """A `cnn` model, and conv layers of it when they are listed."""
    from ..models import resolve_arch

    if resolve_arch(target.network.spec["arch"]).get("type") != "cnn":
        raise ConfigError(f"model: factorize needs a cnn model, {target.name!r} is not one")
    if spec.layers != "auto":
        for i, layer in enumerate(spec.layers):
            if not layer.startswith("conv"):
                raise ConfigError(f"layers[{i}]: {layer!r} is not a conv layer")
            check_layer(f"layers[{i}]", target, layer)
    check_compare(spec.compare, {"baseline", "factorized"})


def condition_names(spec: Spec) -> list[str]:
    return ["baseline", "factorized"]


def _conv_entries(spec: dict) -> list[dict]:
    return [{"channels": c} if isinstance(c, int) else dict(c) for c in spec["conv"]]


def layer_table(arch: dict | str, input_shape: tuple[int, ...], layers="auto"):
    """One row per conv layer of a `cnn` spec (a DataFrame): layer, n, m, c, rule (n > 1 + m/c),
    replace, P0 and P1 by the formulas, and the parameters the built modules really have."""
    import pandas as pd
    import torch

    from ..models import build_model, count_parameters, resolve_arch

    spec = resolve_arch(arch)
    if spec.get("type") != "cnn":
        raise ValueError(f"factorize needs a cnn spec, not {spec.get('type')!r}")
    model = build_model(spec, input_shape, 10)
    rows = []
    c = input_shape[0]
    for i, entry in enumerate(_conv_entries(spec), start=1):
        name = f"conv{i}"
        conv = getattr(model, name)
        kh, kw = conv.kernel_size
        m = conv.out_channels
        n = kh if kh == kw else None
        rule = n is not None and n > 1 + m / c
        replace = (rule if layers == "auto" else name in layers) and n is not None and n > 1
        p1_module = None
        if n is not None and n > 1:
            pair = [
                torch.nn.Conv2d(c, m, (n, 1), bias=conv.bias is not None),
                torch.nn.Conv2d(m, m, (1, n), bias=conv.bias is not None),
            ]
            p1_module = sum(count_parameters(p) for p in pair)
        rows.append(
            {
                "layer": name,
                "n": n if n is not None else f"{kh}x{kw}",
                "m": m,
                "c": c,
                "m_over_c": m / c,
                "rule": rule,
                "replace": replace,
                "P0": m * (n * n * c + 1) if n else None,
                "P1": m * (n * c + n * m + 2) if n else None,
                "P0_module": count_parameters(conv),
                "P1_module": p1_module,
            }
        )
        c = m
    return pd.DataFrame(rows)


def factorized_spec(arch: dict | str, layers: list[str]) -> dict:
    """The spec with each listed conv replaced by (n x 1, then 1 x n); the pooling, dropout and
    batch norm of the original follow the second."""
    from ..models import resolve_arch

    spec = copy.deepcopy(resolve_arch(arch))
    convs = []
    for i, entry in enumerate(_conv_entries(spec), start=1):
        if f"conv{i}" not in layers:
            convs.append(entry)
            continue
        k = entry.get("kernel", spec.get("kernel", 3))
        n = k if isinstance(k, int) else k[0]
        pad = entry.get("padding", spec.get("padding", 0))
        # Each half pads only along its long side, so the pair keeps the original output shape.
        first = {"channels": entry["channels"], "kernel": [n, 1], "padding": [pad, 0], "pool": 0, "conv_dropout": 0}
        first["batch_norm"] = entry.get("batch_norm", spec.get("batch_norm", False))
        second = {**entry, "kernel": [1, n], "padding": [0, pad]}
        convs.append(first)
        convs.append(second)
    spec["conv"] = convs
    return spec


def replaced_layers(spec: Spec, context: Context) -> list[str]:
    arch = context.trained.spec["arch"]
    table = layer_table(arch, tuple(context.trained.spec["input_shape"]), spec.layers)
    return list(table.loc[table["replace"], "layer"])


def conditions(spec: Spec, context: Context) -> list[Condition]:
    layers = replaced_layers(spec, context)
    return [
        Condition("baseline", "baseline", base="init", arch="{}"),
        Condition(
            "factorized",
            "factorized",
            base="init",
            arch=json.dumps({"factorize": layers}),
            info=(("layers", ",".join(layers)),),
        ),
    ]


def details(condition: Condition, context: Context) -> list[dict]:
    """The per-layer table (P0, P1, which layers are replaced), for the condition's record."""
    spec = context.trained.spec
    table = layer_table(spec["arch"], tuple(spec["input_shape"]), json.loads(condition.arch).get("factorize", []) or ())
    return json.loads(table.to_json(orient="records"))


def apply(condition: Condition, context: Context):
    """A freshly initialised network, factorised as the condition says, seeded per seed."""
    import torch

    from ..models import build_model, resolve_arch

    spec = context.trained.spec
    layers = json.loads(condition.arch).get("factorize", [])
    arch = factorized_spec(spec["arch"], layers) if layers else resolve_arch(spec["arch"])
    torch.manual_seed(context.seed)
    return build_model(arch, tuple(spec["input_shape"]), spec["num_classes"])
