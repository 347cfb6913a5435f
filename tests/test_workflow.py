"""End to end through the real `snakemake`, in temporary folders: the tiny study with every study
type (evaluated, retrained, probed) and every notebook, at full size (second tier); a seed dropped
from the config leaves no trace in the tables, notebooks and figures; editing one study reruns
nothing else; the documentation's example type runs from its module and schema entry alone; every
config of configs/ plans its whole study; a bad config stops before any job."""

import json
import re
import shutil
import time

import pandas as pd
import pytest
import yaml
from conftest import (
    BASE,
    ROOT,
    needs_fashion,
    one_line,
    planned_jobs,
    printed,
    snakemake,
    write_config,
)

from specs import check_tables, studies

from knockout.config import ConfigError, check, validate

TINY = BASE | {  # the canonical models (the session's, copied in), every study type
    "interventions": {
        "swap": {"type": "layer_swap", "model": "mlp", "modes": ["reinit", "transplant", "rewind"]},
        "filters": {
            "type": "filter_ablation",
            "model": "cnn",
            "layers": ["conv3"],
            "sets": {
                "low": {"select": "lowest_response", "k": 4},
                "rand": {"select": "random", "k": 4, "repeats": 2, "exclude": "low"},
                "each": {"select": "each"},
            },
            "compare": [["low", "rand"]],
        },
        "retrain": {
            "type": "ablate_then_train",
            "model": "cnn",
            "layers": ["conv1"],
            "sets": {"low": {"select": "lowest_response", "k": 4}},
            "train": {"epochs": 1},
            "compare": [["low", "baseline"]],
        },
        "variants": {
            "type": "architecture",
            "model": "cnn",
            "variants": {"one_dense_fewer": {"dense": []}},
            "train": {"epochs": 1},
        },
        "factorized": {"type": "factorize", "model": "cnn", "train": {"epochs": 1}},
        "occlusion": {"type": "occlusion", "model": "cnn", "images": {"n": 2}, "windows": [3, 7]},
        "top": {"type": "top_activations", "model": "cnn", "layers": {"conv1": 3, "conv3": [0, 5]}, "k": 3},
    },
}
ANALYSES = ["baselines", *TINY["interventions"]]


@pytest.fixture(scope="module")
def tiny(trained, tmp_path_factory):
    """The tiny study on the session's trained models, run once for the tests below (they run in
    file order and build on it): every study type, table, notebook and figure."""
    workdir = tmp_path_factory.mktemp("tiny")
    shutil.copytree(trained / "results", workdir / "results")
    write_config(workdir, TINY)
    run = snakemake(workdir)
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


