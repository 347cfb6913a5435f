"""knockout from Python (`knockout.api`): the verbs on networks in memory and the user's own data.
The same study through the workflow and through the API, on the same checkpoints and data, gives
identical tables; a DataLoader gives what the same images as tensors give, and what a plain
PyTorch loop with a hook gives; the trainer gives the workflow's weights; what cannot work is one
line."""

import filecmp

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import needs_fashion, snakemake
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import knockout
from knockout.data import open_view
from knockout.errors import ConfigError, DataError
from knockout.models import build_model, count_parameters, load_model

FILTERS = {
    "type": "filter_ablation",
    "model": "cnn",
    "layers": ["conv2"],
    "sets": {
        "low": {"select": "lowest_response", "k": 4, "value": ["zero", "mean"]},
        "rand": {"select": "random", "k": 4, "repeats": 2, "exclude": "low"},
        "each": {"select": "each"},
        "curve": {"select": "cumulative", "fractions": [0.25, 0.5], "repeats": 2},
        "important": {"select": "cumulative", "fractions": [0.25], "order": "importance", "descending": True},
    },
    "compare": [["low", "rand"]],
}
SWAP = {"type": "layer_swap", "model": "mlp", "modes": ["reinit", "rerandomize", "transplant", "rewind"]}
OCCLUSION = {"type": "occlusion", "model": "cnn", "images": {"n": 2}, "windows": [3, 5], "stride": 2, "fill": 0.3}


@needs_fashion
@pytest.mark.slow  # three studies through snakemake and through the API on two seeds
def test_the_api_and_the_workflow_give_identical_tables(with_models, tmp_path_factory):
    """One config's studies through snakemake, and the same studies through `knockout.ablate`,
    `swap_layers` and `occlude` on the same checkpoints and prepared data: the same files."""
    workdir = with_models({"filters": FILTERS, "swap": SWAP, "occ": OCCLUSION})
    targets = [f"results/tables/{name}.csv" for name in ("filters", "swap", "occ")]
    run = snakemake(workdir, *targets)
    assert run.returncode == 0, run.stderr[-4000:]

    def networks(model, file="final.pt"):
        return [load_model(workdir / f"results/models/{model}/seed{s}/{file}", "cpu") for s in (0, 1)]

    train, test, meta = open_view(workdir / "results/data/fashion_mnist")  # the dataset's mean and std
    common = {"seeds": [0, 1], "classes": meta["classes"]}
    api = tmp_path_factory.mktemp("api")
    # the sets in the config file's order (the test's config writer sorts keys)
    study = {"layers": FILTERS["layers"], "sets": dict(sorted(FILTERS["sets"].items())), "compare": FILTERS["compare"]}
    knockout.ablate(networks("cnn"), test, **study, reference=train, name="filters", model_name="cnn", **common).save(
        api
    )
    checkpoints = [
        {e: load_model(workdir / f"results/models/mlp/seed{s}/epochs/epoch{e}.pt", "cpu") for e in (1, 2)}
        for s in (0, 1)
    ]
    knockout.swap_layers(
        networks("mlp"),
        test,
        modes=SWAP["modes"],
        init=networks("mlp", "init.pt"),
        checkpoints=checkpoints,
        name="swap",
        model_name="mlp",
        **common,
    ).save(api)
    pixels, labels = test.pixels(range(2)), test.labels[:2]
    occluded = knockout.occlude(
        networks("cnn"),
        pixels,
        labels,
        windows=[3, 5],
        stride=2,
        fill=0.3,
        preprocess={"mean": meta["mean"], "std": meta["std"]},
        name="occ",
        model_name="cnn",
        **common,
    )
    occluded.save(api)
    for name, model, suffixes in (
        ("filters", "cnn", [".csv", ".per_class.csv", ".confusion.csv", ".examples.parquet"]),
        ("swap", "mlp", [".csv", ".per_class.csv", ".confusion.csv"]),
        ("occ", "cnn", [".csv"]),
    ):
        for seed in (0, 1):
            for suffix in suffixes:
                path = f"results/interventions/{name}/{model}/seed{seed}{suffix}"
                if suffix.endswith("parquet"):
                    pd.testing.assert_frame_equal(pd.read_parquet(workdir / path), pd.read_parquet(api / path))
                else:
                    assert filecmp.cmp(workdir / path, api / path, shallow=False), path
        for path in (f"results/tables/{name}.csv", f"results/tables/{name}.comparisons.csv"):
            assert filecmp.cmp(workdir / path, api / path, shallow=False), path
    for seed in (0, 1):
        workflow = np.load(workdir / f"results/interventions/occ/cnn/seed{seed}.npz")
        for key in ("prob_centred", "pred_centred", "attribution", "inputs", "fill"):
            assert np.array_equal(workflow[key], occluded.arrays[seed][key]), key


