"""Sharded studies (`shards: N` or `auto`): each shard computes exactly what the unsharded run
computes for its part (bit for bit: the same chunks and stacks), the gather writes the same files,
`snakemake -n` plans one job per shard, `auto` follows its rule, and bad values are one line."""

import copy
import shutil

import numpy as np
import pytest
import torch
from conftest import BASE, needs_fashion, snakemake, write_config
from torch import nn

from knockout.config import check, validate
from knockout.engine.evaluate import evaluate_conditions
from knockout.engine.occlusion import merge_shards, occlusion_maps
from knockout.errors import ConfigError
from knockout.graph import graph_of
from knockout.shards import condition_macs, decode_condition, encode_condition, shard_count, shard_range
from knockout.engine import Condition, Context, apply_condition

# The session's CNN, one seed: a filter_ablation study with an `each` sweep, a multi-layer set and
# random draws, and an occlusion probe; SHARDED splits both.
UNSHARDED = BASE | {
    "seeds": [0],
    "budget_mb": 1,  # several chunks and stacks, so shard boundaries fall inside stacks
    "interventions": {
        "filters": {
            "type": "filter_ablation",
            "model": "cnn",
            "layers": ["conv3"],
            "sets": {
                "low": {"select": "lowest_response", "k": 4},
                "both": {"select": "random", "k": 3, "repeats": 3, "layers": ["conv1", "conv3"]},
                "each": {"select": "each"},
            },
        },
        "occlusion": {"type": "occlusion", "model": "cnn", "images": {"n": 3}, "windows": [3, 7], "stride": 2},
    },
}
SHARDED = copy.deepcopy(UNSHARDED)
SHARDED["interventions"]["filters"]["shards"] = 3
SHARDED["interventions"]["occlusion"]["shards"] = 2
PER_SEED = {
    "filters": ["seed0.csv", "seed0.per_class.csv", "seed0.confusion.csv", "seed0.examples.parquet"],
    "occlusion": ["seed0.csv", "seed0.npz"],
}


def test_shards_are_contiguous_blocks_covering_every_item_once():
    for total in [0, 1, 7, 68, 100]:
        for shards in [1, 2, 3, 8]:
            blocks = [shard_range(total, i, shards) for i in range(shards)]
            assert [i for b in blocks for i in b] == list(range(total))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_auto_picks_shards_of_about_shard_seconds_within_its_caps():
    assert shard_count(seconds=3000, shard_seconds=600, max_shards=64, items=1000) == 5  # ceil(3000 / 600)
    assert shard_count(seconds=3001, shard_seconds=600, max_shards=64, items=1000) == 6
    assert shard_count(seconds=10, shard_seconds=600, max_shards=64, items=1000) == 1  # a cheap study: one job
    assert shard_count(seconds=1e6, shard_seconds=600, max_shards=64, items=1000) == 64  # capped by max_shards
    assert shard_count(seconds=1e6, shard_seconds=600, max_shards=64, items=9) == 9  # never an empty shard
    assert shard_count(seconds=0, shard_seconds=600, max_shards=64, items=0) == 1


def test_the_cost_auto_divides_counts_each_conditions_multiply_adds():
    """An MLP 20-16-12-5: one layer's unit silenced costs what unit_bound says it cannot avoid
    (a share of the next linear layer plus all after it); several layers cost everything from
    the first one on; the baseline nothing beyond the intact forward."""
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    graph = graph_of(net, torch.zeros(1, 20))
    assert graph.forward_macs == 20 * 16 + 16 * 12 + 12 * 5
    assert condition_macs(graph, Condition("baseline", "baseline")) == 0
    both = Condition("both", "both", silence=(("0", (1,)), ("2", (3,))))
    assert condition_macs(graph, both) == 20 * 16 + 16 * 12 + 12 * 5
    later = Condition("later", "later", silence=(("2", (0,)), ("4", (1,))))
    assert condition_macs(graph, later) == 16 * 12 + 12 * 5
    one = Condition("one", "one", silence=(("2", (0, 1)),))
    assert condition_macs(graph, one) == 12 * 5 // 12  # one input channel's share of the last layer


