"""From data batches to the node dict a compiled graph takes.

A ``torch.utils.data.DataLoader`` yields tuples ``(x, y)`` or dicts ``{"image": x, ...}``; a
:class:`~pcgraph.CompiledGraph` takes ``{node: (B, *shape) tensor}`` in its dtype, on its device.
:func:`to_nodes` turns one into the other and :class:`NodeBatches` wraps a loader:

    for batch in pcgraph.NodeBatches(loader, graph, inputs="image", targets="label"):
        solver.step(graph, batch, optimizer)

Each value is fitted to its node by :func:`fit`: a 1-D integer tensor of class labels for a node of
shape [C] becomes one-hot, anything else is reshaped to the node's shape (same number of values per
sample) and cast to the graph's floating dtype and moved to its device. A batch that does not fit
raises :class:`~pcgraph.errors.DataError` naming the node and both shapes. The training loop of
``pcgraph train`` clamps its batches through :func:`fit` too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from pcgraph.errors import DataError


def samples(values: Mapping[str, Tensor]) -> int:
    """N, the number of samples in ``{name: (N, ...) tensor}`` (every entry has the same N)."""
    return len(next(iter(values.values())))


def graph_dtype(graph) -> tuple[torch.dtype, torch.device]:
    """The floating dtype and the device of ``graph``'s parameters (a graph without any: the
    default dtype, the CPU)."""
    ref = next((t for t in itertools.chain(graph.parameters(), graph.buffers()) if t.is_floating_point()), None)
    return (ref.dtype, ref.device) if ref is not None else (torch.get_default_dtype(), torch.device("cpu"))


def fit(value, shape: tuple[int, ...], name: str, dtype: torch.dtype, device, check: bool = True) -> Tensor:
    """``value`` as a (B, *shape) tensor of ``dtype`` on ``device``: integer class labels (B,) for
    ``shape == (C,)`` one-hot (``check``: labels in 0..C-1), any other (B, ...) tensor reshaped.
    ``name`` (the node) is what a :class:`DataError` names. Called on every training batch, so the
    values that need no change come back as they are."""
    x = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if x.dim() == 0:
        raise DataError(f"node {name!r} expects a {_want(shape)} batch, got a scalar (a tensor of shape [])")
    labels = not x.is_floating_point() and x.dtype != torch.bool and x.dim() == 1 and len(shape) == 1
    if labels:
        if check and len(x) and (int(x.min()) < 0 or int(x.max()) >= shape[0]):
            raise DataError(f"node {name!r} has {shape[0]} classes, so its labels must lie in 0..{shape[0] - 1}; got "
                            f"labels from {int(x.min())} to {int(x.max())}")
        # one_hot's own range check would read the labels twice more on every batch
        hot = torch.zeros(len(x), shape[0], dtype=dtype, device=device)
        return hot.scatter_(1, x.to(device=device, dtype=torch.long).unsqueeze(1), 1)
    if x.shape[1:] != shape:
        if x.shape[1:].numel() != math.prod(shape):
            hint = " (1-D class labels go one-hot only as integers, for a node of shape [C])" if x.dim() == 1 else ""
            raise DataError(f"node {name!r} expects a {_want(shape)} batch ({math.prod(shape)} values per sample), got "
                            f"shape {list(x.shape)} ({x.shape[1:].numel()} per sample){hint}")
        x = x.reshape(len(x), *shape)
    same = x.dtype == dtype and (device is None or x.device == torch.device(device))
    return x if same else x.to(device=device, dtype=dtype)


def _want(shape: tuple[int, ...]) -> str:
    return f"(B, {', '.join(map(str, shape))})"


def to_nodes(batch, graph, inputs: str | Sequence[str] | Mapping[str, str | int],
             targets: str | Sequence[str] | Mapping[str, str | int] = ()) -> dict[str, Tensor]:
    """The node dict of one data batch: ``{node: (B, *shape) tensor}`` for the nodes named by
    ``inputs`` and ``targets``, each fitted to its node (:func:`fit`).

    ``batch`` is a tuple/list, whose parts go to the named nodes in order (inputs first), or a
    dict, read at each node's name; a mapping ``{node: key}`` (a dict key or a tuple position)
    says where a node's values are instead. Raises :class:`DataError` naming the node when a part
    is missing, does not fit, or the parts disagree on the batch size."""
    where = {**_where(inputs), **_where(targets)}
    if isinstance(batch, Mapping):
        parts = {}
        for node, key in where.items():
            if key not in batch:
                raise DataError(f"node {node!r} reads the batch's {key!r}, but the batch holds {', '.join(map(repr, batch))}; "
                                f"map it: inputs={{{node!r}: KEY}}")
            parts[node] = batch[key]
    elif isinstance(batch, (tuple, list)):
        positions = {node: (key if isinstance(key, int) else i) for i, (node, key) in enumerate(where.items())}
        if max(positions.values(), default=-1) >= len(batch) or len(positions) > len(batch):
            raise DataError(f"the batch has {len(batch)} part(s) but {len(where)} node(s) are named "
                            f"({', '.join(where)}); name one node per part, in order (inputs, then targets)")
        parts = {node: batch[i] for node, i in positions.items()}
    else:
        raise DataError(f"a batch must be a tuple/list (x, y, ...) or a dict, got {type(batch).__name__}")
    dtype, device = graph_dtype(graph)
    out = {}
    for node, value in parts.items():
        if node not in graph.nodes:
            raise DataError(f"unknown node {node!r} (known: {', '.join(graph.nodes)})")
        out[node] = fit(value, graph.nodes[node].shape, node, dtype, device)
    sizes = {node: len(x) for node, x in out.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"the batch's parts disagree on the batch size: {sizes}")
    return out


def _where(names) -> dict[str, str | int]:
    if isinstance(names, str):
        return {names: names}
    if isinstance(names, Mapping):
        return dict(names)
    return {name: name for name in names}


class NodeBatches:
    """The batches of ``loader`` as node dicts (:func:`to_nodes`); iterable as often as the loader,
    with its length."""

    def __init__(self, loader: Iterable, graph, inputs, targets=()):
        self.loader, self.graph, self.inputs, self.targets = loader, graph, inputs, targets

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in self.loader:
            yield to_nodes(batch, self.graph, self.inputs, self.targets)

    def __len__(self) -> int:
        return len(self.loader)
