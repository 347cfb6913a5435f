"""knockout from Python: every study on a network you hold and data you have, in a few lines, on
the workflow's engine, with its tables, statistics and figures (the workflow's jobs call the
functions here: one path).

    import knockout
    result = knockout.ablate(model, loader, layers=["layer3.1.conv2"], value="mean", reference=train_loader)
    result.table                 # over seeds: mean, 95% CI per condition and set (one seed: no CI)
    result.plot()                # the figures the study's notebook draws

`model` is an `nn.Module`, or a list of them (one per training seed: the tables then carry the
statistics across seeds of `results/tables/{name}.csv`, and `compare` pairs sets by seed).
`data` is a `DataLoader` (read a chunk at a time, never held whole), a `Dataset`, a pair of
tensors (images, labels) or a prepared view's folder (`knockout.loaders`). `preprocess` says
once how the images become the network's inputs: None when they already are (the loader
normalises), else "none", "imagenet", {"mean", "std"} or a torchvision weights name. A study's
settings are those of its config entry (`sets`, `modes`, `windows`, ...: the schema checks them
and fills their defaults), and what cannot work is one line naming the argument, as in the
workflow.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import DataInfo
from .config import resolve
from .engine.conditions import Condition, Context, layer_units
from .errors import ConfigError
from .io import with_ids, write_arrays, write_table
from .loaders import LoaderSplit, Normalise, as_data
from .studies import NEEDS, StudyType, Target, study_type
from .tables import TABLES, condition_tables, value_columns

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

__all__ = ["Result", "ablate", "factorize", "occlude", "swap_layers", "top_activations", "train", "unit_statistics"]


# --- what a study gives ---------------------------------------------------------------------------


@dataclass
class Result:
    """A study's tables, as the workflow writes them (`save` writes the same files).

    Attributes:
        name: the study's name (the `intervention` column).
        type: its study type (filter_ablation, layer_swap, occlusion, ...).
        model: the model's name (the `model` column).
        per_seed: one row per condition and seed (`seed{seed}.csv`), with `intervention, model, seed`.
        per_class: per seed, each condition's accuracy per class (evaluated studies).
        confusion: per seed, each condition's non-zero confusion cells (evaluated studies).
        examples: per seed, the test images whose prediction flips (evaluated studies).
        table: over seeds: mean, std and 95% CI per condition, set (and layer) (`tables/{name}.csv`).
        comparisons: the `compare` pairs, paired across seeds (`tables/{name}.comparisons.csv`).
        arrays: per seed, a probe's named arrays (`seed{seed}.npz`).
        meta: the classes (and the unit statistics the figures use).
    """

    name: str
    type: str
    model: str
    per_seed: pd.DataFrame
    per_class: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = None
    examples: pd.DataFrame | None = None
    table: pd.DataFrame | None = None
    comparisons: pd.DataFrame | None = None
    arrays: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # classes (and, for figures, the images' arrays)

    def __repr__(self) -> str:
        seeds = sorted(self.per_seed["seed"].unique()) if "seed" in self.per_seed else []
        rows = len(self.per_seed)
        return f"<knockout {self.type} {self.name!r} on {self.model}: {rows} rows, seeds {seeds}>"

    def save(self, folder: str | Path = ".") -> Path:
        """The workflow's files of this study under `folder` (results/interventions/{name}/{model}/
        seed{seed}.*, results/tables/{name}.csv and .comparisons.csv)."""
        folder = Path(folder)
        here = folder / "results" / "interventions" / self.name / self.model
        for seed, rows in self.per_seed.groupby("seed"):
            for key, frame in (
                ("per_class", self.per_class),
                ("confusion", self.confusion),
                ("examples", self.examples),
            ):
                if frame is not None:
                    write_table(frame[frame["seed"] == seed], here / f"seed{seed}{TABLES[key]}")
            if self.arrays:
                write_arrays(next(a for a in self.arrays if int(a["seed"]) == seed), here / f"seed{seed}.npz")
            write_table(rows, here / f"seed{seed}{TABLES['table']}")
        if self.table is not None:
            write_table(self.table, folder / "results" / "tables" / f"{self.name}.csv")
            write_table(self.comparisons, folder / "results" / "tables" / f"{self.name}.comparisons.csv")
        return folder

    def plot(self, out_dir: str | Path | None = None, labels: dict | None = None) -> dict:
        """The figures the study's notebook draws (`knockout.figures`, the same functions), by
        name; written as PNG and PDF into `out_dir` when given. `labels`: display names of sets
        and conditions, as a study's `labels:` map."""
        import pandas as pd

        from . import figures

        figures.setup()
        data = figures.StudyData(
            name=self.name,
            model=self.model,
            study_type=self.type,
            **{
                key: getattr(self, key) if getattr(self, key) is not None else pd.DataFrame()
                for key in ("table", "comparisons", "per_seed", "per_class", "confusion", "examples")
            },
            units=self.meta.get("units", pd.DataFrame()),
            arrays=self.arrays,
            meta={"classes": self.meta["classes"]} if self.meta.get("classes") else {},
            labels=labels or {},
        )
        drawn = figures.NOTEBOOKS[study_type(self.type).notebook](data)
        if out_dir is not None:
            figures.save(drawn, out_dir)
        return drawn.figures


