"""Read a torchvision ``ImageFolder`` tree into memory once, with a cache.

Decoding 60,000 JPEGs takes a DataLoader with worker processes some tens of seconds; the result is
kept as a uint8 tensor file in ``~/.cache/pcgraph`` (keyed by the folder's path, file count and
newest modification time), so later runs load it in a fraction of a second, with
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from pcgraph.errors import DataError

CACHE_ENV = "PCGRAPH_CACHE"


def read_image_folders(root: Path, classes: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test) from ``root/train`` and ``root/test``, which must name the
    same class folders (a label is a class folder's index in sorted order), at most ``classes``."""
    names = {}
    for split in ("train", "test"):
        names[split] = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        if not 1 <= len(names[split]) <= classes:
            raise DataError(f"{root / split}: expected 1 to {classes} class folders, got {len(names[split])}"
                            f"{': ' + ', '.join(names[split][:12]) if names[split] else ''}")
    if names["train"] != names["test"]:
        only = sorted(set(names["train"]) ^ set(names["test"]))
        raise DataError(f"{root}: train/ and test/ must hold the same class folders (labels are their sorted "
                        f"order), but only one of them has {', '.join(only)}")
    (x_train, y_train), (x_test, y_test) = read_image_folder(root / "train"), read_image_folder(root / "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{root}: the training images are {tuple(x_train.shape[1:])} (C, H, W) and the test images "
                        f"{tuple(x_test.shape[1:])}; expected one size")
    return x_train, y_train, x_test, y_test


def read_image_folder(folder: Path, workers: int | None = None) -> tuple[Tensor, Tensor]:
    """(images (N, C, H, W) float in [0, 1], labels (N,) int64), classes in sorted folder order."""
    import torchvision
    from torchvision.transforms import PILToTensor

    try:
        data = torchvision.datasets.ImageFolder(str(folder), transform=PILToTensor())
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"cannot read the image folder {folder}: {err}") from None
    cache = _cache_file(folder, data.samples)
    if cache is not None and cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            return saved["x"].float().div_(255.0), saved["y"]
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            pass
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = torch.utils.data.DataLoader(data, batch_size=500, num_workers=workers)
    xs, ys = [], []
    try:
        for x, y in loader:
            xs.append(x)
            ys.append(y)
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot decode the images under {folder}: {str(err).splitlines()[0]}") from None
    x, y = torch.cat(xs), torch.cat(ys).long()
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save({"x": x, "y": y}, tmp)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: no cache, same result
    return x.float().div_(255.0), y


def _cache_file(folder: Path, samples: list[tuple[str, int]]) -> Path | None:
    if not samples:
        raise DataError(f"no images found under {folder}")
    newest = max(os.stat(p).st_mtime_ns for p, _ in samples[:: max(1, len(samples) // 100)])
    key = hashlib.sha256(f"{folder.resolve()}|{len(samples)}|{newest}".encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "pcgraph"))
    return root / f"imagefolder-{key}.pt"
