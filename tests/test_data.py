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


# --- corrupted files are refused at load time, naming the file ---------------------------------

def test_fewer_labels_than_images_names_the_label_file(tmp_path):
    fake_mnist(tmp_path, False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(11), False)  # 11 labels for 12 images
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte holds 11 labels for 12 images"):
        load_dataset("mnist", tmp_path)


def test_label_out_of_range_names_the_file_and_value(tmp_path):
    fake_mnist(tmp_path, True)
    values = np.zeros(5)
    values[3] = 10
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", values, True)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: expected labels 0\.\.9, got 10 at index 3"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "got an empty file"),
    (bytes([0, 0, 0x08, 0]), "got 0x00000800"),  # no dimensions
    (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), "got 0x00000d01"),  # floats, not unsigned bytes
    (bytes([0, 0, 0x08, 3, 0, 0, 0, 12]), "truncated header: 3 dimensions need 16 bytes, the file has 8"),
])
def test_garbled_or_truncated_header(tmp_path, raw, message):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad")


def test_swapped_files_are_refused_by_shape(tmp_path):
    fake_mnist(tmp_path, False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((12, 28, 28)), False)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: expected labels of shape \(N,\)"):
        load_dataset("mnist", tmp_path)


def test_split_image_sizes_must_agree(tmp_path):
    fake_mnist(tmp_path, False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 8, 8)), False)
    with pytest.raises(DataError, match=r"training images are \(28, 28\) pixels and the test images \(8, 8\)"):
        load_dataset("mnist", tmp_path)


def test_some_idx_files_missing_are_named_without_a_download(tmp_path):
    fake_mnist(tmp_path / "mnist", True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"holds 3 of the 4 mnist IDX files; missing: t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", tmp_path)


def test_image_folder_splits_must_name_the_same_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    fake_image_folder(tmp_path / "data")
    (tmp_path / "data" / "cifar10" / "test" / "cat").rename(tmp_path / "data" / "cifar10" / "test" / "dog")
    with pytest.raises(DataError, match="same class folders.*only one of them has cat, dog"):
        load_dataset("cifar10", tmp_path / "data")


def test_image_folder_with_too_many_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    fake_image_folder(tmp_path / "data")
    for split in ("train", "test"):
        for k in range(9):
            (tmp_path / "data" / "cifar10" / split / f"extra{k}").mkdir()
    with pytest.raises(DataError, match=r"train: expected 1 to 10 class folders, got 11"):
        load_dataset("cifar10", tmp_path / "data")


def test_labels_from_torchvision_are_checked_too(tmp_path, monkeypatch):
    import torchvision

    class Corrupt:  # a torchvision data set whose label list is one short
        def __init__(self, root, train, download):
            self.data = torch.zeros(4, 28, 28, dtype=torch.uint8)
            self.targets = torch.zeros(3, dtype=torch.int64)

    monkeypatch.setattr(torchvision.datasets, "MNIST", Corrupt)
    with pytest.raises(DataError, match=r"\(train split\) holds 3 labels for 4 images"):
        load_dataset("mnist", tmp_path)


# --- a failed load creates no folders ----------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """torchvision's downloads fail at once, as on a machine without a network."""
    import urllib.error
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_mistyped_root_leaves_no_folders(tmp_path, offline, name):
    root = tmp_path / "x" / "y"
    with pytest.raises(DataError, match=r"not found under .*y' \(no such folder\)"):
        load_dataset(name, root)
    assert not (tmp_path / "x").exists()


def test_failed_download_leaves_an_existing_root_as_it_was(tmp_path, offline):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "keep").write_text("mine too")
    with pytest.raises(DataError, match="download failed"):
        load_dataset("mnist", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "MNIST", "MNIST/keep", "notes.txt"]
