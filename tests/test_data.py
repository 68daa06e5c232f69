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


def fake_image_folder(root, n=(3, 2)):
    """root/cifar10/{train,test}/{bird,cat}/k.png: lossless PNGs with known pixels."""
    from PIL import Image

    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in zip(("train", "test"), n):
        images, labels = [], []
        for label, cls in enumerate(("bird", "cat")):  # sorted class names -> labels 0, 1
            folder = root / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:04d}.png")
                images.append(pixels)
                labels.append(label)
        arrays[split] = (np.stack(images), np.array(labels))
    return arrays


def test_image_folder_is_read_exactly_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    arrays = fake_image_folder(tmp_path / "data")
    for _ in range(2):  # the second read comes from the cache
        d = load_dataset("cifar10", tmp_path / "data")
        for x, y, split in ((d.x_train, d.y_train, "train"), (d.x_test, d.y_test, "test")):
            images, labels = arrays[split]
            assert x.shape == (len(images), 3, 32, 32) and x.dtype == torch.float32
            assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(images).permute(0, 3, 1, 2))
            assert torch.equal(y, torch.from_numpy(labels))
        assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2
    assert d.source.endswith("cifar10")


def test_cifar_archive_without_folder_says_how_to_unpack(tmp_path):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="tar xzf"):
        load_dataset("cifar10", tmp_path)
