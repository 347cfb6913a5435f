"""Any network, not only the presets: units, silence points and cuts found on the traced graph of
networks of different shapes (a ResNet's residual adds, a VGG with batch norm, a MobileNet's
squeeze-excitation, a DenseNet's concatenations, a ViT's attention heads, the user's own module
from a file), each study's shared-prefix result equal to applying the condition on its own, a
silenced unit exactly zero on every input; and the refusals, one line each."""

import textwrap

import pytest
import torch
from torch import nn

from knockout.config import ConfigError, check, validate
from knockout.engine.evaluate import evaluate_conditions
from knockout.engine.occlusion import occlusion_maps
from knockout.engine.top_activations import top_activations
from knockout.graph import graph_of
from knockout.models import build_model, load_model, save_model
from knockout.engine import Condition, Context, apply_condition, silence_point
from knockout.units import unit_statistics
from networks import USER_MODEL, randomised


class TinyVGG(nn.Module):
    """A VGG with batch norm, scaled down: conv-BN-ReLU stacks, max pooling, a dense classifier."""

    def __init__(self, num_classes=10):
        super().__init__()
        layers, channels = [], 3
        for width in (8, "M", 16, "M", 16):
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(32, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "branchy.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return path


def architectures(user_file):
    """name -> (arch, input shape, [layers to silence]) of networks with different graph shapes."""
    return {
        "resnet": (
            {"type": "torchvision", "name": "resnet18", "small_input": True},
            (3, 8, 8),
            ["layer2.0.conv1", "layer3.1.conv2"],
        ),
        "vgg_bn": ({"type": "module", "target": f"{__name__}:TinyVGG"}, (3, 16, 16), ["features.4", "classifier.1"]),
        "mobilenet_se": (
            {"type": "torchvision", "name": "mobilenet_v3_small"},
            (3, 32, 32),
            ["features.2.block.0.0", "features.4.block.2.fc1"],
        ),
        "densenet_cat": (
            {
                "type": "module",
                "target": "torchvision.models.densenet:DenseNet",
                "kwargs": {"growth_rate": 4, "block_config": [2, 2], "num_init_features": 8, "bn_size": 2},
            },
            (3, 32, 32),
            ["features.denseblock1.denselayer2.conv1", "features.denseblock2.denselayer1.conv2"],
        ),
        "vit_heads": (
            {
                "type": "module",
                "target": "torchvision.models.vision_transformer:VisionTransformer",
                "kwargs": {
                    "image_size": 16,
                    "patch_size": 4,
                    "num_layers": 2,
                    "num_heads": 2,
                    "hidden_dim": 16,
                    "mlp_dim": 32,
                },
            },
            (3, 16, 16),
            ["encoder.layers.encoder_layer_0.self_attention", "encoder.layers.encoder_layer_1.mlp.0"],
        ),
        "user_file": ({"type": "module", "target": f"{user_file}:Branchy"}, (3, 12, 12), ["left", "mix"]),
    }


@pytest.mark.parametrize("name", ["resnet", "vgg_bn", "mobilenet_se", "densenet_cat", "vit_heads", "user_file"])
def test_every_study_on_networks_of_any_shape(name, user_file):
    arch, shape, layers = architectures(user_file)[name]
    torch.manual_seed(0)
    trained = randomised(build_model(arch, shape, 10))
    init, rerandom = build_model(arch, shape, 10).eval(), build_model(arch, shape, 10).eval()
    ctx = Context(trained=trained, init=init, rerandom=rerandom, seed=0)
    x, y = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 10
    assert graph_of(trained, x).traced

    first, second = layers
    conditions = [Condition("baseline", "baseline")]
    conditions += [Condition(f"each:{first}:{u}", "each", silence=((first, (u,)),)) for u in (0, 1)]
    conditions += [Condition("two", "two", silence=((first, (1,)), (second, (0,))))]
    conditions += [
        Condition("rerandom", "rerandomize", replace=((second, "rerandom"),)),
        Condition("transplant", "transplant", base="init", replace=((first, "trained"),)),
    ]
    shared = evaluate_conditions(
        conditions, ctx, x, y, budget_mb=2, device="cpu", apply=apply_condition
    )  # a few chunks
    for c in conditions:
        with torch.no_grad():
            reference = apply_condition(c, ctx)(x)
        assert torch.equal(shared[c.name].predictions, reference.argmax(1)), (name, c.name)
        torch.testing.assert_close(
            shared[c.name].losses, nn.functional.cross_entropy(reference, y, reduction="none"), rtol=1e-4, atol=1e-4
        )

    if graph_of(trained).units[first].layer_type != "heads":  # a silenced unit is exactly zero on every input
        copy = apply_condition(conditions[1], ctx)
        seen = []
        copy.get_submodule(silence_point(trained, first)).register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            copy(x * 5)
        unit_dim = 1 if isinstance(copy.get_submodule(first), nn.Conv2d) else -1
        assert (
            torch.count_nonzero(seen[0].select(unit_dim, 0)) == 0
            and torch.count_nonzero(seen[0].select(unit_dim, 1)) > 0
        )

    conv = (
        next(layer for layer in layers if graph_of(trained).units[layer].layer_type == "conv")
        if name != "vit_heads"
        else "conv_proj"
    )
    table, arrays = top_activations(trained, x, {conv: [0, 1]}, k=3, device="cpu")
    assert len(table) == 2 * 3 and arrays[f"patches_{conv}"].shape[:2] == (3, 2)
    stats = unit_statistics(trained, x, y, 10)
    assert set(stats["layer"]) == {n for n, u in graph_of(trained).units.items() if u.layer_type != "heads"}
    fast = occlusion_maps(trained, x[:1], y[:1], (3,), stride=2, fill=0.0, budget_mb=16, device="cpu")
    slow = occlusion_maps(trained, x[:1], y[:1], (3,), stride=2, fill=0.0, budget_mb=16, device="cpu", reuse=False)
    assert abs(fast["prob_centred"] - slow["prob_centred"]).max() < 1e-5


def test_a_model_that_cannot_be_traced_runs_through_hooks(caplog):
    class DataDependent(nn.Module):  # control flow on a tensor value: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            if x.mean() > 1e9:
                x = x * 2
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = randomised(DataDependent())
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    with caplog.at_level("WARNING", logger="knockout"):
        graph = graph_of(model, x)
    assert not graph.traced and "forward hooks" in caplog.text and graph.silence_point("conv") == "bn"
    ctx = Context(trained=model, rerandom=randomised(DataDependent(), 1))
    conditions = [
        Condition("baseline", "baseline"),
        Condition("u", "u", silence=(("conv", (0, 2)),)),
        Condition("r", "r", replace=(("fc", "rerandom"),)),
    ]
    shared = evaluate_conditions(conditions, ctx, x, y, budget_mb=1, device="cpu", apply=apply_condition)
    for c in conditions:
        with torch.no_grad():
            assert torch.equal(shared[c.name].predictions, apply_condition(c, ctx)(x).argmax(1)), c.name


def test_a_checkpoint_of_any_model_rebuilds(tmp_path, user_file):
    arch, shape, _ = architectures(user_file)["user_file"]
    model = build_model(arch, shape, 10)
    save_model(model, tmp_path / "final.pt", seed=0)
    again = load_model(tmp_path / "final.pt", "cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


BASE = {"datasets": {"fashion_mnist": {}}, "models": {}}


def config_with(model: dict, studies: dict | None = None) -> dict:
    return BASE | {"models": {"m": {"dataset": "fashion_mnist", **model}}, "interventions": studies or {}}


@pytest.mark.parametrize(
    "model,message",
    [
        (
            {"arch": {"type": "torchvision", "name": "resnet1000"}},
            "models.m.arch: unknown torchvision classification model 'resnet1000'",
        ),
        (
            {"arch": {"type": "torchvision", "name": "resnet18", "weights": "IMAGENET9K"}},
            "models.m.arch.weights: no weights 'IMAGENET9K' for resnet18",
        ),
        (
            {"arch": {"type": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"}},
            "models.m.arch.weights: resnet18 IMAGENET1K_V1 is not in torch's cache and https://download.pytorch.org/models/resnet18-f37072fd.pth cannot be reached: put resnet18-f37072fd.pth in",
        ),
        (
            {"arch": {"type": "torchvision", "name": "resnet18", "weights": "{tmp}/r18.pth"}},
            "models.m.arch.weights: no such file",
        ),
        (
            {"arch": {"type": "torchvision", "name": "vgg11", "small_input": True}},
            "models.m.arch: small_input needs a ResNet-like stem",
        ),
        (
            {"arch": {"type": "module", "target": "no/such/file.py:Net"}},
            "models.m.arch.target: no such file ",
        ),
        (
            {"arch": {"type": "module", "target": "knockout_no_such_package.models:Net"}},
            "models.m.arch: target 'knockout_no_such_package.models:Net': cannot import",
        ),
        ({"arch": {"type": "module", "target": "{user}:Missing"}}, "has no callable 'Missing'"),
        ({"arch": {"type": "module", "target": "{user}:not_a_module"}}, "returned a int, not an nn.Module"),
        (
            {"arch": {"type": "module", "target": "{user}:Branchy", "kwargs": {"num_classes": 3}}},
            "models.m.class_outputs: the network gives 3 outputs for 10 classes: give it a head of 10 outputs",
        ),
        (
            {"arch": {"type": "module", "target": "{user}:Branchy"}, "checkpoints": "{tmp}/none_{seed}.pt"},
            "models.m.checkpoints: no such file",
        ),
        (
            {"arch": {"type": "module", "target": "{user}:Branchy"}, "checkpoints": "{tmp}/other_{seed}.pt"},
            "does not match the architecture: lacks stem.bias (15 differences)",
        ),
        (
            {"arch": {"type": "module", "target": "{user}:Branchy"}, "checkpoints": "{tmp}/wide_{seed}.pt"},
            "does not match the architecture: stem.weight is (16, 1, 3, 3), the model's (8, 1, 3, 3)",
        ),
    ],
)
def test_bad_models_are_one_line_errors(tmp_path, user_file, model, message):
    import json

    from knockout.models import build_model as build

    torch.save({"stem.weight": torch.zeros(1)}, tmp_path / "other_0.pt")
    wide = build({"type": "module", "target": f"{user_file}:Branchy", "kwargs": {"width": 16}}, (1, 28, 28), 10)
    for seed in (0, 1, 2):
        torch.save(wide.state_dict(), tmp_path / f"wide_{seed}.pt")
        torch.save({"stem.weight": torch.zeros(1)}, tmp_path / f"other_{seed}.pt")
    model = json.loads(json.dumps(model).replace("{user}", str(user_file)).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError) as err:
        check(validate(config_with(model)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_studies_needing_what_only_training_gives_are_refused_for_adopted_checkpoints(tmp_path, user_file):
    arch = {"type": "module", "target": f"{user_file}:Branchy"}
    network = build_model(arch, (1, 28, 28), 10)
    for seed in (0, 1, 2):
        torch.save({"state_dict": network.state_dict()}, tmp_path / f"final_{seed}.pt")
    model = {"arch": arch, "checkpoints": str(tmp_path / "final_{seed}.pt")}
    check(
        validate(
            config_with(
                model,
                {"f": {"type": "filter_ablation", "model": "m", "layers": ["left"], "sets": {"e": {"select": "each"}}}},
            )
        )
    )
    with pytest.raises(
        ConfigError,
        match=r"interventions.s: layer_swap needs the initial weights of model 'm', which is not trained here: give models.m.checkpoints.init",
    ):
        check(validate(config_with(model, {"s": {"type": "layer_swap", "model": "m", "modes": ["reinit"]}})))
    with pytest.raises(ConfigError, match=r"interventions.s.modes: rewind needs epoch checkpoints"):
        check(validate(config_with(model, {"s": {"type": "layer_swap", "model": "m", "modes": ["rewind"]}})))
