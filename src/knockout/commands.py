"""The commands for people: `knockout summary`, `check-config` and `check-data` (the rules call
`knockout.jobs`). Each reads, validates and checks a config file (`knockout.config.load`, which
inspects its datasets) and prints what it found.
"""

from __future__ import annotations

import sys

from .config import data_info, load, model_config
from .data import available
from .errors import ConfigError
from .models import build_model, summary as table, without_weights
from .preprocess import describe

EXIT_DATA_MISSING = 3


def summary(config: str, model: str) -> None:
    """Print a Keras-like table of a configured model (its layers, output shapes, parameters) and
    the preprocessing its inputs get."""
    plan = load(config)
    entry = model_config(plan.config, model)
    resolved = plan.preprocess(model)
    info = data_info(plan.config, entry["dataset"], geometry=resolved["geometry"])
    if not info.complete:
        raise ConfigError(f"{info.deferred}: fetch it first (snakemake results/raw/{entry['dataset']}/manifest.json)")
    print(f'Model: "{model}" on {entry["dataset"]} (prepared view {plan.view(model)}), input {tuple(info.shape)}')
    print(f"Preprocess: {describe(resolved)} ({resolved['from']})")
    print(table(build_model(without_weights(entry["arch"]), info.shape, len(info.classes)), info.shape))


def check_config(config: str) -> None:
    """Print one line when the config file is valid (ConfigError, one line, when not)."""
    settings = load(config).config
    print(f"{config}: ok ({len(settings['models'])} models, seeds {settings['seeds']})")


def check_data(config: str) -> None:
    """Exit 0 when every dataset of the config is in a mirror, downloadable or (for folders,
    tensors files and modules) there, 3 otherwise."""
    settings = load(config).config
    data = settings["data"]
    missing = []
    for name, entry in settings["datasets"].items():
        ok, how = available(name, entry, data["mirrors"], data["download"])
        print(f"{name}: {how}")
        if not ok:
            missing.append(name)
    if missing:
        sys.exit(EXIT_DATA_MISSING)
