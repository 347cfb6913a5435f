"""Ablation values in the workflow: a set's `value` (zero, mean, resample, noise, or a list) names
its conditions `{set}@{label}`, the config check refuses what cannot be computed honestly, an
ablate-then-train set under mean starts at the units' means, and snakemake runs every value to
its tables and figure on the default study's CNN (and, in test_factorize.py, on a torchvision
ResNet trained here)."""

import json

import pandas as pd
import pytest
import torch
from conftest import BASE, needs_fashion, printed, snakemake
from specs import study_spec
from torch import nn

from knockout.config import check, validate
from knockout.data import as_split
from knockout.errors import ConfigError
from knockout.models import build_model
from knockout.engine import Context, Value, silence_point
from knockout.studies import Target, ablate_then_train, filter_ablation
from knockout.units import unit_values

BN_CNN = {"type": "cnn", "conv": [{"channels": 8, "pool": 2}, {"channels": 6}], "batch_norm": True, "dense": [12]}
PLAIN_CNN = {"type": "cnn", "conv": [{"channels": 8, "pool": 2}, {"channels": 6}], "dense": [12]}


def trained(arch, shape=(1, 12, 12), seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, shape, 10)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial norms: a scale or shift left alone would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model.eval()


def test_values_name_their_sets_and_conditions():
    context = Context(trained=trained(BN_CNN), seed=3)
    sets = {
        "low": {
            "select": "units",
            "units": {"conv2": [1, 4]},
            "value": ["zero", "mean", {"kind": "mean", "per": "position"}],
        },
        "rand": {"select": "random", "k": 2, "repeats": 2, "value": {"kind": "resample", "repeats": 2}},
        "each": {"select": "each", "value": "noise"},
    }
    spec = study_spec("filter_ablation", layers=["conv2"], sets=sets, compare=[["low@mean", "low"]])
    conditions = filter_ablation.conditions(spec, context)
    by_name = {c.name: c for c in conditions}
    assert [c.name for c in conditions[:4]] == ["baseline", "low", "low@mean", "low@mean-position"]
    assert by_name["low"].value == Value() and by_name["low@mean"].value == Value("mean")
    assert by_name["low@mean-position"].value == Value("mean", "position")
    assert dict(by_name["low@mean"].info)["value"] == "mean" and dict(by_name["baseline"].info)["value"] == "zero"
    assert by_name["low@mean"].silence == by_name["low"].silence == (("conv2", (1, 4)),)
    resampled = [c for c in conditions if c.set == "rand@resample"]
    assert sorted(c.name for c in resampled) == sorted(f"rand@resample:draw{d}:v{v}" for d in (0, 1) for v in (0, 1))
    assert {(dict(c.info)["draw"], dict(c.info)["value_draw"], c.value.draw) for c in resampled} == {
        (d, v, v) for d in (0, 1) for v in (0, 1)
    }
    # The same units under every draw of the value: only what they output differs.
    assert by_name["rand@resample:draw1:v0"].silence == by_name["rand@resample:draw1:v1"].silence
    assert [c.name for c in conditions if c.set == "each@noise"] == [f"each@noise:conv2:{u}" for u in range(6)]
    assert filter_ablation.needs(spec) == {"unit_values", "donors"}
    target = Target("m", context.trained, {}, None)
    filter_ablation.check(spec, target)  # compare names the @value set
    zero_only = study_spec(
        "filter_ablation", layers=["conv2"], sets={"low": {"select": "units", "units": {"conv2": [1]}}}
    )
    assert filter_ablation.needs(zero_only) == set()
    assert [c.name for c in filter_ablation.conditions(zero_only, context)] == ["baseline", "low"]


