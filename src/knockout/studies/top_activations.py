"""`top_activations` (study 3): for chosen filters of some layers, the test images that excite
each filter most (the norm or the maximum of its feature map) and the input patch under the
receptive field of the strongest position. Patches are arrays (`seed{seed}.npz`); each seed
trains other filters, so there is no table over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from . import Context, Target, check_layer

JOB = "probe"
NOTEBOOK = "top_activations"
SHARDS = (
    "no: top_activations keeps the top k over all the images in one job; shards is for evaluated studies and occlusion"
)
AGGREGATE = False


@dataclass(frozen=True)
class Spec:
    model: str
    layers: tuple[tuple[str, int | tuple[int, ...]], ...]  # per layer, a count to draw or filters
    k: int
    score: str
    filter_seed: int

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        layers = tuple((layer, f if isinstance(f, int) else tuple(f)) for layer, f in d["layers"].items())
        return cls(d["model"], layers, d["k"], d["score"], d["seed"])


def needs(spec: Spec) -> set[str]:
    return set()


def check(spec: Spec, target: Target) -> None:
    for layer, filters in spec.layers:
        n = check_layer(f"layers.{layer}", target, layer)
        wanted = filters if isinstance(filters, int) else max(filters) + 1
        if wanted > n:
            asked = str(filters) if isinstance(filters, int) else f"filter {max(filters)}"
            raise ConfigError(f"layers.{layer}: {layer} has {n} filters, asked for {asked}")
    if target.data.n_test is not None and spec.k > target.data.n_test:
        raise ConfigError(
            f"k: {spec.k} top images per filter, but the test set of model {target.name!r} has {target.data.n_test}"
        )


def compute(spec: Spec, context: Context, test, meta: dict, budget_mb: float):
    """The top images and patches of the chosen filters -> (table, arrays)."""
    from ..engine.top_activations import choose_filters, top_activations

    model = context.trained
    filters = choose_filters(
        model, {layer: f if isinstance(f, int) else list(f) for layer, f in spec.layers}, seed=spec.filter_seed
    )
    return top_activations(model, test, filters, k=spec.k, score=spec.score, device=next(model.parameters()).device)