def _result(name: str, study: StudyType, model: str, tables: list[dict], compare, meta: dict | None = None) -> Result:
    """The per-seed tables of every seed -> a `Result`, with the summary over seeds (as the
    aggregate rule computes it) where the study type has one."""
    import pandas as pd

    from .stats import comparisons, summarize

    def joined(key: str):
        frames = [t[key] for t in tables if t.get(key) is not None]
        return pd.concat(frames, ignore_index=True) if frames else None

    per_seed = joined("table")
    result = Result(
        name=name,
        type=study.name,
        model=model,
        per_seed=per_seed,
        per_class=joined("per_class"),
        confusion=joined("confusion"),
        examples=joined("examples"),
        arrays=[t["arrays"] for t in tables if "arrays" in t],
        meta=(meta or {}) | ({"units": joined("units")} if joined("units") is not None else {}),
    )
    if study.aggregate:
        result.table = summarize(per_seed, value_cols=value_columns(per_seed))
        result.comparisons = comparisons(per_seed, [tuple(p) for p in compare])
    return result


def _ids(name: str, model: str, seed: int) -> dict:
    return {"intervention": name, "model": model, "seed": seed}


def tidy(tables: dict, ids: dict) -> dict:
    """A seed's tables (`condition_tables`) with their id columns first, as the files hold them."""
    return {key: with_ids(frame, ids) for key, frame in tables.items()}


# --- the engine's work on one seed, shared with the workflow's jobs -------------------------------


def evaluated_tables(
    study: StudyType, spec, context: Context, data, classes: list[str], *, budget_mb: float, device
) -> dict:
    """An evaluated study on one seed: every condition on `data` -> its four tables
    (`knockout.tables.condition_tables`): what the `intervene` job writes."""
    from .engine.evaluate import evaluate_conditions

    conditions = study.conditions(spec, context)
    outputs = evaluate_conditions(conditions, context, data, budget_mb=budget_mb, device=device, apply=study.apply)
    return condition_tables(conditions, outputs, data.labels.cpu(), classes, data.indices)


# --- the verbs ------------------------------------------------------------------------------------


