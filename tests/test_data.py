"""Tests for knockout.data and knockout.sources: formats, checksums, fetching, subsets,
preparation; datasets from torchvision classes, image folders and tensors files; the refusals.

All data are tiny files in the real formats (tests/formats.py) or torchvision's FakeData;
downloads go to a local http.server on 127.0.0.1, never to the internet.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from formats import (
    CIFAR_CLASSES,
    idx_bytes,
    md5_of,
    tiny_cifar_dataset,
    tiny_idx_dataset,
    write_idx_gz,
    write_png_folder,
    write_torchvision_mnist,
)
from knockout.config import ConfigError, check, resolve_dataset, validate
from knockout.settings import StudySettings
from knockout.data import DataError, Split, fetch, inspect, open_split, prepare, read_meta, stratified_subset
from knockout.preprocess import Preprocess, resolve
from knockout.sources.builtin import DATASETS, locate, read_raw, reachable, verify

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """(served folder, base URL) of a local HTTP server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def dead_url():
    """A base URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def flip_byte(path: Path, offset: int = -1) -> None:
    """Corrupt a file in place by inverting one byte."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def arrays_of(folder: Path, split: str) -> dict[str, np.ndarray]:
    """A prepared split's three arrays, as numpy reads them (no torch)."""
    return {a: np.load(Path(folder) / f"{split}_{a}.npy") for a in ("images", "labels", "indices")}


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- formats


def test_idx_round_trip(tmp_path):
    source, arrays = tiny_idx_dataset(tmp_path, n_train=30, n_test=12)
    (train_x, train_y), (test_x, test_y), classes = read_raw("mnist", tmp_path, source=source)

    assert train_x.shape == (30, 1, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (12, 1, 28, 28) and test_x.dtype == torch.uint8
    assert train_y.dtype == torch.int64 and test_y.dtype == torch.int64
    np.testing.assert_array_equal(train_x[:, 0].numpy(), arrays["train_images"])
    np.testing.assert_array_equal(test_x[:, 0].numpy(), arrays["test_images"])
    np.testing.assert_array_equal(train_y.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(test_y.numpy(), arrays["test_labels"])
    assert classes == [str(d) for d in range(10)]


def test_idx_header_is_big_endian_ubyte():
    data = idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))
    assert int.from_bytes(data[:4], "big") == 2051
    assert [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [2, 3, 4]
    assert len(data) == 16 + 24


def test_cifar_round_trip_with_class_names(tmp_path):
    source, arrays = tiny_cifar_dataset(tmp_path, batch_size=6, n_batches=3, n_test=5)
    (train_x, train_y), (test_x, test_y), classes = read_raw("cifar10", tmp_path, source=source)

    assert train_x.shape == (18, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(train_x.numpy(), arrays["train_images"])
    np.testing.assert_array_equal(test_x.numpy(), arrays["test_images"])
    np.testing.assert_array_equal(train_y.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(test_y.numpy(), arrays["test_labels"])
    assert train_y.dtype == torch.int64
    assert classes == CIFAR_CLASSES
    assert not (tmp_path / "cifar-10-batches-py").exists()  # parsed in memory, nothing extracted


@pytest.mark.parametrize("member", ["../evil", "cifar-10-batches-py/../../evil", "/tmp/evil"])
def test_tar_member_escaping_the_folder_is_refused(tmp_path, member):
    source, _ = tiny_cifar_dataset(tmp_path, extra_members={member: b"x"})
    with pytest.raises(DataError, match="unsafe archive member") as err:
        read_raw("cifar10", tmp_path, source=source)
    assert member in assert_one_line(err)


def test_cifar_missing_member_is_refused(tmp_path):
    source, _ = tiny_cifar_dataset(tmp_path, n_batches=0)
    with pytest.raises(DataError, match="data_batch_1"):
        read_raw("cifar10", tmp_path, source=source)


# --------------------------------------------------------------------------- checksums and malformed files


def test_verify_accepts_good_and_refuses_wrong_checksum(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path)
    name = "train-labels-idx1-ubyte.gz"
    verify("mnist", name, tmp_path / name, source=source)

    flip_byte(tmp_path / name)
    with pytest.raises(DataError) as err:
        verify("mnist", name, tmp_path / name, source=source)
    message = assert_one_line(err)
    assert message.startswith(f"mnist: {name}: checksum mismatch")
    assert md5_of(tmp_path / name) in message and source.file(name).md5 in message


def test_verify_official_checksums_refuse_a_tiny_file(tmp_path):
    path = write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    with pytest.raises(DataError, match="bb300cfdad3c16e7a12a480ee83cd310"):
        verify("fashion_mnist", path.name, path)


def test_verify_accepts_recompressed_copy_by_content_sha256(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    official = write_idx_gz(tmp_path / "official.gz", labels)
    source, _ = tiny_idx_dataset(tmp_path / "ds")
    name = "train-labels-idx1-ubyte.gz"
    content = hashlib.sha256(gzip.decompress(official.read_bytes())).hexdigest()
    src = dataclasses.replace(
        source,
        files=tuple(
            dataclasses.replace(f, md5=md5_of(official), content_sha256=content) if f.name == name else f
            for f in source.files
        ),
    )
    recompressed = tmp_path / name
    recompressed.write_bytes(gzip.compress(gzip.decompress(official.read_bytes()), compresslevel=1, mtime=12345))
    assert md5_of(recompressed) != md5_of(official)
    verify("mnist", name, recompressed, source=src)


def test_truncated_gz_is_refused(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path)
    name = "train-images-idx3-ubyte.gz"
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(DataError, match="checksum mismatch"):
        verify("mnist", name, path, source=source)
    with pytest.raises(DataError, match="unreadable gzip"):  # the content check cannot rescue it
        verify("fashion_mnist", name, path)

    # Even when its checksum is (wrongly) trusted, the parser refuses it by name.
    trusting = dataclasses.replace(
        source, files=tuple(dataclasses.replace(f, md5=md5_of(path)) if f.name == name else f for f in source.files)
    )
    with pytest.raises(DataError, match=f"mnist: {name}: corrupt or truncated gzip") as err:
        read_raw("mnist", tmp_path, source=trusting)
    assert_one_line(err)


def _trust(source, folder):
    """The source with md5s recomputed from the (edited) files in folder."""
    return dataclasses.replace(
        source, files=tuple(dataclasses.replace(f, md5=md5_of(Path(folder) / f.name)) for f in source.files)
    )


def test_idx_declared_dims_must_match_byte_count(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path, n_train=10)
    name = "train-images-idx3-ubyte.gz"
    raw = bytearray(idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8)))
    raw[4:8] = (11).to_bytes(4, "big")  # header claims one more image than is there
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=f"mnist: {name}: malformed IDX file .*invalid for input of size 7840") as err:
        read_raw("mnist", tmp_path, source=_trust(source, tmp_path))
    assert_one_line(err)


def test_idx_wrong_magic_is_refused(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path)
    # A labels file where the images belong.
    write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(20, dtype=np.uint8))
    with pytest.raises(
        DataError, match="t10k-images-idx3-ubyte.gz: malformed IDX file .*3 dimension instead of 1"
    ) as err:
        read_raw("mnist", tmp_path, source=_trust(source, tmp_path))
    assert_one_line(err)


