"""What one rule's job does: read its declared inputs, set threads, device and seed, call the
library, write its declared outputs (through `knockout.io`). The CLI parses arguments and calls
one function here; nothing else in the library reads or writes job files.

A job's settings arrive once, resolved, as one typed object the workflow's plan made
(`knockout.settings`, from `knockout.plan`): a study's config entry, the device, the epochs it
rewinds to, the training settings. A job that evaluates calls what a researcher calls from a
notebook (`knockout.api`): the same engine, the same tables. Per-seed tables carry the id
columns `intervention, model, seed`.

At the top only modules without torch are imported; a job imports the torch-importing modules
(and scipy, papermill) it uses, so the analysis rules' jobs (aggregate, baselines, notebook) run
in an env without torch, and none pays for what it does not use.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .catalog import DataInfo
from .errors import ConfigError, DataError
from .io import atomic_write, read_arrays, read_json, write_arrays, write_json, write_table
from .settings import (
    AdoptSettings,
    DataSettings,
    DownloadSettings,
    PrepareSettings,
    StudySettings,
    TrainSettings,
    UnitsSettings,
)
from .tables import TABLES, condition_tables, value_columns


def _start(job: DataSettings, threads: int | None):
    """Torch's threads (Snakemake's {threads}), the allocator and the job's device, decided here
    and only here."""
    import torch

    from .devices import keep_freed_memory, resolve_device

    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(job.device)


def _study(job: StudySettings):
    """The job's study: (its `StudyType`, its parsed spec), parsed once per job."""
    from .plan import parse_study

    return parse_study(job.study)


def _context(
    job: StudySettings, seed: int, final, device, init=None, epochs=None, unit_stats=None, unit_values=None, data=None
):
    """The networks and statistics a study's conditions are built from (`engine.Context`):
    exactly the files given, and for `epochs` exactly the job's epochs (one missing is an error);
    for a study that resamples (`job.donors`), the reference split of the prepared view `data`."""
    import torch

    from .engine.conditions import Context
    from .models import build_like, load_model, without_weights
    from .units import load_unit_values

    trained = load_model(final, map_location=device)
    checkpoints = {}
    for epoch in (job.epochs or []) if epochs else []:
        path = Path(epochs) / f"epoch{epoch}.pt"
        if not path.is_file():
            raise DataError(f"{path}: missing; training kept epochs {job.epochs}")
        checkpoints[f"epoch{epoch}"] = load_model(path, map_location=device)
    # A fresh draw from the layers' initial distributions: the architecture from another seed,
    # derived from the training seed so reruns agree (`knockout.api` draws it so too).
    torch.manual_seed(10_000_019 + seed)
    rerandom = build_like(trained, without_weights(trained.spec["arch"])).to(device)
    donors = job.donors
    return Context(
        trained=trained,
        init=load_model(init, map_location=device) if init else None,
        checkpoints=checkpoints,
        rerandom=rerandom,
        unit_stats=pd.read_csv(unit_stats) if unit_stats else None,
        seed=seed,
        unit_values=load_unit_values(unit_values) if unit_values else None,
        donors=_reference(job, data, device, donors["split"], donors["examples"]) if donors else None,
    )


def _reference(job: DataSettings, data: str, device, split: str, examples: int):
    """The reference split the unit statistics and values are computed over (`unit_stats.split`,
    its class-stratified subset of `unit_stats.examples`), with the model's preprocessing."""
    from .data import stratified_subset

    _, _, (reference,) = _open(job, data, device, split)
    return reference.subset(stratified_subset(reference.labels, examples, seed=0))


def _ids(job: StudySettings, seed: int) -> dict:
    return {"intervention": job.name, "model": job.model, "seed": seed}


# --- data ------------------------------------------------------------------------------------------


def download(job: DownloadSettings, out: str) -> None:
    """The raw data of one dataset into the folder `out`, described by out/manifest.json (the
    `download` rule; `knockout.data.fetch`)."""
    from .data import fetch

    fetch(job.dataset, Path(out), job.mirrors, download=job.download, entry=job.entry)


