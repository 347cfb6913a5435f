"""What one rule's job does: read its declared inputs, set threads, device and seed, call the
library, write its declared outputs (through `knockout.io`). The CLI parses arguments and calls
one function here; nothing else in the library reads or writes job files.

A job's settings arrive once, resolved, as the `job` dict the workflow's plan made
(`knockout.plan`): a study's config entry, the device, the epochs it rewinds to, the training
settings. Per-seed tables carry the id columns `intervention, model, seed`.

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
from .tables import TABLES, condition_tables, value_columns


def _start(job: dict, threads: int | None):
    """Torch's threads (Snakemake's {threads}), the allocator and the job's device, decided here
    and only here."""
    import torch

    from .devices import keep_freed_memory, resolve_device

    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(job["device"])


def _study(job: dict):
    """The job's study: (its study type's module, its parsed spec), parsed once per job."""
    from .plan import parse_study

    return parse_study(job["study"])


def _context(job: dict, seed: int, final, device, init=None, epochs=None, unit_stats=None):
    """The networks and statistics a study's conditions are built from (studies.Context):
    exactly the files given, and for `epochs` exactly the job's epochs (one missing is an error)."""
    import torch

    from .models import build_model, load_model, without_weights
    from .studies import Context

    trained = load_model(final, map_location=device)
    checkpoints = {}
    for epoch in job.get("epochs", []) if epochs else []:
        path = Path(epochs) / f"epoch{epoch}.pt"
        if not path.is_file():
            raise DataError(f"{path}: missing; training kept epochs {job['epochs']}")
        checkpoints[f"epoch{epoch}"] = load_model(path, map_location=device)
    # A fresh draw from the layers' initial distributions: the architecture from another seed,
    # derived from the training seed so reruns agree.
    spec = trained.spec
    torch.manual_seed(10_000_019 + seed)
    rerandom = build_model(without_weights(spec["arch"]), tuple(spec["input_shape"]), spec["num_classes"]).to(device)
    return Context(
        trained=trained,
        init=load_model(init, map_location=device) if init else None,
        checkpoints=checkpoints,
        rerandom=rerandom,
        unit_stats=pd.read_csv(unit_stats) if unit_stats else None,
        seed=seed,
    )


def _ids(job: dict, seed: int) -> dict:
    return {"intervention": job["name"], "model": job["study"]["model"], "seed": seed}


# --- data ------------------------------------------------------------------------------------------


def download(job: dict, out: str) -> None:
    """The raw data of one dataset into the folder `out`, described by out/manifest.json (the
    `download` rule; `knockout.data.fetch`). `job`:
    {dataset, entry (its config entry without subsets; none: a built-in), mirrors, download}."""
    from .data import fetch

    fetch(job["dataset"], Path(out), job.get("mirrors", []), download=job.get("download", True), entry=job.get("entry"))


def prepare(job: dict, raw: str, out: str, threads: int | None = None) -> None:
    """The raw data of one dataset (the folder `raw`, from `download`) -> a prepared view in `out`.
    `job`: {dataset, entry (its config entry, with its subsets), geometry (the view's resize and
    crop, or None)}; `threads` processes decode images."""
    from .data import prepare as prepare_view

    entry = job.get("entry") or {}
    prepare_view(
        job["dataset"],
        Path(raw),
        Path(out),
        train_subset=entry.get("train_subset"),
        test_subset=entry.get("test_subset"),
        seed=entry.get("subset_seed", 0),
        entry=entry,
        geometry=job.get("geometry"),
        workers=threads if threads and threads > 1 else 0,
        progress=True,
    )


def _open(job: dict, data: str, device, *splits: str):
    """A prepared view's meta.json, the model's preprocessing built on it, and its `splits`
    (`knockout.data.Split`s: held on `device` when small, else streamed from disk)."""
    from .data import open_split, read_meta
    from .preprocess import Preprocess

    meta = read_meta(Path(data) / "meta.json")
    preprocess = Preprocess.of(job["preprocess"], meta)
    return (
        meta,
        preprocess,
        [open_split(data, split, preprocess, device, job.get("resident_mb", 0)) for split in splits],
    )


def _check_study(job: dict, kind, spec, network, info: dict) -> None:
    """The study's own check, against the trained network and the prepared data: the config check
    did it before any job unless the dataset could not be known then (a torchvision class not yet
    fetched); it is cheap, so every study job does it again."""
    from .studies import Target

    data = DataInfo.from_meta(info)
    train = dict(job.get("train", {})) | {"checkpoints": job.get("epochs", [])}
    try:
        kind.check(spec, Target(job["study"]["model"], network, train, data))
    except ConfigError as e:
        raise ConfigError(f"interventions.{job['name']}.{e}") from None


