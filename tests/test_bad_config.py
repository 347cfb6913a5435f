"""Bad input: every broken config stops with one line naming the key path and the problem."""

import copy

import pytest

from knockout.config import ConfigError, check, validate

GOOD = {
    "seeds": [0, 1],
    "datasets": {"fashion_mnist": {"train_subset": 100}},
    "models": {
        "mlp": {
            "dataset": "fashion_mnist",
            "arch": {"type": "mlp", "widths": [8]},
            "train": {"epochs": 1, "checkpoints": "all"},
        },
        "cnn": {"dataset": "fashion_mnist", "arch": "study5_cnn"},
    },
    "interventions": {
        "f": {
            "type": "filter_ablation",
            "model": "cnn",
            "layers": ["conv2"],
            "sets": {"low": {"select": "lowest_response", "k": 2}},
        },
        "s": {"type": "layer_swap", "model": "mlp", "modes": ["reinit", "rewind"]},
        "v": {"type": "architecture", "model": "cnn", "variants": {"wide": {"dense": [128]}}},
        "z": {"type": "factorize", "model": "cnn"},
        "t": {"type": "top_activations", "model": "cnn", "layers": {"conv1": 2}, "k": 5},
        "o": {"type": "occlusion", "model": "cnn", "windows": [3, 5]},
    },
}


def at(config, path):
    *parents, last = path
    node = config
    for key in parents:
        node = node[key]
    return node, last


def setting(path, value):
    def change(config):
        node, last = at(config, path)
        node[last] = value

    return change


def removing(path):
    def change(config):
        node, last = at(config, path)
        del node[last]

    return change


def both(first, second):
    def change(config):
        first(config)
        second(config)

    return change


