"""A model's preprocessing: how its network was trained to see its inputs, decided in one place.

It has two parts. The geometry (resize, crop, interpolation) is applied once, by `prepare`, to
each decoded image, so that the model's prepared view of its dataset holds its inputs as uint8
at their final size. The normalisation (x / 255 - mean) / std is applied to every batch on the
device (`Preprocess`). `models.<name>.preprocess` is one of:

    auto        `weights` for a torchvision model with a pretrained weights name, else `dataset`
    dataset     the mean and std of the dataset's training split (what knockout trains with)
    none        x / 255 alone (torchvision's ToTensor)
    imagenet    ImageNet's mean and std, at the dataset's own size
    weights     the model's torchvision weights' own transforms(): their resize, crop,
                interpolation, mean and std, read from torchvision's metadata (there offline)
    {weights: ResNet50_Weights.IMAGENET1K_V2}   the transforms() of the torchvision weights named
    {mean: [...], std: [...], resize: 256, crop: 224, interpolation: bilinear}   your own
                (mean and std together, or neither: then the dataset's; each geometry key optional)

`resolve` turns the entry into {name, mean, std, geometry, from}; jobs get it resolved and build
the normalisation from it and the prepared view's statistics (`Preprocess.of`). No torch at
import: the workflow resolves without it (torchvision is imported only for weights).
"""

from __future__ import annotations

from .catalog import IMAGENET_MEAN, IMAGENET_STD
from .errors import ConfigError


def _weights_transforms(key: str, member) -> dict:
    """{mean, std, geometry} of a torchvision weights enum member's transforms()."""
    transforms = member.transforms()
    needed = ("crop_size", "resize_size", "mean", "std", "interpolation")
    if not all(hasattr(transforms, a) for a in needed):
        raise ConfigError(f"{key}: {member} has no image-classification transforms (resize, crop, mean, std)")
    resize = [int(v) for v in transforms.resize_size]
    crop = [int(v) for v in transforms.crop_size]
    geometry = {
        "resize": resize[0] if len(resize) == 1 else resize,
        "crop": crop * 2 if len(crop) == 1 else crop,
        "interpolation": transforms.interpolation.value,
    }
    return {
        "mean": [float(v) for v in transforms.mean],
        "std": [float(v) for v in transforms.std],
        "geometry": geometry,
    }


def _named_weights(key: str, arch: dict):
    """The torchvision weights enum member a model's arch names (`weights: IMAGENET1K_V1`), or None
    (no weights, a state_dict file, knockout's own types)."""
    from .archs import is_weights_file

    weights = arch.get("weights")
    if arch.get("type") != "torchvision" or not weights or is_weights_file(weights, arch):
        return None
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch["name"])
    except (KeyError, ValueError):
        return None  # an unknown model: its arch check says so
    if weights not in enum.__members__:
        return None  # an unknown weights name: the weights check says so
    return enum[weights]


