"""Validation of a study config: the JSON schema (which fills defaults), then checks that need
the models. Every problem is a `ConfigError` whose message is one line naming the key path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


from .errors import ConfigError  # noqa: E402  (re-exported)


def _with_defaults(validator_class):
    """A validator that fills `default` values into the instance as it validates (as Snakemake)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    # oneOf/anyOf errors say "is not valid under any of the given schemas": name the best match.
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return f"{_path(error)}: {best.message}"
    return f"{_path(error)}: {error.message}"


def load_schema(path: str | Path = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate(config: dict, schema: dict | None = None) -> dict:
    """Schema-check `config` in place, filling defaults; raises ConfigError on the first problem."""
    schema = schema or load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_message(errors[0]))
    # Models' train sections: the `$ref`'d defaults must be filled too (jsonschema won't follow).
    train_defaults = {k: v["default"] for k, v in schema["$defs"]["train"]["properties"].items()}
    for model in config["models"].values():
        for key, value in train_defaults.items():
            model.setdefault("train", {}).setdefault(key, copy.deepcopy(value))
    return config


def check(config: dict) -> dict:
    """Checks the schema cannot express: references between keys, buildable architectures."""
    from .data import DATASETS
    from .models import build_model

    built = {}
    for name, model in config["models"].items():
        key = f"models.{name}"
        if model["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"{key}.dataset: {model['dataset']!r} is not a key of datasets "
                f"({', '.join(sorted(config['datasets']))})"
            )
        source = DATASETS[model["dataset"]]
        arch = model["arch"] if isinstance(model["arch"], str) else dict(model["arch"])
        weights = None if isinstance(arch, str) else arch.pop("weights", None)
        if weights and not Path(weights).expanduser().is_file():
            raise ConfigError(f"{key}.arch.weights: no such file {weights}")
        try:
            built[name] = build_model(arch, source.shape, source.num_classes)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ConfigError(f"{key}.arch: {str(e).splitlines()[0]}") from None
    for name, study in config.get("interventions", {}).items():
        _check_intervention(f"interventions.{name}", study, config, built)
    return config


def _input_of(config: dict, model: str) -> tuple:
    from .data import DATASETS

    source = DATASETS[config["models"][model]["dataset"]]
    return source.shape, source.num_classes


def _check_intervention(key: str, study: dict, config: dict, built: dict) -> None:
    from .interventions import layer_units
    from .models import addressable_layers, build_model

    if study["model"] not in config["models"]:
        raise ConfigError(f"{key}.model: {study['model']!r} is not a key of models ({', '.join(sorted(config['models']))})")
    model = built[study["model"]]
    valid = list(addressable_layers(model))

    def layer_ok(path: str, layer: str) -> int:
        if layer not in valid:
            raise ConfigError(f"{path}: no layer {layer!r} in model {study['model']!r} (layers: {', '.join(valid)})")
        return layer_units(model, layer)

    if study["type"] == "occlusion":
        shape, _ = _input_of(config, study["model"])
        for i, w in enumerate(study["windows"]):
            if w > min(shape[1:]):
                raise ConfigError(f"{key}.windows[{i}]: window {w} does not fit the {shape[1]}x{shape[2]} images")
        return
    if study["type"] == "top_activations":
        for layer, filters in study["layers"].items():
            n = layer_ok(f"{key}.layers.{layer}", layer)
            wanted = filters if isinstance(filters, int) else max(filters) + 1
            if wanted > n:
                raise ConfigError(f"{key}.layers.{layer}: {layer} has {n} filters, asked for {'filter ' + str(max(filters)) if not isinstance(filters, int) else str(filters)}")
        return
    if study["type"] == "architecture":
        from .interventions.architecture import variant_spec

        source = _input_of(config, study["model"])
        for variant, overrides in study["variants"].items():
            try:
                build_model(variant_spec(config["models"][study["model"]]["arch"], overrides), *source)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ConfigError(f"{key}.variants.{variant}: {str(e).splitlines()[0]}") from None
        names = {"baseline", *study["variants"]}
    elif study["type"] == "factorize":
        from .models import resolve_spec

        if resolve_spec(config["models"][study["model"]]["arch"]).get("type") != "cnn":
            raise ConfigError(f"{key}.model: factorize needs a cnn model, {study['model']!r} is not one")
        if study["layers"] != "auto":
            for i, layer in enumerate(study["layers"]):
                if not layer.startswith("conv"):
                    raise ConfigError(f"{key}.layers[{i}]: {layer!r} is not a conv layer")
                layer_ok(f"{key}.layers[{i}]", layer)
        names = {"baseline", "factorized"}
    elif study["type"] == "layer_swap":
        if study["layers"] != "all":
            for i, layer in enumerate(study["layers"]):
                layer_ok(f"{key}.layers[{i}]", layer)
        train = config["models"][study["model"]]["train"]
        if "rewind" in study["modes"] and not train["checkpoints"]:
            raise ConfigError(f"{key}.modes: rewind needs epoch checkpoints: set models.{study['model']}.train.checkpoints (e.g. all)")
        names = {"baseline", *study["modes"]}
    else:
        for i, layer in enumerate(study["layers"]):
            layer_ok(f"{key}.layers[{i}]", layer)
        sets = study["sets"]
        for set_name, fset in sets.items():
            path = f"{key}.sets.{set_name}"
            layers = fset.get("layers") or list(fset.get("units") or {}) or study["layers"]
            sizes = {layer: layer_ok(f"{path}.layers", layer) for layer in layers}
            for layer, units in (fset.get("units") or {}).items():
                bad = [u for u in units if u >= sizes[layer]]
                if bad:
                    raise ConfigError(f"{path}.units.{layer}: unit {bad[0]} out of range ({layer} has {sizes[layer]} units)")
            if fset.get("k") is not None:
                for layer, n in sizes.items():
                    if fset["k"] > n:
                        raise ConfigError(f"{path}.k: {fset['k']} is more than the {n} units of {layer}")
            if "exclude" in fset:
                other = sets.get(fset["exclude"])
                if other is None or other["select"] not in ("units", "lowest_response"):
                    raise ConfigError(f"{path}.exclude: {fset['exclude']!r} is not a units or lowest_response set of this study")
        names = {"baseline", *sets}
    for i, pair in enumerate(study.get("compare", [])):
        for name in pair:
            if name not in names:
                raise ConfigError(f"{key}.compare[{i}]: no set {name!r} (have {', '.join(sorted(names))})")


def load(path: str | Path) -> dict:
    """Read, validate and check a config file."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    return check(validate(config))


def model_spec(config: dict, name: str) -> dict[str, Any]:
    if name not in config["models"]:
        raise ConfigError(f"models: no model {name!r} (have {', '.join(config['models'])})")
    return config["models"][name]