def prepare(job: PrepareSettings, raw: str, out: str, threads: int | None = None) -> None:
    """The raw data of one dataset (the folder `raw`, from `download`) -> a prepared view in `out`
    at the view's geometry (its resize and crop, or none); `threads` processes decode images."""
    from .data import prepare as prepare_view

    entry = job.entry or {}
    prepare_view(
        job.dataset,
        Path(raw),
        Path(out),
        train_subset=entry.get("train_subset"),
        test_subset=entry.get("test_subset"),
        seed=entry.get("subset_seed", 0),
        entry=entry,
        geometry=job.geometry,
        workers=threads if threads and threads > 1 else 0,
        progress=True,
    )


def _open(job: DataSettings, data: str, device, *splits: str):
    """A prepared view's meta.json, the model's preprocessing built on it, and its `splits`
    (`knockout.data.Split`s: held on `device` when small, else streamed from disk)."""
    from .data import open_split, read_meta
    from .preprocess import Preprocess

    meta = read_meta(Path(data) / "meta.json")
    preprocess = Preprocess.of(job.preprocess, meta)
    return meta, preprocess, [open_split(data, split, preprocess, device, job.resident_mb) for split in splits]


def _check_study(job: StudySettings, study, spec, network, info: dict) -> None:
    """The study's own check, against the trained network and the prepared data: the config check
    did it before any job unless the dataset could not be known then (a torchvision class not yet
    fetched); it is cheap, so every study job does it again."""
    from .studies import Target

    train = dict(job.train or {}) | {"checkpoints": job.epochs or []}
    try:
        study.check(spec, Target(job.model, network, train, DataInfo.from_meta(info)))
    except ConfigError as e:
        raise ConfigError(f"interventions.{job.name}.{e}") from None


# --- training --------------------------------------------------------------------------------------


def _network(job: TrainSettings | AdoptSettings, meta: dict, weights: bool = False):
    """The job's architecture built for the prepared view, read as its model entry says (without
    its pretrained weights unless `weights`: the weights come from the checkpoint); ConfigError
    naming the model entry's key when it does not fit the images or the classes (checked before
    any job, unless the dataset was not known then)."""
    from .models import build_model, check_output, without_weights
    from .readout import Readout

    arch = job.arch if weights else without_weights(job.arch)
    shape, classes = tuple(meta["shape"]), meta["num_classes"]
    where = f"(on {meta['dataset']}: {'x'.join(map(str, shape))} images, {classes} classes)"
    try:
        network = build_model(arch, shape, classes, Readout.from_record(job.readout))
    except (ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"models.{job.model}.arch: {str(e).splitlines()[0]} {where}") from None
    try:
        check_output(network, shape, classes)
    except ConfigError as e:
        raise ConfigError(f"models.{job.model}.{e} {where}") from None
    return network


def train(job: TrainSettings, seed: int, data: str, out: str, threads: int | None = None) -> dict:
    """One model x seed: the model folder (init.pt, final.pt, history.csv, metrics.json, epochs/)."""
    import torch

    from .trainer import TrainConfig, train as fit

    device = _start(job, threads)
    meta, preprocess, (train_split, test_split) = _open(job, data, device, "train", "test")
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    network = _network(job, meta, weights=True)
    out = Path(out)
    metrics = fit(
        network,
        train_split,
        test_split,
        TrainConfig.from_dict(job.train),
        out,
        seed=seed,
        device=device,
        epochs_dir=out / "epochs",
        record={"preprocess": preprocess.record},
    )
    if metrics.get("test_accuracy") is not None:  # a baseline that did not learn: no study is run on it
        chance, bound = _chance(meta["num_classes"], len(test_split))
        if metrics["test_accuracy"] <= bound and not job.allow_chance:
            (out / "final.pt").unlink(missing_ok=True)  # nothing looks done
            raise ConfigError(
                f"models.{job.model}: seed {seed}: trained to test accuracy {metrics['test_accuracy']:.4f} on "
                f"{len(test_split)} test images of {meta['dataset']}, not above chance ({chance:.4f}; + 3 SE: "
                f"{bound:.4f}): the training did not learn; change models.{job.model}.train (lr, epochs, optimizer) "
                f"(models.{job.model}.allow_chance: true goes on with a network at chance on purpose)"
            )
    return metrics


