"""Validation of a study config: the JSON schema (which fills every default: a setting has its one
default there), then the checks that need the models, each study type's own `check` among them.
Every problem is a `ConfigError` whose message is one line naming the key path.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from pathlib import Path

import jsonschema
import yaml

from .catalog import BUILTIN, SOURCES
from .errors import ConfigError
from .io import atomic_write
from .paths import missing as missing_path, resolved
from .plan import Plan

SCHEMA = Path(__file__).with_name("schema.yaml")  # shipped inside the package


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


def _path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _message(error: jsonschema.ValidationError, prefix: str = "") -> str:
    # oneOf/anyOf errors say "is not valid under any of the given schemas": name the problem in
    # the alternative the value was meant for (not "is not of type 'string'" for a mapping).
    while error.context:
        meant = [e for e in error.context if e.validator != "type" or e.relative_path] or list(error.context)
        error = max(meant, key=lambda e: (len(e.absolute_path), len(e.absolute_schema_path)))
    return f"{_path(error, prefix)}: {error.message}"


def load_schema() -> dict:
    """The config schema (a copy: validation may not change the parsed one, read once per process)."""
    return copy.deepcopy(_parsed_schema())


@functools.lru_cache(maxsize=1)
def _parsed_schema() -> dict:
    return yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def validate(config: dict, schema: dict | None = None) -> dict:
    """Schema-check `config` in place, filling defaults; raises ConfigError on the first problem.
    Each study is checked against the schema entry of its type, `$defs.<type>`."""
    from .studies import study_types

    schema = schema or load_schema()
    _validate(config, schema, "")
    for name, entry in config["datasets"].items():
        config["datasets"][name] = resolve_dataset(name, entry, schema)
    for name, model in config["models"].items():
        model["train"] = resolve("train", model.get("train", {}), schema, f"models.{name}.train")
    for name, study in config["interventions"].items():
        if study["type"] not in study_types() or study["type"] not in schema["$defs"]:
            known = ", ".join(t for t in study_types() if t in schema["$defs"])
            raise ConfigError(f"interventions.{name}.type: unknown study type {study['type']!r}; choose from {known}")
        config["interventions"][name] = resolve(study["type"], study, schema, f"interventions.{name}")
    return config


def resolve_dataset(name: str, entry: dict, schema: dict | None = None) -> dict:
    """A `datasets` entry checked against the schema entry of its source, `$defs.dataset_<source>`
    (`$defs.dataset_builtin` for a built-in given without `source`), its defaults filled."""
    source = entry.get("source")
    if source is None and name not in BUILTIN:
        raise ConfigError(
            f"datasets.{name}: not a built-in dataset ({', '.join(BUILTIN)}): give its source ({', '.join(SOURCES)})"
        )
    return resolve(f"dataset_{source or 'builtin'}", entry, schema, f"datasets.{name}")


def _validate(instance, schema: dict, prefix: str) -> None:
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_message(errors[0], prefix))


def resolve(definition: str, value: dict, schema: dict | None = None, key: str | None = None) -> dict:
    """`value` checked against the schema's `$defs.<definition>` (e.g. `train`, `filter_ablation`)
    with its defaults filled: the one route to a setting's default. Errors name `key`."""
    schema = schema or load_schema()
    value = copy.deepcopy(value)
    _validate(value, {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}, definition if key is None else key)
    return value