# --- training --------------------------------------------------------------------------------------


def _network(job: dict, meta: dict, key: str, weights: bool = False):
    """The job's architecture built for the prepared view (without its pretrained weights unless
    `weights`: the weights come from the checkpoint); ConfigError naming `key` when it does not
    fit the images (checked before any job, unless the dataset was not known then)."""
    from .models import build_model, without_weights

    arch = job["arch"] if weights else without_weights(job["arch"])
    try:
        return build_model(arch, tuple(meta["shape"]), meta["num_classes"])
    except (ValueError, KeyError, RuntimeError) as e:
        shape = "x".join(map(str, meta["shape"]))
        raise ConfigError(
            f"{key}: {str(e).splitlines()[0]} (on {meta['dataset']}: {shape} images, {meta['num_classes']} classes)"
        ) from None


def train(job: dict, seed: int, data: str, out: str, threads: int | None = None) -> dict:
    """One model x seed: the model folder (init.pt, final.pt, history.csv, metrics.json, epochs/)."""
    import torch

    from .train import TrainConfig, train as fit

    device = _start(job, threads)
    meta, preprocess, (train_split, test_split) = _open(job, data, device, "train", "test")
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    network = _network(job, meta, f"models.{job['model']}.arch", weights=True)
    out = Path(out)
    return fit(
        network,
        train_split,
        test_split,
        TrainConfig.from_dict(job["train"]),
        out,
        seed=seed,
        device=device,
        epochs_dir=out / "epochs",
        record={"preprocess": preprocess.record},
    )


def _check_baseline(job: dict, seed: int, accuracy: float, n: int, meta: dict, preprocess) -> None:
    """A network given (checkpoints, pretrained weights) must be above chance on its test split
    (1/K plus 3 binomial standard errors), unless the user means it, and within 0.5 points of the
    accuracy they measured, where they give it: otherwise its inputs are not what it was trained
    on, and every number after would be noise."""
    from .preprocess import describe

    model, k = job["model"], meta["num_classes"]
    chance = 1 / k
    bound = chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1))
    how = f"models.{model}.preprocess is {describe(preprocess.record)}"
    where = f"on {n} test images of {meta['dataset']}"
    measured = job.get("accuracy", {}).get(str(seed))
    if measured is not None and abs(accuracy - measured) > 0.005:
        raise ConfigError(
            f"models.{model}.checkpoints.accuracy.{seed}: you measured {measured:.4f}, knockout measures {accuracy:.4f} "
            f"{where}: is that the same test set and preprocessing? ({how})"
        )
    if accuracy <= bound and not job.get("allow_chance"):
        raise ConfigError(
            f"models.{model}: seed {seed}: test accuracy {accuracy:.4f} {where} is not above chance ({chance:.4f}; "
            f"+ 3 SE: {bound:.4f}): are the inputs preprocessed as the network was trained? {how} "
            f"(models.{model}.allow_chance: true goes on with a network at chance on purpose)"
        )


