"""`architecture` (study 4): named variants of a model's spec, each trained from scratch per seed.

A variant is a dict of overrides of the model's `arch` (`{conv_dropout: 0, dense_dropout: 0}`,
`{pool: 4}`, `{dense: [512]}`, `{activation: exponential}`, `{batch_norm: true}`); the `baseline`
condition is the unmodified spec, trained the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from . import Condition, Context
from ..models import build_model, resolve_spec

RETRAIN = True  # conditions are trained, not only evaluated


@dataclass(frozen=True)
class Spec:
    model: str
    variants: tuple[tuple[str, str], ...]  # (name, overrides as JSON)
    train: str = "{}"  # overrides of the model's training settings, as JSON
    compare: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        variants = tuple((name, json.dumps(over, sort_keys=True)) for name, over in d["variants"].items())
        return cls(d["model"], variants, json.dumps(d.get("train", {}), sort_keys=True), tuple(tuple(p) for p in d.get("compare", ())))


def conditions(spec: Spec, context: Context) -> list[Condition]:
    out = [Condition("baseline", "baseline", base="init", arch="{}")]
    for name, overrides in spec.variants:
        out.append(Condition(name, name, base="init", arch=overrides, info=(("variant", overrides),)))
    return out


def variant_spec(base_arch: dict, overrides: dict) -> dict:
    """The model's resolved spec with a variant's overrides on top."""
    return resolve_spec(base_arch) | overrides


def apply(condition: Condition, context: Context):
    """A freshly initialised network of the variant, seeded like the baseline's training."""
    spec = context.trained.spec
    torch.manual_seed(context.seed)
    return build_model(variant_spec(spec["arch"], json.loads(condition.arch)), tuple(spec["input_shape"]), spec["num_classes"])
