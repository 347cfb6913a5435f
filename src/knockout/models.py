"""Architectures built from a spec: `mlp`, `cnn` and `resnet`, plus the five studies' presets.

Every model is an `nn.Sequential` of named stages (`conv1`, `conv1_act`, `conv1_pool`, `flatten`,
`fc1`, ...; torchvision's names for ResNets), so a layer's name is stable across runs and the
network can be cut at any stage: interventions run the prefix once and only the suffix per
condition.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_write

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "exponential": None,  # Keras' `exponential` activation (study 4): no torch module, see Exp
    "identity": nn.Identity,
}


class Exp(nn.Module):
    """x -> exp(x), Keras' `exponential` activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return Exp() if name == "exponential" else ACTIVATIONS[name]()


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
    # Study 4: Keras CIFAR-10 CNN, conv 48/96/192 + pool + dropout 0.25, dense 512/256 + 0.5.
    "study4_cnn": {
        "type": "cnn",
        "conv": [{"channels": 48}, {"channels": 96}, {"channels": 192}],
        "kernel": 3,
        "pool": 2,
        "conv_dropout": 0.25,
        "dense": [512, 256],
        "dense_dropout": 0.5,
    },
    # Study 5: MNIST CNN, conv 32/64/64 3x3 (no pooling after the last), dense 64: 93,322 params.
    "study5_cnn": {
        "type": "cnn",
        "conv": [{"channels": 32}, {"channels": 64}, {"channels": 64, "pool": 0}],
        "kernel": 3,
        "pool": 2,
        "dense": [64],
    },
}


def resolve_spec(arch: str | dict[str, Any]) -> dict[str, Any]:
    """A preset name, or a dict with an optional `preset` plus overrides -> a full spec dict."""
    if isinstance(arch, str):
        arch = {"preset": arch}
    arch = copy.deepcopy(dict(arch))
    preset = arch.pop("preset", None)
    if preset is None:
        return arch
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    spec.update(arch)
    return spec


def _pair(k: int | list[int]) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


