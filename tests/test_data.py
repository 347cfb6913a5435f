"""Tests for knockout.data: formats, checksums, fetching, subsets, preparation.

All data are tiny files in the real formats (tests/formats.py); downloads go to
a local http.server on 127.0.0.1, never to the internet.
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
)
from knockout.data import (
    DATASETS,
    DataError,
    Split,
    fetch,
    load_prepared,
    locate,
    prepare,
    read_raw,
    reachable,
    stratified_subset,
    verify,
)

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
    with pytest.raises(DataError, match=f"mnist: {name}: .*header declares"):
        read_raw("mnist", tmp_path, source=_trust(source, tmp_path))


def test_idx_wrong_magic_is_refused(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path)
    # A labels file where the images belong.
    write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(20, dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: bad IDX magic number 2049, expected 2051"):
        read_raw("mnist", tmp_path, source=_trust(source, tmp_path))


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
    manifest = fetch("cifar10", dest, [tmp_path / "empty"], urls=[base + "missing/", base + "good/"], timeout=5, source=source)

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

    train = np.load(out / "train.npz")  # numpy reads the prepared splits, no torch needed
    test = np.load(out / "test.npz")
    assert train["images"].dtype == np.uint8 and train["images"].shape == (20, 1, 28, 28)
    assert test["labels"].dtype == np.int64 and test["indices"].dtype == np.int64
    np.testing.assert_array_equal(train["images"][:, 0], arrays["train_images"][train["indices"]])
    np.testing.assert_array_equal(test["labels"], arrays["test_labels"][test["indices"]])
    assert np.bincount(train["labels"], minlength=10).tolist() == [2] * 10

    subset = arrays["train_images"][train["indices"]] / 255.0
    assert meta["mean"] == pytest.approx([subset.mean()], abs=1e-9)
    assert meta["std"] == pytest.approx([subset.std()], abs=1e-9)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.npz", "train.npz"]  # no tmp files


def test_prepare_refuses_unverified_data(tmp_path):
    source, _ = tiny_idx_dataset(tmp_path / "raw")
    out = tmp_path / "prepared"
    prepare("mnist", tmp_path / "raw", out, source=source)
    flip_byte(tmp_path / "raw" / "t10k-images-idx3-ubyte.gz", offset=20)
    with pytest.raises(DataError, match="mnist: t10k-images-idx3-ubyte.gz: checksum mismatch") as err:
        prepare("mnist", tmp_path / "raw", out, source=source)
    assert_one_line(err)
    assert not (out / "meta.json").exists()  # the old completion marker is gone too


def test_load_prepared_normalises_per_channel(tmp_path):
    source, _ = tiny_cifar_dataset(tmp_path / "raw", batch_size=20, n_batches=2, n_test=10)
    out = tmp_path / "prepared"
    meta = prepare("cifar10", tmp_path / "raw", out, train_subset=30, seed=1, source=source)
    train, test, loaded_meta = load_prepared(out, "cpu")

    assert loaded_meta == meta and meta["classes"] == CIFAR_CLASSES and meta["shape"] == [3, 32, 32]
    assert isinstance(train, Split) and len(train) == 30 and len(test) == 10
    assert train.images.dtype == torch.float32 and train.images.shape == (30, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    x = train.images.double()
    assert x.mean(dim=(0, 2, 3)).tolist() == pytest.approx([0, 0, 0], abs=1e-5)
    assert x.std(dim=(0, 2, 3), correction=0).tolist() == pytest.approx([1, 1, 1], abs=1e-4)


def test_load_prepared_without_meta_is_an_error(tmp_path):
    with pytest.raises(DataError, match="meta.json: not prepared"):
        load_prepared(tmp_path, "cpu")
