"""Study types: one module each, all of one protocol (like Captum's single `attribute()` verb).

A study type is the module of this package named as its `type` in config.yaml. It has:

  JOB                    the job that runs it: "evaluate" (its conditions are evaluated on the
                         test set), "retrain" (each condition is trained, then evaluated) or
                         "probe" (arrays are computed per seed: maps, patches)
  NOTEBOOK               the notebook of notebooks/ that analyses it
  AGGREGATE              (optional, default True) whether its per-seed tables are summarised
                         over seeds (`results/tables/{name}.csv`)
  SHARDS                 (probe, optional) what `shards: N` splits (occlusion: its forwards), or
                         "no: why" (the default: a probe is one job per seed)
  Spec                   a frozen dataclass; `Spec.from_dict(entry)` from the validated config
                         entry (every default filled by the schema); the functions below take it
  needs(spec) -> set     what its jobs read besides the trained network and the data, a subset
                         of NEEDS
  check(spec, target)    checks against the model the study names (a `Target`); raises
                         ConfigError("key: problem") with the key relative to the study
  conditions(spec, context) -> list[Condition]             (evaluate, retrain)
  apply(condition, context) -> nn.Module                   (evaluate, retrain): the network to
                         evaluate, or to train, for one condition (`engine.apply_condition` for
                         conditions that silence units and replace layers)
  condition_names(spec) -> list[str]                       (retrain): the conditions' names,
                         one training job each (in the folder `Condition.slug`)
  importance_layers(spec) -> set[str]                      (optional, default none): the
                         layers whose unit statistics must include each unit's importance
  details(condition, context) -> list[dict]                (retrain, optional): more of the
                         condition's record (`condition.json`), e.g. factorize's layer table
  compute(spec, context, test, meta, budget_mb) -> (table, arrays)    (probe)
  merge(parts, meta), image_count(spec, test), image_macs(spec, graph, shape)
                         (a probe with SHARDS): its shards joined; its images and their cost

`study_type(name)` gives the type as one `StudyType`, its optional members filled with their
defaults. The workflow plans from JOB, NOTEBOOK, AGGREGATE, SHARDS, needs() and
condition_names() alone (`knockout.plan`, without torch), so a study module imports torch inside
its functions only. A condition is plain data the engine owns (`knockout.engine.Condition`: what
it silences, which layers' weights it takes from where): the evaluator reads that data to share
work across conditions; `apply` is the reference it is tested against. To add a type: one module
here and its entry in `knockout/schema.yaml`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..catalog import DataInfo  # noqa: F401  (re-exported: a Target's data)
from ..engine.conditions import (  # noqa: F401  (what the study types build, re-exported for them)
    Condition,
    Context,
    Value,
    apply_condition,
    layer_units,
    silence_point,
    slug,
)
from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

JOBS = ("evaluate", "retrain", "probe")
NEEDS = ("init", "checkpoints", "unit_stats", "unit_values", "donors")  # what a study's jobs may read besides final.pt
REQUIRED = {
    "evaluate": ("Spec", "needs", "check", "conditions", "apply"),
    "retrain": ("Spec", "needs", "check", "conditions", "apply", "condition_names"),
    "probe": ("Spec", "needs", "check", "compute"),
}
OPTIONAL = ("conditions", "apply", "condition_names", "details", "compute", "merge", "image_count", "image_macs")


@dataclass(frozen=True)
class StudyType:
    """One study type: its module's members (the module docstring), the optional ones None."""

    name: str
    job: str
    notebook: str
    aggregate: bool
    shards: str  # what `shards: N` splits (conditions, forwards), or "no: why"
    Spec: type
    needs: Callable[[Any], set]
    check: Callable[[Any, Target], None]
    conditions: Callable | None = None
    apply: Callable | None = None
    condition_names: Callable | None = None
    details: Callable | None = None
    compute: Callable | None = None
    merge: Callable | None = None
    image_count: Callable | None = None
    image_macs: Callable | None = None
    importance_layers: Callable[[Any], set] = lambda spec: set()


@cache
def study_type(name: str) -> StudyType:
    """Study type `name`, its module checked against the protocol; ConfigError if unknown."""
    known = study_types()
    if name not in known:
        raise ConfigError(f"unknown study type {name!r}; choose from {', '.join(sorted(known))}")
    module = importlib.import_module(f"{__name__}.{name}")
    job = getattr(module, "JOB", None)
    if job not in JOBS:
        raise ConfigError(f"study type {name!r}: JOB must be one of {JOBS}, not {job!r}")
    missing = [attr for attr in ("NOTEBOOK", *REQUIRED[job]) if not hasattr(module, attr)]
    if missing:
        raise ConfigError(f"study type {name!r} ({job}) lacks {', '.join(missing)}")
    return StudyType(
        name=name,
        job=job,
        notebook=module.NOTEBOOK,
        aggregate=getattr(module, "AGGREGATE", True),
        shards=_shards(name, job, module),
        Spec=module.Spec,
        needs=module.needs,
        check=module.check,
        **{member: getattr(module, member, None) for member in OPTIONAL},
        **({"importance_layers": module.importance_layers} if hasattr(module, "importance_layers") else {}),
    )


def _shards(name: str, job: str, module: ModuleType) -> str:
    """What a study type's shards split, or "no: why" (one line)."""
    if job == "evaluate":
        return "conditions"
    if job == "retrain":
        return (
            "no: a retraining study runs one job per condition already; shards is for evaluated studies and occlusion"
        )
    return getattr(module, "SHARDS", None) or (
        f"no: {name} cannot be split (a probe over all images at once); shards is for evaluated studies and occlusion"
    )


def study_types() -> list[str]:
    """The modules of this package, by name (each is a study type)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


@dataclass(frozen=True)
class Target:
    """The model a study names, as its checks see it: freshly built from its spec."""

    name: str  # its key in config.yaml
    network: nn.Module
    train: dict  # its resolved training settings
    data: DataInfo
    provides: frozenset[str] = frozenset(NEEDS)  # of NEEDS, what its runs have (init, checkpoints)


# --- Checks shared by the types ------------------------------------------------------------------


def check_layer(key: str, target: Target, layer: str) -> int:
    """The number of units of `layer` in the target model; ConfigError naming `key` otherwise."""
    from ..graph import units_of

    units = units_of(target.network)
    if layer not in units:
        valid = list(units)
        if len(valid) <= 12:
            shown = f"layers: {', '.join(valid)}"
        else:  # the nearest names first: a typo's intended layer is among them
            nearest = difflib.get_close_matches(str(layer), valid, n=4, cutoff=0.5)
            shown = f"nearest: {', '.join(nearest)}; " if nearest else ""
            shown += f"{len(valid)} layers in all, from {valid[0]} to {valid[-1]}: see `knockout summary`"
        raise ConfigError(f"{key}: no layer {layer!r} in model {target.name!r} ({shown})")
    return units[layer].count


def check_compare(pairs, names) -> None:
    """Every name of the `compare` pairs is one of `names` (the study's sets)."""
    for i, pair in enumerate(pairs):
        for name in pair:
            if name not in names:
                raise ConfigError(f"compare[{i}]: no set {name!r} (have {', '.join(sorted(names))})")


def compare_pairs(d: dict) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(p) for p in d["compare"])
