"""The facts of datasets, prepared splits and preprocessing that the workflow plans from, without
torch: `knockout.config`, `knockout.plan` and `knockout.data` read them here, and nowhere else;
and `DataInfo`, what the checks know of a dataset before any job (`knockout.studies` re-exports it).

A prepared *view* is one dataset at one geometry: its own (`results/data/{dataset}/`) or the
resize and crop a model's preprocessing asks for (`results/data/{dataset}@r256-c224-bilinear/`,
for torchvision's ImageNet weights); each split of a view is three uncompressed `.npy` files.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILTIN = ("mnist", "fashion_mnist", "cifar10")  # the keys of `datasets:` that need no `source`
SOURCES = ("torchvision", "image_folder", "tensors", "module")  # the other datasets' `source`
SPLITS = ("train", "test")
SUBSET_KEYS = ("train_subset", "test_subset", "subset_seed")  # what prepare takes; fetch does not
SPLIT_ARRAYS = ("images", "labels", "indices")  # {split}_{array}.npy: uint8 N,C,H,W; int64 N; int64 N
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every file `prepare` writes into a view's folder; meta.json, written last, marks it done.
VIEW_FILES = tuple(f"{split}_{array}.npy" for split in SPLITS for array in SPLIT_ARRAYS) + ("meta.json",)


@dataclass(frozen=True)
class DataInfo:
    """What a check needs to know of a dataset before any job (`knockout.data.inspect`): the image
    shape (C, H, W), the class names, and the sizes of the prepared splits (subsets applied).

    A field is None when it cannot be known before the data is fetched (a torchvision class not
    downloaded yet); `deferred` then says why, and the checks that need it run in the jobs. A
    `knockout.studies.Target` always has a complete one (the config check skips models whose
    data is not known).
    """

    shape: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    n_test: int | None = None
    n_train: int | None = None
    deferred: str | None = None

    @classmethod
    def from_meta(cls, meta: dict) -> DataInfo:
        """From a prepared view's meta.json, or a dict of its keys as far as they are known before
        any job (`shape`, `classes`, `n_test`, `n_train`; `deferred`); a key missing is None."""
        shape, classes = meta.get("shape"), meta.get("classes")
        return cls(
            shape=tuple(shape) if shape is not None else None,
            classes=tuple(classes) if classes is not None else None,
            n_test=meta.get("n_test"),
            n_train=meta.get("n_train"),
            deferred=meta.get("deferred"),
        )

    @property
    def complete(self) -> bool:
        """Whether the shape and the classes are known (a model can be built for it)."""
        return self.shape is not None and self.classes is not None


def raw_entry(entry: dict | None) -> dict:
    """What of a dataset's config entry decides its raw data: all but the subset keys (changing a
    subset re-prepares the data, it does not fetch it again)."""
    return {k: v for k, v in (entry or {}).items() if k not in SUBSET_KEYS}


def split_files(folder: str, split: str) -> dict[str, str]:
    """The files of one prepared split, by array name."""
    return {array: f"{folder}/{split}_{array}.npy" for array in SPLIT_ARRAYS}


def geometry_tag(geometry: dict) -> str:
    """A resolved geometry as a folder-name tag: {resize: 256, crop: [224, 224], interpolation:
    bilinear} -> `r256-c224-bilinear` (a non-square size as `HxW`)."""

    def size(value) -> str:
        if isinstance(value, int):
            return str(value)
        return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"

    parts = []
    if geometry.get("resize") is not None:
        parts.append(f"r{size(geometry['resize'])}")
    if geometry.get("crop") is not None:
        parts.append(f"c{size(geometry['crop'])}")
    return "-".join(parts + [geometry.get("interpolation") or "bilinear"])


def view_name(dataset: str, geometry: dict | None) -> str:
    """The prepared view of `dataset` at `geometry` (None: the dataset's own)."""
    return dataset if geometry is None else f"{dataset}@{geometry_tag(geometry)}"
