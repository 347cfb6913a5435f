"""The traced graph: what a silenced unit changes and what it costs, what an occluded window costs, folded batch norms, and a
traced module that never writes into a value another node reads."""

import torch
from torch import nn

from knockout.graph import fold_batch_norms, graph_of
from knockout.models import build_model


def test_the_arithmetic_bound_of_a_silenced_unit_is_counted_by_hand():
    model = build_model("study5_cnn", (1, 28, 28), 10).eval()
    graph = graph_of(model, torch.zeros(1, 1, 28, 28))
    conv1, conv2, conv3, fc1, fc2 = 26 * 26 * 32 * 9, 11 * 11 * 64 * 32 * 9, 3 * 3 * 64 * 64 * 9, 576 * 64, 64 * 10
    full = conv1 + conv2 + conv3 + fc1 + fc2
    assert graph.unit_bound("conv1") == (full, conv2 // 32 + conv3 + fc1 + fc2)  # conv2 sees one of its 32 channels change
    assert graph.unit_bound("conv2") == (full, conv3 // 64 + fc1 + fc2)
    assert graph.unit_bound("conv3") == (full, fc1 // 64 + fc2)  # flattened: 9 of fc1's 576 inputs
    assert graph.unit_bound("fc1") == (full, fc2 // 64)


def test_an_occluded_window_costs_the_positions_whose_field_it_meets():
    model = build_model("study5_cnn", (1, 28, 28), 10).eval()
    graph = graph_of(model, torch.zeros(1, 1, 28, 28))
    conv1, conv2, conv3, fc1, fc2 = 26 * 26 * 32 * 9, 11 * 11 * 64 * 32 * 9, 3 * 3 * 64 * 64 * 9, 576 * 64, 64 * 10
    corner, whole = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[0, 28, 0, 28]])
    # pixel (0, 0) lies in the field of position (0, 0) alone of each conv: fields 3, 8, 18 pixels wide
    assert graph.window_macs(corner) == conv1 // 676 + conv2 // 121 + conv3 // 9 + fc1 + fc2
    assert graph.window_macs(torch.cat([corner, whole])) == graph.window_macs(corner) + conv1 + conv2 + conv3 + fc1 + fc2


def test_a_silenced_unit_stays_in_its_channel_through_a_residual_add():
    model = build_model({"type": "torchvision", "name": "resnet18", "small_input": True}, (3, 16, 16), 10).eval()
    graph = graph_of(model, torch.zeros(1, 3, 16, 16))
    spread = graph.spread("layer2.1.conv2")
    assert [n.name for n in spread.confined] == ["layer2_1_bn2", "add_3", "layer2_1_relu_1"]  # norm, + identity, ReLU
    assert {n.target for n in spread.linear} == {"layer3.0.conv1", "layer3.0.downsample.0"}
    last = graph.spread("layer4.1.conv2")
    assert {n.target for n in last.linear} == {"fc"} and [n.op for n in last.changed] == ["output"]


def test_folded_batch_norms_give_the_same_function():
    torch.manual_seed(0)
    model = build_model({"type": "torchvision", "name": "resnet18", "small_input": True}, (3, 16, 16), 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    model.eval()
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_the_traced_module_writes_into_no_value_another_node_reads():
    model = build_model({"type": "torchvision", "name": "resnet18", "small_input": True}, (3, 16, 16), 10).eval()
    assert any(getattr(m, "inplace", False) for m in model.modules())  # torchvision's in-place ReLUs
    graph = graph_of(model, torch.zeros(1, 3, 16, 16))
    cut = graph.cut(graph.position[graph.mask_node("layer2.0.conv2")] + 1)
    with torch.no_grad():
        live = graph.values(cut.live)(torch.randn(2, 3, 16, 16))
        kept = [t.clone() for t in live]
        first, second = cut.suffix(*live), cut.suffix(*live)
    assert all(torch.equal(a, b) for a, b in zip(live, kept)) and torch.equal(first, second)
