"""Occlusion maps: Captum's attribution reproduced, centred maps equal to hand-built occlusions,
the patch-wise forward equal to the plain one, and the summary/selection helpers."""

import numpy as np
import pytest
import torch
from torch import nn

from knockout.models import build_model
from knockout.engine.occlusion import captum_spans, centred_spans, occlusion_maps, select_images, summary

SMALL_CNN = {"type": "cnn", "conv": [4, 8], "pool": 2, "dense": [16]}
RGB_CNN = {
    "type": "cnn",
    "conv": [{"channels": 6, "padding": 1, "pool": 2}, {"channels": 8, "stride": 2}],
    "batch_norm": True,
    "dense": [12],
}


def tiny_resnet(shape=(3, 10, 10), classes=10):
    """A ResNet in miniature: stem, a BasicBlock, a Bottleneck, a strided BasicBlock, head."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    down = lambda cin, cout, s: nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride=s, bias=False), nn.BatchNorm2d(cout)
    )  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(shape[0], 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Sequential(BasicBlock(8, 8), Bottleneck(8, 4, downsample=down(8, 16, 1))),
        BasicBlock(16, 12, stride=2, downsample=down(16, 12, 2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    )


def randomise_batch_norms(model):
    """Non-trivial running statistics, so a patch computed without them would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def setup(arch, shape, n, seed=0):
    torch.manual_seed(seed)
    model = randomise_batch_norms(tiny_resnet(shape) if arch == "tiny_resnet" else build_model(arch, shape, 10))
    images = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.arange(n) % 10
    return model, images, labels


def softmax_prob(model, x, label):
    with torch.no_grad():
        return torch.softmax(model(x[None]), 1)[0, label].item()


def captum_attribution(model, images, labels, w, stride, fill):
    from captum.attr import Occlusion

    C = images.shape[1]
    base = torch.as_tensor(fill, dtype=images.dtype).reshape(1, -1, 1, 1)
    with torch.no_grad():
        attr = Occlusion(lambda x: torch.softmax(model(x), 1)).attribute(
            images,
            sliding_window_shapes=(C, w, w),
            strides=(C, stride, stride),
            baselines=base,
            target=labels,
            perturbations_per_eval=256,
        )
    assert torch.allclose(attr, attr[:, :1].expand_as(attr))  # the window spans every channel
    return attr[:, 0].numpy()


@pytest.mark.parametrize(
    "arch,shape,n,fill",
    [
        (SMALL_CNN, (1, 12, 12), 2, 0.0),
        (RGB_CNN, (3, 32, 32), 2, [-1.0, 0.5, 2.0]),  # per-channel fill (e.g. -mean/std)
        ("tiny_resnet", (3, 12, 12), 2, [0.3, -0.2, 0.1]),  # residual blocks on patches
    ],
)
def test_attribution_matches_captum_occlusion(arch, shape, n, fill):
    model, images, labels = setup(arch, shape, n)
    maps = occlusion_maps(
        model, images, labels, windows=(3, 5), stride=1, fill=torch.tensor(fill), budget_mb=256, device="cpu"
    )
    strided = occlusion_maps(
        model, images, labels, windows=(3, 5), stride=2, fill=torch.tensor(fill), budget_mb=256, device="cpu"
    )
    for wi, w in enumerate((3, 5)):
        for stride, m in ((1, maps), (2, strided)):  # stride 2 with 12-5 odd: a cut-off last window
            expected = captum_attribution(model, images, labels, w, stride, fill)
            np.testing.assert_allclose(m["attribution"][:, wi], expected, atol=1e-5, rtol=0)
    assert np.abs(maps["attribution"]).max() > 1e-4  # not vacuous: occlusion moves the probability
    np.testing.assert_allclose(maps["prob_centred"], strided["prob_centred"], atol=1e-6)  # Captum's only


