"""profiles/slurm and profiles/default, without a cluster (.ci/slurm-test.sh runs a real one).

Snakemake ignores set-resources and groups for rule names it does not know, and a key of the
workflow profile (profiles/default, read on every run) silently replaces the same key of
profiles/slurm: both mistakes would go unnoticed until a cluster run, so they are checked here.
"""

import re
import subprocess
from pathlib import Path

import yaml
from conftest import ROOT, SNAKEMAKE

SLURM = ROOT / "profiles/slurm/config.yaml"
DEFAULT = ROOT / "profiles/default/config.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def workflow_rules() -> set[str]:
    run = subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--list-rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return set(run.stdout.split())


def gpu_rules() -> set[str]:
    """Rules that declare a `gpu` resource in workflow/rules/*.smk (training and interventions)."""
    names = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            if re.search(r"^\s+gpu=", block, flags=re.M):
                names.add(name)
    return names


def test_profile_names_only_rules_of_the_workflow():
    profile = load(SLURM)
    rules = workflow_rules()
    named = set(profile["set-resources"]) | set(profile["groups"])
    assert named <= rules, f"not rules of the workflow: {sorted(named - rules)}"
    # every rule (but the target rule `all`) gets its runtime and memory on purpose
    missing = rules - {"all"} - set(profile["set-resources"])
    assert not missing, f"rules without set-resources in profiles/slurm: {sorted(missing)}"
    for rule, resources in profile["set-resources"].items():
        assert {"runtime", "mem_mb"} <= set(resources), rule
    assert set(profile["groups"].values()) == set(profile["group-components"])


def test_training_and_intervention_rules_ask_for_one_gpu():
    resources = load(SLURM)["set-resources"]
    assert {"train", "intervene"} <= gpu_rules()
    for rule in gpu_rules():
        assert resources[rule]["gpu"] == 1, rule
        assert "cpus_per_gpu" in resources[rule], rule
    # grouped jobs run one after another in their sbatch job: one GPU per group job, not a sum
    profile = load(SLURM)
    assert profile["resources"] == {"gpu": 1} and profile["set-resource-scopes"] == {"gpu": "local"}


def test_default_profile_is_portable_and_does_not_shadow_the_slurm_profile():
    default, slurm = load(DEFAULT), load(SLURM)
    assert not set(default) & set(slurm), "profiles/default would override these keys of profiles/slurm"
    machine = {
        "executor",
        "jobs",
        "cores",
        "resources",
        "default-resources",
        "set-resources",
        "set-threads",
        "groups",
        "group-components",
        "latency-wait",
        "retries",
    }
    assert not set(default) & machine
    assert not any(key.startswith("slurm-") for key in default)


def test_every_key_is_commented():
    for path in [SLURM, DEFAULT]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"^\s*[\w-]+:", line):
                assert "#" in line, f"{path.relative_to(ROOT)}:{number}: no comment: {line.strip()}"


def test_dry_run_with_the_slurm_profile(tmp_path):
    # the profile parses, its resource expressions (cpus_per_gpu: threads) evaluate, groups form;
    # in an empty folder, so that every job of the default study is planned
    run = subprocess.run(
        [
            str(SNAKEMAKE),
            "-s",
            str(ROOT / "Snakefile"),
            "--configfile",
            str(ROOT / "config.yaml"),
            "--profile",
            str(ROOT / "profiles/slurm"),
            "-n",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cpus_per_gpu=" in run.stdout and "slurm_partition=CHANGE_ME" in run.stdout


def job_counts(stdout: str) -> dict[str, int]:
    """A dry run's "Job stats" table: rule -> number of jobs."""
    table = stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m[1] != "total"}


def test_the_cluster_tests_study_is_sharded_under_slurm_and_not_locally(tmp_path):
    # .ci/slurm-test.sh runs tests/slurm/config.yaml through SLURM as is and locally without its
    # `shards` keys, and compares the sharded study's tables: here, that its config still plans so
    config = load(ROOT / "tests/slurm/config.yaml")
    sharded = {name: study["shards"] for name, study in config["interventions"].items() if study.get("shards", 1) != 1}
    assert sharded and all(isinstance(n, int) and n > 1 for n in sharded.values()), sharded
    local = {
        **config,
        "interventions": {n: {k: v for k, v in s.items() if k != "shards"} for n, s in config["interventions"].items()},
    }
    counts = {}
    for run_name, run_config, profile in [
        ("slurm", config, ["--profile", str(ROOT / "profiles/slurm")]),
        ("local", local, []),
    ]:
        folder = tmp_path / run_name
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        run = subprocess.run(
            [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--omit-from", "notebook", "-n", *profile],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        counts[run_name] = job_counts(run.stdout)
    seeds = len(config["seeds"])
    assert counts["slurm"]["intervene_shard"] == sum(sharded.values()) * seeds
    assert counts["slurm"]["gather"] == len(sharded) * seeds
    assert "intervene_shard" not in counts["local"] and "gather" not in counts["local"]
    assert counts["local"]["intervene"] == counts["slurm"]["intervene"] + len(sharded) * seeds