def _chance(k: int, n: int) -> tuple[float, float]:
    """Chance accuracy with K classes, and the bound a network must pass: chance plus 3 binomial
    standard errors on n test images."""
    chance = 1 / k
    return chance, chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1))


def _check_baseline(job: AdoptSettings, seed: int, accuracy: float, n: int, meta: dict, preprocess) -> None:
    """A network given (checkpoints, pretrained weights) must be above chance on its test split
    (1/K plus 3 binomial standard errors), unless the user means it, and within 0.5 points of the
    accuracy they measured, where they give it: otherwise its inputs are not what it was trained
    on, and every number after would be noise."""
    from .preprocess import describe

    model = job.model
    chance, bound = _chance(meta["num_classes"], n)
    how = f"models.{model}.preprocess is {describe(preprocess.record)}"
    where = f"on {n} test images of {meta['dataset']}"
    measured = (job.accuracy or {}).get(str(seed))
    if measured is not None and abs(accuracy - measured) > 0.005:
        raise ConfigError(
            f"models.{model}.checkpoints.accuracy.{seed}: you measured {measured:.4f}, knockout measures {accuracy:.4f} "
            f"{where}: is that the same test set and preprocessing? ({how})"
        )
    if accuracy <= bound and not job.allow_chance:
        raise ConfigError(
            f"models.{model}: seed {seed}: test accuracy {accuracy:.4f} {where} is not above chance ({chance:.4f}; "
            f"+ 3 SE: {bound:.4f}): are the inputs preprocessed as the network was trained? {how} "
            f"(models.{model}.allow_chance: true goes on with a network at chance on purpose)"
        )


def adopt(
    job: AdoptSettings,
    seed: int,
    data: str,
    out: str,
    sources: list[str] = (),
    metrics: str | None = None,
    threads: int | None = None,
) -> None:
    """Weights the user has, as knockout checkpoints: `out` a file (final or initial weights; with
    `metrics`, evaluated on the test split first: a network that is not above chance, or not at
    the accuracy the user measured, stops here) or a folder (`epoch{e}.pt` for the job's epochs,
    one source each). Each must fit the architecture exactly, read as `job.checkpoint` says (its
    key and prefix). No sources: the arch's pretrained weights, as they are."""
    import torch

    from .engine.evaluate import evaluate
    from .models import count_parameters, load_state, read_state_dict, save_model

    device = _start(job, threads)
    meta, preprocess, splits = _open(job, data, device, *(["test"] if metrics else []))
    torch.manual_seed(seed)  # a pretrained network's head resized to the dataset's classes: drawn from the seed
    network = _network(job, meta, weights=not sources)
    key, prefix = (job.checkpoint or {}).get("key"), (job.checkpoint or {}).get("prefix")
    if len(sources) > 1 or Path(out).suffix != ".pt":
        for epoch, source in zip(job.epochs, sources, strict=True):
            load_state(network, read_state_dict(Path(source), key), source, prefix)
            save_model(network, Path(out) / f"epoch{epoch}.pt", seed=seed, epoch=epoch, source=source)
        return
    if sources:
        load_state(network, read_state_dict(Path(sources[0]), key), sources[0], prefix)
    source = sources[0] if sources else f"pretrained {job.arch.get('weights')}"
    if metrics:
        result = evaluate(network.to(device), splits[0], batch_size=job.eval_batch_size, amp=False)
        _check_baseline(job, seed, result.accuracy, len(splits[0]), meta, preprocess)
    save_model(network, out, seed=seed, source=source)
    if metrics:
        write_json(
            {
                "seed": seed,
                "parameters": count_parameters(network),
                "test_loss": result.loss,
                "test_accuracy": result.accuracy,
                "seconds_per_epoch": None,
                "source": source,
                "device": str(device),
                "preprocess": preprocess.record,
            },
            metrics,
        )


