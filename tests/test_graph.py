"""The traced graph: what a silenced unit changes and what it costs, what an occluded window costs, folded batch norms, and a
traced module that never writes into a value another node reads."""

import torch
from torch import nn

from knockout.engine.shared import spread, unit_bound
from knockout.graph import fold_batch_norms, graph_of
from knockout.models import build_model


def test_the_arithmetic_bound_of_a_silenced_unit_is_counted_by_hand():
    model = build_model("study5_cnn", (1, 28, 28), 10).eval()
    graph = graph_of(model, torch.zeros(1, 1, 28, 28))
    conv1, conv2, conv3, fc1, fc2 = 26 * 26 * 32 * 9, 11 * 11 * 64 * 32 * 9, 3 * 3 * 64 * 64 * 9, 576 * 64, 64 * 10
    full = conv1 + conv2 + conv3 + fc1 + fc2
    assert unit_bound(graph, "conv1") == (
        full,
        conv2 // 32 + conv3 + fc1 + fc2,
    )  # conv2 sees one of its 32 channels change
    assert unit_bound(graph, "conv2") == (full, conv3 // 64 + fc1 + fc2)
    assert unit_bound(graph, "conv3") == (full, fc1 // 64 + fc2)  # flattened: 9 of fc1's 576 inputs
    assert unit_bound(graph, "fc1") == (full, fc2 // 64)


def test_an_occluded_window_costs_the_positions_whose_field_it_meets():
    model = build_model("study5_cnn", (1, 28, 28), 10).eval()
    graph = graph_of(model, torch.zeros(1, 1, 28, 28))
    conv1, conv2, conv3, fc1, fc2 = 26 * 26 * 32 * 9, 11 * 11 * 64 * 32 * 9, 3 * 3 * 64 * 64 * 9, 576 * 64, 64 * 10
    corner, whole = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[0, 28, 0, 28]])
    # pixel (0, 0) lies in the field of position (0, 0) alone of each conv: fields 3, 8, 18 pixels wide
    assert graph.window_macs(corner) == conv1 // 676 + conv2 // 121 + conv3 // 9 + fc1 + fc2
    assert (
        graph.window_macs(torch.cat([corner, whole])) == graph.window_macs(corner) + conv1 + conv2 + conv3 + fc1 + fc2
    )


def test_a_silenced_unit_stays_in_its_channel_through_a_residual_add():
    model = build_model({"type": "torchvision", "name": "resnet18", "small_input": True}, (3, 16, 16), 10).eval()
    graph = graph_of(model, torch.zeros(1, 3, 16, 16))
    found = spread(graph, "layer2.1.conv2")
    assert [n.name for n in found.confined] == ["layer2_1_bn2", "add_3", "layer2_1_relu_1"]  # norm, + identity, ReLU
    assert {n.target for n in found.linear} == {"layer3.0.conv1", "layer3.0.downsample.0"}
    last = spread(graph, "layer4.1.conv2")
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


def test_a_field_behind_a_squeeze_excitation_gate_is_the_whole_image():
    model = build_model({"type": "torchvision", "name": "mobilenet_v3_small"}, (3, 32, 32), 10).eval()
    graph = graph_of(model, torch.zeros(1, 3, 32, 32))
    assert graph.receptive_field("features.1.block.0.0").size == (7, 7)  # stem and depthwise conv, before the gate
    assert graph.receptive_field("features.2.block.0.0") is None  # the gate's global pooling saw every pixel


class Scaled(nn.Module):
    """A tensor created in forward scales the pooled features: the trace holds it as a constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(x * torch.tensor([1.0, -2.0, 3.0, 0.5]))


def test_a_suffix_that_reads_a_traced_constant_evaluates():
    from knockout.engine.evaluate import evaluate_conditions
    from knockout.engine import Condition, Context, apply_condition

    torch.manual_seed(0)
    model, x, y = Scaled().eval(), torch.randn(6, 3, 8, 8), torch.arange(6)
    assert any(n.op == "get_attr" for n in graph_of(model, x).nodes)
    conditions = [
        Condition("baseline", "baseline"),
        Condition("each:conv:1", "each", silence=(("conv", (1,)),)),
        Condition("rerandomize:conv", "rerandomize", replace=(("conv", "rerandom"),)),
    ]
    context = Context(trained=model, rerandom=Scaled().eval())
    shared = evaluate_conditions(conditions, context, x, y, budget_mb=2, device="cpu", apply=apply_condition)
    for c in conditions:
        with torch.no_grad():
            reference = apply_condition(c, context)(x)
        torch.testing.assert_close(shared[c.name].losses, nn.functional.cross_entropy(reference, y, reduction="none"))


class SizedEarly(nn.Module):
    """The batch size read off the input and used after the silenced layer (MaxViT's windows do this)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        b = x.shape[0]
        return self.head(self.conv2(torch.relu(self.conv1(x))).reshape(b, -1))


def test_a_silenced_unit_whose_suffix_reads_a_size_evaluates():
    from knockout.engine.evaluate import evaluate_conditions
    from knockout.engine import Condition, Context, apply_condition

    torch.manual_seed(0)
    model, x, y = SizedEarly().eval(), torch.randn(5, 3, 8, 8), torch.arange(5)
    conditions = [Condition("baseline", "baseline")] + [
        Condition(f"each:conv1:{u}", "each", silence=(("conv1", (u,)),)) for u in range(4)
    ]
    context = Context(trained=model)
    shared = evaluate_conditions(conditions, context, x, y, budget_mb=2, device="cpu", apply=apply_condition)
    for c in conditions:
        with torch.no_grad():
            reference = apply_condition(c, context)(x)
        torch.testing.assert_close(shared[c.name].losses, nn.functional.cross_entropy(reference, y, reduction="none"))
