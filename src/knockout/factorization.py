"""n x n convolutions split into an n x 1 then a 1 x n convolution (study 5), on the module tree of
any network (knockout's own `cnn`, a torchvision model, the user's own): every `nn.Conv2d` by its
qualified name, the names `knockout summary` and `graph.units_of` use.

With groups g, a conv of m filters on c channels has P0 = m(n^2 c/g + b) parameters (b = 1 with a
bias, else 0) and its pair P1 = m(n c/g) + m(n m/g) + 2mb; P1 < P0 exactly when n > 1 + m/c (the
rule). Convolutions called functionally (`F.conv2d`) have no module to replace: `functional_convs`
names them so the study can say so.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .activations import ACTIVATIONS, activation

BETWEEN = ("none", *ACTIVATIONS)  # what runs between the two halves


class FactorizedConv2d(nn.Sequential):
    """An n x n convolution as `first` (n x 1: the original stride, padding along the height, the
    height's dilation), an optional activation `between`, then `second` (1 x n, stride 1, padding
    along the width, the width's dilation); groups, bias and padding mode as the original's."""

    def __init__(self, conv: nn.Conv2d, between: str = "relu", device: torch.device | str | None = None):
        n = conv.kernel_size[0]
        c, m = conv.in_channels, conv.out_channels
        if isinstance(conv.padding, str):  # 'same' / 'valid' mean the same along each half's long side
            first_padding = second_padding = conv.padding
        else:
            first_padding, second_padding = (conv.padding[0], 0), (0, conv.padding[1])
        common = {
            "groups": conv.groups,
            "bias": conv.bias is not None,
            "padding_mode": conv.padding_mode,
            "device": device or conv.weight.device,
            "dtype": conv.weight.dtype,
        }
        stages = [
            (
                "first",
                nn.Conv2d(
                    c, m, (n, 1), stride=conv.stride, padding=first_padding, dilation=(conv.dilation[0], 1), **common
                ),
            )
        ]
        if between != "none":
            stages.append(("between", activation(between)))
        stages.append(
            (
                "second",
                nn.Conv2d(m, m, (1, n), stride=1, padding=second_padding, dilation=(1, conv.dilation[1]), **common),
            )
        )
        super().__init__(OrderedDict(stages))


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every `nn.Conv2d` of `model` (subclasses too), by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def functional_convs(model: nn.Module) -> list[str]:
    """The traced graph's nodes that call a convolution as a function (`F.conv2d`, `torch.conv2d`):
    no module of the tree to replace; empty when the model cannot be traced."""
    from .graph import graph_of

    graph = graph_of(model)
    if not graph.traced:
        return []
    calls = {torch.conv2d, torch.nn.functional.conv2d}
    return [node.name for node in graph.nodes if node.op == "call_function" and node.target in calls]


def formula_parameters(n: int, m: int, c: int, groups: int = 1, bias: bool = True) -> tuple[int, int]:
    """(P0, P1): the parameters of an n x n conv of m filters on c channels, and of its pair."""
    b = int(bias)
    return m * (n * n * c // groups + b), m * (n * c // groups) + m * (n * m // groups) + 2 * m * b


def _shapes(model: nn.Module, names, input_shape: tuple[int, ...]) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input and output shape of each named conv in one forward of a zero example (eval mode)."""
    seen: dict[str, tuple[torch.Size, torch.Size]] = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, (args[0].shape, output.shape))

        return hook

    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(record(name)) for name in names]
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            try:  # shapes alone: on meta tensors, no arithmetic
                meta = {
                    k: torch.empty_like(v, device="meta")
                    for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
                }
                torch.func.functional_call(model, meta, (torch.zeros(1, *input_shape, device="meta"),))
            except Exception:  # a forward that reads values (data-dependent branches): run it for real
                seen.clear()
                model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _size(shape) -> str:
    return "x".join(str(d) for d in tuple(shape)[-2:])