def unit_stats(job: UnitsSettings, final: str, data: str, out: str, threads: int | None = None) -> None:
    """Per-unit statistics of one trained network over a class-stratified subset of a split."""
    from .api import unit_statistics
    from .data import read_meta
    from .models import load_model

    device = _start(job, threads)
    split = _reference(job, data, device, job.split, job.examples)
    classes = read_meta(Path(data) / "meta.json")["classes"]
    network = load_model(final, map_location=device)
    table = unit_statistics(
        network, split, classes=classes, importance=job.importance or (), device=device, budget_mb=job.budget_mb
    )
    write_table(table, out)


def unit_values(job: UnitsSettings, final: str, data: str, out: str, threads: int | None = None) -> None:
    """The statistics of each layer's silence point output (the mean and noise ablation values)
    over the unit statistics' split and subset, never the evaluated images (.pt)."""
    from .models import load_model
    from .units import save_unit_values, unit_values as statistics

    device = _start(job, threads)
    split = _reference(job, data, device, job.split, job.examples)
    save_unit_values(statistics(load_model(final, map_location=device), split), out)


# --- studies ---------------------------------------------------------------------------------------


def _evaluated(job: StudySettings, seed: int, final: str, data: str, threads: int | None, inputs: dict):
    """An evaluated study's job set up (`intervene` and its shards): (device, study type, spec,
    context, meta, test split)."""
    device = _start(job, threads)
    study, spec = _study(job)
    context = _context(job, seed, final, device, data=data, **inputs)
    meta, _, (split,) = _open(job, data, device, "test")
    _check_study(job, study, spec, context.trained, meta)
    return device, study, spec, context, meta, split


