"""Your own data as named arrays: an ``npz`` data set (``data.dataset: {kind: npz, train, test}``).

Each split is one ``.npz`` file (``numpy.savez``) holding one array per data node, keyed by the
node's reference as the spec writes it in ``data.input`` / ``data.target``, samples first:

    np.savez("train.npz", left=x[:, :32], right=x[:, 32:], digit=y, parity=y % 2)

A file is read once, whole, with ``allow_pickle=False``; its arrays must agree on the number of
samples. :func:`load_npz` raises :class:`DataError` naming the file, what was expected and what came.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pcgraph.errors import DataError


@dataclass
class Arrays:
    """A data set of named arrays: ``train`` and ``test`` map a key (a node reference) to an
    (N, ...) tensor; ``files`` are the two files read."""

    name: str
    train: dict[str, Tensor]
    test: dict[str, Tensor]
    files: tuple[str, str]

    @property
    def source(self) -> str:
        return f"{self.files[0]} and {self.files[1]}"


def load_npz(spec, root: str | os.PathLike | None = None, keys: list[str] | None = None) -> Arrays:
    """Read ``spec.train`` and ``spec.test`` (an :class:`pcgraph.spec.run.NpzData`); a relative
    path is looked up in ``root`` (or $PCGRAPH_DATA) first, then in the current folder. With
    ``keys`` only those arrays are kept, and each split must hold them all."""
    from pcgraph.data import ENV_VAR

    root = root or os.environ.get(ENV_VAR)
    paths = [_find(Path(p), root) for p in (spec.train, spec.test)]
    train, test = (_read(path, keys, field, root) for path, field in zip(paths, ("train", "test")))
    return Arrays("npz", train, test, (str(paths[0]), str(paths[1])))


def _find(path: Path, root) -> Path:
    if root and not path.is_absolute() and (Path(root) / path).is_file():
        return Path(root) / path
    return path


def _read(path: Path, keys: list[str] | None, field: str, root) -> dict[str, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as f:
            held = list(f.files)
            missing = [k for k in keys or () if k not in held]
            if missing:
                raise DataError(f"{path} holds no array {', '.join(map(repr, missing))} (it holds: "
                                f"{', '.join(held) or 'nothing'}); save one array per data node, under the name "
                                "data.input / data.target give it: np.savez(FILE, NODE=array, ...)")
            arrays = {k: f[k] for k in (keys if keys is not None else held)}
    except FileNotFoundError:
        looked = f" or {Path(root) / path}" if root and not path.is_absolute() else ""
        raise DataError(f"no such file: {path}{looked} (data.dataset.{field}; a relative path is looked up in "
                        "--data-root or $PCGRAPH_DATA, then in the current folder)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} as a .npz file of arrays (numpy.savez): {err}") from None
    sizes = {k: (len(a) if a.ndim else None) for k, a in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise DataError(f"{path}: every array holds the samples first, and all the same number of them; got "
                        + ", ".join(f"{k}: {list(arrays[k].shape)}" for k in arrays))
    out = {}
    for k, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise DataError(f"{path}: array {k!r} is {a.dtype}; expected numbers (float, int or bool)")
        out[k] = torch.from_numpy(np.ascontiguousarray(a))
    return out