def _pair_text(value) -> int | str:
    a, b = value
    return a if a == b else f"{a}x{b}"


def conv_rows(model: nn.Module, input_shape: tuple[int, ...], between: str = "relu") -> list[dict]:
    """One row per `nn.Conv2d` of the built `model` on `input_shape`: layer, n (or `3x1` when not
    square), m, c, m_over_c, groups, dilation, stride, rule (n > 1 + m/c), keeps_shape (whether the
    pair gives the conv's output shape on this input), P0 and P1 by the formulas, P0_module and
    P1_module counted from the built modules, and `note`: why the layer cannot be factorised, if so."""
    convs = conv_layers(model)
    shapes = _shapes(model, convs, input_shape)
    rows = []
    for name, conv in convs.items():
        kh, kw = conv.kernel_size
        n = kh if kh == kw else None
        m, c, g = conv.out_channels, conv.in_channels, conv.groups
        p0, p1 = formula_parameters(n, m, c, g, conv.bias is not None) if n else (None, None)
        p1 = p1 if n != 1 else None  # a 1x1 conv has no pair
        p1_module, keeps_shape, note = None, None, ""
        if type(conv) is not nn.Conv2d:
            note = f"a {type(conv).__name__} (its own forward)"
        elif n is None:
            note = f"{kh}x{kw} kernel, not n x n"
        elif n == 1:
            note = "1x1: nothing to split"
        elif name not in shapes:
            note = "not called in the forward pass"
        if n is not None and n > 1 and type(conv) is nn.Conv2d:
            pair = FactorizedConv2d(conv, between, device="meta")  # shapes and counts only: no memory, no draws
            p1_module = sum(p.numel() for p in pair.parameters())
            if name in shapes:
                given, wanted = shapes[name]
                got = pair(torch.zeros(given, device="meta")).shape
                keeps_shape = got == wanted
                if not keeps_shape:
                    note = f"its n x 1, 1 x n pair gives {_size(got)} maps, the conv {_size(wanted)} (stride {_pair_text(conv.stride)}, padding {conv.padding})"
        rows.append(
            {
                "layer": name,
                "n": n if n is not None else f"{kh}x{kw}",
                "m": m,
                "c": c,
                "m_over_c": m / c,
                "groups": g,
                "dilation": _pair_text(conv.dilation),
                "stride": _pair_text(conv.stride),
                "rule": n is not None and n > 1 + m / c,
                "keeps_shape": keeps_shape,
                "P0": p0,
                "P1": p1,
                "P0_module": sum(p.numel() for p in conv.parameters()),
                "P1_module": p1_module,
                "note": note,
            }
        )
    return rows


def chosen(rows: list[dict], layers) -> list[str]:
    """The layers to split: `auto`, those the rule picks whose pair keeps the shape; else `layers`."""
    if layers == "auto":
        return [r["layer"] for r in rows if r["rule"] and not r["note"]]
    return [r["layer"] for r in rows if r["layer"] in set(layers)]


def factorize_convs(model: nn.Module, layers, between: str, input_shape: tuple[int, ...]) -> nn.Module:
    """Replace each of `layers` (conv names, or `auto`) of `model` in place by its
    `FactorizedConv2d`, freshly initialised; ValueError naming a layer that is not an n x n conv
    of the model or whose pair would not keep its output shape on `input_shape`."""
    if between not in BETWEEN:
        raise ValueError(f"between: {between!r} is not one of {', '.join(BETWEEN)}")
    rows = {r["layer"]: r for r in conv_rows(model, input_shape, between)}
    names = chosen(list(rows.values()), layers) if layers == "auto" else list(layers)
    for name in names:
        if name not in rows:
            raise ValueError(f"{name}: not an nn.Conv2d of {type(model).__name__}")
        if rows[name]["note"]:
            raise ValueError(f"{name}: {rows[name]['note']}")
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model, leaf, FactorizedConv2d(model.get_submodule(name), between)
        )
    return model