class Brightness(Dataset):
    """A user's Dataset: 16x16 RGB images whose class (of 4) is how bright they are, as
    ToTensor() gives them (floats in [0, 1])."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        self.images = torch.rand(n, 3, 16, 16, generator=g) * 0.5 + self.labels[:, None, None, None] * 0.15
        self.classes = ["dim", "grey", "light", "bright"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


IMAGENETISH = {"mean": [0.45, 0.45, 0.45], "std": [0.25, 0.25, 0.25]}


def normalised(x):
    """The user's own normalisation of pixels in [0, 1] (what `preprocess=IMAGENETISH` states)."""
    mean, std = torch.tensor(IMAGENETISH["mean"])[:, None, None], torch.tensor(IMAGENETISH["std"])[:, None, None]
    return (x - mean) / std


@pytest.fixture(scope="module")
def trained_net():
    """The user's network, trained their own way on their Dataset."""
    torch.manual_seed(0)
    net = Net()
    data = Brightness(256, seed=1)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(15):
        for x, y in DataLoader(data, batch_size=32, shuffle=True):
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(normalised(x)), y).backward()
            optimiser.step()
    return net.eval()


def test_a_sweep_on_the_users_dataloader_is_what_their_own_loop_with_a_hook_gives(trained_net):
    """Every unit of `conv` silenced (zero and mean) on a DataLoader (batches of 7, so the
    engine's chunks cut them): the same tables as the images given as tensors, and every
    accuracy what the user's own loop with a zeroing forward hook measures."""
    data = Brightness(90, seed=2)
    loader = DataLoader(data, batch_size=7)
    result = knockout.ablate(trained_net, loader, layers="conv", preprocess=IMAGENETISH, budget_mb=0.05)
    tensors = knockout.ablate(
        trained_net, (data.images, data.labels), layers="conv", preprocess=IMAGENETISH, classes=data.classes
    )
    pd.testing.assert_frame_equal(result.per_seed, tensors.per_seed)
    assert list(result.per_class["class_name"].unique()) == data.classes  # the Dataset's own names
    assert (result.per_seed["accuracy"].iloc[0] > 0.6) and len(result.per_seed) == 1 + 8

    def users_own(unit):
        hook = trained_net.bn.register_forward_hook(lambda m, a, o: o.index_fill(1, torch.tensor([unit]), 0.0))
        try:
            with torch.no_grad():
                right = sum(int((trained_net(normalised(x)).argmax(1) == y).sum()) for x, y in loader)
        finally:
            hook.remove()
        return right / len(data)

    rows = result.per_seed.set_index("condition")
    for unit in range(8):
        assert rows.loc[f"each:conv:{unit}", "accuracy"] == pytest.approx(users_own(unit), abs=1e-6)  # float32
    summary = result.table.query("level == 'condition'")
    assert (summary["n_seeds"] == 1).all() and summary["ci_low"].isna().all()  # one network: no CI


