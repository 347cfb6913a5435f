# Shared set-up: the library on the path, the validated config, and the plan (knockout.plan)
# that every rule asks for its files and settings; this file keeps no list of study types.
import json
import os
import re
import shlex
import shutil
import sys

from snakemake.settings.types import DeploymentMethod

# Rules run `knockout <verb>`, a shell function for `python -m knockout`: the library is found
# in this workflow's src/ (no install), with the conda env's python under --use-conda, else the
# python running snakemake (e.g. .venv's). A workflow read from a repository (KNOCKOUT_DIR None,
# the Snakefile) has no src/ on disk: the knockout installed in that python runs its jobs.
SRC = os.path.join(KNOCKOUT_DIR, "src") if KNOCKOUT_DIR else None
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)
if SRC:
    sys.path.insert(0, SRC)
elif USE_CONDA:
    sys.exit(
        "knockout: --use-conda needs the workflow on disk (its src/ goes into the conda envs): "
        "give the module's snakefile as the path of a clone"
    )


PYTHONPATH = f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; " if SRC else ""
shell.prefix(f'{PYTHONPATH}knockout() {{{{ {PYTHON} -m knockout "$@"; }}}}; ')


def workflow_file(path):
    """A file of this workflow by its path in the workflow's folder (`notebooks/baselines.ipynb`):
    there, or Snakemake's cached copy when the workflow is read from a repository. Never a file
    of the working directory, which is the user's project."""
    if KNOCKOUT_DIR:
        return os.path.join(KNOCKOUT_DIR, path)
    return workflow.source_path(os.path.join("../..", path))  # from this file, workflow/rules/


import yaml
from knockout.catalog import VIEW_FILES
from knockout.config import SCHEMA, ConfigError, checked, validate
from knockout.plan import MODEL_FILES, PER_SEED, RUN_FILES

CAPTIONS = yaml.safe_load((SCHEMA.parent / "captions.yaml").read_text())  # each figure's, for the report

try:
    PLAN = checked(validate(config))  # the plan the config check built (or built before: knockout.config.checked)
except ConfigError as e:
    # One line, before any job runs.
    sys.exit(f"config error: {e}")


wildcard_constraints:
    dataset="|".join(PLAN.datasets),
    view="|".join(re.escape(v) for v in PLAN.views),
    model="|".join(PLAN.models),
    seed=r"\d+",
    condition=r"[A-Za-z0-9_-]+",


def as_json(value):
    """A value as one JSON argument (in `params`: a change reruns exactly that job; a job's
    settings give their own, `knockout.settings`)."""
    return json.dumps(value, sort_keys=True, default=str)


def names(job, sharded=None):
    """The studies of one job (split into shards or not: `sharded`), as a wildcard constraint."""
    return "|".join(PLAN.names(job, sharded)) or "^$"


def option_args(input, *names):
    """`--name=path` for the optional inputs a job was given."""
    given = [n for n in names if n in input.keys()]
    return shlex.join(f"--{n.replace('_', '-')}={input[n]}" for n in given)


def gpus_per_job():
    # Decided without importing torch: an explicit cuda device, or auto on a machine with a GPU.
    n = config["gpus_per_job"]
    if n != "auto":
        return n
    device = config["device"]
    return int(device.startswith("cuda") or (device == "auto" and shutil.which("nvidia-smi") is not None))


# --- Sharded studies (`shards: N` or `auto`, workflow/rules/interventions.smk) -------------------


def shard_count_args(w, input):
    """`--shards=N`, or `--plan=<plan.json>` for shards: auto."""
    return f"--plan={input.plan}" if "plan" in input.keys() else f"--shards={PLAN.studies[w.name].shards}"


def shard_inputs(w):
    """A shard's inputs: its study's, and for shards: auto the plan that says how many."""
    inputs = PLAN.study_inputs(w.name, w.seed)
    if PLAN.studies[w.name].shards == "auto":
        inputs["plan"] = PLAN.shard_plan(w.name, w.seed)
    return inputs


def shard_outputs(w):
    """The shards' files of one study x seed: `shards: N` of them, or as many as its plan says."""
    if PLAN.studies[w.name].shards != "auto":
        return PLAN.shard_files(w.name, w.seed)
    plan = checkpoints.shard_plan.get(name=w.name, model=w.model, seed=w.seed).output[0]
    with open(plan) as f:
        return PLAN.shard_files(w.name, w.seed, json.load(f)["shards"])
