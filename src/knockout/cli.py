"""`knockout <command>`: the verbs the Snakemake rules call, one per rule.

Each command parses named arguments and calls the library; errors the user can fix end as one
line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USER_ERROR = 2


def optional_int(text: str) -> int | None:
    """An int, or None for an empty string (a config's `null` passed through the shell)."""
    return int(text) if text.strip() else None


def _set_threads(threads: int | None) -> None:
    """Snakemake's {threads} decides torch's intra-op threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def cmd_fetch(args) -> None:
    from .data import fetch

    fetch(args.dataset, Path(args.out), args.mirror, download=not args.no_download)


def cmd_prepare(args) -> None:
    from .data import prepare

    prepare(
        args.dataset,
        Path(args.raw),
        Path(args.out),
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        seed=args.seed,
    )


def cmd_train(args) -> None:
    import torch

    from .data import load_prepared
    from .models import build_model
    from .train import TrainConfig, resolve_device, train

    _set_threads(args.threads)
    spec = json.loads(args.spec)
    cfg = dict(spec.get("train", {}))
    device = resolve_device(args.device)
    train_split, test_split, meta = load_prepared(Path(args.data), device="cpu")
    if cfg.get("augment", "auto") == "auto":
        cfg["augment"] = meta["dataset"] == "cifar10"
    torch.manual_seed(args.seed)  # the initial weights are a function of the seed alone
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    model = build_model(spec["arch"], tuple(meta["shape"]), meta["num_classes"])
    metrics = train(
        model,
        train_split.images,
        train_split.labels,
        test_split.images,
        test_split.labels,
        TrainConfig.from_dict(cfg),
        Path(args.out),
        seed=args.seed,
        device=device,
    )
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}))


def cmd_units(args) -> None:
    from .data import load_prepared
    from .models import load_model
    from .train import resolve_device
    from .units import unit_statistics

    _set_threads(args.threads)
    device = resolve_device(args.device)
    train_split, _, meta = load_prepared(Path(args.data))
    n = min(len(train_split), args.max_examples)
    model = load_model(args.model, map_location=device)
    stats = unit_statistics(model, train_split.images[:n], train_split.labels[:n], meta["num_classes"])
    _write_csv(stats, Path(args.out))


def cmd_intervene(args) -> None:
    from .intervene import run
    from .train import resolve_device

    _set_threads(args.threads)
    run(
        args.name,
        json.loads(args.spec),
        args.model,
        args.seed,
        Path(args.model_dir),
        Path(args.data),
        Path(args.out),
        unit_stats=Path(args.unit_stats) if args.unit_stats else None,
        device=resolve_device(args.device),
        budget_mb=args.budget_mb,
    )


def cmd_probe(args) -> None:
    from . import probe
    from .train import resolve_device

    _set_threads(args.threads)
    spec = json.loads(args.spec)
    run = {"occlusion": probe.occlusion, "top_activations": probe.top_activations}[spec["type"]]
    run(args.name, spec, args.model, args.seed, Path(args.model_dir), Path(args.data), Path(args.out), device=resolve_device(args.device))


def cmd_retrain(args) -> None:
    from .intervene import retrain
    from .train import resolve_device

    _set_threads(args.threads)
    retrain(
        args.name,
        json.loads(args.spec),
        args.model,
        args.seed,
        args.condition,
        Path(args.model_dir),
        Path(args.data),
        Path(args.out),
        base_train=json.loads(args.train),
        unit_stats=Path(args.unit_stats) if args.unit_stats else None,
        device=resolve_device(args.device),
    )


def cmd_collect(args) -> None:
    from .intervene import collect

    spec = json.loads(args.spec)
    collect(args.name, args.model, args.seed, [Path(r) for r in args.runs], Path(args.data), Path(args.out))
    if spec["type"] == "factorize":
        from .interventions.factorize import layer_table
        from .models import load_model

        built = load_model(Path(args.runs[0]) / "final.pt").spec
        table = layer_table(built["arch"], tuple(built["input_shape"]), spec.get("layers", "auto"))
        _write_csv(table, Path(args.out).with_suffix(".layers.csv"))


# Per-seed columns summarised over seeds when a table has them (retraining studies add some).
VALUE_COLUMNS = ("accuracy", "delta", "loss", "gap", "train_accuracy", "seconds_per_epoch", "baseline_prob", "min_prob", "changed_area")


def cmd_aggregate(args) -> None:
    from .stats import comparisons, read_per_seed, summarize

    per_seed = read_per_seed(args.inputs)
    _write_csv(summarize(per_seed, value_cols=[c for c in VALUE_COLUMNS if c in per_seed]), Path(args.out))
    pairs = [tuple(p) for p in json.loads(args.compare or "[]")]
    if args.comparisons:
        _write_csv(comparisons(per_seed, pairs) if pairs else _empty_comparisons(), Path(args.comparisons))


def _empty_comparisons():
    import pandas as pd

    return pd.DataFrame(columns=["intervention", "model", "a", "b", "n_seeds", "diff_mean", "diff_ci_low", "diff_ci_high", "p_ttest", "p_permutation", "verdict"])


def cmd_baselines(args) -> None:
    """metrics.json of every model x seed -> one table over seeds per model."""
    import pandas as pd

    from .stats import mean_ci

    rows = []
    for path in args.inputs:
        metrics = json.loads(Path(path).read_text())
        rows.append({"model": Path(path).parent.parent.name, **{k: v for k, v in metrics.items() if k != "config"}})
    per_seed = pd.DataFrame(rows)
    table = []
    for model, group in per_seed.groupby("model", sort=True):
        mean, std, lo, hi, n = mean_ci(group["test_accuracy"])
        table.append({"model": model, "mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "n_seeds": n,
                      "parameters": int(group["parameters"].iloc[0]), "seconds_per_epoch": group["seconds_per_epoch"].mean()})
    _write_csv(pd.DataFrame(table), Path(args.out))
    if args.per_seed:
        _write_csv(per_seed, Path(args.per_seed))


def _write_csv(frame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def cmd_notebook(args) -> None:
    """Execute an analysis notebook with papermill, its parameters given as JSON."""
    import papermill

    parameters = json.loads(args.parameters)
    Path(parameters.get("out_dir", ".")).mkdir(parents=True, exist_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(Path(args.out).stem + ".tmp.ipynb")
    papermill.execute_notebook(args.notebook, str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False)
    tmp.replace(args.out)


def cmd_provenance(args) -> None:
    from .provenance import record

    rec = record(json.loads(args.config), args.manifests, Path(args.repo))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    tmp.replace(out)


def cmd_summary(args) -> None:
    from .config import load, model_spec
    from .data import DATASETS
    from .models import build_model, summary

    config = load(args.config)
    spec = model_spec(config, args.model)
    source = DATASETS[spec["dataset"]]
    model = build_model(spec["arch"], source.shape, source.num_classes)
    print(f'Model: "{args.model}" on {spec["dataset"]}, input {tuple(source.shape)}')
    print(summary(model, source.shape))


def cmd_check_config(args) -> None:
    from .config import load

    config = load(args.config)
    print(f"{args.config}: ok ({len(config['models'])} models, seeds {config['seeds']})")


def cmd_check_data(args) -> None:
    """Exit 0 when every dataset of the config is in a mirror or downloadable, 3 otherwise."""
    from .config import load
    from .data import locate, reachable

    config = load(args.config)
    missing = []
    for name in config["datasets"]:
        found = locate(name, config["data"]["mirrors"])
        if found:
            print(f"{name}: in mirror {next(iter(found.values())).parent}")
        elif config["data"]["download"] and reachable(name):
            print(f"{name}: downloadable")
        else:
            print(f"{name}: in no mirror and not downloadable")
            missing.append(name)
    if missing:
        sys.exit(3)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knockout", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("fetch", help="verified copies of a dataset's files, from a mirror or the web")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="folder for the files and manifest.json")
    s.add_argument("--mirror", action="append", default=[], help="local folder to look in first")
    s.add_argument("--no-download", action="store_true")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("prepare", help="raw files -> train.pt, test.pt, meta.json")
    s.add_argument("--dataset", required=True)
    s.add_argument("--raw", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--train-subset", type=optional_int)
    s.add_argument("--test-subset", type=optional_int)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train one model for one seed")
    s.add_argument("--data", required=True, help="prepared dataset folder")
    s.add_argument("--spec", required=True, help="model spec as JSON: {arch, train}")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("units", help="per-unit statistics of a trained model over training data")
    s.add_argument("--model", required=True, help="a final.pt")
    s.add_argument("--data", required=True, help="prepared dataset folder")
    s.add_argument("--out", required=True, help="CSV to write")
    s.add_argument("--max-examples", type=int, default=10_000)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_units)

    s = sub.add_parser("intervene", help="evaluate every condition of one study on one model and seed")
    s.add_argument("--name", required=True, help="the study's name in config.yaml")
    s.add_argument("--spec", required=True, help="the study's spec as JSON: {type, model, ...}")
    s.add_argument("--model", required=True, help="the model's name")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--model-dir", required=True, help="results/models/{model}/seed{seed}")
    s.add_argument("--data", required=True, help="prepared dataset folder")
    s.add_argument("--unit-stats", help="per-unit statistics CSV (knockout units)")
    s.add_argument("--out", required=True, help="seed{seed}.csv; the other tables go beside it")
    s.add_argument("--device", default="auto")
    s.add_argument("--budget-mb", type=float, default=512, help="activations held at once")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_intervene)

    s = sub.add_parser("probe", help="occlusion maps or top-activating patches of one model and seed")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", required=True, help="the study's spec as JSON: {type, model, ...}")
    s.add_argument("--model", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="seed{seed}.csv; the npz goes beside it")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("retrain", help="train one condition of a retraining study for one seed")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", required=True, help="the study's spec as JSON")
    s.add_argument("--model", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--condition", required=True, help="the condition's folder name, e.g. rand-draw1")
    s.add_argument("--model-dir", required=True, help="the trained model folder it starts from")
    s.add_argument("--data", required=True)
    s.add_argument("--train", required=True, help="the model's training settings as JSON")
    s.add_argument("--unit-stats")
    s.add_argument("--out", required=True, help="the condition's model folder")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_retrain)

    s = sub.add_parser("collect", help="trained conditions of one seed -> the per-seed tables")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--runs", nargs="+", required=True, help="the conditions' model folders")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("aggregate", help="per-seed tables -> mean, std, 95%% CI per condition and set")
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--compare", help="JSON list of [set_a, set_b] pairs")
    s.add_argument("--comparisons", help="CSV for the paired comparisons")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("baselines", help="metrics.json files -> accuracy over seeds per model")
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--per-seed", help="also write the per-seed rows here")
    s.set_defaults(func=cmd_baselines)

    s = sub.add_parser("notebook", help="execute an analysis notebook with papermill")
    s.add_argument("--notebook", required=True)
    s.add_argument("--out", required=True, help="the executed notebook")
    s.add_argument("--parameters", default="{}", help="papermill parameters as JSON")
    s.set_defaults(func=cmd_notebook)

    s = sub.add_parser("provenance", help="record config, versions, device, commit and data checksums")
    s.add_argument("--config", required=True, help="the resolved config, as JSON")
    s.add_argument("--manifests", nargs="*", default=[], help="the datasets' manifest.json files")
    s.add_argument("--repo", required=True, help="the workflow's folder (for its git commit)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_provenance)

    s = sub.add_parser("summary", help="a Keras-like table of a configured model")
    s.add_argument("--config", default="config.yaml")
    s.add_argument("--model", required=True)
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("check-config", help="validate a config file")
    s.add_argument("--config", default="config.yaml")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("check-data", help="can every dataset of the config be had?")
    s.add_argument("--config", default="config.yaml")
    s.set_defaults(func=cmd_check_data)
    return p


def main(argv: list[str] | None = None) -> None:
    from .errors import KnockoutError

    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (KnockoutError, FileNotFoundError) as e:
        print(f"knockout {args.command}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