def check(config: dict, raw_root: str | Path | None = "results/raw") -> Plan:
    """The workflow's plan of a validated config (`knockout.plan.Plan`, built once here and handed
    on: the rules and the commands use this one), after the checks the schema cannot express: each model's preprocessing and the prepared view of its
    dataset it asks for (as far as the dataset can be known: its source's files), references
    between keys, buildable architectures, the checkpoints given, and each study against the
    model it names (the study type's own `check`). `raw_root`: where the `download` rule writes
    its manifests (results/raw, relative to the working directory), read for torchvision
    datasets fetched by an earlier run.

    A model whose dataset's shape or classes cannot be known yet (a torchvision class not
    fetched yet) is not built here: one line on stderr says so, and its checks and its studies'
    run in their jobs (`knockout.jobs`), once the data is prepared."""
    from .studies import Target

    for name, model in config["models"].items():
        if model["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"models.{name}.dataset: {model['dataset']!r} is not a key of datasets ({', '.join(sorted(config['datasets']))})"
            )
    plan = Plan(config)  # resolves every model's preprocessing
    _check_paths(plan, ("data.", "datasets."))  # each file there before anything reads it
    infos = {}
    for dataset in config["datasets"]:  # each as far as it can be known, used or not, and each view of it
        views = [v for v, (d, _) in plan.views.items() if d == dataset]
        found = data_views(config, dataset, raw_root, [None] + [plan.views[v][1] for v in views])
        infos |= dict(zip(views, found[1:]))
    for name in config["models"]:  # the accuracies given are of configured seeds, files there or not
        for seed in (plan.adopted(name) or {}).get("accuracy", {}):
            if int(seed) not in plan.seeds:
                raise ConfigError(
                    f"models.{name}.checkpoints.accuracy.{seed}: not one of the seeds ({', '.join(map(str, plan.seeds))})"
                )
    _check_paths(plan, ("models.",))
    targets, deferred = {}, {}
    for name, model in config["models"].items():
        info = infos[plan.view(name)]
        _check_given_weights(config, plan, name, info)
        if not info.complete:
            _weights(config, name)
            if info.deferred is None:  # known, but not one size: nothing says what size to prepare them at
                raise ConfigError(
                    f"models.{name}: the images of datasets.{model['dataset']} are not all one size: give "
                    f"datasets.{model['dataset']}.size, or models.{name}.preprocess with a resize and crop"
                )
            deferred.setdefault(model["dataset"], []).append(name)
            continue
        network = _build(config, name, info)
        _check_checkpoints(plan, name, network)
        targets[name] = Target(name, network, model["train"], info, frozenset(plan.provides(name)))
    for dataset, models in deferred.items():
        studies = [s for s, study in config["interventions"].items() if study["model"] in models]
        also = f" and of studies {', '.join(studies)}" if studies else ""
        reason = next(infos[plan.view(m)].deferred for m in models)
        plan.notes.append(f"knockout: {reason}; the checks of models {', '.join(models)}{also} run in their jobs")
        print(plan.notes[-1], file=sys.stderr)
    for name, study in config["interventions"].items():
        key = f"interventions.{name}"
        if study["model"] not in config["models"]:
            raise ConfigError(
                f"{key}.model: {study['model']!r} is not a key of models ({', '.join(sorted(config['models']))})"
            )
        _check_study_data(config, plan, name, infos[plan.view(study["model"])])
        if study["model"] not in targets:
            continue  # checked by its jobs
        planned = plan.studies[name]
        try:
            planned.type.check(planned.spec, targets[study["model"]])
        except ConfigError as e:
            raise ConfigError(f"{key}.{e}") from None
        missing = sorted(planned.needs - targets[study["model"]].provides - {"unit_stats", "unit_values", "donors"})
        if missing:
            raise ConfigError(f"{key}: {study['type']} needs {plan.missing(study['model'], missing[0])}")
    return plan


CHECKED = Path(".snakemake/knockout/checked")  # configs whose check passed, by key (`checked`)


