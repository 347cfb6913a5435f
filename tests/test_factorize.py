"""`factorize` and `architecture` on any model: the n x 1, 1 x n pair keeps every conv's output
shape and has the formula's parameters (and, linear and unpadded, computes the conv with the
outer-product kernel); the rewrite on a torchvision ResNet and on the example user model (the
layers `auto` picks, counts from the built modules, the network runs, its checkpoint rebuilds);
architecture variants as torchvision builder keywords and the user function's kwargs, against
torchvision built directly; the refusals, one line each; both studies end to end."""

import pandas as pd
import pytest
import torch
import torchvision
from conftest import DATA, ROOT, needs_fashion, snakemake, write_config
from torch import nn

from knockout.config import ConfigError, check, validate
from knockout.factorization import FactorizedConv2d, conv_rows, factorize_convs, formula_parameters
from knockout.models import build_model, count_parameters, load_model, save_model
from knockout.engine import Context
from knockout.studies import Target, architecture, factorize
from specs import RESNET18, TRAIN, check_tables, studies, study_spec

OWN = {"type": "module", "target": str(ROOT / "examples/own_model/model.py:SmallResNet"), "kwargs": {"width": 16}}
GREY = (1, 28, 28)


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "c,m,n,groups,stride,padding,dilation,bias,padding_mode,size",
    [
        (3, 8, 3, 1, 1, 0, 1, True, "zeros", (11, 13)),
        (4, 8, 5, 2, 1, 2, 1, False, "zeros", (12, 12)),
        (6, 6, 3, 6, 1, 1, 1, True, "reflect", (9, 10)),  # depthwise
        (4, 12, 3, 4, (2, 2), 1, 1, False, "zeros", (16, 15)),  # stride with "same" padding
        (2, 4, 3, 1, 1, (2, 1), (2, 1), True, "circular", (10, 9)),  # dilation along the height only
        (4, 4, 3, 2, 1, "same", 2, True, "zeros", (9, 9)),
        (3, 5, 7, 1, 1, 3, 1, True, "replicate", (14, 8)),
    ],
)
def test_the_pair_keeps_the_output_shape_and_has_the_formula_parameters(
    c, m, n, groups, stride, padding, dilation, bias, padding_mode, size
):
    conv = nn.Conv2d(c, m, n, stride, padding, dilation, groups, bias, padding_mode)
    pair = FactorizedConv2d(conv, "relu")
    x = torch.randn(2, c, *size)
    assert pair(x).shape == conv(x).shape
    p0, p1 = formula_parameters(n, m, c, groups, bias)
    assert parameters(conv) == p0 and parameters(pair) == p1
    assert pair.first.kernel_size == (n, 1) and pair.second.kernel_size == (1, n)
    assert pair.first.stride == conv.stride and pair.second.stride == (1, 1)
    assert pair.first.padding_mode == pair.second.padding_mode == padding_mode
    assert (pair.first.bias is not None) == (pair.second.bias is not None) == bias


def test_the_linear_unpadded_pair_is_the_conv_with_the_outer_product_kernel():
    """between: none, no padding: the pair computes a conv whose kernel is sum_j w2[o,j,b] w1[j,i,a]
    (and whose bias passes b1 through the second conv), dilation included."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, dilation=(2, 1))
    pair = FactorizedConv2d(conv, "none")
    w1, w2 = pair.first.weight[..., 0], pair.second.weight[:, :, 0]  # (m, c, n), (m, m, n)
    kernel = torch.einsum("ojb,jia->oiab", w2, w1)
    bias = pair.second.bias + torch.einsum("ojb,j->o", w2, pair.first.bias)
    x = torch.randn(2, 3, 12, 10)
    expected = nn.functional.conv2d(x, kernel, bias, dilation=(2, 1))
    assert torch.allclose(pair(x), expected, atol=1e-5)


def test_a_pair_that_cannot_keep_the_shape_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.Flatten())  # unpadded stride 2: 13 wide, the pair 12
    (row,) = conv_rows(model, (1, 28, 28))
    assert row["keeps_shape"] is False and not row["rule"] is None
    with pytest.raises(ValueError, match=r"^0: its n x 1, 1 x n pair gives 13x12 maps, the conv 13x13"):
        factorize_convs(model, ["0"], "relu", (1, 28, 28))


def torchvision_rule(model: nn.Module) -> list[str]:
    """The n > 1 + m/c rule read off the modules' own attributes, where the pair keeps the shape
    (stride 1, or padding (n-1)/2)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.kernel_size[0] == m.kernel_size[1] > 1 + m.out_channels / m.in_channels
        and (m.stride == (1, 1) or m.padding[1] * 2 == m.kernel_size[1] - 1)
    ]


