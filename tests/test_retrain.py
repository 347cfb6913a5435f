"""Retraining families: mask vs zero_once semantics, architecture variants, factorisation."""

import pytest
import torch

from knockout.models import build_model, count_parameters, load_model
from knockout.engine import Context
from knockout.studies import ablate_then_train, architecture, factorize
from knockout.trainer import TrainConfig, train
from specs import study_spec, train_settings

SHAPE = (1, 12, 12)
ARCH = {"type": "cnn", "conv": [{"channels": 8, "pool": 2}, {"channels": 8}], "batch_norm": True, "dense": [16]}


def trained_context(seed=0):
    torch.manual_seed(seed)
    init = build_model(ARCH, SHAPE, 4)
    trained = build_model(ARCH, SHAPE, 4)
    with torch.no_grad():  # a trained norm's shift: positive, so a zeroed channel still passes gradient
        trained.conv1_bn.bias.fill_(0.5)
    return Context(trained=trained, init=init, seed=seed)


def data(n=128):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.randn(n, *SHAPE, generator=g) + y.float()[:, None, None, None]
    return x, y


@pytest.mark.parametrize("semantics,freeze", [("mask", False), ("zero_once", False), ("zero_once", True)])
def test_mask_keeps_units_at_zero_through_training_and_zero_once_does_not(tmp_path, semantics, freeze):
    ctx = trained_context()
    spec = study_spec(
        "ablate_then_train",
        layers=["conv1"],
        sets={"s": {"select": "units", "units": {"conv1": [1, 5]}}},
        semantics=semantics,
        freeze_body=freeze,
    )
    condition = ablate_then_train.conditions(spec, ctx)[1]
    model = ablate_then_train.apply(condition, ctx)
    x, y = data()
    cfg = TrainConfig.from_dict(train_settings(epochs=2, batch_size=16, optimizer="adam", lr=0.01))
    train(model, (x, y), (x, y), cfg, tmp_path, seed=0, device="cpu", progress=False)
    final = load_model(tmp_path / "final.pt", "cpu")  # what the pipeline keeps: plain weights
    silenced = final.conv1.weight[[1, 5]].abs().sum()
    if semantics == "mask":
        silenced += final.conv1_bn.weight[[1, 5]].abs().sum() + final.conv1_bn.bias[[1, 5]].abs().sum()
    if semantics == "mask" or freeze:
        assert silenced == 0
    else:
        assert silenced > 0
    if freeze:  # only the head moved
        assert torch.equal(final.conv2.weight, model.conv2.weight.detach())
        assert not torch.equal(final.fc2.weight, ctx.trained.fc2.weight)


@pytest.mark.parametrize(
    "kind,entry",
    [
        (
            "ablate_then_train",
            {
                "layers": ["conv1"],
                "sets": {
                    "u": {"select": "units", "units": {"conv1": [0]}},
                    "r": {"select": "random", "k": 2, "repeats": 3, "exclude": "u"},
                },
            },
        ),
        ("architecture", {"variants": {"wide": {"dense": [32]}, "no_bn": {"batch_norm": False}}}),
        ("factorize", {}),
    ],
)
def test_the_plan_names_the_conditions_the_study_trains(kind, entry):
    """The workflow plans one training job per name without torch (`condition_names`); the
    conditions built with torch must be exactly those, in the same order."""
    from knockout.studies import study_type

    module = study_type(kind)
    spec = study_spec(kind, **entry)
    built = [c.name for c in module.conditions(spec, trained_context())]
    assert built == module.condition_names(spec)
    assert len({c.slug for c in module.conditions(spec, trained_context())}) == len(built)  # distinct folders


STUDY4 = {
    "no_dropout": ({"conv_dropout": 0, "dense_dropout": 0}, 736_618),
    "pool4": ({"pool": 4, "conv": [{"channels": 48}, {"channels": 96}]}, 226_474),
    "one_dense_fewer": ({"dense": [512]}, 607_850),
    "exponential": ({"activation": "exponential"}, 736_618),
    "batch_norm": ({"batch_norm": True}, 736_618 - (48 + 96 + 192) + 2 * (48 + 96 + 192)),
}


@pytest.mark.parametrize("variant", STUDY4)
def test_each_architecture_variant_builds_with_the_expected_parameter_count(variant):
    overrides, expected = STUDY4[variant]
    ctx = Context(trained=build_model("study4_cnn", (3, 32, 32), 10), seed=3)
    spec = study_spec("architecture", variants={variant: overrides})
    condition = architecture.conditions(spec, ctx)[1]
    model = architecture.apply(condition, ctx)
    assert count_parameters(model) == expected
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    again = architecture.apply(condition, ctx)
    assert torch.equal(model.conv1.weight, again.conv1.weight)  # seeded


@pytest.mark.parametrize(
    "preset,shape", [("study3_cnn", (3, 32, 32)), ("study4_cnn", (3, 32, 32)), ("study5_cnn", (1, 28, 28))]
)
def test_factorisation_table_equals_the_formula_for_every_layer(preset, shape):
    table = factorize.layer_table(preset, shape)
    square = table[table["n"].apply(lambda n: isinstance(n, int))]
    assert (square["P0"] == square["P0_module"]).all()
    has_pair = square["n"] > 1
    assert (square.loc[has_pair, "P1"] == square.loc[has_pair, "P1_module"]).all()
    assert (table["rule"] == table.apply(lambda r: r["n"] > 1 + r["m"] / r["c"], axis=1)).all()
    for layer in square.loc[has_pair, "layer"]:  # the built pair has P1 parameters more or less
        model = build_model(factorize.factorized_arch(preset, [layer]), shape, 10)
        row = square.set_index("layer").loc[layer]
        assert count_parameters(model) == count_parameters(build_model(preset, shape, 10)) - row["P0"] + row["P1"]
        assert model(torch.zeros(1, *shape)).shape == (1, 10)


def test_study5_factorisation_reproduces_the_notebook():
    table = factorize.layer_table("study5_cnn", (1, 28, 28))
    assert list(table["replace"]) == [False, False, True]  # the notebook's table
    ctx = Context(trained=build_model("study5_cnn", (1, 28, 28), 10), seed=0)
    conds = factorize.conditions(study_spec("factorize"), ctx)
    assert [c.name for c in conds] == ["baseline", "factorized"]
    assert count_parameters(factorize.apply(conds[0], ctx)) == 93_322
    assert count_parameters(factorize.apply(conds[1], ctx)) == 81_098


def test_padded_factorisation_keeps_the_output_shape():
    spec = {"type": "cnn", "conv": [{"channels": 16, "kernel": 5, "padding": 2}], "dense": []}
    plain = build_model(spec, (4, 9, 9), 3)
    fact = build_model(factorize.factorized_arch(spec, ["conv1"]), (4, 9, 9), 3)
    assert fact.conv1.first.kernel_size == (5, 1) and fact.conv1.second.kernel_size == (1, 5)
    assert plain[:2](torch.zeros(1, 4, 9, 9)).shape == fact[:2](torch.zeros(1, 4, 9, 9)).shape
