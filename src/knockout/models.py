"""Architectures built from an arch (a preset name, or a dict: its `type` and settings):
knockout's own `mlp`, `cnn` and `resnet` (with the five studies' presets, parameter counts as
the notebooks'), any `torchvision` classification model, or the user's own `module` (an import
path or a file, returning an `nn.Module`).

knockout's own are `nn.Sequential`s of named stages (`conv1`, `conv1_act`, `conv1_pool`,
`flatten`, `fc1`, ...; torchvision's names for ResNets); the others keep their modules' names.
Units, silence points and cuts are found on the traced graph (`knockout.graph`), whatever the
model. Every built model carries `.spec` (architecture, input shape, classes), which is what a
checkpoint stores beside the weights.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .activations import activation
from .archs import PRESETS, is_weights_file, resolve_arch, without_weights  # noqa: F401  (re-exported)
from .io import atomic_write
from .paths import config_path
from .readout import Readout


def _pair(k: int | list[int]) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


def build_mlp(arch: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Flatten, then `fc1..fcN` with activations; the last layer has `outputs` (default classes)."""
    act = arch.get("activation", "relu")
    dropout = float(arch.get("dropout", 0.0))
    width = int(torch.tensor(input_shape).prod())
    stages: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    widths = list(arch.get("widths", []))
    for i, w in enumerate(widths, start=1):
        stages += [(f"fc{i}", nn.Linear(width, w)), (f"fc{i}_act", activation(act))]
        if dropout:
            stages.append((f"fc{i}_drop", nn.Dropout(dropout)))
        width = w
    stages.append((f"fc{len(widths) + 1}", nn.Linear(width, arch.get("outputs") or num_classes)))
    return nn.Sequential(OrderedDict(stages))


