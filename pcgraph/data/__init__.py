"""Data sets as in-memory tensors: the embedded digits, MNIST, Fashion-MNIST and CIFAR-10, and
your own arrays (:mod:`pcgraph.data.arrays`); batches to node dicts (:mod:`pcgraph.data.adapter`).

``digits`` is scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download): a fixed
split of 1,437 training and 360 test images. MNIST and Fashion-MNIST are read from IDX files
(gzipped or not) in a local folder; CIFAR-10 from a torchvision ``ImageFolder`` layout
(``cifar10/{train,test}/<class>/*.jpg``), decoded once by a multi-worker DataLoader and cached as
a uint8 tensor file; all three are downloaded by torchvision where a network is available.

Files are checked when they are read, not mid-epoch: IDX headers (magic number, dimensions, size),
one label per image, labels in 0..9, the same image size and class folders in both splits. A
:class:`DataError` names the file, what was expected and what came. A failed download removes the
folders and files it created, so a mistyped ``--data-root`` leaves nothing behind.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pcgraph.data.adapter import NodeBatches, fit, to_nodes  # noqa: F401 - re-exported
from pcgraph.data.arrays import Arrays, load_npz
from pcgraph.errors import DataError

ENV_VAR = "PCGRAPH_DATA"
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FOLDERS = {"mnist": ("mnist", "MNIST/raw", "MNIST"), "fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")}
_IMAGE_FOLDERS = ("cifar10", "cifar10-jpeg", "CIFAR10", "")
NAMES = ("digits", "mnist", "fashion_mnist", "cifar10")


@dataclass
class Dataset:
    """Images as float tensors in [0, 1] of shape (N, *image_shape), labels as int64 (N,).
    ``source`` says where the images came from (a folder, or "embedded")."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 10
    source: str = "embedded"


