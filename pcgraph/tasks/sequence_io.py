"""Files of a filter run: the input sequence (observations y_t, optionally true states x_t) and
the per-step estimates written out.

With true states the estimates are scored by RMSE = sqrt(1/(T n) sum_t sum_i (x^_t,i - x_t,i)^2).
Input, one row (or array entry) per time step t = 1..T:
- CSV: comma-separated numbers, an optional header. A header whose every name is a node's value
  (``x`` for a one-value node, or a flat index: ``x0``, ``x_0``, ``x.0``, ``x[0]``, from 0 or 1)
  places the columns by name, in any order. Otherwise columns are by position: the observed
  nodes' values, then optionally the latent nodes' (in the order the spec declares them).
- .npz: one array (T, *shape) per node, named by the node; a lone array is the observations of a
  graph with one observed node.
Output (``.csv`` or ``.npz`` by suffix): the observations and true states under the same names,
and each method's estimate of the tracked state as ``<method>_<node>`` (columns ``kalman_x0``...).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph
from pcgraph.errors import SpecError, UsageError
from pcgraph.tasks.paths import check_file

SUFFIXES = (".csv", ".npz")


def sequence_nodes(graph: CompiledGraph) -> tuple[list[str], list[str]]:
    """(observed nodes, latent nodes) of a recurrent graph, in declaration order; the previous-step
    copies (``x@prev``) are neither."""
    nodes = [v for v in graph.nodes if v not in graph.delayed]
    observed = [v for v in nodes if graph.nodes[v].spec.role == "observed"]
    return observed, [v for v in nodes if v not in observed]


def read_sequence(path: str, graph: CompiledGraph) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """(observations, true states or None) from a CSV or .npz file, each {node: (T, 1, *shape)}
    in float64. Any problem with the file is a SpecError naming it (one line on the CLI)."""
    observed, latent = sequence_nodes(graph)
    sizes = {v: math.prod(graph.nodes[v].shape) for v in observed + latent}
    try:
        arrays = _read_npz(path, observed, latent) if path.endswith(".npz") else _read_csv(path, observed, latent, sizes)
    except SpecError:  # already names the file and the problem
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise SpecError(f"cannot read the sequence from {path!r}: {getattr(err, 'strerror', None) or err}") from None
    for v in observed:
        if v not in arrays:
            raise SpecError(f"{path!r} has no observations for node {v!r}")
    tensors = {v: _time_major(path, v, a, graph.nodes[v].shape) for v, a in arrays.items()}
    lengths = {v: len(a) for v, a in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise SpecError(f"{path!r}: the sequences disagree on their number of time steps: {lengths}")
    truth = {v: tensors[v] for v in latent if v in tensors}
    return {v: tensors[v] for v in observed}, truth or None


def _time_major(path: str, node: str, array, shape: tuple[int, ...]) -> Tensor:
    """The array as (T, 1, *shape) float64, T >= 1."""
    a = torch.as_tensor(np.asarray(array, dtype=np.float64))
    if a.dim() == 0 or len(a) == 0:
        raise SpecError(f"{path!r}: node {node!r} has no time steps")
    if a[0].numel() != math.prod(shape):
        raise SpecError(f"{path!r}: node {node!r} needs {math.prod(shape)} values per time step, got {a[0].numel()}")
    return a.reshape(len(a), 1, *shape)


def _read_npz(path: str, observed: list[str], latent: list[str]) -> dict[str, np.ndarray]:
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise SpecError(f"{path!r} is not an .npz archive (numpy.savez writes one)")
    with np.load(path) as f:
        arrays = {v: f[v] for v in observed + latent if v in f.files}
        if not any(v in arrays for v in observed) and len(f.files) == 1 and len(observed) == 1:
            arrays = {observed[0]: f[f.files[0]]}
    return arrays


def _read_csv(path: str, observed: list[str], latent: list[str], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    lines = [(k, line) for k, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise SpecError(f"{path!r} is empty: expected one row of comma-separated values per time step")
    header = [c.strip() for c in lines[0][1].split(",")]
    if all(not _is_number(c) for c in header):
        lines = lines[1:]
    else:
        header = None
    if not lines:
        raise SpecError(f"{path!r} has a header but no data rows: expected one row of values per time step")
    rows = []
    for k, line in lines:
        cells = line.split(",")
        if not all(_is_number(c) for c in cells):
            raise SpecError(f"{path!r} line {k}: {line.strip()!r} is not a row of comma-separated numbers")
        if rows and len(cells) != len(rows[0]):
            raise SpecError(f"{path!r} line {k}: {len(cells)} values, the first row has {len(rows[0])}")
        rows.append([float(c) for c in cells])
    table = np.array(rows)
    columns = _columns_by_name(path, header, sizes) if header else None
    if columns is None:
        columns = _columns_by_position(path, table.shape[1], observed, latent, sizes)
    return {v: table[:, cols] for v, cols in columns.items()}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns_by_name(path: str, header: list[str], sizes: dict[str, int]) -> dict[str, list[int]] | None:
    """{node: its column numbers in value order} when every name in the header is a node's value,
    else None (the columns are then read by position)."""
    found: dict[str, dict[int, int]] = {}
    by_length = sorted(sizes, key=len, reverse=True)  # the longest node name that fits wins
    for col, name in enumerate(header):
        match = next((m for v in by_length if (m := re.fullmatch(rf"({re.escape(v)})(?:[_.]?(\d+)|\[(\d+)\])?", name))),
                     None)
        if match is None:
            return None
        node, digits = match[1], match[2] or match[3]
        if digits is None and sizes[node] != 1:
            raise SpecError(f"{path!r}: column {name!r}: node {node!r} has {sizes[node]} values per step; "
                            f"name its columns {node}0 ... {node}{sizes[node] - 1}")
        index = 0 if digits is None else int(digits)
        if index in found.setdefault(node, {}):
            raise SpecError(f"{path!r}: two columns name value {index} of node {node!r}")
        found[node][index] = col
    columns = {}
    for node, cols in found.items():
        order, n = sorted(cols), sizes[node]
        if order not in (list(range(n)), list(range(1, n + 1))):
            raise SpecError(f"{path!r}: node {node!r} has {n} values per step, the header names values {order} of it "
                            f"(expected {node}0 ... {node}{n - 1})")
        columns[node] = [cols[i] for i in order]
    return columns


def _columns_by_position(path: str, width: int, observed: list[str], latent: list[str],
                         sizes: dict[str, int]) -> dict[str, list[int]]:
    with_truth = observed + latent
    nodes = next((vs for vs in (observed, with_truth) if sum(sizes[v] for v in vs) == width), None)
    if nodes is None:
        layout = ", ".join(f"{v} ({sizes[v]})" for v in with_truth)
        raise SpecError(f"{path!r}: rows of {width} values; expected {sum(sizes[v] for v in observed)} (the observations) "
                        f"or {sum(sizes[v] for v in with_truth)} (observations, then true states: {layout}), "
                        "or a header naming the columns")
    columns, start = {}, 0
    for v in nodes:
        columns[v] = list(range(start, start + sizes[v]))
        start += sizes[v]
    return columns


def check_output(path: str, force: bool) -> None:
    """Refuse, before any work, an output file that is not .csv/.npz, that exists (unless
    ``force``), or whose folder is missing or not writable: a UsageError (one line on the CLI)."""
    check_file(path, "--out", force, SUFFIXES)


def estimate_table(state: str, tracks: dict[str, Tensor], observations: dict[str, Tensor],
                   truth: dict[str, Tensor] | None) -> dict[str, np.ndarray]:
    """{name: (T, *shape)}: the observations and true states by node, then each method's estimate
    of ``state`` as ``<method>_<state>`` (``pc (propagated)``'s track ``pc-propagated`` becomes
    ``pc_propagated_x``)."""
    table = {v: y[:, 0].numpy() for v, y in observations.items()}
    table.update({v: x[:, 0].numpy() for v, x in (truth or {}).items()})
    table.update({f"{_identifier(method)}_{state}": est.numpy() for method, est in tracks.items()})
    return table


def _identifier(method: str) -> str:
    return re.sub(r"\W", "_", method)


def write_estimates(path: str, table: dict[str, np.ndarray], force: bool) -> None:
    """Write ``table`` (from :func:`estimate_table`) as .npz arrays or CSV columns ``name<i>``
    (flat index), in full precision; via a temporary file, so a failed write leaves no half file."""
    check_output(path, force)
    out = Path(path)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if out.suffix.lower() == ".npz":
                np.savez(f, **table)
            else:
                flat = {name: a.reshape(len(a), -1) for name, a in table.items()}
                header = [f"{name}{i}" for name, a in flat.items() for i in range(a.shape[1])]
                lines = [",".join(header)] + [",".join(map(repr, row)) for row in np.hstack(list(flat.values())).tolist()]
                f.write(("\n".join(lines) + "\n").encode())
        os.replace(tmp, out)
    except OSError as err:
        raise UsageError(f"--out {path}: cannot write it: {err.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
