"""Specs for tests, with every default filled by the schema (its one route to a setting's default);
the factorize and architecture studies the end-to-end tests run, and the check of their tables."""

import json
from pathlib import Path

import pandas as pd

from knockout.config import resolve
from knockout.models import build_model, count_parameters
from knockout.studies import architecture, factorize, study_type

ROOT = Path(__file__).resolve().parents[1]
ROOT_TARGET = "examples/own_model/model.py:SmallResNet"  # relative to the repository, as a config names it
RESNET18 = {"type": "torchvision", "name": "resnet18", "small_input": True}
GREY = (1, 28, 28)


def study_entry(kind: str, **entry) -> dict:
    """A study's validated config entry of type `kind` on model `m`, defaults filled."""
    return resolve(kind, {"type": kind, "model": "m", **entry})


def study_spec(kind: str, **entry):
    """The study type's parsed `Spec` of such an entry."""
    return study_type(kind).Spec.from_dict(study_entry(kind, **entry))


def train_settings(**overrides) -> dict:
    """Resolved training settings (`augment` off and no checkpoints unless given)."""
    return resolve("train", {"augment": False, **overrides})


TRAIN = {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.003}
END_TO_END = {  # per model: its arch, factorize's layers and between, a variant
    "r18": (RESNET18, ["layer1.0.conv1", "layer4.1.conv2"], "relu", {"zero_res": {"zero_init_residual": True}}),
    "mynet": (
        {"type": "module", "target": ROOT_TARGET, "kwargs": {"width": 16}},
        "auto",
        "none",
        {"narrow": {"width": 4}},
    ),
}


def studies(model: str) -> dict:
    """factorize and architecture on `model`, as END_TO_END says."""
    _, layers, between, variants = END_TO_END[model]
    return {
        "split": {"type": "factorize", "model": model, "layers": layers, "between": between},
        "variants": {"type": "architecture", "model": model, "variants": variants},
    }


def check_tables(workdir, model: str, prefix: str = "") -> None:
    """Each retrained condition's parameters in the aggregated tables are those of the network
    built here (`prefix`: of the studies' names)."""
    arch, layers, between, variants = END_TO_END[model]
    base = build_model(arch | ({"target": str(ROOT / ROOT_TARGET)} if arch["type"] == "module" else {}), GREY, 10)
    split = pd.read_csv(workdir / f"results/tables/{prefix}split.csv").query("level == 'condition'")
    split = split.set_index("condition")
    rows = factorize.layer_table(base, GREY, layers, between)
    replaced = rows[rows["replace"]]
    assert len(replaced) == (len(layers) if layers != "auto" else 4)
    assert split.loc["baseline", "parameters"] == count_parameters(base)
    assert split.loc["factorized", "parameters"] == count_parameters(base) + (replaced["P1"] - replaced["P0"]).sum()
    record = workdir / f"results/interventions/{prefix}split/{model}/runs/factorized/seed0/condition.json"
    details = pd.DataFrame(json.loads(record.read_text())["details"])
    assert list(details.loc[details["replace"], "layer"]) == list(replaced["layer"])
    ((name, overrides),) = variants.items()
    table = pd.read_csv(workdir / f"results/tables/{prefix}variants.csv").query("level == 'condition'")
    table = table.set_index("condition")
    built = build_model(architecture.variant_spec(base.spec["arch"], overrides), GREY, 10)
    assert table.loc[name, "parameters"] == count_parameters(built)
    assert table.loc["baseline", "parameters"] == count_parameters(base)
    for study in ("split", "variants"):
        assert any((workdir / f"results/figures/{prefix}{study}").glob("*.png")), study