def build_mlp(spec: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Flatten, then `fc1..fcN` with activations; the last layer has `outputs` (default classes)."""
    act = spec.get("activation", "relu")
    dropout = float(spec.get("dropout", 0.0))
    width = int(torch.tensor(input_shape).prod())
    stages: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    widths = list(spec.get("widths", []))
    for i, w in enumerate(widths, start=1):
        stages += [(f"fc{i}", nn.Linear(width, w)), (f"fc{i}_act", _activation(act))]
        if dropout:
            stages.append((f"fc{i}_drop", nn.Dropout(dropout)))
        width = w
    stages.append((f"fc{len(widths) + 1}", nn.Linear(width, spec.get("outputs") or num_classes)))
    return nn.Sequential(OrderedDict(stages))


def build_cnn(spec: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """`conv_i` [+ `_bn`] + `_act` [+ `_pool`] [+ `_drop`] per conv entry, then flatten and dense.

    Each `conv` entry may override the network-wide `kernel`, `padding`, `stride`, `pool`,
    `conv_dropout` and `batch_norm`; kernels may be non-square (`[3, 1]`).
    """
    act = spec.get("activation", "relu")
    channels = input_shape[0]
    stages: list[tuple[str, nn.Module]] = []
    for i, layer in enumerate(spec["conv"], start=1):
        layer = {"channels": layer} if isinstance(layer, int) else layer
        get = lambda key, default: layer.get(key, spec.get(key, default))  # noqa: E731
        out = int(layer["channels"])
        bn = bool(get("batch_norm", False))
        name = f"conv{i}"
        conv = nn.Conv2d(
            channels,
            out,
            kernel_size=_pair(get("kernel", 3)),
            stride=get("stride", 1),
            padding=_pair(get("padding", 0)),
            bias=not bn,  # a following batch norm has its own bias
        )
        stages.append((name, conv))
        if bn:
            stages.append((f"{name}_bn", nn.BatchNorm2d(out)))
        stages.append((f"{name}_act", _activation(act)))
        pool = get("pool", 0)
        if pool:
            stages.append((f"{name}_pool", nn.MaxPool2d(pool)))
        drop = float(get("conv_dropout", 0.0))
        if drop:
            stages.append((f"{name}_drop", nn.Dropout(drop)))
        channels = out
    stages.append(("flatten", nn.Flatten()))
    features = nn.Sequential(OrderedDict(stages))
    with torch.no_grad():
        width = features(torch.zeros(1, *input_shape)).shape[1]
    dense_dropout = float(spec.get("dense_dropout", 0.0))
    dense = list(spec.get("dense", []))
    for i, w in enumerate(dense, start=1):
        stages += [(f"fc{i}", nn.Linear(width, int(w))), (f"fc{i}_act", _activation(act))]
        if dense_dropout:
            stages.append((f"fc{i}_drop", nn.Dropout(dense_dropout)))
        width = int(w)
    stages.append((f"fc{len(dense) + 1}", nn.Linear(width, spec.get("outputs") or num_classes)))
    return nn.Sequential(OrderedDict(stages))


def build_resnet(spec: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """torchvision resnet18/34/50 as a Sequential with torchvision's layer names.

    `small_input` swaps the 7x7/2 stem and max pool for a 3x3/1 conv (CIFAR-sized images).
    `weights` is a path to a torchvision state_dict (e.g. ImageNet weights the user has); the
    classifier is replaced when its size differs from the number of classes.
    """
    import torchvision

    depth = int(spec.get("depth", 18))
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    if spec.get("weights"):
        state = torch.load(Path(spec["weights"]).expanduser(), weights_only=True, map_location="cpu")
        net.load_state_dict(state.get("state_dict", state))
    if input_shape[0] != 3 or spec.get("small_input", False):
        stride = 1 if spec.get("small_input", False) else 2
        kernel = 3 if spec.get("small_input", False) else 7
        net.conv1 = nn.Conv2d(input_shape[0], 64, kernel, stride, kernel // 2, bias=False)
    if spec.get("small_input", False):
        net.maxpool = nn.Identity()
    if net.fc.out_features != num_classes:
        net.fc = nn.Linear(net.fc.in_features, spec.get("outputs") or num_classes)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    stages = [(n, getattr(net, n)) for n in names] + [("flatten", nn.Flatten()), ("fc", net.fc)]
    return nn.Sequential(OrderedDict(stages))


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "resnet": build_resnet}


def build_model(arch: str | dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Spec (or preset name) + input shape (C, H, W) + class count -> a freshly initialised model."""
    spec = resolve_spec(arch)
    kind = spec.get("type")
    if kind not in BUILDERS:
        raise ValueError(f"unknown model type {kind!r}; choose from {sorted(BUILDERS)}")
    model = BUILDERS[kind](spec, tuple(input_shape), num_classes)
    model.spec = {"arch": spec, "input_shape": list(input_shape), "num_classes": num_classes}
    return model


def addressable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers an intervention can address, by their stable names."""
    return {
        name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with pruning masks applied (`w_orig * w_mask` saved as `w`), so a
    checkpoint of a masked network loads into the plain architecture."""
    state = dict(model.state_dict())
    for key in [k for k in state if k.endswith("_orig")]:
        base = key[: -len("_orig")]
        state[base] = state.pop(key) * state.pop(base + "_mask")
    return state


def save_model(model: nn.Module, path: str | Path, **extra: Any) -> None:
    """Write a self-describing checkpoint ({spec, state_dict, ...}) atomically.

    Plain tensors, lists and dicts only, so `torch.load(weights_only=True)` reads it.
    """
    checkpoint = {"spec": model.spec, "state_dict": plain_state_dict(model), **extra}
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_model(path: str | Path, map_location: str | torch.device) -> nn.Sequential:
    """Rebuild the module saved by `save_model` on the device `map_location` (never unpickles
    code: weights_only=True)."""
    ckpt = torch.load(Path(path), weights_only=True, map_location=map_location)
    spec = ckpt["spec"]
    # The checkpoint holds every weight: don't read the pretrained file again.
    arch = {k: v for k, v in spec["arch"].items() if k != "weights"}
    model = build_model(arch, tuple(spec["input_shape"]), spec["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward of one example through the conv and linear layers."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def summary(model: nn.Sequential, input_shape: tuple[int, ...]) -> str:
    """A Keras-like table: each stage with its output shape and parameter count, and the total."""
    rows = [("Layer (type)", "Output Shape", "Param #")]
    x = torch.zeros(1, *input_shape)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, stage in model.named_children():
            x = stage(x)
            shape = "(None, " + ", ".join(str(d) for d in x.shape[1:]) + ")"
            rows.append((f"{name} ({type(stage).__name__})", shape, f"{count_parameters(stage):,}"))
    model.train(was_training)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "=" * (sum(widths) + 4)
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    out = [fmt(rows[0]), line, *(fmt(r) for r in rows[1:]), line]
    out.append(f"Total params: {count_parameters(model):,}")
    return "\n".join(out)


def chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as the flat list of modules it runs in order: nested `nn.Sequential`s are opened
    (a ResNet's `layer3` becomes `layer3.0`, `layer3.1`), anything else (a residual block) is kept
    whole. Running the list in order is the model's forward."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(full + ".", child)
            else:
                out.append((full, child))

    walk("", model)
    return out


def silence_point(model: nn.Module, layer: str) -> str:
    """Name of the module whose output must be zero for `layer`'s units to be silent: the batch
    norm that follows the layer when there is one (a zeroed conv channel would otherwise come out
    of the norm as its bias), else the layer itself."""
    names = dict(model.named_modules())
    if layer not in names:
        raise KeyError(layer)
    head, _, leaf = layer.rpartition(".")
    prefix = f"{head}." if head else ""
    candidates = [f"{layer}_bn"]  # knockout's cnn: conv2 -> conv2_bn
    if leaf.startswith("conv"):  # torchvision: conv2 -> bn2 in the same block
        candidates.append(prefix + "bn" + leaf[len("conv") :])
    if leaf == "0" and head.endswith("downsample"):  # downsample.0 -> downsample.1
        candidates.append(f"{head}.1")
    for name in candidates:
        if isinstance(names.get(name), nn.modules.batchnorm._BatchNorm):
            return name
    return layer
