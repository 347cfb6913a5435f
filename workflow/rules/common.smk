# Shared set-up: the library on the path, the validated config, wildcard constraints and the
# functions that turn config entries into rule inputs and parameters.
import json
from types import SimpleNamespace as Namespace
import os
import shlex
import shutil
import sys

from snakemake.settings.types import DeploymentMethod

# Rules run `knockout <verb>`, a shell function for `python -m knockout`: the library is found
# from the repo (no install), with the conda env's python under --use-conda, else the python
# running snakemake (e.g. .venv's).
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)


shell.prefix(
    "export PYTHONPATH="
    + shlex.quote(SRC)
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
    + "knockout() {{ "
    + PYTHON
    + ' -m knockout "$@"; }}; '
)

from knockout.config import ConfigError, check, validate

try:
    check(validate(config))
except ConfigError as e:
    # One line, before any job runs.
    sys.exit(f"config error: {e}")

DATASETS = sorted(config["datasets"])
MODELS = sorted(config["models"])
SEEDS = [str(s) for s in config["seeds"]]
INTERVENTIONS = config["interventions"]
# Families whose conditions are trained (one job per condition and seed), not only evaluated.
RETRAINED = {"ablate_then_train", "architecture", "factorize"}
PROBES = {"occlusion", "top_activations"}  # arrays and a summary per seed
EVALUATED_STUDIES = [
    n for n, s in INTERVENTIONS.items() if s["type"] not in RETRAINED | PROBES
]
PROBE_STUDIES = [n for n, s in INTERVENTIONS.items() if s["type"] in PROBES]
RETRAINED_STUDIES = [n for n, s in INTERVENTIONS.items() if s["type"] in RETRAINED]


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    seed=r"\d+",
    name="|".join(INTERVENTIONS) or "^$",
    condition=r"[A-Za-z0-9_-]+",


def model_dataset(wildcards):
    return config["models"][wildcards.model]["dataset"]


def prepared(wildcards):
    """The prepared tensors of the model's dataset."""
    return multiext(
        f"results/data/{model_dataset(wildcards)}/", "train.pt", "test.pt", "meta.json"
    )


def model_spec_json(wildcards):
    """The model's architecture and training settings, for `knockout train --spec`."""
    model = config["models"][wildcards.model]
    return json.dumps({"arch": model["arch"], "train": model["train"]}, sort_keys=True)


def mirror_args(wildcards):
    args = [f"--mirror={m}" for m in config["data"]["mirrors"]]
    if not config["data"]["download"]:
        args.append("--no-download")
    return shlex.join(args)


def uses_cuda():
    # Decided without importing torch: an explicit cuda device, or auto on a machine with a GPU.
    device = config["device"]
    return device.startswith("cuda") or (
        device == "auto" and shutil.which("nvidia-smi") is not None
    )


def gpus_per_job():
    n = config["gpus_per_job"]
    return (1 if uses_cuda() else 0) if n == "auto" else n


def trained_models():
    return expand(
        "results/models/{model}/seed{seed}/metrics.json", model=MODELS, seed=SEEDS
    )


def study(wildcards):
    return INTERVENTIONS[wildcards.name]


def study_spec_json(wildcards):
    return json.dumps(study(wildcards), sort_keys=True)


def needs_unit_stats(spec):
    sets = spec.get("sets", {}).values()
    return any(
        s["select"] == "lowest_response"
        or (s["select"] == "cumulative" and s.get("order", "random") != "random")
        for s in sets
    )


def intervention_inputs(wildcards):
    """The trained model folder, the prepared data and, when a set ranks units, their statistics."""
    inputs = {
        "final": f"results/models/{wildcards.model}/seed{wildcards.seed}/final.pt",
        "init": f"results/models/{wildcards.model}/seed{wildcards.seed}/init.pt",
        "data": prepared(wildcards),
    }
    if needs_unit_stats(study(wildcards)):
        inputs["units"] = f"results/units/{wildcards.model}/seed{wildcards.seed}.csv"
    return inputs


