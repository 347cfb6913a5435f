"""Interventions: silenced units are silent, swapped layers are bit-exact, sets are drawn as
specified, and the shared-prefix evaluator gives the same answers as applying each condition."""

import copy

import pytest
import torch
from torch import nn

from knockout.config import ConfigError, check, validate
from knockout.engine.evaluate import evaluate_conditions
from knockout.tables import condition_tables
from knockout.models import build_model
from knockout.engine import Context, apply_condition, silence_point
from knockout.studies import filter_ablation, layer_swap
from knockout.units import unit_statistics
from specs import study_spec

BN_CNN = {"type": "cnn", "conv": [{"channels": 8, "pool": 2}, {"channels": 6}], "batch_norm": True, "dense": [12]}


def randomise_batch_norms(model):
    """Non-trivial running statistics and affine parameters, so a norm would un-silence a unit."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model


def context_for(arch, shape, seed=0, **kw):
    torch.manual_seed(seed)
    init = build_model(arch, shape, 10)
    trained = randomise_batch_norms(build_model(arch, shape, 10)).eval()
    return Context(trained=trained, init=init.eval(), seed=seed, **kw)


def fa_spec(layers, sets, compare=()):
    return study_spec("filter_ablation", layers=layers, sets=sets, compare=[list(p) for p in compare])


@pytest.mark.parametrize(
    "arch,shape,layer",
    [
        (BN_CNN, (1, 12, 12), "conv1"),  # conv followed by batch norm
        (BN_CNN, (1, 12, 12), "fc1"),  # linear
        ({"type": "resnet", "depth": 18, "small_input": True}, (3, 16, 16), "layer2.0.conv1"),
        ({"type": "resnet", "depth": 18, "small_input": True}, (3, 16, 16), "layer2.0.downsample.0"),
    ],
)
def test_a_silenced_unit_outputs_zero_for_every_input(arch, shape, layer):
    ctx = context_for(arch, shape)
    units = (0, 3)
    cond = filter_ablation.conditions(fa_spec([layer], {"s": {"select": "units", "units": {layer: list(units)}}}), ctx)[
        1
    ]
    model = filter_ablation.apply(cond, ctx)
    point = dict(model.named_modules())[silence_point(model, layer)]
    seen = []
    point.register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.randn(16, *shape) * 5)
    out = seen[0]
    assert torch.count_nonzero(out[:, list(units)]) == 0
    assert torch.count_nonzero(out[:, 1]) > 0  # the others still respond
    assert ctx.trained.state_dict()[f"{layer}.weight"].abs().sum() > 0  # the original is untouched


def test_reinit_restores_initial_weights_bit_for_bit_and_transplant_the_trained_ones():
    ctx = context_for(BN_CNN, (1, 12, 12))
    conds = {
        c.name: c
        for c in layer_swap.conditions(study_spec("layer_swap", modes=["reinit", "transplant", "rerandomize"]), ctx)
    }
    ctx.rerandom = build_model(BN_CNN, (1, 12, 12), 10)
    reinit = layer_swap.apply(conds["reinit:conv1"], ctx)
    for key in ["conv1.weight", "conv1_bn.weight", "conv1_bn.running_var"]:
        assert torch.equal(reinit.state_dict()[key], ctx.init.state_dict()[key])
    assert torch.equal(reinit.conv2.weight, ctx.trained.conv2.weight)
    transplant = layer_swap.apply(conds["transplant:fc1"], ctx)
    assert torch.equal(transplant.fc1.weight, ctx.trained.fc1.weight)
    assert torch.equal(transplant.conv2.weight, ctx.init.conv2.weight)
    rerandom = layer_swap.apply(conds["rerandomize:conv2"], ctx)
    assert not torch.equal(rerandom.conv2.weight, ctx.init.conv2.weight)
    assert not torch.equal(rerandom.conv2.weight, ctx.trained.conv2.weight)


def test_rewind_takes_every_checkpoint_and_epoch0_is_init():
    ctx = context_for(BN_CNN, (1, 12, 12))
    ctx.checkpoints = {f"epoch{e}": build_model(BN_CNN, (1, 12, 12), 10) for e in (1, 2, 3)}
    conds = layer_swap.conditions(study_spec("layer_swap", layers=["conv2", "fc2"], modes=["rewind"]), ctx)
    names = [c.name for c in conds]
    assert names == ["baseline"] + [f"rewind:{layer}:epoch{e}" for layer in ["conv2", "fc2"] for e in range(4)]
    model = layer_swap.apply(conds[3], ctx)  # rewind:conv2:epoch2
    assert torch.equal(model.conv2.weight, ctx.checkpoints["epoch2"].conv2.weight)
    assert torch.equal(layer_swap.apply(conds[1], ctx).conv2.weight, ctx.init.conv2.weight)


def test_conditions_are_named_and_counted_as_specified():
    ctx = context_for(BN_CNN, (1, 12, 12))
    ctx.unit_stats = unit_statistics(ctx.trained, torch.randn(40, 1, 12, 12), torch.arange(40) % 10, 10)
    sets = {
        "low": {"select": "lowest_response", "k": 2},
        "rand": {"select": "random", "k": 2, "repeats": 3, "exclude": "low"},
        "each": {"select": "each"},
        "curve": {"select": "cumulative", "fractions": [0.25, 0.5], "repeats": 2},
        "ranked": {"select": "cumulative", "order": "selectivity", "fractions": [0.5]},
    }
    conds = filter_ablation.conditions(fa_spec(["conv2"], sets), ctx)
    names = [c.name for c in conds]
    assert names[:5] == ["baseline", "low", "rand:draw0", "rand:draw1", "rand:draw2"]
    assert names[5:11] == [f"each:conv2:{u}" for u in range(6)]
    assert names[11:] == [
        "curve:conv2:f0.25:draw0",
        "curve:conv2:f0.5:draw0",
        "curve:conv2:f0.25:draw1",
        "curve:conv2:f0.5:draw1",
        "ranked:conv2:f0.5",
    ]
    assert len(set(names)) == len(names)
    low = dict(conds[1].silence)["conv2"]
    expected = ctx.unit_stats.query("layer == 'conv2'").sort_values("mean", kind="stable").unit[:2]
    assert sorted(low) == sorted(expected)
    assert [len(dict(c.silence)["conv2"]) for c in conds[11:15]] == [2, 3, 2, 3]  # round(f * 6)


def test_random_sets_never_include_excluded_units_and_are_seeded():
    ctx = context_for(BN_CNN, (1, 12, 12))
    sets = {
        "bad": {"select": "units", "units": {"fc1": [0, 1, 2, 3]}},
        "rand": {"select": "random", "k": 4, "repeats": 50, "exclude": "bad"},
    }
    conds = filter_ablation.conditions(fa_spec(["fc1"], sets), ctx)[2:]
    drawn = [dict(c.silence)["fc1"] for c in conds]
    assert all(len(d) == 4 and not set(d) & {0, 1, 2, 3} for d in drawn)
    assert len(set(drawn)) > 1  # draws differ
    again = [dict(c.silence)["fc1"] for c in filter_ablation.conditions(fa_spec(["fc1"], sets), ctx)[2:]]
    assert drawn == again
    ctx.seed = 1
    other = [dict(c.silence)["fc1"] for c in filter_ablation.conditions(fa_spec(["fc1"], sets), ctx)[2:]]
    assert other != drawn


@pytest.mark.parametrize(
    "arch,shape,layers",
    [
        (BN_CNN, (1, 12, 12), ["conv1", "conv2"]),
        ("study5_cnn", (1, 28, 28), ["conv2", "fc1"]),
        ({"type": "resnet", "depth": 18, "small_input": True}, (3, 16, 16), ["layer3.0.conv2", "conv1"]),
    ],
)
def test_shared_prefix_evaluation_equals_applying_each_condition(arch, shape, layers):
    ctx = context_for(arch, shape)
    x, y = torch.randn(40, *shape), torch.randint(0, 10, (40,))
    sets = {
        "multi": {"select": "units", "units": {layers[0]: [0, 1], layers[1]: [2]}},
        "rand": {"select": "random", "k": 3, "repeats": 2},
    }
    if arch == BN_CNN:  # the full sweep only on the small network: the reference is one copy per unit
        sets["each"] = {"select": "each", "layers": [layers[0]]}
    conds = filter_ablation.conditions(fa_spec(layers, sets), ctx)
    conds += layer_swap.conditions(study_spec("layer_swap", layers=layers, modes=["reinit", "transplant"]), ctx)[1:]
    out = evaluate_conditions(
        conds, ctx, x, y, budget_mb=2, device="cpu", apply=apply_condition
    )  # a tight budget: several chunks
    for c in conds:
        with torch.no_grad():
            logits = apply_condition(c, ctx)(x)
        assert torch.equal(out[c.name].predictions, logits.argmax(1)), c.name
        torch.testing.assert_close(
            out[c.name].losses, nn.functional.cross_entropy(logits, y, reduction="none"), atol=1e-4, rtol=1e-4
        )


def test_unit_statistics_find_dead_and_selective_units():
    model = build_model({"type": "mlp", "widths": [3]}, (1, 1, 2), 2).eval()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]))
        model.fc1.bias.copy_(torch.tensor([-1.0, 0.0, 0.0]))
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]).view(4, 1, 1, 2)
    y = torch.tensor([0, 0, 1, 1])
    stats = unit_statistics(model, x, y, 2, layers=["fc1"]).set_index("unit")
    assert stats.loc[0, "dead_fraction"] == 1.0 and stats.loc[0, "mean"] == 0.0  # never fires
    assert stats.loc[1, "selectivity"] == pytest.approx(1.0)  # fires for class 0 only
    assert stats.loc[1, "preferred_class"] == 0 and stats.loc[1, "max"] == 2.0
    assert stats.loc[2, "selectivity"] == pytest.approx((2 - 1.5) / (2 + 1.5))
    assert stats.loc[2, "weight_l1"] == 2.0


def test_tables_count_flips_and_per_class_accuracy():
    from knockout.engine.evaluate import ConditionOutput
    from knockout.engine import Condition

    labels = torch.tensor([0, 0, 1, 1])
    outputs = {
        "baseline": ConditionOutput(torch.tensor([0, 1, 1, 1]), torch.zeros(4)),
        "x": ConditionOutput(torch.tensor([0, 0, 0, 1]), torch.zeros(4)),
    }
    conds = [Condition("baseline", "baseline"), Condition("x", "x", silence=(("conv1", (1, 2)),))]
    t = condition_tables(conds, outputs, labels, ["a", "b"], torch.tensor([10, 11, 12, 13]))
    row = t["table"].set_index("condition").loc["x"]
    assert row.accuracy == 0.75 and row.baseline_accuracy == 0.75 and row.delta == 0 and row.units == "conv1:1,2"
    flips = t["examples"]
    assert set(zip(flips.example, flips.flip)) == {(11, "wrong_to_right"), (12, "right_to_wrong")}
    per_class = t["per_class"].set_index(["condition", "class"])
    assert per_class.loc[("x", 0), "accuracy"] == 1.0 and per_class.loc[("x", 1), "delta"] == -0.5
    assert t["confusion"].query("condition == 'x'")["count"].sum() == 4


BASE = {
    "datasets": {"fashion_mnist": {}},
    "models": {"cnn": {"dataset": "fashion_mnist", "arch": "study5_cnn"}},
}


@pytest.mark.parametrize(
    "study,message",
    [
        (
            {"type": "filter_ablation", "model": "cnn", "layers": ["conv9"], "sets": {"a": {"select": "each"}}},
            "interventions.s.layers[0]: no layer 'conv9' in model 'cnn' (layers: conv1, conv2, conv3, fc1, fc2)",
        ),
        (
            {
                "type": "filter_ablation",
                "model": "cnn",
                "layers": ["conv1"],
                "sets": {"a": {"select": "random", "k": 33}},
            },
            "interventions.s.sets.a.k: 33 is more than the 32 units of conv1",
        ),
        (
            {
                "type": "filter_ablation",
                "model": "cnn",
                "layers": ["conv1"],
                "sets": {"a": {"select": "units", "units": {"conv1": [32]}}},
            },
            "interventions.s.sets.a.units.conv1: unit 32 out of range (conv1 has 32 units)",
        ),
        (
            {
                "type": "filter_ablation",
                "model": "cnn",
                "layers": ["conv1"],
                "sets": {"a": {"select": "random", "k": 2, "exclude": "zz"}},
            },
            "interventions.s.sets.a.exclude: 'zz' is not a units or lowest_response set",
        ),
        (
            {
                "type": "filter_ablation",
                "model": "cnn",
                "layers": ["conv1"],
                "sets": {"a": {"select": "each"}},
                "compare": [["a", "b"]],
            },
            "interventions.s.compare[0]: no set 'b'",
        ),
        (
            {"type": "filter_ablation", "model": "cnn", "layers": ["conv1"], "sets": {"a": {"select": "random"}}},
            "interventions.s.sets.a: 'k' is a required property",
        ),
        ({"type": "layer_swap", "model": "mlp"}, "interventions.s.model: 'mlp' is not a key of models"),
        (
            {"type": "layer_swap", "model": "cnn", "modes": ["rewind"]},
            "interventions.s.modes: rewind needs epoch checkpoints",
        ),
        (
            {"type": "layer_swap", "model": "cnn", "modes": ["rewire"]},
            "interventions.s.modes.0: 'rewire' is not one of",
        ),
        ({"type": "occlude", "model": "cnn"}, "interventions.s.type: unknown study type 'occlude'"),
    ],
)
def test_bad_intervention_specs_are_one_line_errors(study, message):
    config = copy.deepcopy(BASE) | {"interventions": {"s": study}}
    with pytest.raises(ConfigError) as err:
        check(validate(config))
    assert message in str(err.value) and "\n" not in str(err.value)