@pytest.mark.parametrize(
    "arch,expected",
    [
        (  # every 3x3 conv with as many filters as channels: not the stem (1 -> 64), nor a stage's first (c -> 2c)
            RESNET18,
            [f"layer1.{b}.conv{i}" for b in (0, 1) for i in (1, 2)]
            + [f"layer{s}.{b}.conv{i}" for s in (2, 3, 4) for b, i in ((0, 2), (1, 1), (1, 2))],
        ),
        (OWN, ["block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2"]),  # not stem, down, the 1x1 sides
    ],
    ids=["resnet18", "own_model"],
)
def test_factorize_on_any_model_splits_the_layers_the_rule_picks(tmp_path, arch, expected):
    base = build_model(arch, GREY, 10)
    assert torchvision_rule(base) == expected
    table = factorize.layer_table(base, GREY)
    assert list(table.loc[table["replace"], "layer"]) == expected
    ctx = Context(trained=base, seed=0)
    spec = study_spec("factorize")
    factorize.check(spec, Target("m", base, {}, None))
    baseline, factorized = (factorize.apply(c, ctx) for c in factorize.conditions(spec, ctx))
    convs = dict(base.named_modules())
    saved = sum(  # the formula on the modules' own sizes, no bias (batch norm follows)
        3 * convs[n].in_channels * convs[n].out_channels + 3 * convs[n].out_channels ** 2 - parameters(convs[n])
        for n in expected
    )
    assert count_parameters(baseline) == count_parameters(base)
    assert count_parameters(factorized) == count_parameters(base) + saved < count_parameters(base)
    replaced = table[table["replace"]]
    assert (replaced["P0"] == replaced["P0_module"]).all() and (replaced["P1"] == replaced["P1_module"]).all()
    assert all(isinstance(factorized.get_submodule(n), FactorizedConv2d) for n in expected)
    assert factorized.spec["arch"]["factorized"] == {"layers": expected, "between": "relu"}
    x = torch.randn(2, *GREY)
    assert factorized(x).shape == (2, 10)
    save_model(factorized.eval(), tmp_path / "final.pt", seed=0)
    again = load_model(tmp_path / "final.pt", "cpu").eval()
    assert count_parameters(again) == count_parameters(factorized)
    with torch.no_grad():
        assert torch.equal(again(x), factorized(x))


def test_the_factorised_torchvision_network_has_no_pretrained_weights():
    arch = RESNET18 | {"weights": "IMAGENET1K_V1"}
    spec = factorize.factorized_arch(arch, ["layer1.0.conv1"])
    assert "weights" not in spec and spec["factorized"] == {"layers": ["layer1.0.conv1"], "between": "relu"}


