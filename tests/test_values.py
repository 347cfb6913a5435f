"""Ablation values (zero, mean per channel or position, resample, noise): the shared evaluator
(spread, masks, hooks) gives what the condition applied on its own gives (`engine.values.reference`:
the whole network with a hook replacing the units at each silence point) on networks of every
shape, whatever the budget and whichever conditions run beside; the unit statistics equal a
direct computation and are streamed; the draws are common random numbers."""

import textwrap

import pytest
import torch
from torch import nn

from knockout.data import Split, as_split
from knockout.engine.evaluate import evaluate_conditions
from knockout.engine.values import donor_indices, noise, reference
from knockout.graph import graph_of
from knockout.models import build_model
from knockout.engine import Condition, Context, Value, silence_point
from knockout.units import load_unit_values, save_unit_values, unit_values
from networks import USER_MODEL, randomised

VALUES = [
    Value(),
    Value("mean"),
    Value("mean", "position"),
    Value("resample", draw=0),
    Value("resample", draw=1),
    Value("noise", draw=0),
    Value("noise", "position", draw=1),
]


class DataDependent(nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it (hooks it is)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        if x.mean() > 1e9:
            x = x * 2
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "branchy.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return path


def networks(user_file):
    """name -> (arch or module, input shape, the sweep's layer and its units, the other layers)."""
    return {
        "study5_cnn": ("study5_cnn", (1, 28, 28), ("conv2", range(0, 64, 8)), ["conv1", "fc1"]),
        "mlp": ({"type": "mlp", "widths": [12, 8]}, (1, 5, 5), ("fc1", range(12)), ["fc2", "fc3"]),
        "resnet18": (
            {"type": "torchvision", "name": "resnet18", "small_input": True},
            (3, 8, 8),
            ("layer2.0.conv1", (0, 3, 5)),
            ["layer3.1.conv2", "layer2.0.downsample.0"],
        ),
        "user_file": (
            {"type": "module", "target": f"{user_file}:Branchy"},
            (3, 10, 10),
            ("left", range(8)),
            ["stem", "mix"],
        ),
        "untraceable": (DataDependent, (3, 8, 8), ("conv", range(4)), ["fc"]),
    }


def setting(name, user_file, n=24, n_donors=40):
    """A randomised network, its evaluated split (a subset, so indices are not positions), and a
    context with unit values and donors from a separate reference split."""
    arch, shape, sweep, others = networks(user_file)[name]
    torch.manual_seed(0)
    model = randomised(arch() if isinstance(arch, type) else build_model(arch, shape, 10))
    g = torch.Generator().manual_seed(1)
    whole = as_split(torch.randn(n + 6, *shape, generator=g), torch.randint(0, 10, (n + 6,), generator=g))
    evaluated = whole.subset(torch.randperm(n + 6, generator=g)[:n])
    donors = as_split(torch.randn(n_donors, *shape, generator=g) * 1.5, torch.zeros(n_donors, dtype=torch.long))
    context = Context(trained=model, seed=7, unit_values=unit_values(model, donors, batch_size=16), donors=donors)
    return context, evaluated, sweep, others


def conditions_for(sweep, others):
    layer, units = sweep
    out = []
    for value in VALUES:
        tag = f"{value.label}{value.draw}"
        out += [Condition(f"each:{layer}:{u}:{tag}", "each", silence=((layer, (u,)),), value=value) for u in units]
        out.append(Condition(f"set:{tag}", "set", silence=((layer, (0, 2)),), value=value))
        out.append(Condition(f"multi:{tag}", "multi", silence=((layer, (1,)), (others[0], (0, 1))), value=value))
        out.append(Condition(f"late:{tag}", "late", silence=tuple((other, (1,)) for other in others), value=value))
    return out


def assert_same(a, b, name):
    assert torch.equal(a.predictions, b.predictions), name
    torch.testing.assert_close(a.losses, b.losses, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["study5_cnn", "mlp", "resnet18", "user_file", "untraceable"])
def test_every_value_in_the_shared_evaluator_equals_the_condition_applied_alone(name, user_file):
    context, split, sweep, others = setting(name, user_file)
    traced = graph_of(context.trained, split.example("cpu")).traced
    assert traced == (name != "untraceable")
    conditions = conditions_for(sweep, others)
    tight = evaluate_conditions(conditions, context, split, budget_mb=1, device="cpu")  # several chunks
    roomy = evaluate_conditions(conditions, context, split, budget_mb=256, device="cpu")  # one chunk, wide stacks
    for c in conditions:
        alone = reference(c, context, split, batch_size=16)
        assert_same(tight[c.name], alone, (name, c.name, "tight"))
        assert_same(roomy[c.name], alone, (name, c.name, "roomy"))
    # each value changes what zero gives somewhere (a negative mean through a ReLU may not)
    for value in VALUES[1:]:
        tag = f"{value.label}{value.draw}"
        assert any(
            not torch.equal(tight[c.name].losses, tight[c.name.replace(tag, "zero0")].losses)
            for c in conditions
            if c.name.endswith(tag)
        ), value
    # a condition's outputs do not depend on which others run beside it
    few = [c for c in conditions if c.name.endswith(("resample1", "noise-position1")) and ":3:" not in c.name][::3]
    alone = evaluate_conditions(few, context, split, budget_mb=1, device="cpu")
    for c in few:
        assert_same(alone[c.name], tight[c.name], (name, c.name, "subset"))


def test_noise_follows_the_example_and_donors_its_position(user_file):
    context, split, (layer, _), _ = setting("study5_cnn", user_file)
    reversed_split = split.subset(torch.arange(len(split) - 1, -1, -1))
    noisy = Condition("n", "n", silence=((layer, (0, 3, 5)),), value=Value("noise", "position", draw=1))
    forward = evaluate_conditions([noisy], context, split, budget_mb=0.5, device="cpu")["n"]
    backward = evaluate_conditions([noisy], context, reversed_split, budget_mb=8, device="cpu")["n"]
    assert torch.equal(backward.predictions.flip(0), forward.predictions)
    torch.testing.assert_close(backward.losses.flip(0), forward.losses, atol=1e-5, rtol=1e-5)

    index = torch.tensor([5, 17, 2])
    field = noise(7, layer, 1, index, (4, 3))
    assert torch.equal(noise(7, layer, 1, index[1:], (4, 3)), field[1:])  # per example, not per batch
    assert not torch.equal(noise(7, layer, 0, index, (4, 3)), field) and not torch.equal(
        noise(7, "conv1", 1, index, (4, 3)), field
    )
    torch.testing.assert_close(
        noise(0, layer, 0, torch.arange(2000), (50,)).std(), torch.tensor(1.0), atol=0.01, rtol=0
    )
    donors = donor_indices(7, 1, 500, 40)
    assert torch.equal(donors, donor_indices(7, 1, 500, 40)) and not torch.equal(donors, donor_indices(7, 0, 500, 40))
    assert donors.min() >= 0 and donors.max() < 40 and len(donors.unique()) == 40


class CountingStore:
    """Images held whole, recording the largest read."""

    def __init__(self, images):
        self.images, self.shape, self.largest = images, tuple(images.shape), 0

    def read(self, rows):
        self.largest = max(self.largest, len(rows))
        return self.images[rows]

    def read_range(self, start, stop):
        self.largest = max(self.largest, stop - start)
        return self.images[start:stop]


@pytest.mark.parametrize("name", ["study5_cnn", "untraceable"])
def test_unit_values_equal_a_direct_computation_and_are_streamed(name, user_file, tmp_path):
    context, _, _, _ = setting(name, user_file)
    model = context.trained
    shape = networks(user_file)[name][1]
    images = torch.randn(300, *shape, generator=torch.Generator().manual_seed(3))
    store = CountingStore(images)
    batches = []
    first = model.get_submodule(next(iter(graph_of(model).units)))  # runs in the traced graph too
    first.register_forward_pre_hook(lambda m, args: batches.append(len(args[0])))
    values = unit_values(model, Split(store, torch.zeros(300, dtype=torch.long)), batch_size=32)
    assert store.largest <= 32 and batches and max(batches) <= 32

    graph = graph_of(model)
    seen = {}
    for layer in values:
        point = model.get_submodule(silence_point(model, layer))
        point.register_forward_hook(lambda m, i, o, layer=layer: seen.__setitem__(layer, o.double()))
    with torch.no_grad():
        model(images)  # the whole split at once
    for layer, stats in values.items():
        out = seen[layer]
        per_unit = out.movedim(1, -1).reshape(-1, out.shape[1]) if graph.units[layer].layer_type == "conv" else out
        assert stats["count"] == 300
        for key, expected in {
            "mean_channel": per_unit.mean(0),
            "std_channel": per_unit.std(0, unbiased=False),
            "mean_position": out.mean(0),
            "std_position": out.std(0, unbiased=False),
        }.items():
            assert stats[key].dtype == torch.float64 and stats[key].shape == expected.shape, (layer, key)
            torch.testing.assert_close(stats[key], expected, atol=1e-5, rtol=1e-5, msg=(layer, key))
    save_unit_values(values, tmp_path / "seed0.values.pt")
    again = load_unit_values(tmp_path / "seed0.values.pt")
    assert again.keys() == values.keys() and all(
        torch.equal(again[k]["mean_position"], values[k]["mean_position"]) for k in values
    )


def test_values_refuse_what_they_cannot_be_given(user_file):
    context, split, (layer, _), _ = setting("study5_cnn", user_file)
    bare = Context(trained=context.trained, seed=7)
    for value, missing in [
        (Value("mean"), "unit_values"),
        (Value("noise"), "unit_values"),
        (Value("resample"), "donors"),
    ]:
        condition = Condition("c", "c", silence=((layer, (0,)),), value=value)
        with pytest.raises(ValueError, match=missing) as err:
            evaluate_conditions([condition], bare, split, budget_mb=8, device="cpu")
        assert "\n" not in str(err.value)
    vit = build_model(
        {
            "type": "module",
            "target": "torchvision.models.vision_transformer:VisionTransformer",
            "kwargs": {
                "image_size": 8,
                "patch_size": 4,
                "num_layers": 1,
                "num_heads": 2,
                "hidden_dim": 8,
                "mlp_dim": 8,
            },
        },
        (3, 8, 8),
        10,
    ).eval()
    heads = Condition(
        "h", "h", silence=(("encoder.layers.encoder_layer_0.self_attention", (0,)),), value=Value("resample")
    )
    donors = as_split(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention heads"):
        evaluate_conditions(
            [heads],
            Context(trained=vit, donors=donors),
            torch.randn(4, 3, 8, 8),
            torch.zeros(4, dtype=torch.long),
            budget_mb=8,
            device="cpu",
        )
