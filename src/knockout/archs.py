"""The facts of architectures the workflow plans from, without torch: the five studies' presets,
an arch (a preset name, or a dict: an optional `preset` and overrides, or a `type` and its
settings) resolved to a full one, and whether a `weights` value names a file."""

from __future__ import annotations

import copy
from typing import Any

from .paths import config_path

# The five studies' networks (../shared/design.md), exactly as the notebooks built them.
PRESETS: dict[str, dict[str, Any]] = {
    # Study 1: ImageNet ResNet50 fine-tuned on CIFAR-10.
    "study1_resnet50": {"type": "resnet", "depth": 50, "small_input": False},
    # Study 2: MLP 784-2048-1024-512-256-128; the notebook's last layer has 128 outputs.
    "study2_mlp": {"type": "mlp", "widths": [2048, 1024, 512, 256], "outputs": 128},
    # Study 3: CIFAR-10 CNN, conv 256(5x5)/1024/2048/2048(1x1), each followed by 2x2 max pooling.
    "study3_cnn": {
        "type": "cnn",
        "conv": [
            {"channels": 256, "kernel": 5},
            {"channels": 1024, "kernel": 3},
            {"channels": 2048, "kernel": 3},
            {"channels": 2048, "kernel": 1},
        ],
        "pool": 2,
        "dense": [1024, 256],
    },
    # Study 4: Keras CIFAR-10 CNN, conv 48/96/192 + pool + dropout 0.25, dense 512/256 + 0.5,
    # initialised as Keras' layers are (glorot_uniform, zero biases).
    "study4_cnn": {
        "type": "cnn",
        "init": "keras",
        "conv": [{"channels": 48}, {"channels": 96}, {"channels": 192}],
        "kernel": 3,
        "pool": 2,
        "conv_dropout": 0.25,
        "dense": [512, 256],
        "dense_dropout": 0.5,
    },
    # Study 5: MNIST CNN, conv 32/64/64 3x3 (no pooling after the last), dense 64: 93,322 params,
    # initialised as Keras' layers are (glorot_uniform, zero biases).
    "study5_cnn": {
        "type": "cnn",
        "init": "keras",
        "conv": [{"channels": 32}, {"channels": 64}, {"channels": 64, "pool": 0}],
        "kernel": 3,
        "pool": 2,
        "dense": [64],
    },
}


def resolve_arch(arch: str | dict[str, Any]) -> dict[str, Any]:
    """A preset name, or a dict with an optional `preset` plus overrides -> the full arch dict."""
    if isinstance(arch, str):
        arch = {"preset": arch}
    arch = copy.deepcopy(dict(arch))
    preset = arch.pop("preset", None)
    if preset is None:
        return arch
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    resolved = copy.deepcopy(PRESETS[preset])
    resolved.update(arch)
    return resolved


def is_weights_file(weights: str, arch: dict | str) -> bool:
    """Whether `weights` names a state_dict file (knockout's resnet takes only files; for a
    torchvision model a path, or a name with a file suffix, is a file; else a weights name)."""
    if isinstance(arch, str) or arch.get("type") != "torchvision":
        return True
    path = config_path(weights)
    return "/" in str(weights) or path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors") or path.is_file()


def without_weights(arch: str | dict) -> str | dict:
    """An architecture without its pretrained `weights`: the same network, to be filled from a
    checkpoint (or only built, to check it)."""
    return arch if isinstance(arch, str) else {k: v for k, v in arch.items() if k != "weights"}