@pytest.mark.parametrize(
    "arch,layers,message",
    [
        (OWN, ["stem_bn"], "layers[0]: 'stem_bn' is not a conv layer (a BatchNorm2d)"),
        (OWN, ["block1.conv1", "block2.side"], "layers[1]: 'block2.side': 1x1: nothing to split"),
        (OWN, ["block3.conv1"], "layers[0]: no layer 'block3.conv1' in model 'm' (conv layers: stem, block1.conv1"),
        (RESNET18, ["layer9.conv1"], "layers[0]: no layer 'layer9.conv1' in model 'm' (conv layers: conv1, layer1.0"),
        ({"type": "mlp", "widths": [16]}, "auto", "model: factorize splits nn.Conv2d layers, and model 'm' has none"),
        (
            {"type": "cnn", "conv": [{"channels": 4, "stride": 2}], "dense": []},
            ["conv1"],
            "layers[0]: 'conv1': its n x 1, 1 x n pair gives 13x12 maps, the conv 13x13",
        ),
        (
            {"type": "cnn", "conv": [{"channels": 64}], "dense": []},
            "auto",
            "layers: auto picks no layer of model 'm'",
        ),
    ],
)
def test_bad_factorize_layers_are_one_line_errors(arch, layers, message):
    network = build_model(arch, GREY, 10)
    with pytest.raises(ConfigError) as err:
        factorize.check(study_spec("factorize", layers=layers), Target("m", network, {}, None))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_config_check_names_the_study_key():
    config = {
        "datasets": {"fashion_mnist": {}},
        "models": {"m": {"dataset": "fashion_mnist", "arch": OWN}},
        "interventions": {
            "split": {"type": "factorize", "model": "m", "layers": ["block1.side"]},
        },
    }
    with pytest.raises(ConfigError, match=r"^interventions\.split\.layers\[0\]: 'block1\.side': 1x1"):
        check(validate(config))
    config["interventions"] = {"wide": {"type": "architecture", "model": "m", "variants": {"w": {"depth": 2}}}}
    with pytest.raises(ConfigError, match=r"^interventions\.wide\.variants\.w\.depth: .* no keyword argument 'depth'"):
        check(validate(config))


def variant(arch: dict, overrides: dict, shape=GREY, seed: int = 0, checked: bool = True) -> nn.Module:
    base = build_model(arch, shape, 10)
    spec = study_spec("architecture", variants={"v": overrides})
    if checked:  # builds and runs the variant once more
        architecture.check(spec, Target("m", base, {}, None))
    ctx = Context(trained=base, seed=seed)
    return architecture.apply(architecture.conditions(spec, ctx)[1], ctx)


def test_a_torchvision_variant_overrides_the_builders_keywords():
    """resnet50's `width_per_group: 32` halves its bottlenecks' inner width: the parameters of
    torchvision's own resnet50 built with that keyword (3-channel input: no stem adapted)."""
    arch = {"type": "torchvision", "name": "resnet50"}
    narrow = variant(arch, {"width_per_group": 32}, shape=(3, 32, 32), checked=False)
    assert count_parameters(narrow) == count_parameters(torchvision.models.resnet50(width_per_group=32, num_classes=10))
    assert narrow.layer1[0].conv2.out_channels == 32
    zeroed = variant(RESNET18, {"zero_init_residual": True})  # each block's last norm starts at zero
    assert all((block.bn2.weight == 0).all() for stage in ("layer1", "layer4") for block in zeroed.get_submodule(stage))
    assert count_parameters(zeroed) == count_parameters(build_model(RESNET18, GREY, 10))


def test_a_torchvision_variant_is_built_without_pretrained_weights():
    spec = architecture.variant_spec(RESNET18 | {"weights": "IMAGENET1K_V1"}, {"zero_init_residual": True})
    assert spec == RESNET18 | {"zero_init_residual": True}


def test_a_module_variant_overrides_the_functions_kwargs():
    narrow = variant(OWN, {"width": 8})
    from_file = build_model(OWN | {"kwargs": {"width": 8}}, GREY, 10)
    assert count_parameters(narrow) == count_parameters(from_file) < count_parameters(build_model(OWN, GREY, 10))
    assert narrow.stem.out_channels == 8 and narrow.spec["arch"]["kwargs"] == {"width": 8}
    assert torch.equal(narrow.stem.weight, variant(OWN, {"width": 8}).stem.weight)  # seeded