def ablate(
    model,
    data,
    layers: list[str] | str,
    sets: dict | None = None,
    *,
    value="zero",
    compare=(),
    reference=None,
    examples: int = 10000,
    preprocess=None,
    classes: list[str] | None = None,
    seeds: list[int] | None = None,
    device=None,
    batch_size: int = 256,
    budget_mb: float = 512,
    name: str = "ablate",
    model_name: str | None = None,
) -> Result:
    """Silence sets of units of `layers` (conv channels, linear features, attention heads) and
    evaluate on `data`: the `filter_ablation` study. `sets` as the config's (default: every unit
    alone, `{"each": {"select": "each"}}`): `units`, `lowest_response` (ranked on `reference`),
    `random` (`repeats`, `exclude`), `each`, `cumulative`. `value`: what silenced units put out
    where a set does not say (zero, mean, resample, noise, or a dict or list of them); mean,
    resample and noise are computed on `reference` (the class-stratified subset of `examples`
    images), never on the evaluated data. Every row has its flips against the baseline and
    their McNemar p; single units their Benjamini-Hochberg q over their layer."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    sets = {k: ({"value": value} | v) for k, v in (sets or {"each": {"select": "each"}}).items()}
    entry = {"layers": layers, "sets": sets, "compare": [list(p) for p in compare]}
    return _evaluated_study("filter_ablation", entry, model, data, locals())


def swap_layers(
    model,
    data,
    *,
    layers: list[str] | str = "all",
    modes=("reinit", "rerandomize"),
    init=None,
    checkpoints: dict | None = None,
    compare=(),
    preprocess=None,
    classes: list[str] | None = None,
    seeds: list[int] | None = None,
    device=None,
    batch_size: int = 256,
    budget_mb: float = 512,
    name: str = "swap_layers",
    model_name: str | None = None,
) -> Result:
    """Put layers back in time, or forward (the `layer_swap` study): `reinit` (the layer at its
    weights in `init`), `rerandomize` (a fresh draw of its initial distribution), `transplant`
    (`init` with the trained layer) and `rewind` (the layer at its weights of each epoch of
    `checkpoints`: {epoch: network or state_dict}). `init`, `checkpoints`: one per model."""
    entry = {"layers": layers if layers == "all" else list(layers), "modes": list(modes)}
    entry["compare"] = [list(p) for p in compare]
    return _evaluated_study("layer_swap", entry, model, data, locals())


def _evaluated_study(type_name: str, entry: dict, model, data, given: dict) -> Result:
    """An evaluated study from the verbs' arguments: its entry checked by the schema and against
    each network, each seed's context built, the tables of every seed over seeds."""
    import torch

    study = study_type(type_name)
    networks, seeds = _networks(model, given.get("seeds"))
    split = as_data(data, given.get("preprocess"), batch_size=given["batch_size"])
    spec = study.Spec.from_dict(_entry(type_name, entry))
    needs = study.needs(spec)
    inits = _per_model(given.get("init"), len(networks), "init")
    epochs = _per_model(given.get("checkpoints"), len(networks), "checkpoints")
    reference = given.get("reference")
    if reference is not None and reference is data and needs & {"unit_values", "donors"}:
        raise ConfigError(
            "reference: the evaluated data itself: mean, resample and noise values must not be computed on it"
        )
    tables = []
    for network, seed, init, saved in zip(networks, seeds, inits, epochs):
        device = _device(network, given.get("device"))
        classes = _classes(given.get("classes"), split, network)
        lacks = {"init"} if init is None else set()
        provides = frozenset(NEEDS) - lacks - ({"checkpoints"} if saved is None else set())
        checkpoints = {"checkpoints": sorted(saved or {})}
        target = Target(_model_name(given, network), network, checkpoints, _info(split, classes), provides)
        study.check(spec, target)
        missing = sorted(needs & {"init", "checkpoints"} - provides)
        if missing:
            what = {"init": "init= (the initial weights)", "checkpoints": "checkpoints= ({epoch: weights})"}
            raise ConfigError(f"{type_name} with these modes needs {what[missing[0]]}")
        context = Context(
            trained=network,
            init=_like(network, init),
            checkpoints={f"epoch{e}": _like(network, w) for e, w in (saved or {}).items()},
            rerandom=_rerandom(network, seed) if "rerandomize" in str(entry.get("modes")) else None,
            seed=seed,
        )
        if reference is not None and needs & {"unit_stats", "unit_values", "donors"}:
            importance = sorted(study.importance_layers(spec))
            _reference_statistics(context, needs, reference, given, device, classes, importance)
        elif needs & {"unit_stats", "unit_values", "donors"}:
            raise ConfigError(
                "reference: none given: these sets rank units or put out their mean, a resample or noise, computed "
                "on reference data (images other than the evaluated ones, e.g. the training split)"
            )
        with torch.no_grad(), _evaluating(network):
            seed_tables = evaluated_tables(
                study, spec, context, split, classes, budget_mb=given["budget_mb"], device=device
            )
        if context.unit_stats is not None:  # the importance-selectivity figure's
            seed_tables["units"] = context.unit_stats
        tables.append(tidy(seed_tables, _ids(given["name"], _model_name(given, network), seed)))
    meta = {"classes": classes}
    return _result(given["name"], study, _model_name(given, networks[0]), tables, entry.get("compare", ()), meta)


