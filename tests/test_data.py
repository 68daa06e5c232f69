"""Data loading: the embedded digits, and IDX files written here (gzipped and raw)."""

import gzip

import numpy as np
import pytest
import torch

from pcgraph.data import load_dataset, read_idx
from pcgraph.errors import DataError


def write_idx(path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def fake_mnist(folder, compress, n=(12, 5)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "t10k"), n):
        images = rng.integers(0, 256, size=(count, 28, 28))
        labels = rng.integers(0, 10, size=(count,))
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = (images, labels)
    return arrays


def test_digits_is_embedded_and_split():
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert set(d.y_train.tolist()) == set(range(10))


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw"])
def test_idx_files_in_any_known_layout(tmp_path, compress, layout):
    arrays = fake_mnist(tmp_path / layout, compress)
    d = load_dataset("mnist", tmp_path)
    assert d.x_train.shape == (12, 28, 28) and d.x_test.shape == (5, 28, 28)
    assert torch.allclose(d.x_train * 255, torch.tensor(arrays["train"][0], dtype=torch.float32))
    assert d.y_test.tolist() == arrays["t10k"][1].tolist()


def test_env_var_points_at_the_data(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "fashion-mnist", True)
    monkeypatch.setenv("PCGRAPH_DATA", str(tmp_path))
    assert load_dataset("fashion_mnist").x_train.shape == (12, 28, 28)


def test_bad_idx_file(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "x")
    write_idx(tmp_path / "y", np.zeros((3, 2)), False)
    (tmp_path / "y").write_bytes((tmp_path / "y").read_bytes()[:-1])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "y")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet")


def test_truncated_gzip_is_a_data_error(tmp_path):
    write_idx(tmp_path / "t.gz", np.zeros((50, 28, 28)), True)
    raw = (tmp_path / "t.gz").read_bytes()
    (tmp_path / "t.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "t.gz")
