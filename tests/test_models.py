"""Models: the presets reproduce the notebooks' networks, names are stable, checkpoints are safe."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

from knockout.graph import units_of
from knockout.models import (
    PRESETS,
    build_model,
    count_parameters,
    load_model,
    save_model,
    summary,
)

# Parameter counts printed by the five notebooks (study 3's computed from its layer list).
NOTEBOOK_COUNTS = [
    ("study1_resnet50", (3, 32, 32), 23_528_522),  # torchvision ResNet50 with a 10-class head
    ("study2_mlp", (1, 28, 28), 4_394_880),
    ("study3_cnn", (3, 32, 32), 27_815_690),
    ("study4_cnn", (3, 32, 32), 736_618),
    ("study5_cnn", (1, 28, 28), 93_322),
]


@pytest.mark.parametrize("preset,shape,expected", NOTEBOOK_COUNTS)
def test_preset_parameter_counts_equal_the_notebooks(preset, shape, expected):
    assert count_parameters(build_model(preset, shape, 10)) == expected


def test_study4_without_dropout_matches_keras_summary():
    model = build_model({"preset": "study4_cnn", "conv_dropout": 0, "dense_dropout": 0}, (3, 32, 32), 10)
    assert count_parameters(model) == 736_618
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_every_preset_has_a_test():
    assert {p for p, _, _ in NOTEBOOK_COUNTS} == set(PRESETS)


def test_study3_feature_map_sizes_match_the_report():
    # "Layer 1 output size: 256*14*14 ... Layer 4 output size: 2048*1*1"
    model = build_model("study3_cnn", (3, 32, 32), 10)
    x = torch.zeros(1, 3, 32, 32)
    sizes = {}
    for name, stage in model.named_children():
        x = stage(x)
        sizes[name] = tuple(x.shape[1:])
    assert sizes["conv1_pool"] == (256, 14, 14)
    assert sizes["conv2_pool"] == (1024, 6, 6)
    assert sizes["conv3_pool"] == (2048, 2, 2)
    assert sizes["conv4_pool"] == (2048, 1, 1)


def test_layer_names_are_stable_and_addressable():
    cnn = build_model("study5_cnn", (1, 28, 28), 10)
    assert list(units_of(cnn)) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    mlp = build_model("study2_mlp", (1, 28, 28), 10)
    assert list(units_of(mlp)) == ["fc1", "fc2", "fc3", "fc4", "fc5"]
    assert mlp.fc5.out_features == 128  # the notebook's quirk, kept
    resnet = build_model({"type": "resnet", "depth": 18, "small_input": True}, (3, 32, 32), 10)
    names = units_of(resnet)
    assert "layer3.1.conv2" in names and "fc" in names and "conv1" in names


def test_resnet_state_dict_keys_are_torchvision_keys():
    import torchvision

    ours = build_model({"type": "resnet", "depth": 18}, (3, 224, 224), 1000)
    assert set(ours.state_dict()) == set(torchvision.models.resnet18().state_dict())


def test_resnet_loads_user_weights(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "imagenet.pth")
    ours = build_model({"type": "resnet", "depth": 18, "weights": str(tmp_path / "imagenet.pth")}, (3, 32, 32), 10)
    assert torch.equal(ours.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    assert ours.fc.out_features == 10


def test_cnn_spec_options():
    spec = {
        "type": "cnn",
        "conv": [
            {"channels": 8, "kernel": [3, 1], "padding": 1, "batch_norm": True},
            {"channels": 4, "kernel": [1, 3], "pool": 2},
        ],
        "dense": [16],
        "activation": "exponential",
        "conv_dropout": 0.1,
    }
    model = build_model(spec, (1, 12, 12), 3)
    assert model.conv1.kernel_size == (3, 1) and model.conv2.kernel_size == (1, 3)
    assert isinstance(model.conv1_bn, nn.BatchNorm2d) and model.conv1.bias is None
    assert model(torch.zeros(2, 1, 12, 12)).shape == (2, 3)


def test_unknown_preset_and_type_are_named():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        build_model("nope", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="unknown model type 'rnn'"):
        build_model({"type": "rnn"}, (1, 28, 28), 10)


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    torch.manual_seed(0)
    model = build_model("study5_cnn", (1, 28, 28), 10)
    save_model(model, tmp_path / "final.pt", seed=0)
    raw = torch.load(tmp_path / "final.pt", weights_only=True)
    assert raw["spec"]["arch"]["type"] == "cnn"
    again = load_model(tmp_path / "final.pt", "cpu")
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model.eval()(x), again.eval()(x))


def test_malicious_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"spec": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path / "evil.pt", "cpu")


def test_summary_lists_layers_shapes_and_total():
    text = summary(build_model("study5_cnn", (1, 28, 28), 10), (1, 28, 28))
    assert "conv3 (Conv2d)" in text and "(None, 64, 3, 3)" in text
    assert "Total params: 93,322" in text


def test_a_torchvision_head_of_other_classes_is_kept_for_class_outputs(tmp_path):
    """A 1000-way ImageNet-style head read through class_outputs on a 4-class subset: the
    weights' head is kept (not resized away), the readout picks the classes' outputs, and the
    checkpoint rebuilds with that head."""
    from knockout.readout import Readout

    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v3_small(num_classes=1000).eval()
    torch.save(theirs.state_dict(), tmp_path / "imagenet_like.pt")
    outputs = [3, 100, 7, 999]
    arch = {"type": "torchvision", "name": "mobilenet_v3_small", "weights": str(tmp_path / "imagenet_like.pt")}
    model = build_model(arch, (3, 32, 32), 4, Readout(class_outputs=tuple(outputs))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), theirs(x))  # the network as given, all 1000 outputs
        first = Readout.of(model)(model(x))[:, :4]
    assert torch.equal(first, theirs(x)[:, outputs])
    save_model(model, tmp_path / "final.pt")
    again = load_model(tmp_path / "final.pt", "cpu").eval()
    with torch.no_grad():
        assert torch.equal(again(x), theirs(x)) and Readout.of(again).class_outputs == tuple(outputs)
