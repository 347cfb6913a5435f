"""The user's own data as the engine reads it (the verbs of `knockout.api`): a `DataLoader`, a
`Dataset`, a pair of tensors (images, labels) or a prepared view's folder, each turned into a
split the engine streams in chunks (`knockout.data.Split`, or `LoaderSplit` for a loader), with
the preprocessing stated once:

    None            the batches are the network's inputs as they are (the loader normalises)
    "none"          pixels: uint8 / 255, or floats in [0, 1] as they are (ToTensor's)
    "imagenet"      pixels normalised with ImageNet's mean and std
    {mean, std}     pixels normalised with these
    a weights name  pixels normalised with the mean and std of torchvision's weights'
                    transforms() ("ResNet18_Weights.IMAGENET1K_V1"); the images must already be
                    at their crop size (the loader resizes, as those transforms would)

A loader is read once per pass, a chunk at a time (what the engine's budget allows): its
images are never all held. It must give the same examples in the same order on every pass:
one that shuffles is refused, and each pass's first batch and every pass's labels are compared
with the first pass's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import Split, as_split, open_split, read_meta
from .errors import DataError

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class Normalise:
    """Pixels (uint8 0..255, or floats in [0, 1]) -> model inputs (x - mean) / std, on the batch's
    device; `record` says what it is (as a model's resolved preprocessing does)."""

    def __init__(self, mean: list[float], std: list[float], name: str, crop: list[int] | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop = crop
        self.record = {"name": name, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).div(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def normalise(self, pixels) -> torch.Tensor:
        """Pixel values in [0, 1] (a (C,) tensor, or anything that broadcasts) in the model's space."""
        return (torch.as_tensor(pixels, dtype=torch.float32) - self.mean.flatten()) / self.std.flatten()

    def check(self, x: torch.Tensor, where: str) -> None:
        """One line when a batch is not pixels: floats outside [0, 1] (normalised already), or
        images of another size than the weights' crop."""
        if x.is_floating_point() and len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
            raise DataError(
                f"{where}: images from {float(x.min()):.3g} to {float(x.max()):.3g}: normalised already? "
                f"preprocess={self.record['name']!r} normalises pixels in [0, 1]; give preprocess=None for inputs "
                "the network takes as they are"
            )
        if self.crop is not None and list(x.shape[-2:]) != list(self.crop):
            raise DataError(
                f"{where}: images of {x.shape[-2]}x{x.shape[-1]}; {self.record['name']} expects {self.crop[0]}x"
                f"{self.crop[1]} crops: resize them in the loader (the weights' transforms() do both)"
            )


def normaliser(preprocess) -> Normalise | None:
    """The preprocessing an API call states (module docstring), as a `Normalise`; None: none."""
    if preprocess is None:
        return None
    if isinstance(preprocess, Normalise):
        return preprocess
    if preprocess == "none":
        return Normalise([0.0], [1.0], "none")
    if preprocess == "imagenet":
        return Normalise(IMAGENET["mean"], IMAGENET["std"], "imagenet")
    if isinstance(preprocess, dict) and set(preprocess) == {"mean", "std"}:
        return Normalise(list(preprocess["mean"]), list(preprocess["std"]), "mean and std")
    if isinstance(preprocess, str) and "_Weights." in preprocess:
        from .preprocess import resolve

        resolved = resolve("preprocess", {"arch": "api", "preprocess": {"weights": preprocess}})
        return Normalise(resolved["mean"], resolved["std"], preprocess, resolved["geometry"]["crop"])
    raise ValueError(
        f"preprocess={preprocess!r}: None (the inputs as they are), 'none', 'imagenet', {{'mean': [...], 'std': [...]}} "
        "or a torchvision weights name such as 'ResNet18_Weights.IMAGENET1K_V1'"
    )


def as_data(data, preprocess=None, *, batch_size: int = 256, where: str = "data"):
    """A split the engine streams, of `data` (module docstring) with `preprocess`. One line
    (DataError) for what cannot work: a loader that shuffles, batches that are dicts, uint8
    images without a preprocessing, pixels expected but normalised images given."""
    from torch.utils.data import DataLoader, Dataset

    normalise = normaliser(preprocess)
    if isinstance(data, (LoaderSplit, Split)):
        if normalise is not None:
            raise ValueError(f"{where}: a split carries its preprocessing; give preprocess=None")
        return data
    if isinstance(data, (str, Path)):
        return _view(Path(data), normalise, where)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        _check_batch(images, labels, normalise, where)
        split = as_split(images, labels)
        if normalise is not None:
            split.preprocess = normalise
        return split
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, DataLoader):
        return LoaderSplit(data, normalise, where)
    raise DataError(
        f"{where}: a {type(data).__name__}; give a DataLoader, a Dataset of (image, label), a pair of tensors "
        "(images, labels) or a prepared view's folder"
    )


def _view(folder: Path, normalise: Normalise | None, where: str) -> Split:
    """A prepared view's test split, normalised as `preprocess` says (default: the dataset's own
    mean and std, as knockout's networks are trained)."""
    from .preprocess import Preprocess

    meta = read_meta(folder / "meta.json")
    if normalise is None:
        record = {"name": "dataset", "mean": None, "std": None, "geometry": None}
    else:
        record = {"name": normalise.record["name"], "mean": normalise.record["mean"], "std": normalise.record["std"]}
    split = open_split(folder, "test", Preprocess.of(record | {"geometry": None}, meta), "cpu")
    split.classes = meta["classes"]  # the tables name them
    return split


def _check_batch(images, labels, normalise: Normalise | None, where: str) -> None:
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{where}: a batch of {type(images).__name__} and {type(labels).__name__}; expected tensors")
    if labels.dim() != 1 or labels.is_floating_point() or len(labels) != len(images):
        raise DataError(
            f"{where}: labels of shape {tuple(labels.shape)} ({labels.dtype}) for {len(images)} images; expected one "
            "class index per image"
        )
    if images.dtype == torch.uint8 and normalise is None:
        raise DataError(
            f"{where}: uint8 images: say how the network sees them, preprocess='none' (x / 255), 'imagenet', "
            "{'mean': [...], 'std': [...]} or a torchvision weights name"
        )
    if normalise is not None:
        normalise.check(images, where)


class LoaderSplit:
    """A DataLoader's examples as the engine streams them: `chunks` of a given size (the loader's
    batches joined or cut), its labels and indices once a pass has been read. Every pass must give
    the examples of the first, in its order (a shuffling loader is refused before any pass)."""

    def __init__(self, loader, preprocess: Normalise | None, where: str = "data"):
        from torch.utils.data import RandomSampler

        if isinstance(loader.sampler, RandomSampler):
            raise DataError(
                f"{where}: the DataLoader shuffles (shuffle=True): every condition is compared on the same examples in "
                "the same order; give it shuffle=False"
            )
        try:
            self._n = len(loader.dataset)
        except TypeError:
            raise DataError(f"{where}: an IterableDataset has no length; give a map-style Dataset") from None
        self.loader, self.preprocess, self.where = loader, preprocess or (lambda x: x), where
        self._normalise = preprocess
        self._labels: torch.Tensor | None = None
        self._first: torch.Tensor | None = None  # the first batch of the first pass, to compare the others with
        self.indices = torch.arange(self._n)

    def __len__(self) -> int:
        return self._n

    @property
    def labels(self) -> torch.Tensor:
        """Every example's label (read on the first pass)."""
        if self._labels is None:
            self._labels = torch.cat([y for _, y in self._batches()])
        return self._labels

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.example("cpu").shape[1:])

    def _batches(self):
        """(images, labels) of every batch, as the loader gives them, checked."""
        seen = 0
        for i, batch in enumerate(self.loader):
            if isinstance(batch, dict):
                raise DataError(
                    f"{self.where}: the loader yields dicts (keys {', '.join(map(str, batch))}); give batches of "
                    "(images, labels), e.g. a Dataset whose items are (image, label)"
                )
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise DataError(f"{self.where}: the loader yields a {type(batch).__name__}; expected (images, labels)")
            x, y = batch[0], batch[1]
            if i == 0:
                _check_batch(x, y, self._normalise, self.where)
                if self._first is None:
                    self._first = x[:8].clone()
                elif not torch.equal(self._first, x[:8]):
                    raise DataError(
                        f"{self.where}: the loader's first images differ from one pass to the next (a random "
                        "transform?): every condition must see the same images"
                    )
            if self._labels is not None and not torch.equal(self._labels[seen : seen + len(y)], y.cpu()):
                raise DataError(f"{self.where}: the loader's labels differ from one pass to the next")
            seen += len(y)
            yield x, y.cpu()
        if seen != self._n:
            raise DataError(f"{self.where}: the loader gave {seen} examples of its dataset's {self._n}")

    def chunks(self, size: int, device):
        """(start, inputs, labels) of consecutive chunks of `size` examples on `device`, joined
        from and cut out of the loader's batches; the labels are kept as they go by."""
        device = torch.device(device)
        size = max(1, int(size))
        held_x, held_y, start, labels = [], [], 0, []
        for x, y in self._batches():
            held_x.append(x)
            held_y.append(y)
            labels.append(y)
            while sum(len(t) for t in held_y) >= size:
                xs, ys = torch.cat(held_x), torch.cat(held_y)
                yield start, self.preprocess(xs[:size].to(device)), ys[:size].to(device)
                start += size
                held_x, held_y = [xs[size:]], [ys[size:]]
        rest = torch.cat(held_y) if held_y else torch.zeros(0, dtype=torch.long)
        if len(rest):
            yield start, self.preprocess(torch.cat(held_x).to(device)), rest.to(device)
        if self._labels is None:
            self._labels = torch.cat(labels)

    def example(self, device) -> torch.Tensor:
        """The first example as a batch of one model input."""
        for x, _ in self._batches():
            return self.preprocess(x[:1].to(device))
        raise DataError(f"{self.where}: the loader is empty")

    def in_memory(self, device="cpu") -> Split:
        """Its examples held in memory as a `knockout.data.Split` (for random access: a reference
        split's donors)."""
        xs, ys = zip(*self._batches())
        split = as_split(torch.cat(xs).to(device), torch.cat(ys))
        split.preprocess = self.preprocess
        return split

    def inputs(self, positions, device) -> torch.Tensor:
        """The model inputs of the examples at `positions`, on `device`."""
        return self.indexed().inputs(positions, device)

    def pixels(self, positions) -> torch.Tensor:
        """The images at `positions` as the loader's dataset gives them (pixels, or inputs)."""
        return self.indexed().pixels(positions)

    def subset(self, positions) -> Split:
        """The examples at `positions`, read from the loader's dataset by index, in memory."""
        return self.indexed().subset(positions).in_memory()

    def indexed(self) -> Split:
        """Its dataset read by index as training draws batches (each batch's items collated as
        the loader collates them): a `knockout.data.Split` that holds no image until asked."""
        return Split(_Items(self.loader, self.where, self.shape), self.labels, preprocess=self.preprocess)


class _Items:
    """A map-style dataset as a split's store: rows read item by item and collated."""

    def __init__(self, loader, where: str, shape: tuple[int, ...]):
        self.dataset, self.collate, self.where = loader.dataset, loader.collate_fn, where
        self.shape = (len(self.dataset), *shape)

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        batch = self.collate([self.dataset[int(i)] for i in rows])
        if not isinstance(batch, (tuple, list)) or not isinstance(batch[0], torch.Tensor):
            raise DataError(f"{self.where}: the dataset's items are not (image tensor, label)")
        return batch[0]

    def read_range(self, start: int, stop: int) -> torch.Tensor:
        return self.read(torch.arange(start, stop))