def occlude(
    model,
    data,
    labels=None,
    *,
    images: int | None = None,
    per_class: bool = False,
    windows=(3, 5, 7, 9),
    stride: int = 1,
    fill="mean",
    preprocess=None,
    classes: list[str] | None = None,
    seeds: list[int] | None = None,
    device=None,
    batch_size: int = 256,
    budget_mb: float = 512,
    name: str = "occlude",
    model_name: str | None = None,
) -> Result:
    """Occlusion sensitivity (Zeiler & Fergus; study 3): a window of `fill` slid over images:
    per image and window the probability of its true class and the class predicted with the
    window centred on each pixel, and Captum's `Occlusion` attribution, equal to it. `data`:
    images (N, C, H, W) with their `labels`, or any data (a DataLoader, ...), of which the first
    `images` (all when not given; `per_class`: that many of each class) are occluded. `fill`:
    "mean" (the occluded images' mean colour), "zero" or a pixel value; the arrays are in pixel
    space when `preprocess` normalises pixels, else in the network's input space."""
    import torch

    from .engine.occlusion import select_images

    if labels is not None:
        data = (torch.as_tensor(data), torch.as_tensor(labels))
    split = as_data(data, preprocess, batch_size=batch_size)
    if preprocess is None:  # the inputs as they are: their own space is the pixels' (mean 0, std 1)
        channels = split.example("cpu").shape[1]
        split.preprocess = Normalise([0.0] * channels, [1.0] * channels, "inputs")
    n = images if images is not None else len(split)
    entry = {"images": {"n": n, "per_class": per_class}, "windows": list(windows), "stride": stride, "fill": fill}
    meta = {"mean": split.pixels(select_images(split.labels.cpu(), n, per_class)).mean((0, 2, 3)).tolist()}
    return _probe("occlusion", entry, model, split, meta, locals())


def top_activations(
    model,
    data,
    *,
    layers,
    k: int = 5,
    score: str = "norm",
    preprocess=None,
    classes: list[str] | None = None,
    seeds: list[int] | None = None,
    device=None,
    batch_size: int = 256,
    name: str = "top_activations",
    model_name: str | None = None,
) -> Result:
    """The `k` images of `data` that excite each chosen filter most (the Frobenius norm of its
    map, or its maximum) and the input patch under its receptive field at the peak. `layers`:
    {layer: [filters]} or {layer: how many to draw}, or layer names (every filter)."""
    if not isinstance(layers, dict):
        layers = {layer: None for layer in ([layers] if isinstance(layers, str) else layers)}
    split = as_data(data, preprocess, batch_size=batch_size)
    networks, _ = _networks(model, seeds)
    from .graph import units_of

    units = units_of(networks[0])
    for layer in layers:
        if layer not in units:  # the study's own check names the nearest
            continue
        if layers[layer] is None:
            layers[layer] = list(range(units[layer].count))
    entry = {"layers": layers, "k": k, "score": score}
    return _probe("top_activations", entry, model, split, {}, locals())


def _probe(type_name: str, entry: dict, model, split, meta: dict, given: dict) -> Result:
    """A probing study from the verbs' arguments, on every network: its table and arrays."""
    import torch

    study = study_type(type_name)
    networks, seeds = _networks(model, given.get("seeds"))
    spec = study.Spec.from_dict(_entry(type_name, entry))
    tables = []
    for network, seed in zip(networks, seeds):
        _device(network, given.get("device"))  # moved there: the probe runs where the network is
        classes = _classes(given.get("classes"), split, network)
        study.check(spec, Target(_model_name(given, network), network, {}, _info(split, classes), frozenset()))
        with torch.no_grad(), _evaluating(network):
            table, arrays = study.compute(
                spec,
                Context(trained=network, seed=seed),
                split,
                meta | {"classes": classes},
                given.get("budget_mb", 512),
            )
        ids = _ids(given["name"], _model_name(given, network), seed)
        tables.append({"table": with_ids(table, ids), "arrays": ids | dict(arrays)})
    return _result(given["name"], study, _model_name(given, networks[0]), tables, (), {"classes": classes})