def load_dataset(name, root: str | os.PathLike | None = None, keys: list[str] | None = None) -> Dataset | Arrays:
    """Load ``digits``, ``mnist``, ``fashion_mnist`` or ``cifar10``. ``root`` (or $PCGRAPH_DATA) is
    a folder holding the IDX files, directly or in a ``mnist/``, ``fashion-mnist/`` or torchvision
    ``MNIST/raw`` sub-folder, or CIFAR-10 as ``[cifar10/]{train,test}/<class>/<image>``. Raises
    :class:`DataError` saying how to get a missing data set. ``name`` may also be a spec's npz
    data set (``{kind: npz, train, test}``): then its :class:`Arrays` (only ``keys``, if given;
    see :func:`pcgraph.data.arrays.load_npz`)."""
    if not isinstance(name, str):
        return load_npz(name, root, keys)
    if name == "digits":
        return _digits()
    if name not in NAMES:
        raise DataError(f"unknown data set {name!r} (known: {', '.join(NAMES)})")
    root = root or os.environ.get(ENV_VAR)
    if root is not None and name == "cifar10":
        folder = next((Path(root) / sub for sub in _IMAGE_FOLDERS
                       if (Path(root) / sub / "train").is_dir() and (Path(root) / sub / "test").is_dir()), None)
        if folder is not None:
            from pcgraph.data.images import read_image_folders

            return _checked(Dataset(name, *read_image_folders(folder), source=str(folder)))
        if any(Path(root).glob("cifar10*.tar.gz")):
            raise DataError(f"found a CIFAR-10 archive in {root} but no unpacked folder; unpack it once: "
                            f"tar xzf {next(Path(root).glob('cifar10*.tar.gz'))} -C DIR, then pass --data-root DIR")
    elif root is not None:
        folder = _find_idx_folder(Path(root), name)
        if folder is not None:
            (x_train, y_train), (x_test, y_test) = _read_split(folder, "train"), _read_split(folder, "test")
            if x_train.shape[1:] != x_test.shape[1:]:
                raise DataError(f"{folder}: the training images are {tuple(x_train.shape[1:])} pixels and the test "
                                f"images {tuple(x_test.shape[1:])}; expected one size (files from two data sets?)")
            return Dataset(name, x_train, y_train, x_test, y_test, source=str(folder))
    return _checked(_torchvision(name, root))


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1437], perm[1437:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def _find_idx_folder(root: Path, name: str) -> Path | None:
    """The first known layout holding the four IDX files; a folder holding only some of them is an
    error naming the missing ones (the data is meant to be there, so no download is tried)."""
    stems = _IDX["train"] + _IDX["test"]
    for sub in ("", *_FOLDERS[name]):
        folder = root / sub
        found = [stem for stem in stems if _idx_file(folder, stem)]
        if len(found) == len(stems):
            return folder
        if found:
            missing = ", ".join(f"{stem}[.gz]" for stem in stems if stem not in found)
            raise DataError(f"{folder} holds {len(found)} of the 4 {name} IDX files; missing: {missing}")
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
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        got = f"0x{raw[:4].hex()}" if raw else "an empty file"
        raise DataError(f"{path} is not an IDX file of unsigned bytes: expected the magic number 0x000008NN "
                        f"(NN = the number of dimensions, 01 or more), got {got}")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != math.prod(dims):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _read_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """One split's (images, labels), checked: (N, rows, cols) images, N labels in 0..9."""
    image_file, label_file = (_idx_file(folder, stem) for stem in _IDX[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3:
        raise DataError(f"{image_file}: expected images of shape (N, rows, cols), the header gives {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{label_file}: expected labels of shape (N,), the header gives {labels.shape}")
    x = torch.from_numpy(images.copy()).float().div_(255.0)  # (N, 28, 28) in [0, 1]
    return x, check_labels(torch.from_numpy(labels.astype(np.int64)), len(images), str(label_file), 10,
                           image_file.name)


def check_labels(labels: Tensor, count: int, source: str, classes: int = 10, images: str = "") -> Tensor:
    """``labels`` if it holds ``count`` labels (one per image) in 0..classes-1; else a DataError
    naming ``source`` (a file or folder; ``images``: where the images are), what it expected and what came."""
    if len(labels) != count:
        where = f" ({images})" if images else ""
        raise DataError(f"{source} holds {len(labels)} labels for {count} images{where}: expected one label per "
                        "image (a truncated file, or files from two data sets?)")
    bad = ((labels < 0) | (labels >= classes)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise DataError(f"{source}: expected labels 0..{classes - 1}, got {int(labels[i])} at index {i} "
                        f"({len(bad)} out of range)")
    return labels


def _checked(d: Dataset) -> Dataset:
    """``d`` after checking each split's labels against its images (counts, range)."""
    for x, y, split in ((d.x_train, d.y_train, "train"), (d.x_test, d.y_test, "test")):
        check_labels(y, len(x), f"{d.source} ({split} split)", d.num_classes)
    return d


def _torchvision(name: str, root) -> Dataset:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    where = Path(root) if root else Path.home() / ".cache" / "pcgraph"
    existed = where.is_dir()
    undo = _Undo(where, getattr(cls, "base_folder", cls.__name__))  # MNIST/raw, cifar-10-batches-py, ...
    try:
        train, test = (cls(str(where), train=t, download=True) for t in (True, False))
    except Exception as err:  # noqa: BLE001 - torchvision raises many kinds on a failed download
        undo()
        what = ("an ImageFolder tree cifar10/{train,test}/<class>/<image>" if name == "cifar10"
                else "the four IDX files (train-images-idx3-ubyte[.gz], ...)")
        raise DataError(
            f"data set {name!r} not found under {str(where)!r}{'' if existed else ' (no such folder)'} and the "
            f"download failed ({type(err).__name__}). "
            f"Put {what} in a folder and pass it with --data-root DIR or ${ENV_VAR}=DIR."
        ) from None
    if name == "cifar10":  # numpy (N, 32, 32, 3) uint8 -> (N, 3, 32, 32) in [0, 1]
        x = [torch.from_numpy(d.data).permute(0, 3, 1, 2).float() / 255.0 for d in (train, test)]
        y = [torch.tensor(d.targets, dtype=torch.int64) for d in (train, test)]
        return Dataset(name, x[0], y[0], x[1], y[1], source=str(where))
    return Dataset(name, train.data.float() / 255.0, train.targets.long(), test.data.float() / 255.0,
                   test.targets.long(), source=str(where))


class _Undo:
    """Removes what a failed download created: the missing folders on the way to ``where``, and new
    entries in ``where`` and under ``where/folder`` (what torchvision writes to), nothing else."""

    def __init__(self, where: Path, folder: str):
        self.where, self.folder = where, folder
        self.missing = [p for p in (where, *where.parents) if not p.exists()]  # deepest first
        self.before = self._entries()

    def _entries(self) -> set[Path]:
        inside = self.where / self.folder
        return ({*self.where.iterdir()} if self.where.is_dir() else set()) | (
            {*inside.rglob("*")} if inside.is_dir() else set())

    def __call__(self) -> None:
        for path in sorted(self._entries() - self.before, key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                pass  # already gone, or not ours to remove
        for path in self.missing:  # rmdir: only while empty
            try:
                path.rmdir()
            except OSError:
                break
