"""`architecture` (study 4): named variants of a model's spec, each trained from scratch per seed.

For knockout's own archs (`cnn`, `mlp`, `resnet`) a variant is a dict of overrides of the arch
(`{conv_dropout: 0, dense_dropout: 0}`, `{pool: 4}`, `{dense: [512]}`, `{activation: exponential}`,
`{batch_norm: true}`). For a `torchvision` arch it overrides the keyword arguments given to
`torchvision.models.<name>(...)` (`{width_per_group: 32}`, `{zero_init_residual: true}`), for a
`module` arch the `kwargs` of the user's function; those variants are built without pretrained
weights. The `baseline` condition is the unmodified spec, trained the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import ConfigError
from . import Condition, Context, Target, check_compare, compare_pairs

JOB = "retrain"
NOTEBOOK = "retrain"

# Keys a variant may not override, by arch type, and why: they name another model or come from the data.
REFUSED = {
    "torchvision": {
        "type": "a variant overrides the builder's keyword arguments, not the arch's type",
        "name": "a variant overrides the builder's keyword arguments; another torchvision model is another models entry",
        "weights": "variants are trained from scratch, without pretrained weights",
        "num_classes": "the number of classes comes from the dataset",
    },
    "module": {
        "type": "a variant overrides the function's kwargs, not the arch's type",
        "target": "a variant overrides the function's kwargs; another function is another models entry",
        "weights": "variants are trained from scratch, without pretrained weights",
        "num_classes": "the number of classes comes from the dataset",
        "in_channels": "the input channels come from the dataset",
        "input_shape": "the input shape comes from the dataset",
    },
}
ARCH_LEVEL = {"factorized"}  # knockout's own settings of any arch: never a builder keyword


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
    """No variant overrides what it may not; every variant builds and runs on the model's input."""
    from ..models import build_like, check_output, resolve_arch

    base = target.network.spec
    input_shape, classes = tuple(base["input_shape"]), base["num_classes"]
    arch_type = resolve_arch(base["arch"]).get("type")
    for name, overrides in spec.variants:
        overrides = json.loads(overrides)
        for key in overrides:
            if key in REFUSED.get(arch_type, {}):
                raise ConfigError(
                    f"variants.{name}.{key}: not overridable on a {arch_type} arch ({REFUSED[arch_type][key]})"
                )
        try:
            check_output(build_like(target.network, variant_spec(base["arch"], overrides)), input_shape, classes)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise ConfigError(f"variants.{name}{_reason(e, arch_type, base['arch'])}") from None
    check_compare(spec.compare, {"baseline", *(name for name, _ in spec.variants)})


def _reason(error: Exception, arch_type: str, arch: dict | str) -> str:
    """The build failure as the rest of a one-line error: `.<keyword>: ...` for a keyword the
    builder does not take (TypeError's text buries it), else `: <the first line>`."""
    from ..models import resolve_arch

    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = text.removeprefix("arch: ")  # check_output's key: the variant's arch is the variant
    unknown = re.search(r"unexpected keyword argument '(\w+)'", text)
    if isinstance(error, TypeError) and unknown:
        arch = resolve_arch(arch)
        builder = {"torchvision": f"torchvision's {arch.get('name')}", "module": arch.get("target")}.get(
            arch_type, arch_type
        )
        return f".{unknown.group(1)}: {builder} takes no keyword argument {unknown.group(1)!r}"
    return f": {text}"


def condition_names(spec: Spec) -> list[str]:
    return ["baseline", *(name for name, _ in spec.variants)]


def conditions(spec: Spec, context: Context) -> list[Condition]:
    out = [Condition("baseline", "baseline", base="init", arch="{}")]
    for name, overrides in spec.variants:
        out.append(Condition(name, name, base="init", arch=overrides, info=(("variant", overrides),)))
    return out


def variant_spec(base_arch: dict | str, overrides: dict) -> dict:
    """The model's resolved spec with a variant's overrides on top: knockout's own archs' settings;
    a torchvision arch's builder keywords (without pretrained weights); a module arch's `kwargs`
    (without weights); `factorized` stays a setting of the arch for any type."""
    from ..models import resolve_arch, without_weights

    arch = resolve_arch(base_arch)
    arch_type = arch.get("type")
    if arch_type == "torchvision":
        return without_weights(arch) | overrides
    if arch_type == "module":
        own = {k: v for k, v in overrides.items() if k in ARCH_LEVEL}
        kwargs = dict(arch.get("kwargs") or {}) | {k: v for k, v in overrides.items() if k not in ARCH_LEVEL}
        return without_weights(arch) | {"kwargs": kwargs} | own
    return arch | overrides


def apply(condition: Condition, context: Context):
    """A freshly initialised network of the variant, seeded like the baseline's training."""
    import torch

    from ..models import build_like

    torch.manual_seed(context.seed)
    return build_like(context.trained, variant_spec(context.trained.spec["arch"], json.loads(condition.arch)))