def checked(config: dict, raw_root: str | Path = "results/raw", cache: Path = CHECKED) -> Plan:
    """`check`, remembered: a config whose check passed before, with the same content, the same
    files it names (checkpoints, weights, model and dataset code, tensors files, image folders,
    fetched manifests, torch's cache of pretrained weights) and the same code (knockout's files,
    torch's and torchvision's versions), gets its plan without being checked again, so a dry run
    or a rerun does not rebuild every network (nor import torch). Files are known by their size
    and modification time, as `make` knows them; an edit of any of them checks again."""
    plan = Plan(config)
    marker = Path(cache) / f"{check_key(plan, raw_root)}.json"
    if marker.is_file():
        plan.notes = json.loads(marker.read_text())["notes"]
        for line in plan.notes:
            print(line, file=sys.stderr)
        return plan
    plan = check(config, raw_root)
    marker.parent.mkdir(parents=True, exist_ok=True)
    for old in sorted(marker.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-15]:
        old.unlink(missing_ok=True)  # the keys of configs long edited away
    atomic_write(marker, lambda tmp: tmp.write_text(json.dumps({"notes": plan.notes})))
    return plan


def check_key(plan: Plan, raw_root: str | Path = "results/raw") -> str:
    """What a check's result depends on, as a hash (`checked`)."""
    import hashlib
    import importlib.metadata

    def signature(path: Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            return f"{path}: none"
        return f"{path}: {stat.st_size} {stat.st_mtime_ns}"

    config = plan.config
    files = [p for p in sorted(Path(__file__).parent.rglob("*")) if p.suffix in (".py", ".yaml")]
    # every file and folder the config names (an image folder's class folders too: they change as
    # images come and go), resolved from the working directory: a run from another folder checks again
    user = [resolved(path) for _, path, _ in plan.user_paths()]
    files += user + [p for folder in user if folder.is_dir() for p in sorted(folder.glob("*")) if p.is_dir()]
    for model in plan.models:
        files += [resolved(f) for f in plan.code(model).get("code", [])]
    for dataset in config["datasets"]:
        files += [
            resolved(f)
            for paths in plan.raw_inputs(dataset).values()
            for f in ([paths] if isinstance(paths, str) else paths)
        ]
        files.append(Path(raw_root) / dataset / "manifest.json")
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    files.append(Path(home).expanduser() / "hub" / "checkpoints")  # pretrained weights, as torch.hub keeps them
    versions = [importlib.metadata.version(p) for p in ("torch", "torchvision")]
    text = json.dumps([config, versions, [signature(p) for p in files]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _check_paths(plan, keys: tuple[str, ...]) -> None:
    """The user's files and folders under these keys are there (`knockout.paths`: one line naming
    the key and the path as resolved)."""
    for key, path, kind in plan.user_paths():
        if key.startswith(keys) and (error := missing_path(key, path, kind)):
            raise ConfigError(error)


def _check_given_weights(config: dict, plan, name: str, info) -> None:
    """A model trained here needs a training split; `pretrained` needs pretrained weights."""
    model = config["models"][name]
    given = plan.adopted(name)
    if given is None and info.n_train == 0:
        raise ConfigError(
            f"models.{name}: datasets.{model['dataset']} has no training split to train it on: give "
            f"models.{name}.checkpoints (your trained weights, or pretrained with arch.weights)"
        )
    if given and given.get("pretrained") and not _weights(config, name):
        raise ConfigError(
            f"models.{name}.checkpoints: pretrained takes the weights of models.{name}.arch, which names none "
            "(give arch.weights: a torchvision weights name or a state_dict file)"
        )


def _check_study_data(config: dict, plan, name: str, info) -> None:
    """What a study reads of its model's data is there: a training split to retrain on, the
    split the unit statistics are computed over."""
    study = plan.studies[name]
    dataset = config["models"][study.model]["dataset"]
    if study.job == "retrain" and info.n_train == 0:
        raise ConfigError(
            f"interventions.{name}: {study.type.name} trains, and datasets.{dataset} has no training split"
        )
    if "unit_stats" in study.needs and config["unit_stats"]["split"] == "train" and info.n_train == 0:
        raise ConfigError(
            f"interventions.{name}: ranks units by statistics over the training split, which datasets.{dataset} "
            "does not have: set unit_stats.split: test (they then see the evaluated images)"
        )
    if "unit_values" in study.needs and (config["unit_stats"]["split"] == "test" or info.n_train == 0):
        why = (
            "unit_stats.split is test"
            if config["unit_stats"]["split"] == "test"
            else f"datasets.{dataset} has no train split"
        )
        raise ConfigError(
            f"interventions.{name}: unit_stats.split: mean, resample and noise ablation must not be computed on the "
            f"evaluated images, and {why}: ablate with value: zero, or give the dataset a training split"
        )


def _check_checkpoints(plan, name: str, network) -> None:
    """Every checkpoint the user gives for model `name` is there and fits its architecture (read
    as its `checkpoints.key` and `prefix` say)."""
    from .models import fit_state, read_state_dict

    given = plan.adopted(name) or {}
    for which, paths in plan.checkpoint_files(name).items():
        for path in paths:
            key = f"models.{name}.checkpoints" + (
                "" if which == "final" and isinstance(plan.config["models"][name]["checkpoints"], str) else f".{which}"
            )
            if error := missing_path(key, path):
                raise ConfigError(error)
            try:
                fit_state(network, read_state_dict(Path(path), given.get("key")), path, given.get("prefix"))
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None


def _weights(config: dict, name: str) -> str | None:
    """A model's pretrained weights, checked to be there (a file that exists, or torchvision
    weights in torch's cache or downloadable); None without any."""
    from .models import is_weights_file, pretrained_available

    arch = config["models"][name]["arch"]
    weights = None if isinstance(arch, str) else arch.get("weights")
    try:
        if weights and is_weights_file(weights, arch):
            if error := missing_path(f"models.{name}.arch.weights", weights):
                raise ConfigError(error)
        elif weights:
            pretrained_available(arch["name"], weights)
    except ValueError as e:
        raise ConfigError(f"models.{name}.arch.weights: {e}") from None
    return weights


def _build(config: dict, name: str, info=None):
    """The model, built without pretrained weights (checking that they are there is enough)."""
    from .models import build_model, check_output, without_weights
    from .readout import Readout

    _weights(config, name)
    entry = config["models"][name]
    arch = without_weights(entry["arch"])
    info = info or data_info(config, entry["dataset"])
    if not info.complete:
        raise ConfigError(
            f"models.{name}: {info.deferred}: fetch it first (snakemake results/raw/{entry['dataset']}/manifest.json)"
        )
    try:
        network = build_model(arch, info.shape, len(info.classes), Readout.from_record(entry))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ConfigError(f"models.{name}.arch: {str(e).splitlines()[0]}") from None
    try:
        check_output(network, info.shape, len(info.classes))
    except ConfigError as e:
        raise ConfigError(f"models.{name}.{e} (datasets.{entry['dataset']})") from None
    return network


def data_info(config: dict, dataset: str, raw_root: str | Path | None = "results/raw", geometry: dict | None = None):
    """Shape, classes and split sizes of a configured dataset before any job (a
    `knockout.catalog.DataInfo`; see `knockout.data.inspect`), at `geometry` (a model's resize and
    crop; None: its own size). `raw_root`: where fetched datasets' manifests are (None: do not
    look). ConfigError, one line, for an entry or a file that cannot work."""
    return data_views(config, dataset, raw_root, [geometry])[0]


def data_views(config: dict, dataset: str, raw_root: str | Path | None, geometries: list) -> list:
    """`data_info` at each of `geometries`, the dataset's source inspected once."""
    from .data import inspect_views
    from .errors import DataError

    try:
        return inspect_views(
            dataset, config["datasets"][dataset], Path(raw_root) / dataset if raw_root is not None else None, geometries
        )
    except DataError as e:
        raise ConfigError(str(e)) from None


def load(path: str | Path) -> Plan:
    """Read, validate and check a config file: its plan (the config is `plan.config`)."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    return check(validate(config))


def model_config(config: dict, name: str) -> dict:
    if name not in config["models"]:
        raise ConfigError(f"models: no model {name!r} (have {', '.join(config['models'])})")
    return config["models"][name]