def test_knockout_own_variants_keep_their_meaning():
    spec = architecture.variant_spec("study4_cnn", {"dense": [512]})
    assert spec["dense"] == [512] and spec["conv"] == [{"channels": 48}, {"channels": 96}, {"channels": 192}]


@pytest.mark.parametrize(
    "arch,overrides,message",
    [
        (RESNET18, {"weights": "IMAGENET1K_V1"}, "variants.v.weights: not overridable on a torchvision arch"),
        (RESNET18, {"name": "resnet34"}, "variants.v.name: not overridable on a torchvision arch"),
        (RESNET18, {"type": "cnn"}, "variants.v.type: not overridable"),
        (RESNET18, {"num_classes": 3}, "variants.v.num_classes: not overridable"),
        (RESNET18, {"depth": 3}, "variants.v.depth: torchvision's resnet18 takes no keyword argument 'depth'"),
        (RESNET18, {"width_per_group": 32}, "variants.v: BasicBlock only supports groups=1 and base_width=64"),
        (OWN, {"num_classes": 3}, "variants.v.num_classes: not overridable on a module arch"),
        (OWN, {"target": "x.py:Net"}, "variants.v.target: not overridable on a module arch"),
        (OWN, {"depth": 3}, "variants.v.depth: " + OWN["target"] + " takes no keyword argument 'depth'"),
    ],
)
def test_bad_variants_are_one_line_errors(arch, overrides, message):
    base = build_model(arch, GREY, 10)
    with pytest.raises(ConfigError) as err:
        architecture.check(study_spec("architecture", variants={"v": overrides}), Target("m", base, {}, None))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


RESNET_VALUES = {  # ablation values on the torchvision network: a random set and a downsampling conv's units
    "type": "filter_ablation",
    "model": "r18",
    "layers": ["layer4.1.conv2"],
    "sets": {
        "rand": {"select": "random", "k": 128, "value": ["zero", "mean", "resample"]},
        "down": {"select": "units", "units": {"layer3.0.downsample.0": [0, 1, 2, 3]}, "value": ["zero", "mean"]},
    },
    "compare": [["rand@mean", "rand"]],
}


@needs_fashion
@pytest.mark.slow
def test_a_torchvision_resnet_trained_here_through_factorize_architecture_and_values(tmp_path):
    """A torchvision ResNet-18 through snakemake, trained here, retrained per condition of
    factorize and architecture, and ablated under zero, mean and resample values."""
    config = {"seeds": [0], "device": "cpu", "threads": 1, **DATA, "unit_stats": {"examples": 100}}
    config["datasets"] = {"fashion_mnist": {"train_subset": 128, "test_subset": 64}}
    config["models"] = {"r18": {"dataset": "fashion_mnist", "arch": RESNET18, "train": TRAIN, "allow_chance": True}}
    write_config(tmp_path, config | {"interventions": studies("r18") | {"r18_values": RESNET_VALUES}})
    run = snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    check_tables(tmp_path, "r18")

    rows = pd.read_csv(tmp_path / "results/interventions/r18_values/r18/seed0.csv").set_index("condition")
    # the config file lists the sets in key order (down, rand): each set under each of its values
    assert list(rows.index) == ["baseline", "down", "down@mean", "rand:draw0", "rand@mean:draw0", "rand@resample:draw0"]
    assert list(rows["value"]) == ["zero", "zero", "mean", "zero", "mean", "resample"]
    assert rows.loc["rand:draw0", "units"] == rows.loc["rand@mean:draw0", "units"]
    sets = pd.read_csv(tmp_path / "results/tables/r18_values.csv").query("level == 'set'").set_index("set")
    assert {"rand", "rand@mean", "rand@resample", "down@mean"} <= set(sets.index)
    assert (tmp_path / "results/figures/r18_values/values.png").is_file()