def build_cnn(arch: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """`conv_i` [+ `_bn`] + `_act` [+ `_pool`] [+ `_drop`] per conv entry, then flatten and dense.

    Each `conv` entry may override the network-wide `kernel`, `padding`, `stride`, `pool`,
    `conv_dropout` and `batch_norm`; kernels may be non-square (`[3, 1]`).
    """
    act = arch.get("activation", "relu")
    channels = input_shape[0]
    stages: list[tuple[str, nn.Module]] = []
    for i, layer in enumerate(arch["conv"], start=1):
        layer = {"channels": layer} if isinstance(layer, int) else layer
        get = lambda key, default: layer.get(key, arch.get(key, default))  # noqa: E731
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
        stages.append((f"{name}_act", activation(act)))
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
    dense_dropout = float(arch.get("dense_dropout", 0.0))
    dense = list(arch.get("dense", []))
    for i, w in enumerate(dense, start=1):
        stages += [(f"fc{i}", nn.Linear(width, int(w))), (f"fc{i}_act", activation(act))]
        if dense_dropout:
            stages.append((f"fc{i}_drop", nn.Dropout(dense_dropout)))
        width = int(w)
    stages.append((f"fc{len(dense) + 1}", nn.Linear(width, arch.get("outputs") or num_classes)))
    return nn.Sequential(OrderedDict(stages))


def build_resnet(arch: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """torchvision resnet18/34/50 as a Sequential with torchvision's layer names.

    `small_input` swaps the 7x7/2 stem and max pool for a 3x3/1 conv (CIFAR-sized images).
    `weights` is a path to a torchvision state_dict (e.g. ImageNet weights the user has); the
    classifier is replaced when its size differs from the number of classes.
    """
    import torchvision

    depth = int(arch.get("depth", 18))
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    if arch.get("weights"):
        state = torch.load(config_path(arch["weights"]), weights_only=True, map_location="cpu")
        net.load_state_dict(state.get("state_dict", state))
    if input_shape[0] != 3 or arch.get("small_input", False):
        stride = 1 if arch.get("small_input", False) else 2
        kernel = 3 if arch.get("small_input", False) else 7
        net.conv1 = nn.Conv2d(input_shape[0], 64, kernel, stride, kernel // 2, bias=False)
    if arch.get("small_input", False):
        net.maxpool = nn.Identity()
    if net.fc.out_features != num_classes:
        net.fc = nn.Linear(net.fc.in_features, arch.get("outputs") or num_classes)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    stages = [(n, getattr(net, n)) for n in names] + [("flatten", nn.Flatten()), ("fc", net.fc)]
    return nn.Sequential(OrderedDict(stages))


def build_torchvision(arch: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Any classification builder of torchvision (`torchvision.models.list_models`), by `name`,
    with its keyword arguments. `weights`: a torchvision weights name (`IMAGENET1K_V1`,
    `DEFAULT`; from torch's cache, else downloaded), a local state_dict file, or null (random).
    The classifier head is resized to `num_classes` (a fresh layer when the weights had another
    count), a first convolution for another number of input channels is adapted (pretrained
    filters summed over RGB for grey images), and `small_input: true` turns a ResNet-like stem
    (`conv1`, `maxpool`) into a 3x3/1 conv without pooling, for 32x32 images."""
    import torchvision

    name = arch.get("name")
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(
            f"unknown torchvision classification model {name!r} (e.g. resnet18, vgg11_bn, mobilenet_v3_small, vit_b_16; {len(known)} in all)"
        )
    kwargs = {
        k: v for k, v in arch.items() if k not in ("type", "name", "weights", "small_input", "init", "num_classes")
    }
    outputs = arch.get("num_classes", num_classes)  # None: the weights' own head (class_outputs reads it)
    weights = arch.get("weights")
    if weights is None:
        model = torchvision.models.get_model(
            name, weights=None, **kwargs, **({"num_classes": outputs} if outputs else {})
        )
    elif is_weights_file(weights, arch):
        state = read_state_dict(config_path(weights))
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        _fit_head(model, state)
        load_state(model, state, str(weights))
    else:
        model = torchvision.models.get_model(name, weights=_pretrained(name, weights), **kwargs)
    _adapt_input(model, input_shape[0], bool(arch.get("small_input", False)), name)
    if outputs is not None:
        _resize_head(model, outputs)
    return model


def _weights_member(name: str, weights: str):
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    if weights not in enum.__members__:
        raise ValueError(
            f"no weights {weights!r} for {name} (have {', '.join(enum.__members__)}, or a state_dict file)"
        )
    return enum[weights]


def _cached(member) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name


def pretrained_available(name: str, weights: str) -> None:
    """ValueError unless torchvision's weights `weights` of `name` are in torch's cache or their
    server answers (checked before any job, without downloading them)."""
    import urllib.request

    member = _weights_member(name, weights)
    if _cached(member).is_file():
        return
    try:
        urllib.request.urlopen(urllib.request.Request(member.url, method="HEAD"), timeout=5).close()
    except Exception:
        raise ValueError(
            f"{name} {weights} is not in torch's cache and {member.url} cannot be reached: put {Path(member.url).name} in {_cached(member).parent}"
        ) from None


def _pretrained(name: str, weights: str):
    """torchvision's weights enum member `weights` of model `name`, its file in torch's cache or
    downloaded now; one line saying where to put the file when neither works."""
    member = _weights_member(name, weights)
    cached = _cached(member)
    if not cached.is_file():
        try:
            torch.hub.load_state_dict_from_url(member.url, progress=False, check_hash=True)
        except Exception as e:  # offline, proxy, disk: say where the file goes
            reason = " ".join(str(e).split())[:120]
            raise ValueError(
                f"{name} weights {weights} are not in torch's cache and could not be downloaded ({reason}): put {Path(member.url).name} from {member.url} in {cached.parent}"
            ) from None
    return member


STATE_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts and libraries keep the weights


def read_state_dict(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file, as saved: a `.safetensors` file, or a `torch.save`d
    state_dict (read with weights_only=True), plain or inside a dict under `key` (by default its
    `state_dict`, `model_state_dict` or `model`: a training script's dict, Lightning's checkpoint,
    a knockout checkpoint). ValueError, one line naming the file, for anything else."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({_words(e)})") from None
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:
        pickled = re.search(r"GLOBAL ([\w.]+)", str(e))
        if pickled:
            raise ValueError(
                f"{path}: a pickled {pickled.group(1)} object, not a state_dict: knockout reads weights only "
                "(unpickling runs code): save the network's model.state_dict() instead"
            ) from None
        raise ValueError(f"{path}: not a readable state_dict ({_words(e)})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a {type(loaded).__name__}, not a state_dict (a mapping of names to tensors)")
    holding = [k for k, v in loaded.items() if _is_state(v)]
    if key is not None:
        if not _is_state(loaded.get(key)):
            raise ValueError(
                f"{path}: no state_dict under {key!r} (found under: {', '.join(map(repr, holding)) or 'none'})"
            )
        return loaded[key]
    if _is_state(loaded):
        return loaded
    found = next((k for k in STATE_KEYS if k in holding), None)
    if found is None:
        where = (
            f"; state_dicts under {', '.join(map(repr, holding))}: choose one with checkpoints.key" if holding else ""
        )
        raise ValueError(f"{path}: not a state_dict, and none under {', '.join(STATE_KEYS)}{where}")
    return loaded[found]


def _is_state(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _words(e: BaseException, limit: int = 160) -> str:
    """An exception's text as one line of words, without terminal colour codes, cut at a word."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e) or type(e).__name__).split())
    return text if len(text) <= limit else text[:limit].rpartition(" ")[0] + " ..."


def fit_state(
    model: nn.Module, state: dict[str, torch.Tensor], where: str, prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """`state` keyed by `model`'s names: as it is when it matches, else under `prefix` (what its
    keys carry before the model's names), else under the one prefix that makes every one of the
    model's keys match (DataParallel's `module.`, torch.compile's `_orig_mod.`, a Lightning
    module's attribute `model.`, an averaged model's `model_ema.module.`). ValueError naming the
    first difference, and the prefix the file's keys carry, when nothing fits exactly."""
    own = model.state_dict()
    if prefix is None and set(state) != set(own):
        found = _prefixes(own, state)
        if len(found) > 1:
            raise ValueError(
                f"{where}: the model's weights are in it under {' and '.join(map(repr, found))}: "
                "choose one with checkpoints.prefix"
            )
        prefix = found[0] if found else None
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or wrong:
        first = (
            f"lacks {missing[0]}"
            if missing
            else (
                f"has {extra[0]}, which the model does not"
                if extra
                else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}"
            )
        )
        count = len(missing) + len(extra) + len(wrong)
        shared = _common_prefix(list(state))
        raise ValueError(
            f"{where} does not match the architecture: {first}"
            + (f" ({count} differences)" if count > 1 else "")
            + (f"; every key of it starts with {shared!r}" if shared and not prefix else "")
        )
    return state


def _prefixes(own: dict, state: dict) -> list[str]:
    """The prefixes p under which `state` holds exactly the keys of `own` (p + key for each)."""
    if not own:
        return []
    first = next(iter(own))
    candidates = {k[: -len(first)] for k in state if k.endswith(first) and k[: -len(first)].endswith(".")}
    return sorted(p for p in candidates if {k[len(p) :] for k in state if k.startswith(p)} == set(own))


def _common_prefix(keys: list[str]) -> str:
    """The dotted prefix every key shares (`model.` of model.conv1.weight, model.fc.bias), or ''."""
    parts = [k.split(".")[:-1] for k in keys]
    shared = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        shared.append(level[0])
    return ".".join(shared) + "." if shared else ""


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str, prefix: str | None = None) -> None:
    """Load `state` into `model`, exactly (`fit_state`); one line naming the first mismatch otherwise."""
    model.load_state_dict(fit_state(model, state, where, prefix))


def head_name(model: nn.Module) -> str:
    """The module that produces the logits: the last linear (or 1x1-conv, SqueezeNet) layer."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not name.endswith("out_proj") and "aux" not in name.lower():
            last = name
    if last is None:
        raise ValueError("no linear or convolutional layer to use as the classifier head")
    return last


def _fit_head(model: nn.Module, state: dict) -> None:
    """Give `model`'s head the size of the head in `state` (so the file's weights load)."""
    name = head_name(model)
    weight = state.get(f"{name}.weight")
    if weight is not None:
        _resize_head(model, int(weight.shape[0]))


def _resize_head(model: nn.Module, num_classes: int) -> None:
    name = head_name(model)
    head = model.get_submodule(name)
    size = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    if size == num_classes:
        return
    if isinstance(head, nn.Linear):
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        new = nn.Conv2d(
            head.in_channels, num_classes, head.kernel_size, head.stride, head.padding, bias=head.bias is not None
        )
    _set_module(model, name, new)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _adapt_input(model: nn.Module, channels: int, small_input: bool, name: str) -> None:
    """The first convolution for `channels` input channels (pretrained filters averaged over RGB
    and spread over the new channels: a grey image excites them as its RGB copy did), and the
    small-input stem of a ResNet-like network."""
    first_name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first_name is None:
        return
    first = model.get_submodule(first_name)
    if small_input:
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
            raise ValueError(
                f"small_input needs a ResNet-like stem (conv1, maxpool); {name} has none: resize the images instead"
            )
        first_name, first = "conv1", model.conv1
    if first.in_channels == channels and not small_input:
        return
    kernel, stride, padding = (3, 1, 1) if small_input else (first.kernel_size, first.stride, first.padding)
    new = nn.Conv2d(
        channels,
        first.out_channels,
        kernel,
        stride,
        padding,
        dilation=first.dilation if not small_input else 1,
        groups=1,
        bias=first.bias is not None,
    )
    if not small_input and first.groups == 1:
        with torch.no_grad():
            new.weight.copy_(
                first.weight.mean(1, keepdim=True).repeat(1, channels, 1, 1) * (first.in_channels / channels)
            )
            if first.bias is not None:
                new.bias.copy_(first.bias)
    _set_module(model, first_name, new)
    if small_input:
        model.maxpool = nn.Identity()


def build_module(arch: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The user's own network: `target` is `package.module:callable` (importable) or
    `path/to/file.py:callable` (a relative path from the working directory: `knockout.paths`);
    the callable gets `kwargs`, and `num_classes`, `in_channels` or `input_shape` when it takes
    them and they are not given."""
    from .targets import accepted, load_target

    target = str(arch.get("target", ""))
    factory = load_target(target)
    kwargs = dict(arch.get("kwargs") or {})
    takes = accepted(factory)
    for key, value in (
        ("num_classes", num_classes),
        ("in_channels", input_shape[0]),
        ("input_shape", tuple(input_shape)),
    ):
        if key in takes and key not in kwargs:
            kwargs[key] = value
    network = factory(**kwargs)
    if not isinstance(network, nn.Module):
        raise ValueError(f"target {target!r} returned a {type(network).__name__}, not an nn.Module")
    return network


BUILDERS = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "resnet": build_resnet,
    "torchvision": build_torchvision,
    "module": build_module,
}


def build_model(
    arch: str | dict, input_shape: tuple[int, ...], num_classes: int, readout: Readout | None = None
) -> nn.Sequential:
    """An arch (a preset name, or a dict) + input shape (C, H, W) + class count -> a freshly
    initialised model, carrying `.spec`: its arch resolved (`resolve_arch`), input shape, classes,
    and how its output is read as class logits (`readout`, the model entry's `output` and
    `class_outputs`; absent: the default). An arch's `factorized: {layers, between}` (any type)
    splits those n x n convs of the built network (`knockout.factorization`), so a factorised
    network's checkpoint rebuilds."""
    arch = resolve_arch(arch)
    factorized = arch.pop("factorized", None)
    kind = arch.get("type")
    if kind not in BUILDERS:
        raise ValueError(f"unknown model type {kind!r}; choose from {sorted(BUILDERS)}")
    # A torchvision network read through class_outputs keeps its weights' head (a 1000-way
    # ImageNet head on a 10-class subset), its size recorded so that the checkpoint rebuilds.
    keep_head = kind == "torchvision" and readout is not None and readout.class_outputs is not None
    keep_head = keep_head and arch.get("weights") is not None and "num_classes" not in arch
    model = BUILDERS[kind](arch, tuple(input_shape), None if keep_head else num_classes)
    if keep_head:
        head = model.get_submodule(head_name(model))
        arch["num_classes"] = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    if factorized:
        from .factorization import factorize_convs

        factorize_convs(model, factorized["layers"], factorized.get("between", "relu"), tuple(input_shape))
        arch["factorized"] = factorized
    if arch.get("init", "torch") != "torch" and not arch.get("weights"):
        initialise(model, arch["init"])
    model.spec = {"arch": arch, "input_shape": list(input_shape), "num_classes": num_classes}
    if readout is not None and readout.record is not None:
        model.spec["readout"] = readout.record
    return model


def initialise(model: nn.Module, init: str) -> None:
    """Every conv and linear layer's weights drawn as `init` says, its bias zero: `keras` as Keras'
    Conv2D and Dense (glorot_uniform: U(±sqrt(6 / (fan_in + fan_out))), fans counting the
    kernel), `kaiming` as He et al. (normal, fan_in, for ReLU)."""
    draw = {"keras": nn.init.xavier_uniform_, "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")}
    if init not in draw:
        raise ValueError(f"unknown init {init!r}; choose from torch, {', '.join(draw)}")
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            draw[init](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_like(network: nn.Module, arch: str | dict) -> nn.Module:
    """A freshly initialised network of `arch` for what `network` was built for: its input shape,
    classes and readout (architecture variants, the factorised network, a re-randomised draw)."""
    spec = network.spec
    return build_model(arch, tuple(spec["input_shape"]), spec["num_classes"], Readout.of(network))


def check_output(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """One forward of a zero image: the model must accept the input, and its output, read as its
    spec's readout says (`knockout.readout`), must give one logit per class: as many outputs as
    classes, or the outputs `class_outputs` names for them. ConfigError naming the model entry's
    key it concerns, relative to the entry (`arch: ...`, `output: ...`, `class_outputs: ...`)."""
    from .errors import ConfigError

    readout = Readout.of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    except Exception as e:
        raise ConfigError(
            f"arch: a {'x'.join(map(str, input_shape))} input fails: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    finally:
        model.train(was_training)
    try:
        logits = readout.logits(output)
    except TypeError as e:
        raise ConfigError(f"output: {e}") from None
    if logits.dim() != 2:
        raise ConfigError(f"output: logits of shape {tuple(logits.shape[1:])} per example; expected one per output")
    try:
        readout.check(logits.shape[1], num_classes)
    except ValueError as e:
        raise ConfigError(f"class_outputs: {e}") from None


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
    spec = getattr(model, "spec", None)  # a network knockout did not build has none: its weights only
    checkpoint = {**({"spec": spec} if spec is not None else {}), "state_dict": plain_state_dict(model), **extra}
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_model(path: str | Path, map_location: str | torch.device) -> nn.Sequential:
    """Rebuild the module saved by `save_model` on the device `map_location` (never unpickles
    code: weights_only=True)."""
    ckpt = torch.load(Path(path), weights_only=True, map_location=map_location)
    if "spec" not in ckpt:
        raise ValueError(
            f"{path}: the weights of a network knockout did not build (no spec): load ckpt['state_dict'] into "
            "your module with load_state_dict"
        )
    spec = ckpt["spec"]
    # The checkpoint holds every weight: don't read the pretrained file again.
    model = build_model(
        without_weights(spec["arch"]),
        tuple(spec["input_shape"]),
        spec["num_classes"],
        Readout.from_record(spec.get("readout")),
    )
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


def summary(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """A table of the layers an intervention can address (found on the traced graph, for any
    model): name, type, output shape, units, the module whose output is zeroed when a unit is
    silenced, parameters; then the total."""
    from .graph import graph_of

    graph = graph_of(model, torch.zeros(1, *input_shape))
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, output):
            shapes.setdefault(name, tuple((output[0] if isinstance(output, tuple) else output).shape)[1:])

        return hook

    hooks = [unit.module.register_forward_hook(record(name)) for name, unit in graph.units.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    rows = [("Layer (type)", "Output Shape", "Units", "Silenced at", "Param #")]
    for name, unit in graph.units.items():
        shape = "(None, " + ", ".join(str(d) for d in shapes.get(name, ())) + ")"
        point = graph.silence_point(name) if unit.layer_type != "heads" else f"{name} (values)"
        rows.append(
            (
                f"{name} ({type(unit.module).__name__})",
                shape,
                f"{unit.count} {unit.layer_type if unit.layer_type == 'heads' else 'units'}",
                point,
                f"{count_parameters(unit.module):,}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    line = "=" * (sum(widths) + 8)
    fmt = lambda r: "  ".join(
        f"{c:<{w}}" if i < 4 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))
    )  # noqa: E731
    traced = (
        "traced: shared-prefix evaluation"
        if graph.traced
        else f"not traceable ({graph.reason}): forward hooks, no sharing"
    )
    out = [fmt(rows[0]), line, *(fmt(r) for r in rows[1:]), line]
    out.append(f"Total params: {count_parameters(model):,}  ({len(graph.units)} addressable layers; {traced})")
    return "\n".join(out)