def test_idx_garbage_header_is_refused(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\xff\xff\xff\xff" + bytes(40)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not an IDX file of bytes") as err:
        read_raw("mnist", tmp_path, source=_trust(source, tmp_path))
    assert_one_line(err)


def test_cifar_batch_with_a_wrong_label_count_is_refused(tmp_path):
    from formats import write_cifar_tar

    images = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", [(images, [0, 1, 2])], (images, [0, 1, 2, 3]), CIFAR_CLASSES)
    source = _trust(DATASETS["cifar10"], tmp_path)
    with pytest.raises(
        DataError, match="cifar10: cifar-10-python.tar.gz: data_batch_\\*: 3 labels for 4 images"
    ) as err:
        read_raw("cifar10", tmp_path, source=source)
    assert_one_line(err)


# --------------------------------------------------------------------------- locate and fetch


def test_locate_skips_corrupt_mirror_and_takes_next(tmp_path, monkeypatch):
    source, _ = tiny_idx_dataset(tmp_path / "bad" / "mnist")
    tiny_idx_dataset(tmp_path / "good" / "MNIST" / "raw")  # same seed: identical files
    flip_byte(tmp_path / "bad" / "mnist" / "t10k-labels-idx1-ubyte.gz")
    monkeypatch.setenv("KNOCKOUT_TEST_MIRROR", str(tmp_path / "good"))

    mirrors = [tmp_path / "missing", tmp_path / "bad", "$KNOCKOUT_TEST_MIRROR"]
    with pytest.warns(UserWarning, match="t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        found = locate("mnist", mirrors, source=source)
    assert found == {f: tmp_path / "good" / "MNIST" / "raw" / f for f in source.filenames}


def test_locate_returns_none_without_a_complete_copy(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    assert locate("mnist", [tmp_path, tmp_path / "nope"], source=source) is None


def test_fetch_copies_from_mirror(tmp_path, dead_url):
    source, _ = tiny_idx_dataset(tmp_path / "mirror" / "mnist")
    dest = tmp_path / "raw"
    manifest = fetch("mnist", dest, [tmp_path / "mirror"], urls=[dead_url], timeout=2, source=source)

    assert manifest["dataset"] == "mnist"
    assert set(manifest["files"]) == set(source.filenames)
    for f in source.filenames:
        assert (dest / f).read_bytes() == (tmp_path / "mirror" / "mnist" / f).read_bytes()
        assert manifest["files"][f]["md5"] == source.file(f).md5
        assert manifest["files"][f]["source"] == str((tmp_path / "mirror" / "mnist" / f).resolve())
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in dest.iterdir()) == sorted(source.filenames + ["manifest.json"])


def test_fetch_downloads_from_local_server(tmp_path, http_root):
    root, base = http_root
    source, _ = tiny_cifar_dataset(root / "good")
    dest = tmp_path / "raw"
    # The first base URL 404s; fetch must fall through to the second.
    manifest = fetch(
        "cifar10", dest, [tmp_path / "empty"], urls=[base + "missing/", base + "good/"], timeout=5, source=source
    )

    name = "cifar-10-python.tar.gz"
    assert (dest / name).read_bytes() == (root / "good" / name).read_bytes()
    assert manifest["files"][name]["source"] == base + "good/" + name
    assert manifest["files"][name]["md5"] == source.file(name).md5
    assert not list(dest.glob("*.part"))
    assert reachable("cifar10", timeout=5, urls=[base + "good/"], source=source)
    assert not reachable("cifar10", timeout=5, urls=[base + "missing/"], source=source)


def test_fetch_download_with_wrong_checksum_leaves_nothing(tmp_path, http_root):
    root, base = http_root
    source, _ = tiny_idx_dataset(root)
    flip_byte(root / "train-labels-idx1-ubyte.gz")  # the server now serves a corrupt file
    dest = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch("mnist", dest, [], urls=[base], timeout=5, source=source)

    message = assert_one_line(err)
    assert "mnist: train-labels-idx1-ubyte.gz: checksum mismatch" in message
    assert not list(dest.glob("*.part"))
    assert not (dest / "train-labels-idx1-ubyte.gz").exists()
    assert not (dest / "manifest.json").exists()


def test_fetch_without_any_source_says_how_to_get_the_data(tmp_path, dead_url):
    with pytest.raises(DataError) as err:
        fetch("fashion_mnist", tmp_path / "raw", [tmp_path], urls=[dead_url], timeout=2)
    message = assert_one_line(err)
    assert message.startswith("fashion_mnist: not in any mirror")
    assert "download failed" in message
    assert "apt-get install dataset-fashion-mnist" in message

    with pytest.raises(DataError) as err:
        fetch("cifar10", tmp_path / "raw", [tmp_path], download=False)
    message = assert_one_line(err)
    assert "download disabled" in message and "cifar-10-python.tar.gz" in message
    assert not reachable("mnist", timeout=2, urls=[dead_url])


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_locate_finds_debian_fashion_mnist():
    found = locate("fashion_mnist", ["/usr/share/datasets"])
    assert found is not None
    assert found == {f: DEBIAN_FASHION / f for f in DATASETS["fashion_mnist"].filenames}


# --------------------------------------------------------------------------- stratified subsets


def test_stratified_subset_keeps_exact_proportions_of_balanced_labels():
    labels = torch.arange(1000) % 10
    idx = stratified_subset(labels, 50, seed=3)
    assert idx.dtype == torch.int64 and idx.numel() == 50
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == 50
    assert torch.bincount(labels[idx], minlength=10).tolist() == [5] * 10


@pytest.mark.parametrize("n", [0, 1, 6, 7, 14])
def test_stratified_subset_sums_to_n_with_largest_remainder(n):
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    idx = stratified_subset(labels, n, seed=0)
    assert idx.numel() == n
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    shares = [n * c / 15 for c in (7, 3, 5)]
    assert all(abs(c - s) < 1 for c, s in zip(counts, shares))  # floor or ceil of each share


def test_stratified_subset_seeding():
    labels = torch.arange(600) % 6
    a = stratified_subset(labels, 60, seed=1)
    assert torch.equal(a, stratified_subset(labels, 60, seed=1))
    assert not torch.equal(a, stratified_subset(labels, 60, seed=2))
    assert torch.equal(stratified_subset(labels, None, seed=1), torch.arange(600))
    assert torch.equal(stratified_subset(labels, 10_000, seed=1), torch.arange(600))


# --------------------------------------------------------------------------- prepare and load


def test_prepare_writes_subsets_and_meta(tmp_path):
    source, arrays = tiny_idx_dataset(tmp_path / "mirror" / "mnist", n_train=40, n_test=20)
    raw = tmp_path / "raw"
    fetch("mnist", raw, [tmp_path / "mirror"], download=False, source=source)
    out = tmp_path / "prepared"
    meta = prepare("mnist", raw, out, train_subset=20, test_subset=10, seed=5, source=source)

    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["n_train"] == 20 and meta["n_test"] == 10
    assert meta["shape"] == [1, 28, 28] and meta["num_classes"] == 10
    assert meta["subset_seed"] == 5 and meta["dataset"] == "mnist"
    assert meta["checksums"] == {f: source.file(f).md5 for f in source.filenames}
    assert meta["source"]["train-images-idx3-ubyte.gz"].endswith("mirror/mnist/train-images-idx3-ubyte.gz")

    train = arrays_of(out, "train")  # numpy reads the prepared splits, no torch needed
    test = arrays_of(out, "test")
    assert train["images"].dtype == np.uint8 and train["images"].shape == (20, 1, 28, 28)
    assert test["labels"].dtype == np.int64 and test["indices"].dtype == np.int64
    np.testing.assert_array_equal(train["images"][:, 0], arrays["train_images"][train["indices"]])
    np.testing.assert_array_equal(test["labels"], arrays["test_labels"][test["indices"]])
    assert np.bincount(train["labels"], minlength=10).tolist() == [2] * 10

    subset = arrays["train_images"][train["indices"]] / 255.0
    assert meta["mean"] == pytest.approx([subset.mean()], abs=1e-9)
    assert meta["std"] == pytest.approx([subset.std()], abs=1e-9)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json"] + [f"{s}_{a}.npy" for s in ("train", "test") for a in ("images", "labels", "indices")]
    )  # no tmp files


