"""Sharded studies: a study's conditions (or a probe's images) split into N jobs per seed, each
a deterministic contiguous block, gathered into the same per-seed tables as one job would write.

Contiguous blocks, not round robin: the evaluator runs conditions K at a time in their order, so a
block shares its stacks with at most its two neighbours' (`evaluate_conditions(only=...)` runs
each stack exactly as the unsharded run does, which keeps every number bit-identical).

`shards: auto` picks N from the measured cost (`shard_count`): the multiply-adds the shared
evaluation cannot avoid (`condition_macs`, from the traced graph), over the device's measured rate
of multiply-adds per second, in shards of about `shard_seconds` each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing

from .errors import ConfigError


def shard_range(total: int, shard: int, shards: int) -> range:
    """The indices of shard `shard` (0-based) of `shards` over `total` items: contiguous blocks
    whose sizes differ by at most one, the larger first."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    return range(shard * total // shards, (shard + 1) * total // shards)


def shard_count(seconds: float, shard_seconds: float, max_shards: int, items: int) -> int:
    """`shards: auto`: enough shards that each takes about `shard_seconds` of the estimated
    `seconds`, at least 1, at most `max_shards` and the number of `items` (conditions, images)."""
    return max(1, min(math.ceil(seconds / shard_seconds), max_shards, items))


def check_shards(key: str, value, shardable: str | None) -> None:
    """`shards` of a study entry (`key` names it): an integer >= 1 or auto, and more than 1 only
    where the study type can split (`shardable`: what it splits, or None with why not)."""
    if value is True or value is False or not (value == "auto" or isinstance(value, int) and value >= 1):
        raise ConfigError(f"{key}: {value!r} is not an integer >= 1 nor auto")
    if value != 1 and shardable is not None and shardable.startswith("no:"):
        raise ConfigError(f"{key}: {shardable[3:].strip()}")


# --- conditions as plain data ----------------------------------------------------------------


def encode_condition(condition) -> str:
    """A condition (a frozen dataclass, `knockout.studies.Condition`) as JSON, every field
    (`dataclasses.asdict`: nested dataclasses too), so fields added later travel as well."""
    return json.dumps(dataclasses.asdict(condition), sort_keys=True)


def decode_condition(text: str, cls):
    """The condition `encode_condition` wrote, as an instance of `cls`: lists back to tuples,
    dicts of a dataclass-typed field back to that dataclass."""
    return _decode(json.loads(text), cls)


def _decode(value, hint):
    cls = _dataclass_of(hint)
    if cls is not None and isinstance(value, dict):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _decode(value[f.name], hints.get(f.name)) for f in dataclasses.fields(cls)})
    if isinstance(value, list):
        return tuple(_decode(v, None) for v in value)
    return value


def _dataclass_of(hint):
    """The dataclass a type hint names (`Value`, `Value | None`), else None."""
    if hint is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


# --- the measured cost of a study, for `shards: auto` -----------------------------------------


def condition_macs(graph, condition) -> int:
    """Multiply-adds per example a condition costs in the shared evaluation (`knockout.graph`):
    one layer's units silenced: what `engine.shared.unit_bound` says it cannot avoid; otherwise
    every operation from its first changed layer on (the whole network when none is traced)."""
    from .engine.shared import unit_bound

    full = graph.forward_macs
    changed = condition.changed_layers
    if not graph.traced or condition.arch or condition.base != "trained":
        return full
    if not changed:
        return 0  # the baseline: the intact logits, computed once
    if not condition.replace and len(condition.silence) == 1:
        return unit_bound(graph, condition.silence[0][0])[1]
    nodes = [node for layer in changed for node in graph.module_nodes(layer)]
    if not nodes:
        return full
    first = min(graph.position[node] for node in nodes)
    return sum(graph.macs(node) for node in graph.nodes[first:])


def estimated_seconds(network, conditions, split, device, batch_size: int = 256, batches: int = 2) -> dict:
    """The estimated seconds of evaluating `conditions` on `split` with `network` (the trained
    base): the multiply-adds the shared evaluation does (the intact forward once, plus each
    condition's `condition_macs`, per example) over the rate measured on `device` by timing the
    intact forward on a few batches (the first, a warm-up, not counted)."""
    import time

    import torch

    from .graph import graph_of

    network = network.eval().to(device)
    graph = graph_of(network, split.example(device))
    per_example = graph.forward_macs + sum(condition_macs(graph, c) for c in conditions)
    timed, seconds = 0, 0.0
    with torch.no_grad():
        for i, (_, x, _) in enumerate(split.chunks(batch_size, device)):
            if i > batches:
                break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            network(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first batch warms up
                timed, seconds = timed + len(x), seconds + time.perf_counter() - start
    if not timed:  # one batch only: time it again
        start = time.perf_counter()
        with torch.no_grad():
            network(split.example(device))
        timed, seconds = 1, time.perf_counter() - start
    rate = timed * graph.forward_macs / max(seconds, 1e-9)  # multiply-adds per second
    return {
        "macs_per_example": per_example,
        "examples": len(split),
        "macs_per_second": rate,
        "seconds": per_example * len(split) / rate,
    }
