"""Evaluation engines: many conditions of one network from a shared prefix (`evaluate`),
occluded images from the original activations (`occlusion`), and the streaming search for the
images that excite a filter most (`top_activations`). The types they evaluate are the engine's
own (`conditions`: `Condition`, `Value`, `Context`, `ConditionOutput`, and `apply_condition`, the
reference), importable without torch from here; the engines themselves import torch."""

from .conditions import (  # noqa: F401
    PER,
    VALUE_KINDS,
    Condition,
    ConditionOutput,
    Context,
    Value,
    apply_condition,
    layer_units,
    silence_point,
)
