"""A job's settings: what the workflow's plan resolves for one rule's job, once, as one typed
object (`knockout.plan` makes them, a rule passes them as one JSON argument in its `params`, so
Snakemake reruns exactly the jobs whose settings changed, and `knockout.jobs` reads them).

Every field is named as the config names it; a field left at None is left out of the JSON, so
a setting a job does not use never reruns it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    def as_json(self) -> str:
        """The settings as one JSON argument (sorted keys, None fields left out)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return json.dumps(fields, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | dict) -> Settings:
        """The settings of a rule's `--job` argument (or of its dict)."""
        values = json.loads(text) if isinstance(text, str) else dict(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown settings {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class DownloadSettings(Settings):
    """A dataset's raw data: its config entry without its subsets (a new subset re-prepares, it
    does not fetch again; None: a built-in), where to look, whether to download."""

    dataset: str
    mirrors: list[str]
    download: bool
    entry: dict | None = None


@dataclass(frozen=True)
class PrepareSettings(Settings):
    """One prepared view: its dataset's entry (subsets too) and the geometry its models ask for."""

    dataset: str
    entry: dict | None = None
    geometry: dict | None = None


@dataclass(frozen=True)
class DataSettings(Settings):
    """What every job that reads a model's data gets: the model, its resolved preprocessing, how
    much of a split may stay in memory, the device."""

    model: str
    preprocess: dict
    resident_mb: float
    device: str


@dataclass(frozen=True)
class TrainSettings(DataSettings):
    """A model trained here: its arch and resolved training settings, how its output is read,
    whether chance level is meant."""

    arch: Any = None
    train: dict | None = None
    readout: dict | None = None
    allow_chance: bool = False


@dataclass(frozen=True)
class AdoptSettings(DataSettings):
    """Weights the user gives: the arch they fit, the epochs they are of, how to read the files
    (`checkpoint`: key, prefix), the batch size to evaluate with, the accuracies the user
    measured, whether chance level is meant, how the output is read."""

    arch: Any = None
    epochs: list[int] | None = None
    eval_batch_size: int = 256
    pretrained: bool = False
    accuracy: dict | None = None
    allow_chance: bool = False
    checkpoint: dict | None = None
    readout: dict | None = None


@dataclass(frozen=True)
class UnitsSettings(DataSettings):
    """Unit statistics or values: the split and its class-stratified subset they are taken over."""

    examples: int = 10000
    split: str = "train"
    importance: list[str] | None = None  # layers whose units' importance is measured (ordered curves)
    budget_mb: float = 512


@dataclass(frozen=True)
class StudySettings(DataSettings):
    """One study's jobs: its name and config entry, the memory its activations may take, the
    epochs it rewinds to, the reference split it resamples from (`donors`: split, examples),
    the training settings of a retraining study, and for `shards: auto` how long a shard should
    take and how many there may be."""

    name: str = ""
    study: dict | None = None
    budget_mb: float = 512
    epochs: list[int] | None = None
    donors: dict | None = None
    train: dict | None = None
    shard_seconds: float | None = None
    max_shards: int | None = None
