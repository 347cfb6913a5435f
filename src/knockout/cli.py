"""`knockout <verb>`: what each Snakemake rule calls, plus a few commands for people.

Argument parsing only: each verb's options are the keyword arguments of one function, of
`knockout.jobs` (a rule's job) or, for the COMMANDS, of `knockout.commands`. Errors a user can
fix end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_USER_ERROR = 2
COMMANDS = ("summary", "check-config", "check-data")  # for people, in knockout.commands; the rest: knockout.jobs
# Each job's settings (`--job`), by verb: a class of knockout.settings.
SETTINGS = {
    "download": "DownloadSettings",
    "prepare": "PrepareSettings",
    "train": "TrainSettings",
    "adopt": "AdoptSettings",
    "unit-stats": "UnitsSettings",
    "unit-values": "UnitsSettings",
} | dict.fromkeys(
    (
        "intervene",
        "probe",
        "intervene-shard",
        "probe-shard",
        "shard-plan",
        "gather",
        "gather-probe",
        "retrain",
        "collect",
    ),
    "StudySettings",
)


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Options shared by several verbs."""
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument(
        "--job", required=True, help="the job's resolved settings (JSON, from the workflow's plan: knockout.settings)"
    )
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, help="torch threads (Snakemake's {threads})")
    seed = argparse.ArgumentParser(add_help=False)
    seed.add_argument("--seed", type=int, required=True, help="the training seed")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data", required=True, help="the prepared view's folder (results/data/{view}: its splits and meta.json)"
    )
    final = argparse.ArgumentParser(add_help=False)
    final.add_argument("--final", required=True, help="the trained network (final.pt)")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", required=True)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default="config.yaml")
    return {"job": job, "threads": threads, "seed": seed, "data": data, "final": final, "out": out, "config": config}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knockout", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    shared = _parents()

    def verb(name: str, help: str, *parents: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[shared[k] for k in parents])

    verb(
        "download", "a dataset's raw data, verified, from a mirror or the web; its manifest.json in --out", "job", "out"
    )
    verb(
        "prepare", "raw data -> a prepared view ({split}_images.npy, ..., meta.json) in --out", "job", "threads", "out"
    ).add_argument("--raw", required=True, help="the folder download wrote (its manifest.json)")

    verb("train", "train one model for one seed into the folder --out", "job", "threads", "seed", "data", "out")

    s = verb(
        "adopt",
        "weights you have (or pretrained ones), as a model folder's files",
        "job",
        "threads",
        "seed",
        "data",
        "out",
    )
    s.add_argument(
        "--sources",
        nargs="*",
        default=[],
        help="your checkpoint files (one per epoch for a folder --out; none: pretrained)",
    )
    s.add_argument("--metrics", help="metrics.json to write (the final weights evaluated on the test split)")
    verb("unit-stats", "per-unit statistics of a trained network", "job", "threads", "final", "data", "out")
    verb(
        "unit-values",
        "each layer's silence point statistics over the reference split (mean and noise ablation values)",
        "job",
        "threads",
        "final",
        "data",
        "out",
    )

    s = verb(
        "intervene",
        "evaluate every condition of one study for one seed",
        "job",
        "threads",
        "seed",
        "final",
        "data",
        "out",
    )
    s.add_argument("--init", help="the initial weights (init.pt), when the study needs them")
    s.add_argument("--epochs", help="the epoch checkpoints' folder, when the study rewinds")
    s.add_argument("--unit-stats", help="per-unit statistics (CSV), when a set ranks units")
    s.add_argument("--unit-values", help="the units' values (.pt), when a set ablates with mean, resample or noise")

    verb(
        "probe", "a probing study's table and arrays for one seed", "job", "threads", "seed", "final", "data", "out"
    ).add_argument("--arrays", required=True, help="the .npz to write")

    # sharded studies (knockout.shards): N jobs per seed, then one gather
    total = argparse.ArgumentParser(add_help=False)
    total.add_argument("--shard", type=int, required=True, help="this shard's number, from 0")
    count = total.add_mutually_exclusive_group(required=True)
    count.add_argument("--shards", type=int, help="how many shards (shards: N)")
    count.add_argument("--plan", help="the plan.json that says how many (shards: auto)")
    studied = ("job", "threads", "seed", "final", "data", "out")
    s = sub.add_parser(
        "intervene-shard",
        help="one shard of an evaluated study's conditions for one seed -> its .pt",
        parents=[shared[k] for k in studied] + [total],
    )
    s.add_argument("--init", help="the initial weights (init.pt), when the study needs them")
    s.add_argument("--epochs", help="the epoch checkpoints' folder, when the study rewinds")
    s.add_argument("--unit-stats", help="per-unit statistics (CSV), when a set ranks units")
    s.add_argument("--unit-values", help="the units' values (.pt), when a set ablates with mean, resample or noise")
    sub.add_parser(
        "probe-shard",
        help="one shard of a probing study's images for one seed -> its .npz",
        parents=[shared[k] for k in studied] + [total],
    )
    s = verb("shard-plan", "shards: auto: the count of shards of a study for one seed -> plan.json", *studied)
    s.add_argument("--init", help="the initial weights (init.pt), when the study needs them")
    s.add_argument("--epochs", help="the epoch checkpoints' folder, when the study rewinds")
    s.add_argument("--unit-stats", help="per-unit statistics (CSV), when a set ranks units")
    s.add_argument("--unit-values", help="the units' values (.pt), when a set ablates with mean, resample or noise")
    s = verb("gather", "an evaluated study's shards for one seed -> its four tables", "job", "seed", "data", "out")
    s.add_argument("--inputs", nargs="+", required=True, help="the shards' .pt files, in shard order")
    s = verb(
        "gather-probe", "a probing study's shards for one seed -> its table and arrays", "job", "seed", "data", "out"
    )
    s.add_argument("--inputs", nargs="+", required=True, help="the shards' .npz files, in shard order")
    s.add_argument("--arrays", required=True, help="the .npz to write")

    s = verb(
        "retrain",
        "train one condition of a retraining study for one seed",
        "job",
        "threads",
        "seed",
        "final",
        "data",
        "out",
    )
    s.add_argument("--condition", required=True, help="the condition's folder name, e.g. rand-draw1")
    s.add_argument("--unit-stats", help="per-unit statistics (CSV), when a set ranks units")
    s.add_argument("--unit-values", help="the units' values (.pt), when a set ablates with mean, resample or noise")

    s = verb(
        "collect", "a retraining study's trained conditions for one seed -> its tables", "job", "seed", "data", "out"
    )
    s.add_argument("--runs", nargs="+", required=True, help="the conditions' folders")

    s = verb("aggregate", "per-seed tables -> mean, std, 95%% CI per condition and set; paired comparisons", "out")
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--compare", type=json.loads, required=True, help="JSON list of [set_a, set_b] pairs")
    s.add_argument("--comparisons", required=True, help="CSV for the paired comparisons")

    s = verb("baselines", "metrics.json files -> accuracy over seeds per model", "out")
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--per-seed", required=True, help="the per-seed rows")

    s = verb("notebook", "execute an analysis notebook with papermill", "out")
    s.add_argument("--notebook", required=True)
    s.add_argument("--parameters", type=json.loads, required=True, help="papermill parameters (JSON)")

    s = verb("provenance", "record config, versions, device, commit and data checksums", "out")
    s.add_argument("--config", type=json.loads, required=True, help="the resolved config (JSON)")
    s.add_argument("--manifests", nargs="*", default=[], help="the datasets' manifest.json files")
    s.add_argument("--metas", nargs="*", default=[], help="the prepared views' meta.json files")
    s.add_argument(
        "--preprocess", type=json.loads, default={}, help="each model's resolved preprocessing and view (JSON)"
    )
    s.add_argument("--repo", help="the workflow's folder, for its git commit (none: a workflow read from a repository)")

    verb("summary", "a Keras-like table of a configured model", "config").add_argument("--model", required=True)
    verb("check-config", "validate a config file", "config")
    verb("check-data", "can every dataset of the config be had? (exit 3 when not)", "config")
    return p


def main(argv: list[str] | None = None) -> None:
    import importlib

    from .errors import KnockoutError

    args = vars(parser().parse_args(argv))
    command = args.pop("command")
    if "job" in args:  # the rule's settings as the job's typed object
        from . import settings

        args["job"] = getattr(settings, SETTINGS[command]).from_json(args["job"])
    # Imported here, the one that runs: `knockout --help` does not import the library.
    module = importlib.import_module("knockout.commands" if command in COMMANDS else "knockout.jobs")
    try:
        getattr(module, command.replace("-", "_"))(**args)
    except (KnockoutError, FileNotFoundError) as e:
        print(f"knockout {command}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