def test_conditions_round_trip_through_their_json_every_field():
    condition = Condition(
        "each:conv3:7",
        "each",
        silence=(("conv1", (1, 2)), ("conv3", (7,))),
        replace=(("fc1", "init"),),
        info=(("layer", "conv3"), ("unit", 7), ("fraction", 0.25)),
    )
    assert decode_condition(encode_condition(condition), Condition) == condition


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def test_each_shard_evaluates_its_conditions_bit_identically_to_the_whole_run():
    net = _conv_net()
    x, y = torch.randn(24, 1, 12, 12), torch.randint(0, 10, (24,))
    conditions = [Condition("baseline", "baseline")]
    conditions += [Condition(f"each:0:{u}", "each", silence=(("0", (u,)),)) for u in range(6)]
    conditions += [Condition(f"each:3:{u}", "each", silence=(("3", (u,)),)) for u in range(8)]
    conditions += [Condition(f"both{d}", "both", silence=(("0", (d,)), ("3", (d, d + 1)))) for d in range(4)]
    context = Context(trained=net)
    # 0.3 MB: chunks of 4 examples, stacks of 1 to 8 conditions, which the shards' blocks cut through
    whole = evaluate_conditions(conditions, context, x, y, budget_mb=0.3, device="cpu", apply=apply_condition)
    for shards in [3]:
        seen = {}
        for i in range(shards):
            mine = {conditions[j].name for j in shard_range(len(conditions), i, shards)}
            part = evaluate_conditions(
                conditions, context, x, y, budget_mb=0.3, device="cpu", apply=apply_condition, only=mine
            )
            assert set(part) == mine
            seen |= part
        assert seen.keys() == whole.keys()
        for name, out in whole.items():
            assert torch.equal(seen[name].predictions, out.predictions), name
            assert torch.equal(seen[name].losses, out.losses), name  # bit for bit, not close


def test_occlusion_shards_merge_into_the_whole_runs_arrays_bit_identically():
    net = _conv_net()
    x, y = torch.randn(3, 1, 9, 9), torch.tensor([1, 4, 7])
    kwargs = dict(windows=(3, 5), stride=2, fill=0.3, budget_mb=0.1, device="cpu")  # several forwards per image
    whole = occlusion_maps(net, x, y, **kwargs)
    for shards in [3]:
        parts = [occlusion_maps(net, x, y, shard=(i, shards), **kwargs) for i in range(shards)]
        merged = merge_shards(parts, whole["inputs"])
        assert list(merged) == list(whole)
        for key in whole:
            assert merged[key].dtype == whole[key].dtype and np.array_equal(merged[key], whole[key]), key


@needs_fashion
@pytest.mark.parametrize(
    "study, shards, message",
    [
        ("filters", 0, "interventions.filters.shards: 0 is not an integer >= 1 nor auto"),
        ("filters", "many", "interventions.filters.shards: 'many' is not an integer >= 1 nor auto"),
        ("top", 2, "interventions.top.shards: top_activations keeps the top k over all the images in one job"),
        ("retrain", 2, "interventions.retrain.shards: a retraining study runs one job per condition already"),
    ],
)
def test_bad_shards_are_one_line_config_errors(study, shards, message):
    config = copy.deepcopy(UNSHARDED)
    config["interventions"]["top"] = {"type": "top_activations", "model": "cnn", "layers": {"conv1": 2}}
    config["interventions"]["retrain"] = {
        "type": "ablate_then_train",
        "model": "cnn",
        "layers": ["conv1"],
        "sets": {"low": {"select": "lowest_response", "k": 2}},
    }
    config["interventions"][study]["shards"] = shards
    with pytest.raises(ConfigError) as error:
        check(validate(config), raw_root=None)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@needs_fashion
def test_a_dry_run_plans_one_job_per_shard_and_the_default_none(tmp_path):
    config = copy.deepcopy(SHARDED)
    config["interventions"]["whole"] = UNSHARDED["interventions"]["filters"]  # the default: one job, as ever
    write_config(tmp_path, config)
    run = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert run.returncode == 0, run.stderr[-3000:]
    counts = dict(
        line.split()[:2] for line in run.stdout.splitlines() if line.split()[1:2] and line.split()[1].isdigit()
    )
    assert counts["intervene_shard"] == "3" and counts["probe_shard"] == "2"
    assert counts["gather"] == "1" and counts["gather_probe"] == "1"
    assert counts["intervene"] == "1" and "probe" not in counts


@needs_fashion
@pytest.mark.slow
def test_sharded_studies_write_the_unsharded_runs_files_byte_for_byte(with_models, tmp_path_factory):
    targets = [f"results/interventions/{name}/cnn/{files[0]}" for name, files in PER_SEED.items()]
    whole = with_models(UNSHARDED["interventions"], seeds=[0], budget_mb=1)
    # the same trained network and data (copied with their times), then the studies in shards
    sharded = tmp_path_factory.mktemp("sharded")
    shutil.copytree(whole / "results", sharded / "results")
    run = snakemake(whole, *targets)
    assert run.returncode == 0, run.stderr[-4000:]
    write_config(sharded, SHARDED)
    shutil.copytree(whole / "results/units", sharded / "results/units")
    run = snakemake(sharded, *targets)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "intervene_shard" in run.stderr and "gather_probe" in run.stderr
    for name, files in PER_SEED.items():
        shards = sorted(p.name for p in (sharded / f"results/interventions/{name}/cnn/shards/seed0").iterdir())
        assert len(shards) == SHARDED["interventions"][name]["shards"]
        for f in files:
            a = (whole / f"results/interventions/{name}/cnn/{f}").read_bytes()
            assert a == (sharded / f"results/interventions/{name}/cnn/{f}").read_bytes(), f"{name}/{f}"