def resolve(name: str, model: dict) -> dict:
    """`models.<name>` (validated) -> its resolved preprocessing: {name, mean and std (lists; None:
    the dataset's, known once prepared), geometry ({resize, crop, interpolation}; None: the
    dataset's own size), from (where it came from, in words)}. ConfigError naming
    `models.<name>.preprocess` when it cannot be had."""
    from .archs import resolve_arch

    key = f"models.{name}.preprocess"
    given = model.get("preprocess", "auto")
    try:
        arch = resolve_arch(model["arch"])
    except ValueError:  # an unknown preset: the architecture's check says so
        arch = {}
    if given == "auto":
        given = "weights" if _named_weights(key, arch) is not None else "dataset"
    if given == "weights":
        member = _named_weights(key, arch)
        if member is None:
            raise ConfigError(
                f"{key}: weights takes the transforms of the model's torchvision weights, and models.{name}.arch "
                "names none (for a state_dict file, give {weights: ResNet50_Weights.IMAGENET1K_V2} or mean and std)"
            )
        return {"name": "weights", **_weights_transforms(key, member), "from": f"torchvision {member}.transforms()"}
    if given == "dataset":
        return {"name": "dataset", "mean": None, "std": None, "geometry": None, "from": "the dataset's training split"}
    if given == "none":
        return {"name": "none", "mean": [0.0], "std": [1.0], "geometry": None, "from": "x / 255 (ToTensor)"}
    if given == "imagenet":
        return {
            "name": "imagenet",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "geometry": None,
            "from": "ImageNet's mean and std",
        }
    if "weights" in given:
        import torchvision

        try:
            member = torchvision.models.get_weight(given["weights"])
        except (KeyError, ValueError, AttributeError):
            raise ConfigError(
                f"{key}.weights: no torchvision weights {given['weights']!r} (e.g. ResNet50_Weights.IMAGENET1K_V2)"
            ) from None
        return {"name": "weights", **_weights_transforms(key, member), "from": f"torchvision {member}.transforms()"}
    if ("mean" in given) != ("std" in given):
        raise ConfigError(f"{key}: give mean and std together (or neither: the dataset's)")
    if "mean" in given and len(given["mean"]) != len(given["std"]):
        raise ConfigError(f"{key}: {len(given['mean'])} means for {len(given['std'])} stds")
    if "std" in given and any(s <= 0 for s in given["std"]):
        raise ConfigError(f"{key}.std: must be positive")
    crop = given.get("crop")
    geometry = None
    if given.get("resize") is not None or crop is not None:
        geometry = {
            "resize": given.get("resize"),
            "crop": [crop, crop] if isinstance(crop, int) else crop,
            "interpolation": given.get("interpolation", "bilinear"),
        }
    return {
        "name": "config",
        "mean": given.get("mean"),
        "std": given.get("std"),
        "geometry": geometry,
        "from": "config",
    }


def describe(preprocess: dict) -> str:
    """A resolved preprocessing (or a `Preprocess.record`) in words, for a line of output:
    `dataset: mean 0.286, std 0.353`, `weights: mean ..., std ..., resize 232, crop [224, 224], bilinear`."""
    if preprocess.get("mean") is None:
        numbers = "the dataset's mean and std"
    else:
        numbers = f"mean {', '.join(f'{v:.3f}' for v in preprocess['mean'])}, std {', '.join(f'{v:.3f}' for v in preprocess['std'])}"
    geometry = preprocess.get("geometry")
    shape = f", resize {geometry['resize']}, crop {geometry['crop']}, {geometry['interpolation']}" if geometry else ""
    return f"{preprocess['name']}: {numbers}{shape}"


class Preprocess:
    """The normalisation of a model's inputs: stored uint8 (B, C, H, W) -> float32
    (x / 255 - mean) / std, on the batch's device. `record` is the resolved preprocessing with
    its numbers (for metrics.json, provenance.json and `knockout summary`)."""

    def __init__(self, mean: list[float], std: list[float], channels: int, record: dict):
        import torch

        if len(mean) != channels and len(mean) == 3 and channels == 1:  # grey images, RGB statistics: their average
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        if len(mean) not in (1, channels):
            raise ConfigError(f"preprocess: {len(mean)} means for {channels}-channel images")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: just centre it
        self.record = record | {
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
        }
        self._on = {}

    @classmethod
    def of(cls, resolved: dict, meta: dict) -> Preprocess:
        """From a resolved preprocessing and the prepared view's meta.json (its statistics, for
        `dataset`, and its channels)."""
        mean = resolved["mean"] if resolved.get("mean") is not None else meta["mean"]
        std = resolved["std"] if resolved.get("std") is not None else meta["std"]
        return cls(mean, std, meta["shape"][0], resolved)

    def _constants(self, device):
        if device not in self._on:
            self._on[device] = (self.mean.to(device), self.std.to(device))
        return self._on[device]

    def __call__(self, x):
        import torch

        mean, std = self._constants(x.device)
        # The same operations, in the same order, as the prepared splits were once normalised with.
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def normalise(self, pixels):
        """Pixel values in [0, 1] (a (C,) tensor, or anything that broadcasts) in the model's space."""
        import torch

        return (torch.as_tensor(pixels, dtype=torch.float32) - self.mean.flatten()) / self.std.flatten()