def intervene(
    job: StudySettings,
    seed: int,
    final: str,
    data: str,
    out: str,
    init: str | None = None,
    epochs: str | None = None,
    unit_stats: str | None = None,
    unit_values: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """An evaluated study, one seed: every condition on the test split -> the four tables
    (`knockout.api.evaluated_tables`, what `knockout.ablate` and `swap_layers` compute)."""
    from .api import evaluated_tables

    inputs = {"init": init, "epochs": epochs, "unit_stats": unit_stats, "unit_values": unit_values}
    device, study, spec, context, meta, split = _evaluated(job, seed, final, data, threads, inputs)
    tables = evaluated_tables(study, spec, context, split, meta["classes"], budget_mb=job.budget_mb, device=device)
    return _write_tables(tables, _ids(job, seed), out)


def probe(
    job: StudySettings, seed: int, final: str, data: str, out: str, arrays: str, threads: int | None = None
) -> pd.DataFrame:
    """A probing study, one seed: its table and its arrays (with their id arrays)."""
    device = _start(job, threads)
    study, spec = _study(job)
    context = _context(job, seed, final, device)
    meta, _, (split,) = _open(job, data, device, "test")
    _check_study(job, study, spec, context.trained, meta)
    table, values = study.compute(spec, context, split, meta, job.budget_mb)
    ids = _ids(job, seed)
    write_arrays(values, arrays, ids=ids)
    write_table(table, out, ids=ids)  # the table last: a complete pair
    return table


def retrain(
    job: StudySettings,
    seed: int,
    condition: str,
    final: str,
    data: str,
    out: str,
    unit_stats: str | None = None,
    unit_values: str | None = None,
    threads: int | None = None,
) -> dict:
    """One condition of a retraining study, one seed, trained into the folder `out`: the model
    folder's files plus `predictions.npz` (per test example) and `condition.json` (its record)."""
    import torch

    from .engine.conditions import Condition, Context
    from .engine.evaluate import evaluate_conditions
    from .models import count_parameters, multiply_adds
    from .trainer import TrainConfig, train as fit

    device = _start(job, threads)
    study, spec = _study(job)
    context = _context(job, seed, final, device, unit_stats=unit_stats, unit_values=unit_values)
    meta, preprocess, (train_split, test_split) = _open(job, data, device, "train", "test")
    _check_study(job, study, spec, context.trained, meta)
    by_slug = {c.slug: c for c in study.conditions(spec, context)}
    if condition not in by_slug:
        raise ValueError(f"{job.name}: no condition {condition!r} (have {', '.join(by_slug)})")
    chosen = by_slug[condition]
    torch.manual_seed(seed)  # dropout draws, as in the baseline's training
    network = study.apply(chosen, context)
    out = Path(out)
    metrics = fit(
        network,
        train_split,
        test_split,
        TrainConfig.from_dict(job.train),
        out,
        seed=seed,
        device=device,
        record={"preprocess": preprocess.record},
    )
    plain = Context(trained=network.eval())
    result = evaluate_conditions(
        [Condition("baseline", "baseline")], plain, test_split, budget_mb=job.budget_mb, device=device
    )["baseline"]
    write_arrays(
        {"predictions": result.predictions.numpy(), "losses": result.losses.numpy()},
        out / "predictions.npz",
        compress=False,
    )
    record = {
        "name": chosen.name,
        "set": chosen.set,
        "info": [list(kv) for kv in chosen.info],
        "parameters": count_parameters(network),
        "multiply_adds": multiply_adds(network, tuple(meta["shape"])),
        "test_accuracy": (result.predictions == test_split.labels.cpu()).float().mean().item(),
    }
    if study.details is not None:  # a type's own per-condition record (factorize: its layer table)
        record["details"] = study.details(chosen, context)
    write_json(record, out / "condition.json")
    return metrics


def collect(job: StudySettings, seed: int, runs: list[str], data: str, out: str) -> pd.DataFrame:
    """The trained conditions of one seed -> the same four tables as `intervene`, plus
    parameters, multiply_adds, train_accuracy, gap (train - test accuracy), seconds_per_epoch."""
    import torch

    from .data import open_split, read_meta
    from .engine.conditions import Condition, ConditionOutput

    meta = read_meta(Path(data) / "meta.json")
    split = open_split(data, "test")  # its labels and indices
    conditions, outputs, extra = [], {}, {}
    for folder in map(Path, runs):
        record, metrics = read_json(folder / "condition.json"), read_json(folder / "metrics.json")
        saved = read_arrays(folder / "predictions.npz")
        condition = Condition(record["name"], record["set"], info=tuple(tuple(kv) for kv in record["info"]))
        conditions.append(condition)
        outputs[condition.name] = ConditionOutput(
            torch.from_numpy(saved["predictions"]), torch.from_numpy(saved["losses"])
        )
        extra[condition.name] = {
            "parameters": record["parameters"],
            "multiply_adds": record["multiply_adds"],
            "train_accuracy": metrics["train_accuracy"],
            "gap": metrics["train_accuracy"] - metrics["test_accuracy"],
            "seconds_per_epoch": metrics["seconds_per_epoch"],
        }
    tables = condition_tables(conditions, outputs, split.labels, meta["classes"], split.indices)
    main = tables["table"]
    tables["table"] = pd.concat([main, pd.DataFrame([extra[c] for c in main["condition"]])], axis=1)
    return _write_tables(tables, _ids(job, seed), out)


# --- sharded studies (`knockout.shards`): N jobs per seed, gathered into the same tables ----------


def _shard_total(shards: int | None, plan: str | None) -> int:
    """A shard job's count of shards: given (`shards: N`) or in its plan file (`shards: auto`)."""
    return int(read_json(plan)["shards"]) if plan else int(shards)


def intervene_shard(
    job: StudySettings,
    seed: int,
    shard: int,
    final: str,
    data: str,
    out: str,
    shards: int | None = None,
    plan: str | None = None,
    threads: int | None = None,
    **inputs,
) -> None:
    """Shard `shard` of an evaluated study, one seed: its block of the conditions
    (`knockout.shards.shard_range`) evaluated as the unsharded run evaluates them
    (`evaluate_conditions(only=...)`), written to `out` (.pt): the conditions (JSON, every
    field), their positions among all, and their predictions and per-example losses (K, N)."""
    import torch

    from .engine.conditions import Condition
    from .engine.evaluate import evaluate_conditions
    from .shards import decode_condition, encode_condition, shard_range

    device, study, spec, context, meta, split = _evaluated(job, seed, final, data, threads, inputs)
    conditions = study.conditions(spec, context)
    block = shard_range(len(conditions), shard, _shard_total(shards, plan))
    mine = [conditions[i] for i in block]
    encoded = [encode_condition(c) for c in mine]
    for text, condition in zip(encoded, mine):
        if decode_condition(text, Condition) != condition:  # a field that does not survive JSON
            raise ValueError(f"{job.name}: condition {condition.name!r} does not round-trip through JSON")
    outputs = evaluate_conditions(
        conditions,
        context,
        split,
        budget_mb=job.budget_mb,
        device=device,
        apply=study.apply,
        only={c.name for c in mine},
    )
    shape = (len(mine), len(split))
    record = {
        "conditions": encoded,
        "positions": list(block),
        "total": len(conditions),
        "names": [c.name for c in conditions],  # all of them: every shard must agree
        "predictions": torch.stack([outputs[c.name].predictions for c in mine]) if mine else torch.zeros(shape).long(),
        "losses": torch.stack([outputs[c.name].losses for c in mine]) if mine else torch.zeros(shape),
    }
    atomic_write(out, lambda tmp: torch.save(record, tmp))


def gather(job: StudySettings, seed: int, inputs: list[str], data: str, out: str) -> pd.DataFrame:
    """The shards of an evaluated study, one seed (their files `inputs`, in shard order) -> the
    four tables, as `intervene` writes them; every condition exactly once, else an error naming
    what is missing."""
    import torch

    from .data import open_split, read_meta
    from .engine.conditions import Condition, ConditionOutput
    from .shards import decode_condition

    meta = read_meta(Path(data) / "meta.json")
    split = open_split(data, "test")  # its labels and indices
    by_position, outputs, names = {}, {}, None
    for path in inputs:
        record = torch.load(path, weights_only=True)
        if names is None:
            names = record["names"]
        elif record["names"] != names:
            raise DataError(f"{path}: its study's conditions differ from the other shards' (a stale shard?)")
        for row, (position, text) in enumerate(zip(record["positions"], record["conditions"])):
            condition = decode_condition(text, Condition)
            if position in by_position or names[position] != condition.name:
                raise DataError(f"{path}: condition {condition.name!r} at position {position} is not its own")
            by_position[position] = condition
            outputs[condition.name] = ConditionOutput(record["predictions"][row], record["losses"][row])
    missing = [names[i] for i in range(len(names or [])) if i not in by_position]
    if missing:
        raise DataError(f"{job.name} seed {seed}: no shard evaluated {', '.join(missing[:5])}")
    conditions = [by_position[i] for i in range(len(names))]
    tables = condition_tables(conditions, outputs, split.labels, meta["classes"], split.indices)
    return _write_tables(tables, _ids(job, seed), out)


def probe_shard(
    job: StudySettings,
    seed: int,
    shard: int,
    final: str,
    data: str,
    out: str,
    shards: int | None = None,
    plan: str | None = None,
    threads: int | None = None,
) -> None:
    """Shard `shard` of a probing study that splits its work (occlusion: its occluded forwards),
    one seed: its partial arrays, to `out` (.npz)."""
    device = _start(job, threads)
    study, spec = _study(job)
    context = _context(job, seed, final, device)
    meta, _, (split,) = _open(job, data, device, "test")
    _check_study(job, study, spec, context.trained, meta)
    _, values = study.compute(spec, context, split, meta, job.budget_mb, shard=(shard, _shard_total(shards, plan)))
    write_arrays(values, out)


def gather_probe(job: StudySettings, seed: int, inputs: list[str], data: str, out: str, arrays: str) -> pd.DataFrame:
    """The shards of a probing study, one seed (their files `inputs`, in shard order) -> its table
    and arrays, as `probe` writes them."""
    from .data import read_meta

    study, _ = _study(job)
    table, values = study.merge([read_arrays(p) for p in inputs], read_meta(Path(data) / "meta.json"))
    ids = _ids(job, seed)
    write_arrays(values, arrays, ids=ids)
    write_table(table, out, ids=ids)  # the table last: a complete pair
    return table


def shard_plan(
    job: StudySettings, seed: int, final: str, data: str, out: str, threads: int | None = None, **inputs
) -> dict:
    """`shards: auto`, one seed: the study's estimated seconds on this device (its multiply-adds
    over the rate measured here: `knockout.shards.estimated_seconds`) -> the count of shards
    (`knockout.shards.shard_count`), written to `out` (JSON) with what it is based on."""
    from .graph import graph_of
    from .shards import estimated_seconds, shard_count

    if _study(job)[0].job == "probe":
        device = _start(job, threads)
        study, spec = _study(job)
        context = _context(job, seed, final, device)
        meta, _, (split,) = _open(job, data, device, "test")
        network = context.trained.eval()
        graph = graph_of(network, split.example(device))
        items = study.image_count(spec, split)
        rate = estimated_seconds(network, [], split, device)["macs_per_second"]
        cost = {"items": items, "macs_per_item": study.image_macs(spec, graph, tuple(meta["shape"]))}
        cost |= {"macs_per_second": rate, "seconds": items * cost["macs_per_item"] / rate}
    else:
        device, study, spec, context, meta, split = _evaluated(job, seed, final, data, threads, inputs)
        conditions = study.conditions(spec, context)
        cost = {"items": len(conditions)} | estimated_seconds(context.trained, conditions, split, device)
    n = shard_count(cost["seconds"], job.shard_seconds, job.max_shards, cost["items"])
    record = {"shards": n, "shard_seconds": job.shard_seconds, "max_shards": job.max_shards} | cost
    write_json(record | {"device": str(device)}, out)
    return record


def _write_tables(tables: dict[str, pd.DataFrame], ids: dict, out: str) -> pd.DataFrame:
    """The four tables (`knockout.tables.condition_tables`) beside `out` (seed{seed}.csv), each
    at its suffix (`knockout.tables.TABLES`); the main CSV last: its presence means the others are
    complete."""
    out = Path(out)
    stem = out.name[: -len(TABLES["table"])]
    for name, frame in sorted(tables.items(), key=lambda kv: kv[0] == "table"):
        write_table(frame, out.with_name(stem + TABLES[name]), ids=ids)
    return tables["table"]


# --- over seeds ------------------------------------------------------------------------------------


def aggregate(inputs: list[str], compare: list, out: str, comparisons: str) -> None:
    """Per-seed tables of one study -> mean, std and 95% CI per condition and set, and the
    paired comparisons the study asks for."""
    from .stats import comparisons as compare_sets, read_per_seed, summarize

    per_seed = read_per_seed(inputs)
    write_table(summarize(per_seed, value_cols=value_columns(per_seed)), out)
    write_table(compare_sets(per_seed, [tuple(p) for p in compare]), comparisons)


def baselines(inputs: list[str], out: str, per_seed: str) -> None:
    """metrics.json of every model x seed (results/models/{model}/seed{seed}/) -> test accuracy
    over seeds per model."""
    from .stats import mean_ci

    rows = pd.DataFrame(
        [
            {"model": Path(p).parent.parent.name, **{k: v for k, v in read_json(p).items() if k != "config"}}
            for p in inputs
        ]
    )
    table = []
    for model, group in rows.groupby("model", sort=True):
        mean, std, lo, hi, n = mean_ci(group["test_accuracy"])
        table.append(
            {
                "model": model,
                "mean": mean,
                "std": std,
                "ci_low": lo,
                "ci_high": hi,
                "n_seeds": n,
                "parameters": int(group["parameters"].iloc[0]),
                "seconds_per_epoch": group["seconds_per_epoch"].mean(),
            }
        )
    write_table(pd.DataFrame(table), out)
    write_table(rows, per_seed)


# --- notebooks and provenance ----------------------------------------------------------------------


def notebook(notebook: str, out: str, parameters: dict) -> None:
    """Execute an analysis notebook with papermill, given the parameters it declares."""
    import papermill

    declared = papermill.inspect_notebook(notebook)
    given = {k: v for k, v in parameters.items() if k in declared}
    Path(given["out_dir"]).mkdir(parents=True, exist_ok=True)
    atomic_write(
        out,
        lambda tmp: papermill.execute_notebook(
            notebook, str(tmp), parameters=given, kernel_name="python3", progress_bar=False
        ),
    )


def provenance(
    config: dict,
    manifests: list[str],
    repo: str | None,
    out: str,
    metas: list[str] = (),
    preprocess: dict | None = None,
) -> None:
    from .provenance import record

    write_json(record(config, manifests, Path(repo) if repo else None, metas, preprocess or {}), out)
