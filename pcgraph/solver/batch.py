"""A batch: the values given to a relaxation, whole nodes or some neurons of one (:class:`Clamp`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, States


class Clamp(NamedTuple):
    """A batch entry that clamps only some neurons of a node: ``values`` (B, *shape) gives the
    node's values, ``index`` picks the clamped neurons (a slice, a list or tensor of indices, or a
    boolean mask, over the node's flattened neurons). The other neurons are inferred, starting where
    the solver's ``init`` puts them::

        solver.relax(graph, {"x": Clamp(x, slice(0, 64))})  # neurons 0..63 are the pixels
    """

    values: Tensor
    index: slice | Sequence[int] | Tensor


def check_batch(graph: CompiledGraph, batch: dict) -> tuple[int, States, States]:
    """(batch size, {node: values}, {partly clamped node: mask of its free neurons, (1, *shape)}), after
    :meth:`CompiledGraph.check_values` on the values (names, dtype, device, shapes, batch size)."""
    values = {v: x.values if isinstance(x, Clamp) else x for v, x in batch.items()} if isinstance(batch, Mapping) \
        else batch
    size = graph.check_values(values)
    free = {v: _free_mask(graph, v, x) for v, x in batch.items() if isinstance(x, Clamp)}
    graph.require_time(values)
    return size, values, free


def _free_mask(graph: CompiledGraph, node: str, clamp: Clamp) -> Tensor:
    shape = graph.nodes[node].shape
    clamped = torch.zeros(math.prod(shape), dtype=torch.bool, device=clamp.values.device)
    index = clamp.index
    if not isinstance(index, slice):
        index = torch.as_tensor(index, device=clamped.device)
        if index.dtype != torch.bool:
            if (index.is_floating_point() or index.is_complex()) and index.numel():
                raise ValueError(f"Clamp index for node {node!r} must be a slice, integer indices or a boolean "
                                 f"mask, got a {index.dtype} tensor")
            index = index.to(torch.long)
    try:
        clamped[index] = True
    except (IndexError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"Clamp index for node {node!r} does not fit its {math.prod(shape)} neurons: {first}") from None
    return (~clamped).reshape(1, *shape).to(clamp.values.dtype)
