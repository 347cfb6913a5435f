"""`ablate_then_train` (study 1): silence a filter set of a trained network, then train on.

Sets are `filter_ablation`'s `units`, `lowest_response` and `random` (with `repeats` and
`exclude`); `baseline` (nothing silenced, trained the same way) is the control. Two semantics:
  zero_once  the layer's weights and bias are zeroed once and then free to change (what study
             1's code did; a following batch norm is left as it is, so gradients still reach
             the zeroed weights; without one a ReLU passes no gradient at exactly 0)
  mask       the units stay silent through training: a persistent `torch.nn.utils.prune` mask
             on the layer's weight and bias (and a following batch norm's scale and shift)
`freeze_body` trains only the last layer, as fastai does for a pretrained body.
`value: mean` (per channel, zero_once only) starts the silenced units at their mean instead of 0:
their weights 0 and their bias (or, behind a batch norm, the norm's shift, its running mean 0) the
unit's mean over the reference split, so the next layer starts on its training distribution; as
under zero_once, gradients still reach the zeroed weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..errors import ConfigError
from . import (
    Condition,
    Context,
    Target,
    apply_condition,
    check_compare,
    check_layer,
    compare_pairs,
    filter_ablation,
    silence_point,
)

JOB = "retrain"
NOTEBOOK = "retrain"
SEMANTICS = ("zero_once", "mask")


@dataclass(frozen=True)
class Spec:
    model: str
    sets: filter_ablation.Spec
    semantics: str
    freeze_body: bool
    compare: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        sets = filter_ablation.Spec.from_dict(
            {"model": d["model"], "layers": d["layers"], "sets": d["sets"], "compare": []}
        )
        return cls(d["model"], sets, d["semantics"], bool(d["freeze_body"]), compare_pairs(d))


def needs(spec: Spec) -> set[str]:
    return filter_ablation.needs(spec.sets)


def check(spec: Spec, target: Target) -> None:
    for i, layer in enumerate(spec.sets.layers):
        check_layer(f"layers[{i}]", target, layer)
    filter_ablation.check_sets(spec.sets.sets, target)
    for fset in spec.sets.sets:
        for value in fset.values:
            if value.kind not in ("zero", "mean") or value.per != "channel":
                raise ConfigError(
                    f"sets.{fset.name}.value: a retrained set starts from zero or its per-channel mean, "
                    f"not {value.label} (a draw or a per-position value is not a starting point for training)"
                )
            if value.kind == "mean" and spec.semantics == "mask":
                raise ConfigError(
                    f"semantics: mask keeps the units at 0 through training; sets.{fset.name}.value: mean "
                    "needs semantics: zero_once"
                )
            if value.kind == "mean":
                modules = dict(target.network.named_modules())
                for layer in fset.layers:
                    if silence_point(target.network, layer) == layer and getattr(modules[layer], "bias", None) is None:
                        raise ConfigError(
                            f"sets.{fset.name}.value: {layer} has no bias and no batch norm after it, so its units "
                            "cannot start at their mean"
                        )
    check_compare(spec.compare, {"baseline", *(n for s in spec.sets.sets for n in s.set_names)})


def condition_names(spec: Spec) -> list[str]:
    """baseline, then one per set and value (one per draw of a random set), as `conditions`."""
    names = ["baseline"]
    for fset in spec.sets.sets:
        for name in fset.set_names:
            names += [f"{name}:draw{d}" for d in range(fset.repeats)] if fset.select == "random" else [name]
    return names


def conditions(spec: Spec, context: Context) -> list[Condition]:
    """filter_ablation's conditions for the sets, with the semantics in each condition."""
    extra = (("semantics", spec.semantics), ("freeze_body", spec.freeze_body))
    return [
        Condition(c.name, c.set, base="trained", silence=c.silence, info=c.info + extra, value=c.value)
        for c in filter_ablation.conditions(spec.sets, context)
    ]


def apply(condition: Condition, context: Context):
    """The trained network with the set silenced, ready to train: masked (`mask`) so the units
    stay silent, and with all but the last layer frozen when `freeze_body`."""
    import torch
    from torch.nn.utils import prune

    from ..graph import units_of

    info = dict(condition.info)
    if info.get("semantics") == "mask":
        model = apply_condition(condition, context).train()
    else:
        model = copy.deepcopy(context.trained).train()
        with torch.no_grad():
            modules = dict(model.named_modules())
            for layer, units in condition.silence:
                modules[layer].weight[list(units)] = 0
                if modules[layer].bias is not None:
                    modules[layer].bias[list(units)] = 0
                if condition.value.kind == "mean":
                    start_at_mean(modules, layer, silence_point(context.trained, layer), units, context)
    if info.get("semantics") == "mask":
        modules = dict(model.named_modules())
        for layer, units in condition.silence:
            for name in {layer, silence_point(context.trained, layer)}:
                module = modules[name]
                for param in ("weight", "bias"):
                    if getattr(module, param, None) is not None:
                        mask = torch.ones_like(getattr(module, param))
                        mask[list(units)] = 0
                        prune.custom_from_mask(module, param, mask)
    if info.get("freeze_body"):
        head = list(units_of(model))[-1]
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head + "."))
    return model


def start_at_mean(modules: dict, layer: str, point: str, units, context: Context) -> None:
    """Make `units` of `layer` output their per-channel mean (`context.unit_values`) at its
    silence point for every input, in train and eval mode: the weights feeding them 0 (done by
    the caller), and the constant their output then is (the layer's bias, or a following batch
    norm's shift) the mean. As under zero_once, they are then free to change."""
    import torch

    if context.unit_values is None or layer not in context.unit_values:
        raise ValueError(f"{layer}: value: mean needs the units' values of this layer")
    mean = context.unit_values[layer]["mean_channel"]
    idx = list(units)
    last = modules[point]
    if point != layer:  # a batch norm reads the layer, whose output is now 0 for every input
        if last.bias is None:
            raise ValueError(f"{point} has no shift: the units of {layer} cannot start at their mean")
        # its normalised input is then 0 on batch statistics, and on running ones once their mean is 0,
        # so the shift alone is the output; the scale is kept, so gradients reach the zeroed weights
        if last.running_mean is not None:
            last.running_mean[idx] = 0
    elif last.bias is None:
        raise ValueError(f"{layer} has no bias and no batch norm: its units cannot start at their mean")
    last.bias[idx] = torch.as_tensor(mean, dtype=last.bias.dtype, device=last.bias.device)[idx]
