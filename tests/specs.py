"""Specs for tests, with every default filled by the schema (its one route to a setting's default)."""

from knockout.config import resolve
from knockout.studies import study_type


def study_entry(kind: str, **entry) -> dict:
    """A study's validated config entry of type `kind` on model `m`, defaults filled."""
    return resolve(kind, {"type": kind, "model": "m", **entry})


def study_spec(kind: str, **entry):
    """The study type's parsed `Spec` of such an entry."""
    return study_type(kind).Spec.from_dict(study_entry(kind, **entry))


def train_settings(**overrides) -> dict:
    """Resolved training settings (`augment` off and no checkpoints unless given)."""
    return resolve("train", {"augment": False, **overrides})