CASES = [
    (setting(["seeds"], [1, 1]), "seeds: [1, 1] has non-unique elements"),
    (setting(["seeds"], ["a"]), "seeds.0: 'a' is not of type 'integer'"),
    (setting(["seeds"], []), "seeds: [] should be non-empty"),
    (setting(["device"], "tpu"), "device: 'tpu' does not match"),
    (setting(["threads"], 0), "threads: 0 is less than the minimum of 1"),
    (
        setting(["datasets", "imagenet"], {}),
        "datasets.imagenet: not a built-in dataset (mnist, fashion_mnist, cifar10): give its source",
    ),
    (
        setting(["datasets", "cifar100"], {"source": "torchvision", "class": "CIFAR1000"}),
        "datasets.cifar100.class: torchvision.datasets has no dataset class 'CIFAR1000' (did you mean CIFAR100?)",
    ),
    (
        setting(
            ["datasets", "mine"],
            {"source": "image_folder", "train": "/nonexistent/train", "test": "/nonexistent/test", "size": 32},
        ),
        "datasets.mine.train: no such folder /nonexistent/train",
    ),
    (setting(["data"], {"memory_mb": 10}), "data: Additional properties are not allowed ('memory_mb' was unexpected)"),
    (setting(["data"], {"resident_mb": -1}), "data.resident_mb: -1 is less than the minimum of 0"),
    (
        setting(["datasets", "fashion_mnist", "train_subset"], 5),
        "datasets.fashion_mnist.train_subset: 5 is less than the minimum of 10",
    ),
    (
        setting(["datasets", "fashion_mnist", "subset"], 5),
        "datasets.fashion_mnist: Additional properties are not allowed ('subset'",
    ),
    (removing(["models", "cnn", "dataset"]), "models.cnn: 'dataset' is a required property"),
    (
        setting(["models", "cnn", "dataset"], "mnist"),
        "models.cnn.dataset: 'mnist' is not a key of datasets (fashion_mnist)",
    ),
    (setting(["models", "cnn", "arch"], "study7_cnn"), "models.cnn.arch: unknown preset 'study7_cnn'"),
    (setting(["models", "cnn", "arch"], {"type": "transformer"}), "models.cnn.arch"),
    (setting(["models", "cnn", "arch"], {"type": "cnn", "conv": [{"channels": 8, "kernel": 40}]}), "models.cnn.arch: "),
    (
        setting(["models", "cnn", "arch"], {"type": "resnet", "depth": 18, "weights": "/nonexistent/r18.pth"}),
        "models.cnn.arch.weights: no such file /nonexistent/r18.pth",
    ),
    (
        setting(["models", "mlp", "train", "optimizer"], "rmsprop"),
        "models.mlp.train.optimizer: 'rmsprop' is not one of",
    ),
    (setting(["models", "mlp", "train", "lr"], 0), "models.mlp.train.lr: 0 is less than or equal to the minimum of 0"),
    (setting(["models", "mlp", "train", "epochs"], 1.5), "models.mlp.train.epochs: 1.5 is not of type 'integer'"),
    (setting(["models", "mlp", "train", "checkpoints"], "some"), "models.mlp.train.checkpoints"),
    (
        setting(["models", "bad name"], {"dataset": "fashion_mnist", "arch": "study5_cnn"}),
        "models: 'bad name' does not match",
    ),
    (setting(["interventions", "f", "model"], "cnn2"), "interventions.f.model: 'cnn2' is not a key of models"),
    (
        setting(["interventions", "f", "layers"], ["conv7"]),
        "interventions.f.layers[0]: no layer 'conv7' in model 'cnn' (layers: conv1, conv2, conv3, fc1, fc2)",
    ),
    (
        setting(["interventions", "f", "sets", "low", "k"], 65),
        "interventions.f.sets.low.k: 65 is more than the 64 units of conv2",
    ),
    (
        setting(["interventions", "f", "sets", "low", "statistic"], "median"),
        "interventions.f.sets.low.statistic: 'median' is not one of",
    ),
    (
        setting(["interventions", "f", "sets", "baseline"], {"select": "each"}),
        "interventions.f.sets: 'baseline' should not be valid",
    ),
    (
        setting(["interventions", "s", "layers"], ["fc9"]),
        "interventions.s.layers[0]: no layer 'fc9' in model 'mlp' (layers: fc1, fc2)",
    ),
    (setting(["models", "mlp", "train", "checkpoints"], []), "interventions.s.modes: rewind needs epoch checkpoints"),
    (
        setting(["interventions", "v", "variants", "wide"], {"activation": "swish"}),
        "interventions.v.variants.wide: unknown activation 'swish'",
    ),
    (
        setting(["interventions", "z", "model"], "mlp"),
        "interventions.z.model: factorize splits nn.Conv2d layers, and model 'mlp' has none",
    ),
    (setting(["interventions", "z", "layers"], ["fc1"]), "interventions.z.layers[0]: 'fc1' is not a conv layer"),
    (
        setting(["interventions", "x"], {"type": "prune", "model": "cnn"}),
        "interventions.x.type: unknown study type 'prune'; choose from ablate_then_train, architecture",
    ),
    (
        setting(["interventions", "t", "k"], 10_001),
        "interventions.t.k: 10001 top images per filter, but the test set of model 'cnn' has 10000",
    ),
    (
        both(setting(["datasets", "fashion_mnist", "test_subset"], 20), setting(["interventions", "t", "k"], 30)),
        "interventions.t.k: 30 top images per filter, but the test set of model 'cnn' has 20",
    ),
    (
        setting(["interventions", "t", "layers"], {"conv1": 33}),
        "interventions.t.layers.conv1: conv1 has 32 filters, asked for 33",
    ),
    (
        setting(["interventions", "t", "layers"], {"conv4": 1}),
        "interventions.t.layers.conv4: no layer 'conv4' in model 'cnn'",
    ),
    (
        setting(["interventions", "o", "windows"], [3, 29]),
        "interventions.o.windows[1]: window 29 does not fit the 28x28 images",
    ),
    (setting(["budget_mb"], 0), "budget_mb: 0 is less than or equal to the minimum of 0"),
    # preprocessing, weights given, evaluation-only data
    (
        setting(["models", "cnn", "preprocess"], "imagenett"),
        "models.cnn.preprocess: 'imagenett' is not one of ['auto', 'dataset', 'none', 'imagenet', 'weights']",
    ),
    (
        setting(["models", "cnn", "preprocess"], "weights"),
        "models.cnn.preprocess: weights takes the transforms of the model's torchvision weights, "
        "and models.cnn.arch names none",
    ),
    (
        setting(["models", "cnn", "preprocess"], {"weights": "ResNet50_Weights.IMAGENET9K"}),
        "models.cnn.preprocess.weights: no torchvision weights 'ResNet50_Weights.IMAGENET9K'",
    ),
    (setting(["models", "cnn", "preprocess"], {"mean": [0.5]}), "models.cnn.preprocess: give mean and std together"),
    (
        setting(["models", "cnn", "preprocess"], {"mean": [0.5], "std": [0.0]}),
        "models.cnn.preprocess.std: must be positive",
    ),
    (
        setting(["models", "cnn", "checkpoints"], "pretrained"),
        "models.cnn.checkpoints: pretrained takes the weights of models.cnn.arch, which names none",
    ),
    (
        setting(["models", "cnn", "checkpoints"], {"final": "/nonexistent/seed{seed}.pt", "accuracy": {7: 0.9}}),
        "models.cnn.checkpoints.accuracy.7: not one of the seeds (0, 1)",
    ),
    (
        setting(["models", "cnn", "checkpoints"], {"final": "/nonexistent/seed{seed}.pt", "accuracy": {0: 1.5}}),
        "models.cnn.checkpoints.accuracy.0: 1.5 is greater than the maximum of 1",
    ),
    (setting(["unit_stats"], {"split": "val"}), "unit_stats.split: 'val' is not one of ['train', 'test']"),
]


def test_the_good_config_passes():
    check(validate(copy.deepcopy(GOOD)))


@pytest.mark.parametrize("change,message", CASES, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(CASES)])
def test_a_broken_config_is_one_line_naming_the_key(change, message):
    config = copy.deepcopy(GOOD)
    change(config)
    with pytest.raises(ConfigError) as err:
        check(validate(config))
    text = str(err.value)
    assert message in text, text
    assert "\n" not in text