def retrained_conditions(spec):
    """Folder names of a retraining study's conditions (as `Condition.slug` names them)."""
    if spec["type"] == "architecture":
        return ["baseline", *spec["variants"]]
    if spec["type"] == "factorize":
        return ["baseline", "factorized"]
    names = ["baseline"]
    for name, fset in spec["sets"].items():
        if fset["select"] == "random":
            names += [f"{name}-draw{d}" for d in range(fset["repeats"])]
        else:
            names.append(name)
    return names


def retrained_runs(wildcards):
    return expand(
        "results/interventions/{name}/{model}/runs/{condition}/seed{seed}",
        name=wildcards.name,
        model=wildcards.model,
        condition=retrained_conditions(study(wildcards)),
        seed=wildcards.seed,
    )


def model_train_json(wildcards):
    return json.dumps(config["models"][wildcards.model]["train"], sort_keys=True)


def per_seed_tables(wildcards):
    model = study(wildcards)["model"]
    return expand(
        "results/interventions/{name}/{model}/seed{seed}.csv",
        name=wildcards.name,
        model=model,
        seed=SEEDS,
    )


NOTEBOOK_OF = {
    "filter_ablation": "filter_ablation",
    "layer_swap": "layer_swap",
    "ablate_then_train": "retrain",
    "architecture": "retrain",
    "factorize": "retrain",
    "occlusion": "occlusion",
    "top_activations": "top_activations",
}
ANALYSES = ["baselines", *INTERVENTIONS]


def analysis_notebook(wildcards):
    if wildcards.analysis == "baselines":
        name = "baselines"
    else:
        name = NOTEBOOK_OF[INTERVENTIONS[wildcards.analysis]["type"]]
    return os.path.join(workflow.basedir, "notebooks", f"{name}.ipynb")


def analysis_inputs(wildcards):
    if wildcards.analysis == "baselines":
        return ["results/tables/baselines.csv", *trained_models()]
    spec = INTERVENTIONS[wildcards.analysis]
    name = wildcards.analysis
    inputs = per_seed_tables(Namespace(name=name))
    if spec["type"] != "top_activations":
        inputs += [
            f"results/tables/{name}.csv",
            f"results/tables/{name}.comparisons.csv",
        ]
    dataset = config["models"][spec["model"]]["dataset"]
    return inputs + [
        f"results/data/{dataset}/test.pt",
        f"results/data/{dataset}/meta.json",
    ]


def analysis_parameters(wildcards):
    out_dir = f"results/figures/{wildcards.analysis}"
    if wildcards.analysis == "baselines":
        return json.dumps({"out_dir": out_dir})
    spec = INTERVENTIONS[wildcards.analysis]
    dataset = config["models"][spec["model"]]["dataset"]
    parameters = {
        "study": wildcards.analysis,
        "model": spec["model"],
        "out_dir": out_dir,
    }
    if spec["type"] in ("occlusion", "top_activations"):
        parameters |= {
            "data_meta": f"results/data/{dataset}/meta.json",
            "seed": int(SEEDS[0]),
        }
    if spec["type"] == "filter_ablation":
        parameters["data_dir"] = f"results/data/{dataset}"
    if NOTEBOOK_OF[spec["type"]] == "retrain":
        parameters["kind"] = spec["type"]
    return json.dumps(parameters, sort_keys=True)


def all_targets():
    # Top activations differ per seed (the filters' images): no table over seeds, the per-seed files.
    tables = [
        f"results/tables/{n}.csv"
        for n, s in INTERVENTIONS.items()
        if s["type"] != "top_activations"
    ]
    tables += [
        t
        for n, s in INTERVENTIONS.items()
        if s["type"] == "top_activations"
        for t in per_seed_tables(Namespace(name=n))
    ]
    notebooks = [f"results/notebooks/{a}.ipynb" for a in ANALYSES]
    return (
        trained_models()
        + ["results/tables/baselines.csv", "results/provenance.json"]
        + tables
        + notebooks
    )
