"""Top activations: receptive fields computed right (by hand and against the gradient's
footprint), the top-k images, peaks and patches of filters whose responses are known, and the
filter choice and the PNG grid."""

import numpy as np
import pytest
import torch
from torch import nn

from knockout.models import build_model
from knockout.engine.top_activations import RF, choose_filters, patch_bounds, receptive_field, top_activations


def test_receptive_field_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    # conv 3x3:   size 3, jump 1, start 1        (output (0, 0) centred on input pixel 1)
    # maxpool 2:  size 3 + 1*1 = 4, jump 2, start 1 + 0.5*1 = 1.5
    # conv 3x3:   size 4 + 2*2 = 8, jump 2, start 1.5 + 1*2 = 3.5   (rows 0..7)
    assert receptive_field(model, "0") == RF((3, 3), (1, 1), (1.0, 1.0))
    assert receptive_field(model, "2") == RF((4, 4), (2, 2), (1.5, 1.5))
    assert receptive_field(model, "3") == RF((8, 8), (2, 2), (3.5, 3.5))
    assert patch_bounds(receptive_field(model, "3"), 0, 1, 20, 20) == (0, 2, 8, 10)


def test_padded_strided_conv_and_border_clipping():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, stride=2, padding=1))
    # conv p1: size 3, start 1 - 1 = 0; conv s2 p1: size 3 + 2 = 5, start 0 + (1 - 1) = 0, jump 2
    rf = receptive_field(model, "1")
    assert rf == RF((5, 5), (2, 2), (0.0, 0.0))
    assert patch_bounds(rf, 0, 0, 10, 10) == (0, 0, 3, 3)  # field rows -2..2, clipped at 0
    assert patch_bounds(rf, 4, 2, 10, 10) == (6, 2, 10, 7)  # rows 6..10 clipped at the bottom


def test_resnet_fields():
    model = build_model({"type": "resnet", "depth": 18, "small_input": True}, (3, 32, 32), 10)
    assert receptive_field(model, "conv1") == RF((3, 3), (1, 1), (0.0, 0.0))
    assert receptive_field(model, "layer1.0.conv1").size == (5, 5)
    assert receptive_field(model, "layer1.0").size == (7, 7)  # main path: two 3x3 convs
    assert receptive_field(model, "layer1") == RF((11, 11), (1, 1), (0.0, 0.0))
    assert receptive_field(model, "layer2.0.conv1") == RF((13, 13), (2, 2), (0.0, 0.0))
    assert receptive_field(model, "layer2.0.downsample.0") == RF((11, 11), (2, 2), (0.0, 0.0))
    assert receptive_field(model, "layer2.0") == RF((17, 17), (2, 2), (0.0, 0.0))