def unit_statistics(
    model,
    data,
    *,
    layers: list[str] | None = None,
    preprocess=None,
    classes: list[str] | None = None,
    importance: list[str] = (),
    device=None,
    batch_size: int = 512,
    budget_mb: float = 512,
) -> pd.DataFrame:
    """One row per unit of `layers` (default: every conv and linear layer): its mean and maximum
    response over `data`, the fraction of images it is dead on, its weights' L1 norm, its class
    selectivity and preferred class (Morcos et al. 2018) and, in the layers `importance`, the drop
    in accuracy on `data` when it alone is silenced, as `results/units/` holds them."""
    from .units import unit_statistics as statistics

    split = as_data(data, preprocess, batch_size=batch_size)
    with _evaluating(model):
        device = _device(model, device)
        table = statistics(model, split, None, len(_classes(classes, split, model)), layers, batch_size)
        return _with_importance(table, model, split, importance, budget_mb, device)


def _with_importance(table, model, data, layers, budget_mb: float, device):
    """The unit statistics `table` with each unit's importance in `layers`: the drop in accuracy
    on `data` when it alone is silenced, every unit of a layer in one pass of the engine."""
    from .engine.evaluate import evaluate_conditions

    for layer in layers:
        units = range(layer_units(model, layer))
        conditions = [Condition(name="baseline", set="baseline")]
        conditions += [Condition(name=str(u), set="each", silence=((layer, (u,)),)) for u in units]
        out = evaluate_conditions(conditions, Context(trained=model), data, budget_mb=budget_mb, device=device)
        labels = data.labels.to(out["baseline"].predictions.device)
        right = {name: (o.predictions == labels).float().mean().item() for name, o in out.items()}
        rows = table["layer"] == layer
        table.loc[rows, "importance"] = table.loc[rows, "unit"].map(lambda u: right["baseline"] - right[str(u)])
    return table


def factorize(model, layers="auto", between: str = "relu", input_shape: tuple[int, ...] | None = None):
    """A copy of `model` with its n x n `nn.Conv2d` layers split into n x 1 then 1 x n (study 5):
    those the rule n > 1 + m/c picks whose pair keeps the output shape (`auto`), or `layers`;
    `between`: what runs between the halves (relu, as the notebook's Keras layers; none).
    `input_shape` (C, H, W): the images', unless the model is knockout's (it knows it)."""
    from .factorization import factorize_convs

    shape = tuple(input_shape or getattr(model, "spec", {}).get("input_shape") or ())
    if not shape:
        raise ConfigError("input_shape: give the images' (C, H, W): a conv's pair must keep its output shape on them")
    rewritten = copy.deepcopy(model)
    factorize_convs(rewritten, layers, between, shape)
    return rewritten


@dataclass
class Trained:
    """What `train` gives: the trained network (the one given, trained in place), one row per
    epoch (`history.csv`'s columns) and the run's metrics (`metrics.json`'s)."""

    model: Any
    history: pd.DataFrame
    metrics: dict


def train(
    model,
    data,
    test=None,
    *,
    seed: int = 0,
    preprocess=None,
    device=None,
    out_dir: str | Path | None = None,
    batch_size: int = 128,
    **settings,
) -> Trained:
    """Train `model` (as initialised: seed it before building it) on `data` with the workflow's
    trainer: the same seed and data in the same order give the workflow's weights, bit for bit on
    the CPU. `settings`: those of a model's `train` entry (epochs, optimizer, lr, momentum,
    weight_decay, schedule, augment, eval_batch_size, amp); `test` is evaluated after each epoch.
    The model folder's files (init.pt, final.pt, history.csv, metrics.json) go to `out_dir` (a
    temporary folder when not given)."""
    import pandas as pd

    from .trainer import TrainConfig, train as fit

    entry = _entry("train", {"batch_size": batch_size, "augment": False} | settings)
    split = _trainable(as_data(data, preprocess, batch_size=batch_size))
    test_split = as_data(test, preprocess, batch_size=batch_size) if test is not None else split
    device = _device(model, device)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(out_dir or scratch)
        metrics = fit(
            model, split, test_split, TrainConfig.from_dict(entry), out, seed=seed, device=device, progress=False
        )
        history = pd.read_csv(out / "history.csv")
    return Trained(model, history, metrics)


# --- arguments as the engine takes them -----------------------------------------------------------


def _entry(definition: str, entry: dict) -> dict:
    """A study's (or training's) settings checked by the schema, defaults filled; one line
    naming the argument otherwise."""
    full = ({"type": definition, "model": "model"} if definition != "train" else {}) | entry
    return resolve(definition, full, key="")