def test_patchwise_forward_equals_running_every_occluded_image():
    """The reuse of the original activations (patches through convs, pools with padding,
    dilation, batch norm, residual blocks) gives what the whole network gives."""
    torch.manual_seed(0)
    model = randomise_batch_norms(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.Conv2d(4, 6, 3, dilation=2, padding=2),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 5 * 4, 10),
        )
    )
    cases = [
        (model, torch.randn(2, 3, 19, 17), torch.tensor([1, 2]), 3),  # small budget: several forwards
        (*setup("tiny_resnet", (3, 13, 11), 2), 64),
    ]
    for m, x, y, budget in cases:
        fast = occlusion_maps(m, x, y, windows=(2, 5), fill=0.7, budget_mb=budget, stride=1, device="cpu")
        slow = occlusion_maps(m, x, y, windows=(2, 5), fill=0.7, reuse=False, stride=1, budget_mb=256, device="cpu")
        np.testing.assert_allclose(fast["prob_centred"], slow["prob_centred"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(fast["attribution"], slow["attribution"], atol=1e-6, rtol=0)
        assert (fast["pred_centred"] == slow["pred_centred"]).mean() > 0.99


class Branchy(nn.Module):
    """A user's own network, not a Sequential: two branches concatenated, a residual add with a
    layer-scale constant, a grouped dilated conv, then global pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 4, 3, padding=1)
        self.right = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(8, 4, 1))
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([self.left(x), self.right(x)], 1)
        y = x + self.scale * self.grouped(y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_a_users_network_shares_the_intact_activations_on_its_graph():
    """Occlusion on any traced network, by its graph (not by module names): the patched ops are
    the convs, pools, the concatenation and the add, and the maps equal running each occluded
    image whole."""
    from knockout.engine.occlusion import window_positions
    from knockout.engine.shared import footprints
    from knockout.graph import fold_batch_norms, graph_of

    torch.manual_seed(0)
    model = Branchy().eval()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    graph = graph_of(fold_batch_norms(model), x[:1])
    groups = footprints(graph, window_positions(16, 16, 3, 1).rects)
    patched = {step.node.name for _, found in groups for step in found.steps}
    assert {"stem", "left", "right_0", "right_1", "cat", "grouped", "mul", "add"} <= patched
    fast = occlusion_maps(model, x, y, windows=(3, 5), fill=0.2, stride=1, budget_mb=1, device="cpu")
    slow = occlusion_maps(model, x, y, windows=(3, 5), fill=0.2, stride=1, budget_mb=256, device="cpu", reuse=False)
    np.testing.assert_allclose(fast["prob_centred"], slow["prob_centred"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast["attribution"], slow["attribution"], atol=1e-6, rtol=0)
    assert np.abs(fast["attribution"]).max() > 1e-4


def test_centred_map_is_the_probability_of_the_hand_occluded_image():
    model, images, labels = setup(SMALL_CNN, (1, 12, 12), 2)
    fill = 0.25
    maps = occlusion_maps(model, images, labels, windows=(3, 4), fill=fill, stride=1, budget_mb=256, device="cpu")
    assert maps["prob_centred"].shape == (2, 2, 12, 12) and maps["pred_centred"].dtype == np.int16
    for n, wi, w, i, j in [(0, 0, 3, 5, 7), (1, 0, 3, 11, 0), (0, 1, 4, 6, 6), (1, 1, 4, 0, 11)]:
        x = images[n].clone()
        r0, c0 = i - w // 2, j - w // 2  # even w: rows i - w//2 .. i - w//2 + w - 1
        x[:, max(0, r0) : r0 + w, max(0, c0) : c0 + w] = fill
        with torch.no_grad():
            p = torch.softmax(model(x[None]), 1)[0]
        assert maps["prob_centred"][n, wi, i, j] == pytest.approx(p[labels[n]].item(), abs=1e-6)
        assert maps["pred_centred"][n, wi, i, j] == p.argmax().item()
    assert maps["baseline_prob"][1] == pytest.approx(softmax_prob(model, images[1], labels[1]), abs=1e-6)


def test_window_is_clipped_at_the_border():
    lo, hi = centred_spans(12, 5)
    assert (lo[0].item(), hi[0].item()) == (0, 3)  # centre 0, w=5: rows 0..2 only
    assert (lo[11].item(), hi[11].item()) == (9, 12)
    lo, hi = centred_spans(12, 4)
    assert (lo[2].item(), hi[2].item()) == (0, 4) and (lo[11].item(), hi[11].item()) == (9, 12)
    lo, hi = captum_spans(12, 5, 2)  # starts 0, 2, ..., 8: the last one cut off at 12
    assert lo.tolist() == [0, 2, 4, 6, 8] and hi.tolist() == [5, 7, 9, 11, 12]

    model, images, labels = setup(SMALL_CNN, (1, 12, 12), 1)
    maps = occlusion_maps(model, images, labels, windows=(5,), fill=-1.0, stride=1, budget_mb=256, device="cpu")
    x = images[0].clone()
    x[:, :3, :3] = -1.0
    assert maps["prob_centred"][0, 0, 0, 0] == pytest.approx(softmax_prob(model, x, labels[0]), abs=1e-6)


def test_a_window_larger_than_the_image_gives_the_fill_image_everywhere():
    model, images, labels = setup(SMALL_CNN, (1, 12, 12), 2)
    maps = occlusion_maps(model, images, labels, windows=(25,), fill=0.5, stride=1, budget_mb=256, device="cpu")
    for n in range(2):
        p = softmax_prob(model, torch.full((1, 12, 12), 0.5), labels[n])
        np.testing.assert_allclose(maps["prob_centred"][n, 0], p, atol=1e-6)
    assert not maps["attribution"].any()  # no window fits inside: nothing covered (Captum refuses)


def test_summary_of_a_constant_model_shows_no_change():
    model, images, labels = setup(SMALL_CNN, (1, 12, 12), 3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.fc2.bias.copy_(torch.arange(10.0))  # always class 9
    maps = occlusion_maps(model, images, labels, windows=(3, 5), stride=1, fill=0.0, budget_mb=256, device="cpu")
    table = summary(maps)
    assert len(table) == 6 and list(table["window"]) == [3, 5] * 3
    assert (table["changed_area"] == 0).all() and (table["takeover_class"] == -1).all()
    np.testing.assert_allclose(table["min_prob"], table["baseline_prob"], atol=1e-7)


def test_summary_reports_the_lowest_probability_and_the_takeover_class():
    maps = {
        "windows": np.array([3]),
        "labels": np.array([1]),
        "baseline_prob": np.array([0.9]),
        "baseline_pred": np.array([1]),
        "prob_centred": np.full((1, 1, 2, 3), 0.9, np.float32),
        "pred_centred": np.array([[[[1, 4, 4], [2, 1, 1]]]], np.int16),
    }
    maps["prob_centred"][0, 0, 1, 2] = 0.1
    row = summary(maps).iloc[0]
    assert (row["argmin_y"], row["argmin_x"], row["min_prob"]) == (1, 2, pytest.approx(0.1))
    assert row["changed_area"] == pytest.approx(3 / 6) and row["takeover_class"] == 4


def test_select_images():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0])
    assert select_images(labels, 4).tolist() == [0, 1, 2, 3]
    picked = select_images(labels, 2, per_class=True, seed=3)
    assert picked.dtype == torch.long and picked.tolist() == sorted(picked.tolist())
    assert torch.bincount(labels[picked]).tolist() == [2, 2, 2]
    assert torch.equal(picked, select_images(labels, 2, per_class=True, seed=3))
    assert len(select_images(labels, 4, per_class=True)) == 4 + 3 + 3  # a class with fewer: all
