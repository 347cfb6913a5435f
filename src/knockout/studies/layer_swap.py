"""`layer_swap`: move one layer's weights back in time, or forward (study 2; Zhang, Bengio &
Singer, "Are All Layers Created Equal?").

Modes, for each chosen layer:
  reinit       the trained network with the layer back at its initial weights
  rerandomize  the trained network with the layer drawn afresh from its initial distribution
  transplant   the initial network with the trained layer put in
  rewind       the trained network with the layer at its weights of epoch t, for every saved
               checkpoint (the layers x epochs heatmap; epoch 0 is the initial weights)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from . import Condition, Context, Target, apply_condition, check_compare, check_layer, compare_pairs

JOB = "evaluate"
NOTEBOOK = "layer_swap"
MODES = ("reinit", "rerandomize", "transplant", "rewind")


@dataclass(frozen=True)
class Spec:
    model: str
    layers: tuple[str, ...] | str  # names, or "all": every conv and linear layer
    modes: tuple[str, ...]
    compare: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        layers = d["layers"]
        return cls(
            model=d["model"],
            layers=layers if layers == "all" else tuple(layers),
            modes=tuple(d["modes"]),
            compare=compare_pairs(d),
        )


def needs(spec: Spec) -> set[str]:
    """The initial weights for reinit and transplant, the epoch checkpoints for rewind."""
    out = {"init"} if {"reinit", "transplant", "rewind"} & set(spec.modes) else set()
    return out | ({"checkpoints"} if "rewind" in spec.modes else set())


def check(spec: Spec, target: Target) -> None:
    if spec.layers != "all":
        for i, layer in enumerate(spec.layers):
            check_layer(f"layers[{i}]", target, layer)
    if "rewind" in spec.modes and "checkpoints" not in target.provides:
        raise ConfigError(
            f"modes: rewind needs epoch checkpoints: set models.{target.name}.train.checkpoints (e.g. all), or give models.{target.name}.checkpoints.epochs"
        )
    check_compare(spec.compare, {"baseline", *spec.modes})


def resolve_layers(spec: Spec, context: Context) -> list[str]:
    from ..graph import units_of

    return list(units_of(context.trained)) if spec.layers == "all" else list(spec.layers)


def conditions(spec: Spec, context: Context) -> list[Condition]:
    out = [Condition(name="baseline", set="baseline")]
    epochs = sorted(int(name[len("epoch") :]) for name in context.checkpoints)
    for mode in spec.modes:
        for layer in resolve_layers(spec, context):
            info = (("layer", layer), ("mode", mode))
            if mode == "reinit":
                out.append(Condition(f"reinit:{layer}", "reinit", replace=((layer, "init"),), info=info))
            elif mode == "rerandomize":
                out.append(Condition(f"rerandomize:{layer}", "rerandomize", replace=((layer, "rerandom"),), info=info))
            elif mode == "transplant":
                out.append(
                    Condition(
                        f"transplant:{layer}", "transplant", base="init", replace=((layer, "trained"),), info=info
                    )
                )
            else:
                for epoch in [0, *epochs]:
                    source = "init" if epoch == 0 else f"epoch{epoch}"
                    out.append(
                        Condition(
                            f"rewind:{layer}:epoch{epoch}",
                            "rewind",
                            replace=((layer, source),),
                            info=(*info, ("epoch", epoch)),
                        )
                    )
    return out


def apply(condition: Condition, context: Context):
    """A new network: the condition's base with the listed layers' weights from their sources."""
    return apply_condition(condition, context)