def _model_name(given: dict, network) -> str:
    """The model's name in the tables (`model_name`, else its class's)."""
    return given.get("model_name") or type(network).__name__


def _networks(model, seeds) -> tuple[list, list[int]]:
    """The networks (one, or one per seed) and their seeds (given, else 0, 1, ...)."""
    networks = list(model) if isinstance(model, (list, tuple)) else [model]
    seeds = list(seeds) if seeds is not None else list(range(len(networks)))
    if len(seeds) != len(networks):
        raise ConfigError(f"seeds: {len(seeds)} seeds for {len(networks)} networks")
    return networks, seeds


def _per_model(value, n: int, key: str) -> list:
    """`init` or `checkpoints` as one per network (a list of them, or one for a single network)."""
    if value is None:
        return [None] * n
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != n:
        raise ConfigError(f"{key}: {len(values)} given for {n} networks")
    return values


def _like(network, weights):
    """A copy of `network` with `weights` (a network or a state_dict); None for None."""
    if weights is None:
        return None
    from torch import nn

    from .models import load_state

    if isinstance(weights, nn.Module):
        return weights
    copied = copy.deepcopy(network)
    load_state(copied, dict(weights), "init/checkpoints weights")
    return copied


def _rerandom(network, seed: int):
    """A fresh draw of `network`'s initial distribution, seeded from the training seed as the
    workflow draws it: knockout's networks rebuilt from their spec, others re-initialised by
    their modules' own `reset_parameters`."""
    import torch

    torch.manual_seed(10_000_019 + seed)
    if hasattr(network, "spec"):
        from .models import build_like, without_weights

        return build_like(network, without_weights(network.spec["arch"])).to(next(network.parameters()).device)
    fresh = copy.deepcopy(network)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh


def _device(network, device):
    """The device to evaluate on (given, else the network's), the network moved there."""
    import torch

    device = torch.device(device) if device is not None else next(network.parameters()).device
    network.to(device)
    return device


class _evaluating:
    """The network in eval mode while a study runs, then back in the mode it was in."""

    def __init__(self, network):
        self.network, self.was = network, network.training

    def __enter__(self):
        self.network.eval()

    def __exit__(self, *exc):
        self.network.train(self.was)


def _classes(given, split, network) -> list[str]:
    """The class names: given, else the data's (a view's meta, a dataset's `classes`), else 0..K-1
    for the network's K classes (its outputs, or its readout's `class_outputs`)."""
    if given is not None:
        return [str(c) for c in given]
    dataset = getattr(getattr(split, "loader", None), "dataset", None)
    if getattr(dataset, "classes", None) is not None:
        return [str(c) for c in dataset.classes]
    if getattr(split, "classes", None) is not None:
        return list(split.classes)
    import torch

    from .readout import Readout

    readout = Readout.of(network)
    if readout.class_outputs is not None:
        return [str(k) for k in range(len(readout.class_outputs))]
    with torch.no_grad(), _evaluating(network):
        outputs = readout(network(split.example(next(network.parameters()).device))).shape[-1]
    return [str(k) for k in range(outputs)]


def _info(split, classes: list[str]) -> DataInfo:
    return DataInfo(shape=tuple(split.shape), classes=tuple(classes), n_test=len(split))


def _reference_statistics(
    context: Context, needs: set, reference, given: dict, device, classes, importance: list[str]
) -> None:
    """The reference data's class-stratified subset of `examples` images (the workflow's
    `unit_stats` split and subset), its unit statistics (ranking; each unit's importance in the
    layers `importance`), values (mean, noise) and donors (resample), into `context`."""
    from .data import stratified_subset
    from .units import unit_statistics as statistics, unit_values

    data = as_data(reference, given.get("preprocess"), batch_size=given["batch_size"], where="reference")
    data = data.subset(stratified_subset(data.labels, given.get("examples", 10000), seed=0))
    network = context.trained
    with _evaluating(network):
        if "unit_stats" in needs:
            context.unit_stats = _with_importance(
                statistics(network, data, None, len(classes)), network, data, importance, given["budget_mb"], device
            )
        if "unit_values" in needs:
            context.unit_values = unit_values(network, data)
    if "donors" in needs:
        context.donors = data


def _trainable(split):
    """A split training can draw shuffled batches from: a loader's dataset read by index."""
    if isinstance(split, LoaderSplit):
        return split.indexed()
    return split