@pytest.mark.parametrize(
    "sets,compare,message",
    [
        (
            {"low": {"select": "units", "units": {"conv2": [1]}, "value": "mean"}},
            [["low@resample", "low"]],
            "compare[0]: no set 'low@resample'",
        ),
        (
            {"low": {"select": "units", "units": {"conv2": [1]}, "value": {"kind": "mean", "repeats": 2}}},
            [],
            "sets.low.value: mean is one value",
        ),
        (
            {"low": {"select": "units", "units": {"conv2": [1]}, "value": {"kind": "resample", "per": "position"}}},
            [],
            "sets.low.value: per: position is for mean and noise",
        ),
    ],
)
def test_bad_values_are_one_line_errors(sets, compare, message):
    spec = study_spec("filter_ablation", layers=["conv2"], sets=sets, compare=compare)
    with pytest.raises(ConfigError) as e:
        filter_ablation.check(spec, Target("m", trained(BN_CNN), {}, None))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_value_on_attention_heads_is_refused():
    vit = build_model(
        {
            "type": "module",
            "target": "torchvision.models.vision_transformer:VisionTransformer",
            "kwargs": {
                "image_size": 16,
                "patch_size": 4,
                "num_layers": 1,
                "num_heads": 2,
                "hidden_dim": 8,
                "mlp_dim": 16,
            },
        },
        (3, 16, 16),
        10,
    )
    layer = "encoder.layers.encoder_layer_0.self_attention"
    sets = {"heads": {"select": "each", "value": ["zero", "mean"]}}
    with pytest.raises(ConfigError, match=r"^sets.heads.value: .*attention layer"):
        filter_ablation.check(study_spec("filter_ablation", layers=[layer], sets=sets), Target("v", vit, {}, None))


@pytest.mark.parametrize("arch,layer", [(BN_CNN, "conv1"), (BN_CNN, "fc1"), (PLAIN_CNN, "conv2"), (PLAIN_CNN, "fc1")])
def test_ablate_then_train_under_mean_starts_the_units_at_their_mean(arch, layer):
    model = trained(arch)
    reference = torch.randn(64, 1, 12, 12)
    values = unit_values(model, as_split(reference, torch.arange(64) % 10))
    context = Context(trained=model, unit_values=values, seed=0)
    spec = study_spec(
        "ablate_then_train",
        layers=[layer],
        sets={"two": {"select": "units", "units": {layer: [0, 3]}, "value": ["zero", "mean"]}},
    )
    ablate_then_train.check(spec, Target("m", model, {}, None))
    assert ablate_then_train.condition_names(spec) == ["baseline", "two", "two@mean"]
    conditions = {c.name: c for c in ablate_then_train.conditions(spec, context)}
    assert conditions["two@mean"].value == Value("mean")
    adapted = ablate_then_train.apply(conditions["two@mean"], context)
    point = silence_point(model, layer)
    seen = []
    adapted.get_submodule(point).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x = torch.randn(20, 1, 12, 12) * 3  # other inputs than the reference's
    for mode in ("eval", "train"):  # a batch norm on its running or its batch statistics
        getattr(adapted, mode)()
        seen.clear()
        adapted(x)
        out = seen[0].movedim(1, -1) if seen[0].dim() > 2 else seen[0]
        mean = values[layer]["mean_channel"].to(out.dtype)
        for unit in (0, 3):
            assert torch.equal(out[..., unit], torch.full_like(out[..., unit], mean[unit].item())), (mode, unit)
        assert not torch.equal(out[..., 1], torch.full_like(out[..., 1], out[..., 1].flatten()[0].item()))
    if point != layer:  # behind a norm, as under zero_once, the loss reaches the weights feeding them
        adapted(x).logsumexp(1).sum().backward()  # (without one, a ReLU passes none where the mean is <= 0)
        assert adapted.get_submodule(layer).weight.grad[[0, 3]].abs().sum() > 0
    # and under zero the weights alone are zeroed, as before
    zeroed = ablate_then_train.apply(conditions["two"], context)
    assert torch.equal(
        zeroed.get_submodule(layer).weight[[0, 3]], torch.zeros_like(model.get_submodule(layer).weight[[0, 3]])
    )


@pytest.mark.parametrize(
    "semantics,value,message",
    [
        ("mask", "mean", "semantics: mask keeps the units at 0"),
        ("zero_once", "resample", "sets.two.value: a retrained set starts from zero or its per-channel mean"),
        ("zero_once", {"kind": "mean", "per": "position"}, "sets.two.value: a retrained set starts"),
    ],
)
def test_ablate_then_train_refuses_values_that_are_no_starting_point(semantics, value, message):
    spec = study_spec(
        "ablate_then_train",
        layers=["conv1"],
        sets={"two": {"select": "units", "units": {"conv1": [0]}, "value": value}},
        semantics=semantics,
    )
    with pytest.raises(ConfigError) as e:
        ablate_then_train.check(spec, Target("m", trained(BN_CNN), {}, None))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# --- through snakemake ---------------------------------------------------------------------------

