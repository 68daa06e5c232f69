"""Data sets as in-memory tensors: the embedded digits, MNIST and Fashion-MNIST.

``digits`` is scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download): a fixed
split of 1,437 training and 360 test images. MNIST and Fashion-MNIST are read from IDX files
(gzipped or not) in a local folder, or downloaded by torchvision where a network is available.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pcgraph.errors import DataError

ENV_VAR = "PCGRAPH_DATA"
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FOLDERS = {"mnist": ("mnist", "MNIST/raw", "MNIST"), "fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")}


@dataclass
class Dataset:
    """Images as float tensors in [0, 1] of shape (N, *image_shape), labels as int64 (N,)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 10


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """Load ``digits``, ``mnist`` or ``fashion_mnist``. ``root`` (or $PCGRAPH_DATA) is a folder
    holding the IDX files, directly or in a ``mnist/``, ``fashion-mnist/`` or torchvision
    ``MNIST/raw`` sub-folder. Raises :class:`DataError` saying how to get a missing data set."""
    if name == "digits":
        return _digits()
    if name not in _FOLDERS:
        raise DataError(f"unknown data set {name!r} (known: digits, mnist, fashion_mnist)")
    root = root or os.environ.get(ENV_VAR)
    if root is not None:
        folder = _find_idx_folder(Path(root), name)
        if folder is not None:
            return Dataset(name, *_read_split(folder, "train"), *_read_split(folder, "test"))
    return _torchvision(name, root)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1437], perm[1437:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def _find_idx_folder(root: Path, name: str) -> Path | None:
    for sub in ("", *_FOLDERS[name]):
        folder = root / sub
        if all(_idx_file(folder, f) for f in _IDX["train"] + _IDX["test"]):
            return folder
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not): magic 0x0000 08 ndim, big-endian uint32 dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # unreadable, truncated or corrupt
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _read_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    images, labels = (read_idx(_idx_file(folder, stem)) for stem in _IDX[split])
    x = torch.from_numpy(images.copy()).float().div_(255.0)  # (N, 28, 28) in [0, 1]
    return x, torch.from_numpy(labels.astype(np.int64))


def _torchvision(name: str, root) -> Dataset:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    where = Path(root) if root else Path.home() / ".cache" / "pcgraph"
    try:
        train, test = (cls(str(where), train=t, download=True) for t in (True, False))
    except Exception as err:  # noqa: BLE001 - torchvision raises many kinds on a failed download
        raise DataError(
            f"data set {name!r} not found under {str(where)!r} and the download failed ({type(err).__name__}). "
            f"Put the four IDX files (train-images-idx3-ubyte[.gz], ...) in a folder and pass it "
            f"with --data-root DIR or ${ENV_VAR}=DIR."
        ) from None
    return Dataset(name, train.data.float() / 255.0, train.targets.long(), test.data.float() / 255.0, test.targets.long())