def test_prepare_refuses_unverified_data(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path / "raw")
    out = tmp_path / "prepared"
    prepare("mnist", tmp_path / "raw", out, source=source)
    flip_byte(tmp_path / "raw" / "t10k-images-idx3-ubyte.gz", offset=20)
    with pytest.raises(DataError, match="mnist: t10k-images-idx3-ubyte.gz: checksum mismatch") as err:
        prepare("mnist", tmp_path / "raw", out, source=source)
    assert_one_line(err)
    assert not (out / "meta.json").exists()  # the old completion marker is gone too


def test_a_prepared_split_normalises_per_channel_with_the_dataset_preprocessing(tmp_path):
    source, _ = tiny_cifar_dataset(tmp_path / "raw", batch_size=20, n_batches=2, n_test=10)
    out = tmp_path / "prepared"
    meta = prepare("cifar10", tmp_path / "raw", out, train_subset=30, seed=1, source=source)
    assert read_meta(out / "meta.json") == meta and meta["classes"] == CIFAR_CLASSES and meta["shape"] == [3, 32, 32]
    preprocess = Preprocess.of(resolve("m", {"arch": "study4_cnn"}), meta)
    for resident_mb in (0, 1):  # streamed from disk, and held in memory: the same inputs
        train = open_split(out, "train", preprocess, "cpu", resident_mb)
        assert isinstance(train, Split) and len(train) == 30 and len(open_split(out, "test")) == 10
        ((_, x, y),) = train.chunks(30, "cpu")
        assert x.dtype == torch.float32 and x.shape == (30, 3, 32, 32) and y.dtype == torch.int64
        x = x.double()
        assert x.mean(dim=(0, 2, 3)).tolist() == pytest.approx([0, 0, 0], abs=1e-5)
        assert x.std(dim=(0, 2, 3), correction=0).tolist() == pytest.approx([1, 1, 1], abs=1e-4)
        assert torch.equal(train.pixels([3]), torch.from_numpy(arrays_of(out, "train")["images"][3:4]).float() / 255)


def test_reading_an_unprepared_view_is_an_error(tmp_path):
    with pytest.raises(DataError, match="meta.json: not prepared"):
        read_meta(tmp_path / "meta.json")


