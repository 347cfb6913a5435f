"""`architecture` (study 4): named variants of a model's spec, each trained from scratch per seed.

A variant is a dict of overrides of the model's `arch` (`{conv_dropout: 0, dense_dropout: 0}`,
`{pool: 4}`, `{dense: [512]}`, `{activation: exponential}`, `{batch_norm: true}`); the `baseline`
condition is the unmodified spec, trained the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import ConfigError
from . import Condition, Context, Target, check_compare, compare_pairs

KIND = "retrain"
NOTEBOOK = "retrain"


@dataclass(frozen=True)
class Spec:
    model: str
    variants: tuple[tuple[str, str], ...]  # (name, overrides as JSON)
    compare: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        variants = tuple((name, json.dumps(over, sort_keys=True)) for name, over in d["variants"].items())
        return cls(d["model"], variants, compare_pairs(d))


def needs(spec: Spec) -> set[str]:
    return set()


def check(spec: Spec, target: Target) -> None:
    """Every variant builds."""
    from ..models import build_model

    base = target.network.spec
    for name, overrides in spec.variants:
        try:
            build_model(
                variant_spec(base["arch"], json.loads(overrides)), tuple(base["input_shape"]), base["num_classes"]
            )
        except (ValueError, KeyError, RuntimeError) as e:
            raise ConfigError(f"variants.{name}: {str(e).splitlines()[0]}") from None
    check_compare(spec.compare, {"baseline", *(name for name, _ in spec.variants)})


def condition_names(spec: Spec) -> list[str]:
    return ["baseline", *(name for name, _ in spec.variants)]


def conditions(spec: Spec, context: Context) -> list[Condition]:
    out = [Condition("baseline", "baseline", base="init", arch="{}")]
    for name, overrides in spec.variants:
        out.append(Condition(name, name, base="init", arch=overrides, info=(("variant", overrides),)))
    return out


def variant_spec(base_arch: dict, overrides: dict) -> dict:
    """The model's resolved spec with a variant's overrides on top."""
    from ..models import resolve_arch

    return resolve_arch(base_arch) | overrides


def apply(condition: Condition, context: Context):
    """A freshly initialised network of the variant, seeded like the baseline's training."""
    import torch

    from ..models import build_model

    spec = context.trained.spec
    torch.manual_seed(context.seed)
    return build_model(
        variant_spec(spec["arch"], json.loads(condition.arch)), tuple(spec["input_shape"]), spec["num_classes"]
    )