@needs_fashion
@pytest.mark.slow
def test_tiny_study_runs_every_study_type_end_to_end(tiny):
    meta = json.loads((tiny / "results/data/fashion_mnist/meta.json").read_text())
    assert meta["n_train"] == 600 and meta["n_test"] == 200 and meta["num_classes"] == 10
    for model in ["mlp", "cnn"]:
        for seed in [0, 1]:
            folder = tiny / f"results/models/{model}/seed{seed}"
            assert {p.name for p in folder.iterdir()} == {
                "init.pt",
                "final.pt",
                "history.csv",
                "metrics.json",
                "epochs",
            }
            assert json.loads((folder / "metrics.json").read_text())["test_accuracy"] > 0.3  # well above chance
    assert sorted(p.name for p in (tiny / "results/models/mlp/seed0/epochs").glob("*.pt")) == ["epoch1.pt", "epoch2.pt"]
    assert not any((tiny / "results/models/cnn/seed0/epochs").glob("*.pt"))  # no checkpoints asked for

    per_seed = pd.read_csv(tiny / "results/interventions/filters/cnn/seed1.csv")
    assert {"intervention", "model", "seed", "condition", "accuracy", "loss", "baseline_accuracy", "delta"} <= set(
        per_seed.columns
    )
    assert len(per_seed) == 1 + 1 + 2 + 64  # baseline, low, 2 random draws, every conv3 filter
    for suffix in ["per_class.csv", "confusion.csv", "examples.parquet"]:  # with their id columns
        table = (
            pd.read_parquet(tiny / f"results/interventions/filters/cnn/seed0.{suffix}")
            if suffix.endswith("parquet")
            else pd.read_csv(tiny / f"results/interventions/filters/cnn/seed0.{suffix}")
        )
        assert list(table.columns[:3]) == ["intervention", "model", "seed"] and set(table["seed"]) <= {0}
    table = pd.read_csv(tiny / "results/tables/filters.csv")
    assert {"mean", "std", "ci_low", "ci_high", "n_seeds"} <= set(table.columns) and (table["n_seeds"] == 2).all()
    comparison = pd.read_csv(tiny / "results/tables/filters.comparisons.csv")
    assert list(comparison[["a", "b"]].iloc[0]) == ["low", "rand"] and "p = " in comparison.verdict[0]
    swap = pd.read_csv(tiny / "results/tables/swap.csv").set_index(["level", "condition"])
    assert swap.loc[("condition", "rewind:fc1:epoch2"), "mean"] == swap.loc[("condition", "baseline"), "mean"]

    # retraining: one folder per condition and seed, collected into the same tables
    runs = tiny / "results/interventions/retrain/cnn/runs"
    assert sorted(p.name for p in runs.iterdir()) == ["baseline", "low"]
    factorized = pd.read_csv(tiny / "results/tables/factorized.csv").query("level == 'set'").set_index("set")
    assert factorized.loc["factorized", "parameters"] == 81_098 and factorized.loc["baseline", "parameters"] == 93_322
    record = json.loads(
        (tiny / "results/interventions/factorized/cnn/runs/factorized/seed0/condition.json").read_text()
    )
    assert [row["layer"] for row in record["details"] if row["replace"]] == ["conv3"]
    variants = pd.read_csv(tiny / "results/tables/variants.csv")
    assert set(variants["set"]) == {"baseline", "one_dense_fewer"}

    # probes: a table and named arrays per seed, with their ids
    import numpy as np

    maps = np.load(tiny / "results/interventions/occlusion/cnn/seed1.npz")
    assert (
        maps["prob_centred"].shape == (2, 2, 28, 28)
        and int(maps["seed"]) == 1
        and str(maps["intervention"]) == "occlusion"
    )
    patches = np.load(tiny / "results/interventions/top/cnn/seed0.npz")
    assert patches["patches_conv1"].shape[:2] == (3, 3) and list(patches["filters_conv3"]) == [0, 5]
    assert not (tiny / "results/tables/top.csv").exists()  # filters differ per seed: no table over seeds

    assert (tiny / "results/units/cnn/seed0.csv").exists() and (tiny / "results/provenance.json").exists()
    for analysis in ANALYSES:
        assert (tiny / f"results/notebooks/{analysis}.ipynb").exists()
        figures = list((tiny / f"results/figures/{analysis}").glob("*.png"))
        assert figures and all(f.with_suffix(".pdf").exists() for f in figures), analysis
    report = snakemake(tiny, "--report", "report.zip")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tiny / "report.zip").stat().st_size > 10_000

    began = time.perf_counter()
    again = snakemake(tiny, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    print(f"no-op dry run: {time.perf_counter() - began:.1f} s")


@needs_fashion
@pytest.mark.slow
def test_editing_one_study_reruns_that_study_alone(tiny):
    config = json.loads(json.dumps(TINY))
    config["interventions"]["filters"]["sets"]["low"]["k"] = 3
    write_config(tiny, config)
    try:
        dry = snakemake(tiny, "-n")
        assert dry.returncode == 0, dry.stderr[-2000:]
        jobs = planned_jobs(dry.stdout)
        assert jobs, dry.stdout[-2000:]
        # provenance.json records the whole config, so it is rewritten too; nothing else is.
        others = [(rule, out) for rule, out in jobs if "filters" not in out and rule != "provenance"]
        assert not others, others
        assert {rule for rule, _ in jobs} == {"intervene", "aggregate", "notebook", "provenance"}
        assert sum(rule == "intervene" for rule, _ in jobs) == 2  # one per seed
    finally:
        write_config(tiny, TINY)


@needs_fashion
@pytest.mark.slow
def test_a_dropped_seed_leaves_the_tables_notebooks_and_figures(tiny):
    config = json.loads(json.dumps(TINY)) | {"seeds": [0]}
    write_config(tiny, config)
    changed = time.time()
    time.sleep(1)
    run = snakemake(tiny)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tiny / "results/interventions/filters/cnn/seed1.csv").exists()  # still there, but read by no one
    for name in [n for n, s in TINY["interventions"].items() if s["type"] != "top_activations"]:
        table = pd.read_csv(tiny / f"results/tables/{name}.csv")
        assert (table["n_seeds"] == 1).all(), name
    assert set(pd.read_csv(tiny / "results/tables/baselines.per_seed.csv")["seed"]) == {0}
    assert (pd.read_csv(tiny / "results/tables/baselines.csv")["n_seeds"] == 1).all()
    for analysis in ANALYSES:
        seeds = re.findall(r"seeds: \[([\d, ]*)\]", printed(tiny / f"results/notebooks/{analysis}.ipynb"))
        assert seeds and set(seeds) == {"0"}, (analysis, seeds)
        for figure in (tiny / f"results/figures/{analysis}").glob("*.png"):
            assert figure.stat().st_mtime > changed, figure  # redrawn from the one seed left


