"""What the sources share: one-line errors, file checksums, the raw split a source reads, and one
image turned into the uint8 (C, H, W) array a prepared split holds (its mode, then its geometry:
the dataset's `size`, or the resize and crop of a model's preprocessing, as torchvision does them)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..paths import config_path

_CHUNK = 1 << 20


def one_line(err: BaseException) -> str:
    """An exception as a single line of text (for DataError messages)."""
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def expand(path: str | Path) -> Path:
    """A path of the config, ~ and $VARS expanded, a relative one from the working directory
    (`knockout.paths`, the one rule)."""
    return config_path(path)


def hash_stream(stream, *algorithms: str) -> list[str]:
    """Hex digests of everything read from a binary stream, one per algorithm."""
    hashes = [hashlib.new(a) for a in algorithms]
    while chunk := stream.read(_CHUNK):
        for h in hashes:
            h.update(chunk)
    return [h.hexdigest() for h in hashes]


def file_hashes(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file's bytes, in one pass."""
    with open(path, "rb") as f:
        md5, sha256 = hash_stream(f, "md5", "sha256")
    return md5, sha256


def file_entry(path: Path) -> dict:
    """A manifest's record of one file: size, md5, sha256 and where it is."""
    md5, sha256 = file_hashes(path)
    return {"size": path.stat().st_size, "md5": md5, "sha256": sha256, "source": str(path.resolve())}