# --------------------------------------------------------------------------- the built-ins, unchanged


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_default_studys_fashion_mnist_is_prepared_byte_for_byte_as_before(tmp_path):
    """sha256 of the arrays the earlier readers prepared for config.yaml (10,000 / 2,000, seed 0,
    once as train.npz and test.npz), and their statistics: the streamed .npy views hold the very
    same images, labels and indices, normalised by the same float32 mean and std."""
    fetch("fashion_mnist", tmp_path / "raw", ["/usr/share/datasets"], download=False)
    entry = resolve_dataset("fashion_mnist", {"train_subset": 10_000, "test_subset": 2_000})
    meta = prepare(
        "fashion_mnist", tmp_path / "raw", tmp_path / "out", train_subset=10_000, test_subset=2_000, seed=0, entry=entry
    )
    digest = {
        f"{s}_{a}": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
        for s in ("train", "test")
        for a, v in arrays_of(tmp_path / "out", s).items()
    }
    assert digest == {
        "train_images": "5ced7880ea506880ffc20558039f8cc015a8e10f11a3a28bc4c834112483636c",
        "train_labels": "a618857d4b804fe765fdc3677e9ef84f6249161369617f757ff4100edd46595d",
        "train_indices": "f6ef0c268b34a4a9d42d4b9983897dd95087af96f594f28addd01b935b41b228",
        "test_images": "3399b13661cb005c6c1bfecd2dfd8127f7d2824961308a8814b72ce1e9fee009",
        "test_labels": "43ffa9ae9d61d7ab84b5fa3130922bfe6548873fbe92cb4336135ebb50206117",
        "test_indices": "7352585cc3f351beaf08e5369d86970c713a9e37cc395d2f1ee171e474f81c7f",
    }
    # exact integer sums: the float64 mean as before, the std one ulp off it, the same as float32
    assert (meta["mean"], meta["std"]) == ([0.28650197478991596], [0.35308257235323204])
    assert torch.tensor(meta["std"]).item() == torch.tensor([0.353082572353232]).item()
    assert meta["classes"][0] == "T-shirt/top" and meta["shape"] == [1, 28, 28]


def test_builtins_are_known_before_any_job():
    info = inspect("cifar10", resolve_dataset("cifar10", {"test_subset": 500}))
    assert info.shape == (3, 32, 32) and info.classes == tuple(CIFAR_CLASSES)
    assert (info.n_train, info.n_test, info.complete, info.deferred) == (50_000, 500, True, None)


def test_the_builtins_sources_and_subset_keys_are_named_once():
    from knockout import catalog, config, sources
    from knockout.catalog import BUILTIN, SOURCES

    assert tuple(DATASETS) == BUILTIN and config.BUILTIN is catalog.BUILTIN and sources.SOURCES is catalog.SOURCES
    assert all(sources.source(s).__name__ == f"knockout.sources.{s}" for s in ("builtin", *SOURCES))
    schema = config.load_schema()
    assert schema["properties"]["datasets"]["additionalProperties"]["properties"]["source"]["enum"] == list(SOURCES)
    assert all(f"dataset_{s}" in schema["$defs"] for s in ("builtin", *SOURCES))


# --------------------------------------------------------------------------- image folders


def _rows_in_folder_order(colours: dict[Path, tuple], folder: Path) -> list:
    """The colours of a folder's images in ImageFolder's order (class, then file name)."""
    return [colours[p] for p in sorted(p for p in colours if folder in p.parents)]


def test_image_folder_of_pngs_of_different_sizes_is_resized_to_size(tmp_path):
    sizes = {
        "ant": [(30, 40), (50, 20), (16, 16), (64, 48)],
        "bee": [(20, 20), (33, 17), (16, 40), (80, 80)],
        "cat": [(16, 16), (21, 35), (40, 30), (17, 16)],
    }
    colours = write_png_folder(tmp_path / "train", sizes)
    colours |= write_png_folder(tmp_path / "test", {c: s[:2] for c, s in sizes.items()})
    entry = resolve_dataset(
        "bugs", {"source": "image_folder", "train": str(tmp_path / "train"), "test": str(tmp_path / "test"), "size": 16}
    )
    assert entry["channels"] == 3  # the schema's default

    info = inspect("bugs", entry)  # from the listing alone, before any job
    assert (info.shape, info.classes, info.n_train, info.n_test) == ((3, 16, 16), ("ant", "bee", "cat"), 12, 6)

    manifest = fetch("bugs", tmp_path / "raw", [], entry=entry)
    assert manifest["source"] == "image_folder" and manifest["classes"] == ["ant", "bee", "cat"]
    assert len(manifest["files"]) == 18
    assert manifest["files"]["train/bee/img03.png"]["size"] == (tmp_path / "train/bee/img03.png").stat().st_size

    meta = prepare("bugs", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert (
        meta["shape"] == [3, 16, 16]
        and meta["classes"] == ["ant", "bee", "cat"]
        and (meta["n_train"], meta["n_test"]) == (12, 6)
    )
    assert meta["source"]["source"] == "image_folder" and set(meta["checksums"]) == {"listing_sha256"}
    for split, n in (("train", 12), ("test", 6)):
        arrays = arrays_of(tmp_path / "out", split)
        assert arrays["images"].shape == (n, 3, 16, 16) and arrays["images"].dtype == np.uint8
        expected = _rows_in_folder_order(colours, tmp_path / split)
        for image, label, index in zip(arrays["images"], arrays["labels"], arrays["indices"]):
            assert label == index // (4 if split == "train" else 2)  # the class of the index'th file
            assert (image == np.array(expected[index], dtype=np.uint8)[:, None, None]).all()  # solid colour stays


def test_image_folder_in_grey_with_a_non_square_size(tmp_path):
    colours = write_png_folder(tmp_path / "train", {"a": [(30, 20), (12, 12)], "b": [(40, 10), (9, 25)]})
    colours |= write_png_folder(tmp_path / "test", {"a": [(8, 8)], "b": [(50, 50)]})
    entry = resolve_dataset(
        "g",
        {
            "source": "image_folder",
            "train": str(tmp_path / "train"),
            "test": str(tmp_path / "test"),
            "size": [6, 10],
            "channels": 1,
        },
    )
    assert inspect("g", entry).shape == (1, 6, 10)
    fetch("g", tmp_path / "raw", [], entry=entry)
    meta = prepare("g", tmp_path / "raw", tmp_path / "out", entry=entry)
    images = arrays_of(tmp_path / "out", "train")["images"]
    assert meta["shape"] == [1, 6, 10] and images.shape == (4, 1, 6, 10)
    grey = [(r * 299 + g * 587 + b * 114) / 1000 for r, g, b in _rows_in_folder_order(colours, tmp_path / "train")]
    assert np.abs(images.reshape(4, -1).astype(float) - np.array(grey)[:, None]).max() <= 0.5  # PIL's L = ITU-R 601


def test_images_are_resized_by_their_shorter_side_then_centre_cropped():
    from PIL import Image

    from knockout.sources.common import fit

    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    out = np.asarray(fit(wide, {"size": [10, 10]}))
    assert out.shape == (10, 10, 3)  # 40x20 -> 20x10 -> the middle 10 columns
    assert tuple(out[5, 0]) == (255, 0, 0) and tuple(out[5, -1]) == (0, 0, 255)
    tall = Image.new("L", (8, 24), 0)
    tall.paste(255, (0, 12, 8, 24))  # top black, bottom white
    out = np.asarray(fit(tall, {"size": [4, 4]}))
    assert out.shape == (4, 4) and out[0, 2] == 0 and out[-1, 2] == 255


def test_an_image_folder_edited_after_fetching_is_not_prepared(tmp_path):
    write_png_folder(tmp_path / "train", {"a": [(8, 8)], "b": [(8, 8)]})
    write_png_folder(tmp_path / "test", {"a": [(8, 8)], "b": [(8, 8)]})
    entry = resolve_dataset(
        "f", {"source": "image_folder", "train": str(tmp_path / "train"), "test": str(tmp_path / "test"), "size": 8}
    )
    fetch("f", tmp_path / "raw", [], entry=entry)
    write_png_folder(tmp_path / "train", {"a": [(8, 8), (9, 9)]})
    with pytest.raises(DataError, match="datasets.f: the image folders changed since they were fetched") as err:
        prepare("f", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert_one_line(err)


# --------------------------------------------------------------------------- tensors files


def _tensors(n_train=40, n_test=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8),
        "train_labels": np.arange(n_train) % k,
        "test_images": rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8),
        "test_labels": np.arange(n_test) % k,
    }