@needs_fashion
@pytest.mark.slow  # a checkout of its own, its study run through snakemake
def test_the_readme_example_type_runs_from_its_module_and_schema_entry(tmp_path, with_models):
    """A checkout with the `shuffle_bias` module and schema entry of the documentation's worked
    example (docs/development/adding-a-study-type.md) added, nothing else: the study runs on the
    session's trained CNN (one seed), is aggregated and drawn."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for part in ["Snakefile", "workflow", "src", "notebooks", "envs", "profiles"]:
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, checkout / part)
    readme = (ROOT / "docs/development/adding-a-study-type.md").read_text()
    module = re.search(r"```python\n# src/knockout/studies/shuffle_bias.py\n(.*?)```", readme, re.S).group(1)
    entry = re.search(r"```yaml\n# src/knockout/schema.yaml, under \$defs:\n(.*?)```", readme, re.S).group(1)
    (checkout / "src/knockout/studies/shuffle_bias.py").write_text(module)
    schema = checkout / "src/knockout/schema.yaml"
    schema.write_text(schema.read_text() + entry)

    workdir = with_models({"shuffled": {"type": "shuffle_bias", "model": "cnn", "layers": ["conv2", "fc1"]}}, seeds=[0])
    run = snakemake(workdir, "results/notebooks/shuffled.ipynb", snakefile=checkout / "Snakefile")
    assert run.returncode == 0, run.stderr[-4000:]
    assert "rule train" not in run.stdout  # the session's models: only the study ran
    table = pd.read_csv(workdir / "results/tables/shuffled.csv").query("level == 'condition'").set_index("condition")
    assert set(table.index) == {"baseline", "shuffle_bias:conv2", "shuffle_bias:fc1"} and (table["n_seeds"] == 1).all()
    assert table.loc["shuffle_bias:conv2", "loss_mean"] != table.loc["baseline", "loss_mean"]  # the biases moved
    assert (workdir / "results/figures/shuffled/sets.png").stat().st_size > 0


@needs_fashion
@pytest.mark.slow
def test_the_own_model_example_runs_end_to_end(tmp_path):
    """examples/own_model: the user's network from a file, a filter sweep and layer swaps, on
    less data and fewer epochs than the example asks for (its files otherwise as they are), and
    factorize and architecture on it."""
    config = yaml.safe_load((ROOT / "examples/own_model/config.yaml").read_text())
    config |= {"seeds": [0], "device": "cpu", "threads": 1, "data": TINY["data"], "datasets": TINY["datasets"]}
    config["models"]["mynet"]["train"] |= {"epochs": 2, "batch_size": 32}  # enough steps on 600 images to learn
    config["interventions"] |= {f"mynet_{name}": study for name, study in studies("mynet").items()}
    write_config(tmp_path, config)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the target path is relative to the working folder
    run = snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    sweep = pd.read_csv(tmp_path / "results/tables/mynet_sweep.csv").query("level == 'condition'")
    assert len(sweep) == 1 + 16 + 1 + 3 and (sweep["n_seeds"] == 1).all()  # baseline, each unit, low, 3 random draws
    layers = pd.read_csv(tmp_path / "results/tables/mynet_layers.csv").query("level == 'condition'")
    assert {"reinit:block2.side", "rerandomize:head"} <= set(layers["condition"])
    for analysis in ["baselines", "mynet_sweep", "mynet_layers"]:
        assert any((tmp_path / f"results/figures/{analysis}").glob("*.png")), analysis
    check_tables(tmp_path, "mynet", prefix="mynet_")


CONFIGS = [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "examples/own_model/config.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_in_configs_is_checked_and_planned(monkeypatch, path):
    """Each paper-scale config (no data needed to check and plan): every model built and checked,
    every study checked against it; its plan trains every model and draws every study."""
    monkeypatch.chdir(ROOT)  # paths in a config are relative to the working folder
    config = yaml.safe_load(path.read_text())
    plan = check(validate(config))
    assert plan.analyses == ["baselines", *config.get("interventions", {})]
    assert set(plan.trained_models()) == set(config["models"])


@pytest.mark.slow
def test_a_config_given_replaces_the_default_study(tmp_path):
    """A dry run of a paper-scale config (no data needed to plan): its studies' jobs, the
    notebooks, and nothing of the default study (--configfile replaces config.yaml)."""
    path = ROOT / "configs/study2_mlp.yaml"
    run = snakemake(ROOT, "-n", "--configfile", str(path), "--directory", str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    config = yaml.safe_load(path.read_text())
    analyses = {out.split("/")[-1][: -len(".ipynb")] for rule, out in planned_jobs(run.stdout) if rule == "notebook"}
    assert analyses == {"baselines", *config.get("interventions", {})}
    trained = {out.split("/")[2] for rule, out in planned_jobs(run.stdout) if rule == "train"}
    assert trained == set(config["models"])


BAD = {k: TINY[k] for k in ("seeds", "device", "threads", "data", "datasets", "models")} | {"interventions": {}}
BAD_CONFIGS = [
    (
        lambda c: c["models"]["mlp"].update(dataset="fashion"),
        "models.mlp.dataset: 'fashion' is not a key of datasets",
    ),
    (lambda c: c["datasets"].update(imagenet={}), "datasets.imagenet: not a built-in dataset"),
    (lambda c: c["models"]["cnn"].update(arch="study9_cnn"), "models.cnn.arch: unknown preset 'study9_cnn'"),
    (
        lambda c: c["models"]["cnn"].update(optimiser="adam"),
        "models.cnn: Additional properties are not allowed ('optimiser'",
    ),
    (
        lambda c: c["models"]["cnn"]["train"].update(optimizer="rmsprop"),
        "models.cnn.train.optimizer: 'rmsprop' is not one of",
    ),
    (lambda c: c.update(seeds=[1, 1]), "seeds: [1, 1] has non-unique elements"),
    (
        lambda c: c["interventions"].update(
            t={"type": "top_activations", "model": "cnn", "layers": {"conv1": 2}, "k": 201}
        ),
        "interventions.t.k: 201 top images per filter, but the test set of model 'cnn' has 200",
    ),
]


@pytest.mark.parametrize("change,message", BAD_CONFIGS)
def test_a_bad_config_is_one_line_naming_the_key(change, message):
    config = json.loads(json.dumps(BAD))
    change(config)
    with pytest.raises(ConfigError) as err:
        check(validate(config))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_config_stops_snakemake_with_that_line_before_any_job(tmp_path):
    config = json.loads(json.dumps(BAD))
    BAD_CONFIGS[-1][0](config)
    write_config(tmp_path, config)
    run = snakemake(tmp_path, "-n")
    assert run.returncode != 0
    assert one_line(run) == f"config error: {BAD_CONFIGS[-1][1]}"
    assert not (tmp_path / "results").exists()