CNN_VALUES = {
    "type": "filter_ablation",
    "model": "cnn",
    "layers": ["conv3"],
    "sets": {
        "low": {"select": "lowest_response", "k": 4, "value": ["zero", "mean", {"kind": "mean", "per": "position"}]},
        "rand": {"select": "random", "k": 4, "value": ["zero", {"kind": "resample", "repeats": 2}]},
        "each": {"select": "each", "value": ["zero", "mean"]},
        "curve": {"select": "cumulative", "fractions": [0.25, 0.75], "value": ["zero", "noise"]},
    },
    "compare": [["low@mean", "low"], ["rand@resample", "rand"]],
}


@needs_fashion
@pytest.mark.slow  # every value through snakemake to its figure
def test_every_value_runs_on_the_cnn_to_its_tables_and_figure(with_models):
    workdir = with_models({"cnn_filters": CNN_VALUES}, unit_stats={"examples": 200}, seeds=[0])
    run = snakemake(workdir, "results/notebooks/cnn_filters.ipynb")
    assert run.returncode == 0, run.stderr[-4000:]
    assert "rule train" not in run.stdout  # the session's models: only the study ran
    folder = workdir / "results/interventions/cnn_filters/cnn"
    per_seed = pd.read_csv(folder / "seed0.csv")
    assert (workdir / "results/units/cnn/seed0.values.pt").is_file()
    assert set(per_seed["value"]) == {"zero", "mean", "mean-position", "resample", "noise"}
    n_units = int((per_seed["set"] == "each").sum())
    assert n_units > 0 and (per_seed["set"] == "each@mean").sum() == n_units  # every unit, under both values
    assert set(per_seed.loc[per_seed["set"] == "rand@resample", "value_draw"]) == {0, 1}
    rows = per_seed.set_index("condition")
    assert rows["baseline_accuracy"].nunique() == 1  # one baseline, whatever the value
    # the same units, another value: the same silence, other predictions (in general)
    assert rows.loc["low", "units"] == rows.loc["low@mean", "units"] == rows.loc["low@mean-position", "units"]
    assert rows.loc["rand:draw0", "units"] == rows.loc["rand@resample:draw0:v0", "units"]
    table = pd.read_csv(workdir / "results/tables/cnn_filters.csv")
    sets = table[table["level"] == "set"].set_index("set")
    assert {"low", "low@mean", "low@mean-position", "rand@resample", "each@mean", "curve@noise"} <= set(sets.index)
    assert sets.loc["low@mean", "value"] == "mean" and sets.loc["low", "value"] == "zero"
    # the sweep's significant units are counted per layer under each value
    layers = table[table["level"] == "layer"].set_index("condition")
    assert list(layers.loc[["each:conv3", "each@mean:conv3"], "n_units"]) == [n_units, n_units]
    n_significant = (per_seed.query("set == 'each@mean'")["significant"] == True).sum()  # noqa: E712
    assert layers.loc["each@mean:conv3", "n_significant_mean"] == n_significant
    comparisons = pd.read_csv(workdir / "results/tables/cnn_filters.comparisons.csv")
    assert {("low@mean", "low"), ("rand@resample", "rand")} <= set(zip(comparisons["a"], comparisons["b"]))
    figures = workdir / "results/figures/cnn_filters"
    assert (figures / "values.png").is_file() and (figures / "cumulative.png").is_file()
    text = printed(workdir / "results/notebooks/cnn_filters.ipynb")
    assert "ablation values: zero, mean, mean-position, noise, resample" in text


def test_a_value_computed_on_the_evaluated_images_is_refused_before_any_job():
    config = BASE | {"interventions": {"cnn_filters": CNN_VALUES}, "unit_stats": {"split": "test"}}
    with pytest.raises(ConfigError) as err:
        check(validate(json.loads(json.dumps(config))))
    message = str(err.value)
    assert message.startswith("interventions.cnn_filters: unit_stats.split: mean, resample")
    assert "must not be computed on the evaluated images" in message and "\n" not in message