@pytest.mark.parametrize("layer", ["2", "4", "5"])
def test_field_is_the_gradient_footprint(layer):
    """Random convs and an average pool: an output's gradient is non-zero exactly on its field."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Conv2d(3, 3, (5, 3), stride=2),
        nn.Conv2d(3, 3, 3, dilation=2, padding=1),
        nn.Identity(),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 2, 2, stride=(1, 2), padding=1),
    )
    x = torch.randn(1, 1, 40, 40, requires_grad=True)
    out = model[: int(layer) + 1](x)
    rf = receptive_field(model, layer)
    for y, xx in [(0, 0), (out.shape[2] // 2, out.shape[3] // 2), (out.shape[2] - 1, out.shape[3] - 1)]:
        (grad,) = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
        rows, cols = grad[0, 0].abs().sum(1).nonzero()[:, 0], grad[0, 0].abs().sum(0).nonzero()[:, 0]
        footprint = (rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1)
        top, left, bottom, right = bounds = patch_bounds(rf, y, xx, 40, 40)
        if (y, xx) == (out.shape[2] // 2, out.shape[3] // 2):
            assert footprint == bounds
        else:  # at a border, padding of an inner map may hide part of the field from the gradient
            assert top <= footprint[0] and left <= footprint[1] and footprint[2] <= bottom and footprint[3] <= right


def test_no_field_once_the_map_is_flattened():
    model = build_model({"type": "cnn", "conv": [4], "dense": [8]}, (1, 8, 8), 10)
    assert receptive_field(model, "conv1_act") is not None
    assert receptive_field(model, "fc1") is None  # after flattening: the whole image


def bright_pixel_images():
    """Six 1x8x8 black images, each with one pixel of known brightness at a known place."""
    where = [(3, 4), (0, 0), (7, 2), (5, 5), (2, 6), (4, 1)]
    bright = [0.5, 3.0, 1.0, 2.0, 0.25, 4.0]
    images = torch.zeros(6, 1, 8, 8)
    for n, ((y, x), b) in enumerate(zip(where, bright)):
        images[n, 0, y, x] = b
    return images, where, bright


def probe_model():
    """conv 3x3 pad 1: filter 0 copies its input, filter 1 the input one pixel up-left."""
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 0, 0, 0] = 1.0
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))


def test_top_images_peaks_and_patches_of_known_filters():
    images, where, bright = bright_pixel_images()
    model = probe_model()
    table, arrays = top_activations(model, images, {"0": [0, 1]}, k=3, batch_size=4, device="cpu")
    order = [5, 1, 3]  # brightest first
    f0 = table[table["filter"] == 0]
    assert f0["image"].tolist() == order and f0["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(f0["score"], [bright[n] for n in order])
    assert list(zip(f0["peak_y"], f0["peak_x"])) == [where[n] for n in order]
    f1 = table[table["filter"] == 1]
    assert list(zip(f1["peak_y"], f1["peak_x"])) == [(where[n][0] + 1, where[n][1] + 1) for n in order]

    patches = arrays["patches_0"]
    assert patches.shape == (3, 2, 1, 3, 3) and patches.dtype == np.float32
    assert arrays["filters_0"].tolist() == [0, 1]
    assert patches[0, 0, 0, 1, 1] == 4.0 and np.nansum(patches[0, 0]) == 4.0  # pixel in the middle
    assert patches[0, 1, 0, 0, 0] == 4.0  # filter 1: the pixel is up-left of the peak
    # image 1's pixel is at the corner (0, 0): the field's top row and left column leave the image
    corner = patches[1, 0, 0]
    assert np.isnan(corner[0]).all() and np.isnan(corner[:, 0]).all() and corner[1, 1] == 3.0
    row = f0.iloc[1]
    assert (row["top"], row["left"], row["bottom"], row["right"]) == (0, 0, 2, 2)


def test_max_and_norm_scores_differ_and_ties_go_to_the_lower_index():
    images = torch.zeros(5, 1, 8, 8)
    images[0, 0, 2:6, 2:6] = 1.0  # broad and dim: norm 4, max 1
    images[1, 0, 4, 4] = 3.0  # one bright pixel: norm 3, max 3
    images[2:] = images[1]  # three copies of image 1: ties
    model = probe_model()
    by_norm, _ = top_activations(model, images, {"0": [0]}, k=4, score="norm", batch_size=2, device="cpu")
    by_max, _ = top_activations(model, images, {"0": [0]}, k=4, score="max", batch_size=2, device="cpu")
    assert by_norm["image"].tolist() == [0, 1, 2, 3]
    assert by_max["image"].tolist() == [1, 2, 3, 4]
    assert (by_max["peak_y"].iloc[0], by_max["peak_x"].iloc[0]) == (4, 4)


def test_a_linear_layer_shows_the_whole_image():
    images, _, bright = bright_pixel_images()
    model = probe_model()
    table, arrays = top_activations(model, images, {"3": [0, 2]}, k=2, device="cpu")
    assert (table[["top", "left", "bottom", "right"]] == [0, 0, 8, 8]).all().all()
    assert arrays["patches_3"].shape == (2, 2, 1, 8, 8) and not np.isnan(arrays["patches_3"]).any()


def test_choose_filters_is_deterministic():
    model = build_model("study5_cnn", (1, 28, 28), 10)
    chosen = choose_filters(model, {"conv1": 5, "conv2": [3, 1], "conv3": 2}, seed=7)
    assert chosen["conv2"] == [3, 1]
    assert len(set(chosen["conv1"])) == 5 and chosen["conv1"] == sorted(chosen["conv1"])
    assert all(0 <= f < 32 for f in chosen["conv1"]) and all(0 <= f < 64 for f in chosen["conv3"])
    assert choose_filters(model, {"conv3": 2, "conv1": 5}, seed=7) == {k: chosen[k] for k in ("conv3", "conv1")}
    assert choose_filters(model, {"conv1": 5}, seed=8)["conv1"] != chosen["conv1"]
    with pytest.raises(ValueError):
        choose_filters(model, {"conv1": [32]})


def test_resnet_stages_and_block_layers_can_be_probed():
    model = build_model({"type": "resnet", "depth": 18, "small_input": True}, (3, 16, 16), 10).eval()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    table, arrays = top_activations(
        model, images, {"layer1": [0, 3], "layer2.0.conv1": [1]}, k=2, batch_size=3, device="cpu"
    )
    assert len(table) == 2 * 2 + 1 * 2 and set(table["image"]) <= {0, 1, 2, 3}
    assert arrays["patches_layer1"].shape == (2, 2, 3, 11, 11)  # layer1's field: 11 px
    assert arrays["patches_layer2.0.conv1"].shape == (2, 1, 3, 13, 13)
    row = table[table["layer"] == "layer1"].iloc[0]
    rf = receptive_field(model, "layer1")
    assert (row["top"], row["left"], row["bottom"], row["right"]) == patch_bounds(
        rf, row["peak_y"], row["peak_x"], 16, 16
    )