def test_several_networks_are_seeds_with_statistics_across_them(trained_net):
    """A list of networks: one per seed; the over-seed table and the paired comparison."""
    torch.manual_seed(1)
    other = Net()
    other.load_state_dict(trained_net.state_dict())
    with torch.no_grad():
        other.conv.weight.mul_(1.05)  # a second "seed"
    data = Brightness(80, seed=3)
    result = knockout.ablate(
        [trained_net, other],
        DataLoader(data, batch_size=16),
        layers="conv",
        sets={"low": {"select": "lowest_response", "k": 2}, "rand": {"select": "random", "k": 2, "repeats": 2}},
        value=["zero", "mean"],
        reference=DataLoader(Brightness(64, seed=4), batch_size=16),
        compare=[["low", "rand"]],
        preprocess=IMAGENETISH,
    )
    assert sorted(result.per_seed["seed"].unique()) == [0, 1]
    sets = result.table.query("level == 'set'").set_index("set")
    assert (sets["n_seeds"] == 2).all() and {"low", "low@mean", "rand", "rand@mean"} <= set(sets.index)
    assert result.comparisons["n_seeds"].item() == 2 and "p = " in result.comparisons["verdict"].item()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda net, d: knockout.ablate(net, d, layers="conv9"), "layers[0]: no layer 'conv9' in model 'Net'"),
        (
            lambda net, d: knockout.ablate(net, d, layers="conv", sets={"low": {"select": "lowest_response", "k": 9}}),
            "sets.low.k: 9 is more than the 8 units of conv",
        ),
        (
            lambda net, d: knockout.ablate(net, d, layers="conv", value="median"),
            "sets.each.value: 'median' is not one of ['zero', 'mean', 'resample', 'noise']",
        ),
        (
            lambda net, d: knockout.ablate(net, d, layers="conv", value="mean", reference=d),
            "reference: the evaluated data itself",
        ),
        (lambda net, d: knockout.ablate(net, d, layers="conv", value="mean"), "reference: none given"),
        (
            lambda net, d: knockout.ablate(net, DataLoader(Brightness(8), shuffle=True), layers="conv"),
            "data: the DataLoader shuffles (shuffle=True)",
        ),
        (
            lambda net, d: knockout.ablate(
                net, DataLoader([{"image": torch.zeros(3, 16, 16), "label": 0}]), layers="conv"
            ),
            "data: the loader yields dicts (keys image, label)",
        ),
        (
            lambda net, d: knockout.ablate(
                net, (torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4).long()), layers="conv"
            ),
            "data: uint8 images: say how the network sees them",
        ),
        (
            lambda net, d: knockout.ablate(
                net, (torch.randn(4, 3, 16, 16), torch.zeros(4).long()), layers="conv", preprocess="imagenet"
            ),
            "data: images from",
        ),
        (lambda net, d: knockout.swap_layers(net, d, modes=["reinit"]), "layer_swap with these modes needs init="),
    ],
)
def test_what_cannot_work_is_one_line(trained_net, call, message):
    data = DataLoader(Brightness(16), batch_size=8)
    with pytest.raises((ConfigError, DataError)) as err:
        call(trained_net, data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_a_missing_layer_of_a_large_network_names_the_nearest():
    net = build_model({"type": "torchvision", "name": "resnet18", "small_input": True}, (3, 16, 16), 4)
    with pytest.raises(ConfigError) as err:
        knockout.ablate(net, (torch.rand(4, 3, 16, 16), torch.arange(4)), layers="layer3.1.con2", preprocess="none")
    assert "(nearest: layer3.1.conv2, " in str(err.value) and "21 layers in all" in str(err.value)


@needs_fashion
def test_the_trainer_gives_the_workflows_weights(trained):
    """`knockout.train` on the prepared view, from the network the seed builds: the workflow's
    final.pt, bit for bit (one thread, as the job ran)."""
    from conftest import MODELS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test, _ = open_view(trained / "results/data/fashion_mnist")
        torch.manual_seed(0)
        network = build_model("study5_cnn", (1, 28, 28), 10)
        done = knockout.train(network, train, test, seed=0, **MODELS["cnn"]["train"])
    finally:
        torch.set_num_threads(threads)
    expected = load_model(trained / "results/models/cnn/seed0/final.pt", "cpu").state_dict()
    for key, value in done.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert list(done.history.columns[:3]) == ["epoch", "train_loss", "train_acc"] and len(done.history) == 1


def test_train_takes_the_users_own_module_and_dataset(tmp_path):
    """`knockout.train` on a module knockout did not build and the user's Dataset: trained (better
    than chance), its final.pt holds the weights (no spec: load_model says how to read them)."""
    torch.manual_seed(0)
    net = Net()
    done = knockout.train(
        net,
        Brightness(256, seed=5),
        Brightness(64, seed=6),
        preprocess=IMAGENETISH,
        epochs=5,
        lr=0.05,
        batch_size=32,
        optimizer="adam",
        out_dir=tmp_path,
    )
    assert done.model is net and done.metrics["test_accuracy"] > 0.5
    saved = torch.load(tmp_path / "final.pt", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="final.pt: the weights of a network knockout did not build"):
        load_model(tmp_path / "final.pt", "cpu")


def test_importance_is_the_drop_the_users_own_loop_measures_on_the_reference_images(trained_net):
    """`order: importance` ranks units by the accuracy drop each causes alone on the reference
    images (never the evaluated ones): the drop a plain loop with a zeroing hook measures there,
    and the importance-ordered curve silences the most important units first."""
    reference, test = Brightness(64, seed=3), Brightness(48, seed=4)
    stats = knockout.unit_statistics(trained_net, reference, preprocess=IMAGENETISH, importance=["conv"])
    assert stats.query("layer == 'head'")["importance"].isna().all()  # measured where asked only

    def accuracy(unit=None):
        hook = trained_net.bn.register_forward_hook(
            lambda m, a, o: o if unit is None else o.index_fill(1, torch.tensor([unit]), 0.0)
        )
        try:
            with torch.no_grad():
                return float((trained_net(normalised(reference.images)).argmax(1) == reference.labels).float().mean())
        finally:
            hook.remove()

    conv = stats.query("layer == 'conv'").set_index("unit")["importance"]
    for unit in range(8):
        assert conv[unit] == pytest.approx(accuracy() - accuracy(unit), abs=1e-6)
    curve = {"select": "cumulative", "fractions": [0.25], "order": "importance", "descending": True}
    result = knockout.ablate(
        trained_net, test, layers="conv", sets={"top": curve}, reference=reference, preprocess=IMAGENETISH
    )
    most = conv.sort_values(ascending=False, kind="stable").index[:2]
    assert result.per_seed.set_index("condition").loc["top:conv:f0.25", "units"] == "conv:" + ",".join(
        str(u) for u in sorted(most)
    )


def test_factorize_top_activations_and_unit_statistics_on_a_network_in_memory(trained_net):
    cnn = build_model("study5_cnn", (1, 28, 28), 10)
    assert (count_parameters(cnn), count_parameters(knockout.factorize(cnn))) == (93_322, 81_098)
    assert count_parameters(cnn) == 93_322  # the copy was rewritten, not the network given
    data = Brightness(40)
    top = knockout.top_activations(
        trained_net, DataLoader(data, batch_size=8), layers=["conv"], k=3, preprocess=IMAGENETISH
    )
    assert set(top.per_seed["filter"]) == set(range(8)) and top.arrays[0]["patches_conv"].shape[:2] == (3, 8)
    stats = knockout.unit_statistics(trained_net, DataLoader(data, batch_size=8), preprocess=IMAGENETISH)
    assert list(stats["layer"].unique()) == ["conv", "head"]
    assert stats.query("layer == 'conv'")["selectivity"].between(0, 1).all()  # after a ReLU
