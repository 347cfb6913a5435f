"""Every intervention family has the one shape, and a new module is picked up by its name."""

from knockout.interventions import Context, families
from knockout.models import build_model


def test_every_family_has_spec_conditions_apply_and_a_baseline():
    found = families()
    assert set(found) == {"filter_ablation", "layer_swap", "ablate_then_train", "architecture", "factorize"}
    model = build_model("study5_cnn", (1, 28, 28), 10)
    ctx = Context(trained=model, init=build_model("study5_cnn", (1, 28, 28), 10))
    examples = {
        "filter_ablation": {"model": "m", "layers": ["conv1"], "sets": {"a": {"select": "units", "units": {"conv1": [0]}}}},
        "layer_swap": {"model": "m", "layers": ["conv1"], "modes": ["reinit"]},
        "ablate_then_train": {"model": "m", "layers": ["conv1"], "sets": {"a": {"select": "units", "units": {"conv1": [0]}}}},
        "architecture": {"model": "m", "variants": {"wide": {"dense": [128]}}},
        "factorize": {"model": "m"},
    }
    for name, family in found.items():
        conds = family.conditions(family.Spec.from_dict(examples[name]), ctx)
        assert conds[0].name == "baseline"
        assert family.apply(conds[-1], ctx) is not model