@dataclass
class RawSplit:
    """One split of a dataset as its source reads it, before subsetting and conversion.

    labels: int64 (N,), the class of every example.
    item: index -> its image as the source has it: a PIL image, a torch tensor (C, H, W) or
        (H, W), uint8 or floats in [0, 1], or a numpy array in PIL's layout (H, W[, C]).
    arrays: for sources that hold uint8 (N, C, H, W) arrays, sorted indices -> those images at
        once (used when nothing is converted); None for the others.
    """

    labels: torch.Tensor
    item: Callable[[int], object]
    arrays: Callable[[np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Raw:
    """A fetched dataset as its source reads it (the `read` call of every source).

    splits: split name -> RawSplit; a split the dataset does not have is absent.
    classes: the class names, index = label.
    channels: 1 or 3, what every image becomes; None: decided by the first image (grey stays
        grey, the rest RGB).
    origin: where it was read from (meta.json's `source`); checksums: file -> checksum.
    """

    splits: dict[str, RawSplit]
    classes: list[str]
    channels: int | None
    origin: dict | None
    checksums: dict


def size_pair(size) -> tuple[int, int]:
    """The config's `size` (an int, or [H, W]) as (H, W)."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def output_size(geometry: dict | None, native: tuple[int, int] | None) -> tuple[int, int] | None:
    """(H, W) of images prepared at `geometry` (None: as they are, `native`)."""
    if geometry is None:
        return native
    if "size" in geometry:
        return size_pair(geometry["size"])
    if geometry.get("crop") is not None:
        return size_pair(geometry["crop"])
    resize = geometry.get("resize")
    return size_pair(resize) if isinstance(resize, list) else None  # a shorter side alone: sizes vary


def fit(image, geometry: dict):
    """A PIL image at `geometry`: `{size: [H, W]}` (a dataset's own: resized, bilinear and
    antialiased, to cover H x W, then centre-cropped to it) or `{resize, crop, interpolation}`
    (a model's: torchvision's `resize` then `center_crop`, as its weights' `transforms()` do)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if "size" in geometry:
        height, width = size_pair(geometry["size"])
        w, h = image.size
        if (h, w) == (height, width):
            return image
        scale = max(height / h, width / w)
        resized = F.resize(
            image,
            [max(height, round(h * scale)), max(width, round(w * scale))],
            interpolation=InterpolationMode.BILINEAR,
            antialias=True,
        )
        return F.center_crop(resized, [height, width])
    if geometry.get("resize") is not None:
        resize = geometry["resize"]
        image = F.resize(
            image,
            resize if isinstance(resize, list) else [resize],
            interpolation=InterpolationMode(geometry.get("interpolation") or "bilinear"),
            antialias=True,
        )
    if geometry.get("crop") is not None:
        image = F.center_crop(image, list(size_pair(geometry["crop"])))
    return image


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def mode_of(image, channels: int | None) -> str:
    """The PIL mode images are converted to: `channels` (1: L, 3: RGB), else grey for grey images
    (PIL's grey modes, one-channel arrays) and RGB for the rest (palette, alpha, CMYK included)."""
    if channels is not None:
        return "L" if channels == 1 else "RGB"
    if isinstance(image, torch.Tensor):
        return "L" if image.dim() == 2 or image.shape[0] == 1 else "RGB"
    if isinstance(image, np.ndarray):
        return "L" if image.ndim == 2 or image.shape[-1] == 1 else "RGB"
    return "L" if getattr(image, "mode", "RGB") in GREY_MODES else "RGB"


def _tensor_pixels(where: str, item: int, image: torch.Tensor) -> np.ndarray:
    """A tensor image (C, H, W) or (H, W), uint8 or floats in [0, 1] (ToTensor's), as uint8 (C, H, W)."""
    x = image.detach().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise DataError(
            f"{where}: item {item}: a tensor image of shape {tuple(image.shape)}; expected (C, H, W) with 1 or 3 channels"
        )
    if x.dtype == torch.uint8:
        return x.numpy()
    if not x.is_floating_point():
        raise DataError(f"{where}: item {item}: a {x.dtype} tensor image; expected uint8 or floats in [0, 1]")
    if not torch.isfinite(x).all():
        raise DataError(
            f"{where}: item {item}: {int((~torch.isfinite(x)).sum())} of its pixels are NaN or infinite; "
            "expected uint8 or floats in [0, 1]"
        )
    low, high = float(x.min()), float(x.max())
    if not (low >= 0 and high <= 1):
        raise DataError(
            f"{where}: item {item}: tensor pixels from {low:g} to {high:g}, not in [0, 1]: give the images as "
            "pixels (ToTensor, no Normalize) and the normalisation as models.<name>.preprocess"
        )
    return np.rint(x.double().numpy() * 255).astype(np.uint8)  # ToTensor's x/255, back to its byte exactly


def to_pixels(where: str, item: int, image, mode: str, geometry: dict | None) -> np.ndarray:
    """One image as uint8 (C, H, W): in `mode` (L or RGB), at `geometry` (None: as it is)."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        pixels = _tensor_pixels(where, item, image)
        fits = (
            geometry is None or "size" in geometry and size_pair(geometry["size"]) == pixels.shape[1:]
        )  # fit() would keep it
        if fits and pixels.shape[0] == (1 if mode == "L" else 3):
            return pixels
        image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise DataError(
                f"{where}: item {item}: a {image.dtype} array image; expected uint8 in PIL's layout (H, W[, C])"
            )
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise DataError(
            f"{where}: item {item}: its image is a {type(image).__name__}: not an image-classification dataset"
        )
    if image.mode != mode:
        image = image.convert(mode)
    if geometry is not None:
        image = fit(image, geometry)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def label_of(where: str, item: int, target) -> int:
    """A dataset item's target as a class index; DataError for anything else."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_)):
        return int(target)
    if (
        isinstance(target, torch.Tensor)
        and target.numel() == 1
        and not target.is_floating_point()
        and target.dtype != torch.bool
    ):
        return int(target)
    text = " ".join(repr(target).split())[:60]
    raise DataError(
        f"{where}: item {item}: its target is {type(target).__name__} {text}, not a class index: "
        "not an image-classification dataset"
    )


def labels_attribute(dataset) -> torch.Tensor | None:
    """Every label of a dataset from the list it keeps of them (`targets`, `labels` or `_labels`,
    as torchvision's do), or None when it keeps none that fits (one integer per item)."""
    for attribute in ("targets", "labels", "_labels"):
        value = getattr(dataset, attribute, None)
        if value is None:
            continue
        try:
            labels = np.asarray(value)
        except Exception:
            continue
        if labels.ndim == 1 and len(labels) == len(dataset) and labels.dtype.kind in "iu":
            return torch.from_numpy(labels.astype(np.int64))
    return None


def dataset_split(where: str, dataset) -> RawSplit:
    """A map-style dataset of (image, class index) items as a RawSplit. Labels come from the
    list the dataset keeps (each item read is checked against it), else from a pass over every
    item."""
    n = len(dataset)
    if n == 0:
        raise DataError(f"{where}: no images")
    labels = labels_attribute(dataset)
    if labels is None:
        labels = torch.tensor([label_of(where, i, dataset[i][1]) for i in range(n)], dtype=torch.int64)

    def item(i: int):
        image, target = dataset[i]
        if label_of(where, i, target) != int(labels[i]):
            raise DataError(
                f"{where}: item {i}: its target is {label_of(where, i, target)}, its label in the dataset's list {int(labels[i])}"
            )
        return image

    return RawSplit(labels, item)


def class_names(where: str, names, labels: list[torch.Tensor]) -> list[str]:
    """Class names: the dataset's own (when it has a list of them), else '0'..'K-1' for the
    largest label K-1; DataError when a label is negative or has no name."""
    present = [l for l in labels if l.numel()]
    top = max(int(l.max()) for l in present)
    low = min(int(l.min()) for l in present)
    if low < 0:
        raise DataError(f"{where}: a label is {low}: labels must be class indices 0..K-1")
    if names is None:
        return [str(k) for k in range(top + 1)]
    names = [str(c) for c in names]
    if top >= len(names):
        raise DataError(f"{where}: a label is {top} but there are {len(names)} class names")
    return names


def manifest_checksums(manifest: dict) -> dict[str, str]:
    """File -> sha256 of the files a manifest verified (meta.json's `checksums`)."""
    return {f: entry["sha256"] for f, entry in manifest.get("files", {}).items() if "sha256" in entry}


def verify_manifest(name: str, manifest: dict) -> None:
    """DataError unless every file with a sha256 in the manifest still has it."""
    for filename, entry in manifest.get("files", {}).items():
        if "sha256" not in entry:
            continue
        path = Path(entry["source"])
        if not path.is_file():
            raise DataError(f"datasets.{name}: {path}: gone since it was fetched; fetch it again (the download rule)")
        sha256 = file_hashes(path)[1]
        if sha256 != entry["sha256"]:
            raise DataError(
                f"datasets.{name}: {filename}: changed since it was fetched (sha256 {sha256}, fetched {entry['sha256']}); "
                "fetch it again (the download rule)"
            )