def test_tensors_npz_nhwc_uint8(tmp_path):
    arrays = _tensors() | {"classes": np.array(["w", "x", "y", "z"])}
    np.savez(tmp_path / "data.npz", **arrays)
    entry = resolve_dataset(
        "t", {"source": "tensors", "path": str(tmp_path / "data.npz"), "train_subset": 20, "subset_seed": 2}
    )
    info = inspect("t", entry)
    assert (info.shape, info.classes, info.n_train, info.n_test) == ((3, 8, 8), ("w", "x", "y", "z"), 20, 12)

    manifest = fetch("t", tmp_path / "raw", [], entry=entry)
    assert manifest["files"]["data.npz"]["sha256"] == hashlib.sha256((tmp_path / "data.npz").read_bytes()).hexdigest()
    meta = prepare("t", tmp_path / "raw", tmp_path / "out", train_subset=20, seed=2, entry=entry)
    assert meta["classes"] == ["w", "x", "y", "z"] and meta["shape"] == [3, 8, 8] and meta["n_train"] == 20
    assert meta["checksums"] == {"data.npz": manifest["files"]["data.npz"]["sha256"]}
    train = arrays_of(tmp_path / "out", "train")
    np.testing.assert_array_equal(train["images"], arrays["train_images"].transpose(0, 3, 1, 2)[train["indices"]])
    np.testing.assert_array_equal(train["labels"], arrays["train_labels"][train["indices"]])
    assert np.bincount(train["labels"]).tolist() == [5, 5, 5, 5]  # stratified, as the built-ins

    np.savez(tmp_path / "data.npz", **(arrays | {"train_labels": arrays["train_labels"][::-1].copy()}))
    with pytest.raises(DataError, match="datasets.t: data.npz: changed since it was fetched") as err:
        prepare("t", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert_one_line(err)


def test_tensors_pt_with_float_images_nchw(tmp_path):
    rng = np.random.default_rng(1)
    x = {s: torch.from_numpy(rng.random((n, 1, 6, 6), dtype=np.float32)) for s, n in (("train", 10), ("test", 4))}
    torch.save(
        {
            "train_images": x["train"],
            "train_labels": torch.arange(10) % 2,
            "test_images": x["test"],
            "test_labels": torch.tensor([0, 1, 1, 0]),
            "classes": ["even", "odd"],
        },
        tmp_path / "data.pt",
    )
    entry = resolve_dataset("p", {"source": "tensors", "path": str(tmp_path / "data.pt")})
    assert inspect("p", entry).shape == (1, 6, 6)
    fetch("p", tmp_path / "raw", [], entry=entry)
    meta = prepare("p", tmp_path / "raw", tmp_path / "out", entry=entry)
    test = arrays_of(tmp_path / "out", "test")
    assert meta["classes"] == ["even", "odd"] and test["images"].dtype == np.uint8
    np.testing.assert_array_equal(test["images"], np.rint(x["test"].double().numpy() * 255).astype(np.uint8))


# --------------------------------------------------------------------------- torchvision classes

FAKE = {
    "source": "torchvision",
    "class": "FakeData",
    "kwargs": {"image_size": [3, 10, 10], "num_classes": 4},
    "splits": {"train": {"size": 24, "random_offset": 0}, "test": {"size": 8, "random_offset": 500}},
}


def test_torchvision_fakedata_through_the_torchvision_source(tmp_path):
    from torchvision.datasets import FakeData
    from torchvision.transforms.functional import pil_to_tensor

    entry = resolve_dataset("fake", FAKE | {"train_subset": 12})
    before = inspect("fake", entry, tmp_path / "raw")
    assert before.shape is None and not before.complete and "torchvision.datasets.FakeData" in before.deferred
    assert inspect("fake", entry | {"size": 6, "channels": 1}).shape == (1, 6, 6)  # what can be known, is

    manifest = fetch("fake", tmp_path / "raw", [tmp_path / "no-mirror"], download=False, entry=entry)
    assert manifest["origin"] == "generated" and (manifest["n_train"], manifest["n_test"]) == (24, 8)
    after = inspect("fake", entry, tmp_path / "raw")
    assert after.shape == (3, 10, 10) and (after.n_train, after.n_test) == (12, 8)
    assert after.classes is None and after.deferred.endswith(
        "FakeData lists no classes: they are known once it is prepared"
    )

    meta = prepare("fake", tmp_path / "raw", tmp_path / "out", train_subset=12, entry=entry)
    train = arrays_of(tmp_path / "out", "train")
    reference = FakeData(size=24, image_size=(3, 10, 10), num_classes=4, random_offset=0)
    for image, label, index in zip(train["images"], train["labels"], train["indices"]):
        ref_image, ref_label = reference[int(index)]
        assert label == ref_label and (image == pil_to_tensor(ref_image).numpy()).all()
    labels = [reference[i][1] for i in range(24)] + [
        FakeData(size=8, num_classes=4, random_offset=500)[i][1] for i in range(8)
    ]
    assert meta["classes"] == [str(k) for k in range(max(labels) + 1)] and meta["source"]["class"] == "FakeData"


def test_torchvision_class_from_a_mirror_in_its_own_layout(tmp_path):
    """KMNIST's files as torchvision keeps them (root/KMNIST/raw/, uncompressed), in a mirror:
    torchvision finds and reads them; the manifest checksums the files it read."""
    from torchvision.datasets import KMNIST

    _, arrays = tiny_idx_dataset(tmp_path / "gz", n_train=30, n_test=10)
    raw = write_torchvision_mnist(tmp_path / "mirror" / "kana", "KMNIST", arrays)
    entry = resolve_dataset("kana", {"source": "torchvision", "class": "KMNIST"})
    manifest = fetch(
        "kana", tmp_path / "raw", [tmp_path / "elsewhere", tmp_path / "mirror"], download=False, entry=entry
    )
    assert manifest["origin"] == "mirror" and manifest["root"] == str((tmp_path / "mirror" / "kana").resolve())
    assert set(manifest["files"]) == {f"KMNIST/raw/{p.name}" for p in raw.iterdir()}
    assert manifest["classes"] == KMNIST.classes and manifest["shape"] == [1, 28, 28]
    info = inspect("kana", entry, tmp_path / "raw")
    assert info.complete and (info.n_train, info.n_test) == (30, 10)

    meta = prepare("kana", tmp_path / "raw", tmp_path / "out", entry=entry)
    train = arrays_of(tmp_path / "out", "train")
    np.testing.assert_array_equal(train["images"][:, 0], arrays["train_images"])
    np.testing.assert_array_equal(train["labels"], arrays["train_labels"])
    assert meta["classes"] == KMNIST.classes and set(meta["checksums"]) == set(manifest["files"])

    flip_byte(raw / "t10k-labels-idx1-ubyte")
    with pytest.raises(
        DataError, match="datasets.kana: KMNIST/raw/t10k-labels-idx1-ubyte: changed since it was fetched"
    ) as err:
        prepare("kana", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert_one_line(err)


def test_a_torchvision_class_in_no_mirror_and_offline_says_where_to_put_it(tmp_path):
    entry = resolve_dataset("c100", {"source": "torchvision", "class": "CIFAR100"})
    with pytest.raises(DataError) as err:
        fetch("c100", tmp_path / "raw", [tmp_path / "mirror"], download=False, entry=entry)
    message = assert_one_line(err)
    assert message.startswith("datasets.c100: torchvision.datasets.CIFAR100 is in no mirror")
    assert f"CIFAR100(root='{tmp_path / 'mirror' / 'c100'}')" in message and "download is disabled" in message


def test_a_torchvision_split_the_class_refuses_is_one_line(tmp_path):
    (tmp_path / "mirror").mkdir()
    entry = resolve_dataset("s", {"source": "torchvision", "class": "SVHN", "splits": {"test": "validation"}})
    with pytest.raises(
        DataError, match=r"datasets.s: torchvision.datasets.SVHN\(split='validation'\): Unknown value 'validation'"
    ) as err:
        fetch("s", tmp_path / "raw", [tmp_path / "mirror"], download=False, entry=entry)
    assert_one_line(err)


# --------------------------------------------------------------------------- refused before any job


def _config(entry: dict, name: str = "d", interventions: dict | None = None) -> dict:
    return {
        "datasets": {name: entry},
        "models": {"m": {"dataset": name, "arch": {"type": "mlp", "widths": [8]}}},
        "interventions": interventions or {},
    }


@pytest.fixture
def bad_files(tmp_path):
    """An image folder whose test classes differ from its train classes, a tensors file lacking
    an array, one with labels out of range, a good one."""
    write_png_folder(tmp_path / "train", {"a": [(8, 8)], "b": [(8, 8)]})
    write_png_folder(tmp_path / "test", {"a": [(8, 8)], "c": [(8, 8)]})
    write_png_folder(tmp_path / "same", {"a": [(8, 8)], "b": [(9, 9)]})
    arrays = _tensors(k=3)
    np.savez(tmp_path / "good.npz", **arrays)
    np.savez(tmp_path / "lacking.npz", **{k: v for k, v in arrays.items() if k != "test_labels"})
    np.savez(
        tmp_path / "range.npz",
        **(arrays | {"classes": np.array(["a", "b", "c"]), "train_labels": arrays["train_labels"] + 1}),
    )
    np.savez(tmp_path / "negative.npz", **(arrays | {"test_labels": arrays["test_labels"] - 1}))
    return tmp_path


REFUSED = [
    (
        {"source": "torchvision", "class": "CIFAR1000"},
        "datasets.d.class: torchvision.datasets has no dataset class 'CIFAR1000' (did you mean CIFAR100?)",
    ),
    (
        {"source": "torchvision", "class": "VOCSegmentation"},
        "datasets.d.class: VOCSegmentation is a segmentation dataset, not an image-classification dataset",
    ),
    (
        {"source": "torchvision", "class": "Sintel"},
        "datasets.d.class: Sintel is an optical-flow dataset, not an image-classification dataset",
    ),
    ({"source": "torchvision", "class": "ImageFolder"}, "use source: image_folder"),
    (
        {"source": "torchvision", "class": "CIFAR100", "kwargs": {"fine": True}},
        "datasets.d.kwargs.fine: CIFAR100 takes no argument 'fine' (it takes: ",
    ),
    (
        {"source": "torchvision", "class": "CIFAR100", "kwargs": {"root": "/data"}},
        "datasets.d.kwargs.root: set by knockout",
    ),
    (
        {"source": "torchvision", "class": "SVHN", "kwargs": {"split": "extra"}},
        "datasets.d.kwargs.split: SVHN takes its split as split=: give it in datasets.d.splits",
    ),
    (
        {"source": "torchvision", "class": "CIFAR100", "splits": {"test": "val"}},
        "datasets.d.splits.test: CIFAR100 takes train=True/False, not a split name",
    ),
    (
        {"source": "torchvision", "class": "FakeData"},
        "datasets.d.splits: FakeData takes neither train nor split: give splits.train and splits.test",
    ),
    (
        {"source": "torchvision", "class": "FakeData", "splits": {"train": {"size": 5}, "test": {"size": 5}}},
        "datasets.d.splits: the train and test splits get the same arguments",
    ),
    ({"source": "torchvision", "class": "CIFAR100", "channels": 2}, "datasets.d.channels: 2 is not one of [1, 3]"),
    (
        {"source": "image_folder", "train": "{tmp}/nope", "test": "{tmp}/test", "size": 8},
        "datasets.d.train: no such folder {tmp}/nope",
    ),
    (
        {"source": "image_folder", "train": "{tmp}/train", "test": "{tmp}/test", "size": 8},
        "datasets.d.test: its classes are not the train folder's (only in train: b; only in test: c)",
    ),
    (
        {"source": "image_folder", "train": "{tmp}/train", "test": "{tmp}/same"},
        "models.m: the images of datasets.d are not all one size: give datasets.d.size, or models.m.preprocess with a resize and crop",
    ),
    (
        {"source": "image_folder", "test": "{tmp}/same", "size": 8},
        "models.m: datasets.d has no training split to train it on: give models.m.checkpoints (your trained weights, or pretrained with arch.weights)",
    ),
    ({"source": "image_folder", "train": "{tmp}/train"}, "datasets.d: 'test' is a required property"),
    (
        {"source": "tensors", "path": "{tmp}/lacking.npz"},
        "datasets.d.path: lacking.npz: no array 'test_labels' (it has: test_images, train_images, train_labels)",
    ),
    (
        {"source": "tensors", "path": "{tmp}/range.npz"},
        "datasets.d.path: range.npz: labels outside 0..2 (3 classes): train_labels min 1, max 3",
    ),
    (
        {"source": "tensors", "path": "{tmp}/negative.npz"},
        "datasets.d.path: negative.npz: labels outside 0..2: test_labels min -1, max 1",
    ),
    ({"source": "tensors", "path": "{tmp}/missing.npz"}, "datasets.d.path: no such file {tmp}/missing.npz"),
    ({"source": "tensors", "path": "{tmp}/good.csv"}, "datasets.d.path: '{tmp}/good.csv' does not match"),
    ({"source": "tensors", "path": "{tmp}/good.npz", "layout": "NWHC"}, "datasets.d.layout: 'NWHC' is not one of"),
    (
        {"source": "tensors", "path": "{tmp}/good.npz", "sizes": 8},
        "datasets.d: Additional properties are not allowed ('sizes' was unexpected)",
    ),
    (
        {"source": "webdataset"},
        "datasets.d.source: 'webdataset' is not one of ['torchvision', 'image_folder', 'tensors', 'module']",
    ),
    (
        {},
        "datasets.d: not a built-in dataset (mnist, fashion_mnist, cifar10): give its source (torchvision, image_folder, tensors, module)",
    ),
]


@pytest.mark.parametrize("entry,message", REFUSED, ids=[f"{i}-{m.split(':')[0]}" for i, (_, m) in enumerate(REFUSED)])
def test_a_bad_dataset_is_refused_before_any_job_in_one_line(bad_files, entry, message):
    entry = json.loads(json.dumps(entry).replace("{tmp}", str(bad_files)))
    with pytest.raises(ConfigError) as err:
        check(validate(_config(entry)), raw_root=bad_files / "raw")
    assert message.replace("{tmp}", str(bad_files)) in assert_one_line(err)


def test_a_dataset_known_only_once_fetched_defers_the_model_checks_to_the_jobs(tmp_path, capsys):
    from knockout.jobs import _check_study, _study
    from knockout.models import build_model

    study = {"type": "filter_ablation", "model": "m", "layers": ["fc9"], "sets": {"s": {"select": "each"}}}
    config = check(
        validate(_config(FAKE, interventions={"f": study})), raw_root=tmp_path
    ).config  # no layer fc9, unknown yet
    assert capsys.readouterr().err.strip() == (
        "knockout: datasets.d: torchvision.datasets.FakeData is known once its files are fetched; "
        "the checks of models m and of studies f run in their jobs"
    )
    # ... where the study's job checks it against the trained network and the prepared data
    network = build_model(config["models"]["m"]["arch"], (3, 10, 10), 4)
    meta = {"shape": [3, 10, 10], "classes": list("0123"), "n_train": 24, "n_test": 8}
    job = StudySettings(
        model="m", preprocess={}, resident_mb=0, device="cpu", name="f", study=config["interventions"]["f"]
    )
    with pytest.raises(ConfigError, match=r"interventions.f.layers\[0\]: no layer 'fc9' in model 'm'"):
        _check_study(job, *_study(job), network, meta)


# --------------------------------------------------------------------------- your own Dataset, evaluation-only data

USER_DATASET = '''
import torch
from torchvision import transforms
from torchvision.datasets import FakeData


class Shades(torch.utils.data.Dataset):
    """What a user writes: ToTensor() images (floats in [0, 1]) and integer labels."""

    classes = ["dark", "light"]

    def __init__(self, n, offset):
        self.items = FakeData(size=n, image_size=(3, 9, 7), num_classes=2, random_offset=offset, transform=transforms.ToTensor())

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.items[i]
        return image, int(label)


def make(split, n_test=10):
    return Shades(30, 0) if split == "train" else Shades(n_test, 1000)


def test_only(split, n_test=10):
    return None if split == "train" else Shades(n_test, 1000)
'''


def test_a_module_dataset_is_prepared_from_the_users_own_items(tmp_path):
    from torchvision import transforms
    from torchvision.datasets import FakeData

    (tmp_path / "mine.py").write_text(USER_DATASET)
    entry = resolve_dataset(
        "mine", {"source": "module", "target": f"{tmp_path}/mine.py:make", "kwargs": {"n_test": 12}}
    )
    info = inspect("mine", entry)  # before any job: from the dataset itself
    assert (info.shape, info.classes, info.n_train, info.n_test) == ((3, 9, 7), ("dark", "light"), 30, 12)
    manifest = fetch("mine", tmp_path / "raw", [], entry=entry)
    assert manifest["files"]["mine.py"]["sha256"] == hashlib.sha256((tmp_path / "mine.py").read_bytes()).hexdigest()
    meta = prepare("mine", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert meta["classes"] == ["dark", "light"] and meta["source"] == {"source": "module", "target": entry["target"]}
    test = arrays_of(tmp_path / "out", "test")
    reference = FakeData(
        size=12, image_size=(3, 9, 7), num_classes=2, random_offset=1000, transform=transforms.ToTensor()
    )
    for image, label, index in zip(test["images"], test["labels"], test["indices"]):
        pixels, target = reference[int(index)]
        assert (
            label == target and (image == np.rint(pixels.double().numpy() * 255)).all()
        )  # ToTensor's x/255, back exactly
    (tmp_path / "mine.py").write_text(USER_DATASET + "\n# edited\n")
    with pytest.raises(DataError, match="datasets.mine: mine.py: changed since it was fetched"):
        prepare("mine", tmp_path / "raw", tmp_path / "out", entry=entry)


def test_an_evaluation_only_module_dataset_and_images_out_of_range_are_one_line(tmp_path):
    (tmp_path / "mine.py").write_text(USER_DATASET + """

class Normalised(Shades):
    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return (image - 0.5) / 0.25, label


def normalised(split):
    return Normalised(4, 0)
""")
    entry = resolve_dataset("mine", {"source": "module", "target": f"{tmp_path}/mine.py:test_only"})
    assert inspect("mine", entry).n_train == 0
    fetch("mine", tmp_path / "raw", [], entry=entry)
    meta = prepare("mine", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert (meta["n_train"], meta["n_test"], meta["stats_split"]) == (0, 10, "test")
    assert arrays_of(tmp_path / "out", "train")["images"].shape == (0, 3, 9, 7)
    entry = resolve_dataset("bad", {"source": "module", "target": f"{tmp_path}/mine.py:normalised"})
    with pytest.raises(DataError) as err:
        inspect("bad", entry)
    assert assert_one_line(err).startswith(
        "datasets.bad: "
    ) and "not in [0, 1]: give the images as pixels (ToTensor, no Normalize)" in str(err.value)


def test_an_evaluation_only_torchvision_class_and_a_compressed_tensors_file(tmp_path):
    entry = resolve_dataset("fake", FAKE | {"splits": {"train": None, "test": {"size": 8, "random_offset": 500}}})
    fetch("fake", tmp_path / "raw", [], entry=entry)
    assert inspect("fake", entry, tmp_path / "raw").n_train == 0
    assert prepare("fake", tmp_path / "raw", tmp_path / "out", entry=entry)["n_train"] == 0
    arrays = _tensors(n_train=50, n_test=30)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)  # images streamed out of the deflated member
    entry = resolve_dataset("p", {"source": "tensors", "path": str(tmp_path / "packed.npz"), "train_subset": 20})
    fetch("p", tmp_path / "raw2", [], entry=entry)
    prepare("p", tmp_path / "raw2", tmp_path / "out2", train_subset=20, entry=entry)
    train = arrays_of(tmp_path / "out2", "train")
    np.testing.assert_array_equal(train["images"], arrays["train_images"].transpose(0, 3, 1, 2)[train["indices"]])


def test_imagenet_wordnet_ids_are_named_as_torchvision_weights_name_them():
    from torchvision.models import ResNet50_Weights

    from knockout.data import named_classes

    ids = [f"n{k:08d}" for k in range(1000)]
    names, kept = named_classes(ids)
    assert names == ResNet50_Weights.IMAGENET1K_V2.meta["categories"] and kept == ids
    assert named_classes(ids[:10]) == (ids[:10], None)  # not ImageNet-1k: as they are


def test_jpegs_are_prepared_with_pils_very_pixels(tmp_path):
    """JPEGs of every kind (4:4:4, 4:2:2, 4:2:0, progressive, grey, CMYK) in an image folder:
    torchvision's faster decoder is used where it gives PIL's pixels, PIL elsewhere; either
    way the prepared images are those of torchvision's ImageFolder (PIL) pipeline."""
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    rng = np.random.default_rng(0)
    kinds = [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}, {"progressive": True}, {"quality": 40}]
    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i, kind in enumerate(kinds):
                pixels = np.clip(rng.normal(100 + 50 * k, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.jpg", **kind)
            Image.fromarray(pixels[..., 0]).save(tmp_path / split / cls / "grey.jpg")
            Image.fromarray(pixels).convert("CMYK").save(tmp_path / split / cls / "cmyk.jpg")
    entry = resolve_dataset(
        "j", {"source": "image_folder", "train": str(tmp_path / "train"), "test": str(tmp_path / "test"), "size": 20}
    )
    fetch("j", tmp_path / "raw", [], entry=entry)
    meta = prepare("j", tmp_path / "raw", tmp_path / "out", entry=entry)
    assert meta["source"]["decoder"] == "torchvision.io.decode_jpeg where it equals PIL, else PIL"
    for split in ("train", "test"):
        reference = ImageFolder(str(tmp_path / split))
        expected = np.stack([pil_to_tensor(reference[i][0]).numpy() for i in range(len(reference))])
        np.testing.assert_array_equal(arrays_of(tmp_path / "out", split)["images"], expected)