def adopt(
    job: dict,
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
    one source each). Each must fit the architecture exactly. No sources: the arch's pretrained
    weights, as they are."""
    import torch

    from .engine.evaluate import evaluate
    from .models import count_parameters, load_state, read_state_dict, save_model

    device = _start(job, threads)
    meta, preprocess, splits = _open(job, data, device, *(["test"] if metrics else []))
    torch.manual_seed(seed)  # a pretrained network's head resized to the dataset's classes: drawn from the seed
    network = _network(job, meta, f"models.{job['model']}.arch", weights=not sources)
    if len(sources) > 1 or Path(out).suffix != ".pt":
        for epoch, source in zip(job["epochs"], sources, strict=True):
            load_state(network, read_state_dict(Path(source)), source)
            save_model(network, Path(out) / f"epoch{epoch}.pt", seed=seed, epoch=epoch, source=source)
        return
    if sources:
        load_state(network, read_state_dict(Path(sources[0])), sources[0])
    source = sources[0] if sources else f"pretrained {job['arch'].get('weights')}"
    if metrics:
        result = evaluate(network.to(device), splits[0], batch_size=job["eval_batch_size"], amp=False)
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


def unit_stats(job: dict, final: str, data: str, out: str, threads: int | None = None) -> None:
    """Per-unit statistics of one trained network over a class-stratified subset of a split."""
    from .data import stratified_subset
    from .models import load_model
    from .units import unit_statistics

    device = _start(job, threads)
    meta, _, (split,) = _open(job, data, device, job["split"])
    split = split.subset(stratified_subset(split.labels, job["examples"], seed=0))
    network = load_model(final, map_location=device)
    write_table(unit_statistics(network, split, None, meta["num_classes"]), out)


# --- studies ---------------------------------------------------------------------------------------


def intervene(
    job: dict,
    seed: int,
    final: str,
    data: str,
    out: str,
    init: str | None = None,
    epochs: str | None = None,
    unit_stats: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """An evaluated study, one seed: every condition on the test split -> the four tables."""
    from .engine.evaluate import evaluate_conditions

    device = _start(job, threads)
    kind, spec = _study(job)
    context = _context(job, seed, final, device, init, epochs, unit_stats)
    info, _, (split,) = _open(job, data, device, "test")
    _check_study(job, kind, spec, context.trained, info)
    conditions = kind.conditions(spec, context)
    outputs = evaluate_conditions(
        conditions, context, split, budget_mb=job["budget_mb"], device=device, apply=kind.apply
    )
    tables = condition_tables(conditions, outputs, split.labels.cpu(), info["classes"], split.indices)
    return _write_tables(tables, _ids(job, seed), out)


def probe(
    job: dict, seed: int, final: str, data: str, out: str, arrays: str, threads: int | None = None
) -> pd.DataFrame:
    """A probing study, one seed: its table and its arrays (with their id arrays)."""
    device = _start(job, threads)
    kind, spec = _study(job)
    context = _context(job, seed, final, device)
    info, _, (split,) = _open(job, data, device, "test")
    _check_study(job, kind, spec, context.trained, info)
    table, values = kind.compute(spec, context, split, info, job["budget_mb"])
    ids = _ids(job, seed)
    write_arrays(values, arrays, ids=ids)
    write_table(table, out, ids=ids)  # the table last: a complete pair
    return table


def retrain(
    job: dict,
    seed: int,
    condition: str,
    final: str,
    data: str,
    out: str,
    unit_stats: str | None = None,
    threads: int | None = None,
) -> dict:
    """One condition of a retraining study, one seed, trained into the folder `out`: the model
    folder's files plus `predictions.npz` (per test example) and `condition.json` (its record)."""
    import torch

    from .engine.evaluate import evaluate_conditions
    from .models import count_parameters, multiply_adds
    from .studies import Condition, Context
    from .train import TrainConfig, train as fit

    device = _start(job, threads)
    kind, spec = _study(job)
    context = _context(job, seed, final, device, unit_stats=unit_stats)
    info, preprocess, (train_split, test_split) = _open(job, data, device, "train", "test")
    _check_study(job, kind, spec, context.trained, info)
    by_slug = {c.slug: c for c in kind.conditions(spec, context)}
    if condition not in by_slug:
        raise ValueError(f"{job['name']}: no condition {condition!r} (have {', '.join(by_slug)})")
    chosen = by_slug[condition]
    torch.manual_seed(seed)  # dropout draws, as in the baseline's training
    network = kind.apply(chosen, context)
    out = Path(out)
    metrics = fit(
        network,
        train_split,
        test_split,
        TrainConfig.from_dict(job["train"]),
        out,
        seed=seed,
        device=device,
        record={"preprocess": preprocess.record},
    )
    plain = Context(trained=network.eval())
    result = evaluate_conditions(
        [Condition("baseline", "baseline")], plain, test_split, budget_mb=job["budget_mb"], device=device
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
        "multiply_adds": multiply_adds(network, tuple(info["shape"])),
        "test_accuracy": (result.predictions == test_split.labels.cpu()).float().mean().item(),
    }
    if hasattr(kind, "details"):  # a type's own per-condition record (factorize: its layer table)
        record["details"] = kind.details(chosen, context)
    write_json(record, out / "condition.json")
    return metrics


def collect(job: dict, seed: int, runs: list[str], data: str, out: str) -> pd.DataFrame:
    """The trained conditions of one seed -> the same four tables as `intervene`, plus
    parameters, multiply_adds, train_accuracy, gap (train - test accuracy), seconds_per_epoch."""
    import torch

    from .data import open_split, read_meta
    from .engine.evaluate import ConditionOutput
    from .studies import Condition

    info = read_meta(Path(data) / "meta.json")
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
    tables = condition_tables(conditions, outputs, split.labels, info["classes"], split.indices)
    main = tables["table"]
    tables["table"] = pd.concat([main, pd.DataFrame([extra[c] for c in main["condition"]])], axis=1)
    return _write_tables(tables, _ids(job, seed), out)


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
    config: dict, manifests: list[str], repo: str, out: str, metas: list[str] = (), preprocess: dict | None = None
) -> None:
    from .provenance import record

    write_json(record(config, manifests, Path(repo), metas, preprocess or {}), out)
