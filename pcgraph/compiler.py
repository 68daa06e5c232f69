"""Compile a :class:`GraphSpec` into a :class:`CompiledGraph`, a ``torch.nn.Module``.

The compiler checks the graph with networkx (unknown names, unconnected nodes, shapes, cycles
where forward init is asked for), infers the shapes ops can infer, instantiates the parameters,
and fixes a node order. Nothing after this stage reads YAML or networkx.
"""

from __future__ import annotations

import math
import os

import networkx as nx
import torch
from torch import nn

from pcgraph.compiled import CompiledGraph, Edge, Node, States, combine, edge_forward
from pcgraph.errors import SpecError, UsageError
from pcgraph.ops import Op, adopt, pool_first
from pcgraph.ops.activation import ScaleModule
from pcgraph.ops.conv import crop_before_pools
from pcgraph.spec import GraphSpec, NodeSpec
from pcgraph.spec.problems import cycle_problems, data_refs, listed, ref_path, role_problems

__all__ = ["CompiledGraph", "Edge", "Node", "States", "build_edge", "combine", "compile", "edge_forward",
           "max_bytes_default"]

# --- the compiler ------------------------------------------------------------------------------


def max_bytes_default() -> int:
    """The memory limit of :func:`compile`: $PCGRAPH_MAX_BYTES (a positive number of bytes, ``8e9``
    allowed), else 8 GiB. A value that is not one raises :class:`UsageError` naming the variable."""
    text = os.environ.get("PCGRAPH_MAX_BYTES")
    if text is None:
        return 8 * 2**30
    try:
        limit = float(text)
    except ValueError:
        limit = math.nan
    if not (math.isfinite(limit) and limit >= 1):
        raise UsageError(f"PCGRAPH_MAX_BYTES must be a positive number of bytes (e.g. 8e9), got {text!r}")
    return int(limit)


def _checked_max_bytes(max_bytes) -> int:
    if max_bytes is None:
        return max_bytes_default()
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float)) or not (
            math.isfinite(max_bytes) and max_bytes >= 1):
        raise UsageError(f"compile(max_bytes=...) must be a positive number of bytes, got {max_bytes!r}")
    return int(max_bytes)


def compile(spec: GraphSpec, max_bytes: int | None = None,  # noqa: A001 - the stage's name
            dtype: torch.dtype | None = None) -> CompiledGraph:
    """Validate ``spec`` and build its :class:`CompiledGraph` (parameters on the CPU, in ``dtype``,
    default ``torch.get_default_dtype()``, normally float32).

    Values the spec writes (a linear ``weight``, precisions, prior means) are read in float64 and
    stored in ``dtype``, so ``dtype=torch.float64`` keeps every digit (``.double()`` on a float32
    graph would keep the float32 rounding). Raises :class:`SpecError` naming the YAML path of the
    first problem in each category, also when the parameters and a batch's states would need more
    than ``max_bytes`` (default :func:`max_bytes_default`); that is checked before anything is
    allocated. Anything but a GraphSpec (a dict, a path) is a TypeError saying how to get one.
    """
    if not isinstance(spec, GraphSpec):
        raise TypeError(f"compile() takes a GraphSpec, got {type(spec).__name__}: validate a dict with "
                        "pcgraph.spec_from_dict(d), load a YAML file with pcgraph.load_spec(path), or build one "
                        "with pcgraph.Graph(...).spec()")
    max_bytes = _checked_max_bytes(max_bytes)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point and not dtype.is_complex):
        raise TypeError(f"compile(dtype=...) takes a floating-point torch.dtype (torch.float32, torch.float64), "
                        f"got {dtype!r}")
    previous = torch.get_default_dtype()
    dtype = dtype or previous
    torch.set_default_dtype(dtype)  # ops build their parameters in it (as torch's factory functions do)
    try:
        return _compile(spec, max_bytes, dtype)
    finally:
        torch.set_default_dtype(previous)


def _compile(spec: GraphSpec, max_bytes: int, dtype: torch.dtype) -> CompiledGraph:
    body = spec.graph
    budget = _Budget(max_bytes)
    batch = spec.data.batch_size if spec.data is not None else 1
    for v, n in body.nodes.items():  # state, gradient, optimizer buffer, tape: ~4 copies a sample
        budget.take(4 * 4 * batch * math.prod(n.shape), f"graph.nodes.{v}.shape", f"node {v!r}")
    if not body.nodes:
        raise SpecError("expected at least one node, got none", "graph.nodes")
    g = nx.MultiDiGraph()
    g.add_nodes_from(body.nodes)
    problems: list[tuple[str, str]] = []
    known = ", ".join(body.nodes)
    delayed = {f"{s}@prev": s for e in body.edges if e.delay for s in e.source if s in body.nodes}
    for prev in delayed:
        if prev in body.nodes:
            raise SpecError(f"node name {prev!r} is reserved for the previous-step value of {delayed[prev]!r}",
                            f"graph.nodes.{prev}")
    for i, e in enumerate(body.edges):
        for j, s in enumerate(e.source):
            if s not in body.nodes:
                path = f"graph.edges[{i}].from" + (f"[{j}]" if len(e.source) > 1 else "")
                problems.append((path, f"unknown node {s!r} (known: {known})"))
        if e.to not in body.nodes:
            problems.append((f"graph.edges[{i}].to", f"unknown node {e.to!r} (known: {known})"))
        if len(set(e.source)) != len(e.source):
            problems.append((f"graph.edges[{i}].from", f"a source is listed twice: {e.source}"))
        for s in e.source:
            g.add_edge(f"{s}@prev" if e.delay else s, e.to, index=i)
    if problems:
        raise SpecError(problems)
    prev_nodes = {p: NodeSpec(shape=body.nodes[s].shape, role="observed") for p, s in delayed.items()}
    all_nodes = {**prev_nodes, **body.nodes}

    for v, n in body.nodes.items():
        path = f"graph.nodes.{v}"
        if g.degree(v) == 0 and f"{v}@prev" not in delayed:
            problems.append((path, "node is not connected to any edge, so it has no energy; "
                             "connect it or remove it"))
        if n.prior is not None and any(e.to == v and not e.delay for e in body.edges):
            problems.append((f"{path}.prior", "a prior is only for nodes without incoming edges (or only "
                             f"delayed ones, where it gives the value at t = 0); {v!r} is predicted by an edge"))
        if n.energy.leaf_only and g.out_degree(v) > 0:
            problems.append((f"{path}.energy", f"a {n.energy.kind} node must be a leaf (no outgoing edges: its "
                             f"states are probabilities); {v!r} feeds {sorted(set(g.successors(v)))}"))
    if spec.data is not None:
        problems += _data_problems(spec.data, body.nodes) + role_problems(spec.data, body.nodes)
    for k, entry in enumerate(spec.inference.precisions):
        problems += [(f"inference.precisions[{k}].nodes", f"unknown node {v!r} (known: {known})")
                     for v in entry.nodes or () if v not in body.nodes]
    if (spec.inference.init == "amortised") != bool(body.encoders):
        problems.append(("inference.init", "init: amortised and graph.encoders go together: the encoders propose "
                         "the latents that amortised init starts from"))
    acyclic = nx.is_directed_acyclic_graph(g)
    problems += cycle_problems(spec, None if acyclic else [u for u, _, _ in nx.find_cycle(g)])
    if problems:
        raise SpecError(problems)

    order = list(nx.topological_sort(g)) if acyclic else [*delayed, *body.nodes]

    depth = nx.dag_longest_path_length(g) if acyclic else None
    edges = [build_edge(e, all_nodes, f"graph.edges[{i}]", budget, depth) for i, e in enumerate(body.edges)]
    nodes = {
        v: Node(v, tuple(n.shape), n,
                tuple(i for i, e in enumerate(edges) if e.target == v and v in body.nodes),
                tuple(i for i, e in enumerate(edges) if v in e.sources))
        for v, n in all_nodes.items()
    }
    terms, priors = _terms(body.nodes, nodes, dtype)
    encoders = [_encoder(e, body.nodes, f"graph.encoders[{i}]", budget) for i, e in enumerate(body.encoders)]
    return CompiledGraph(spec, nodes, order, edges, acyclic, terms, priors, delayed, encoders)


def _encoder(e, nodes: dict[str, NodeSpec], path: str, budget: _Budget) -> Edge:
    """An amortising encoder: from observed nodes to a latent, outside the energy."""
    for s in e.source:
        if s not in nodes:
            raise SpecError(f"unknown node {s!r} (known: {', '.join(nodes)})", f"{path}.from")
        if nodes[s].role != "observed":
            raise SpecError(f"an encoder proposes latents from data, and {s!r} is latent; read observed nodes",
                            f"{path}.from")
    if e.to not in nodes or nodes[e.to].role != "latent":
        raise SpecError(f"expected a latent node to propose, got {e.to!r}", f"{path}.to")
    if e.delay:
        raise SpecError("an encoder reads the present batch; remove delay", f"{path}.delay")
    return build_edge(e, nodes, path, budget)


def _terms(specs: dict[str, NodeSpec], nodes: dict[str, Node], dtype: torch.dtype):
    """({node: prediction energy term}, {node: prior term}) built from the node specs."""
    terms, priors = {}, {}
    for v, n in specs.items():
        for field, energy, out in (("energy", n.energy, terms), ("prior", n.prior, priors)):
            if energy is None or (field == "energy" and not nodes[v].incoming):
                continue
            path = f"graph.nodes.{v}.{field}"
            try:
                out[v] = energy.build(tuple(n.shape), dtype)
            except SpecError as err:  # the energy names its own field
                raise SpecError([(f"{path}.{p}" if p else path, msg) for p, msg in err.problems]) from None
            except ValueError as err:
                raise SpecError(str(err), path) from None
            if out[v].stateful and "." in v:
                raise SpecError(f"node {v!r}: a name with '.' cannot hold a matrix precision or a vector mean; "
                                "rename the node", f"graph.nodes.{v}")
    return terms, priors


def _data_problems(data, nodes: dict[str, NodeSpec]) -> list[tuple[str, str]]:
    """The data section's node references: known nodes, neuron ranges inside them, ``complete``
    inside ``input``, ``input`` and ``target`` not overlapping."""
    out, spans = [], []
    for field, i, ref, text in data_refs(data, ("input", "target", "complete")):
        at = ref_path(data, field, i)
        if ref.node not in nodes:
            out.append((at, f"unknown node {ref.node!r} (known: {', '.join(nodes)})"))
            continue
        size = math.prod(nodes[ref.node].shape)
        r = ref.neurons or slice(0, size)
        if r.stop > size:
            out.append((at, f"{text} is out of range: {ref.node!r} has {size} neurons (0..{size - 1})"))
        spans.append((field, at, text, ref.node, r))
    fed = [s for s in spans if s[0] != "complete"]
    for k, (_, at, text, v, r) in enumerate(fed):  # each neuron is fed by one reference
        for field, _, other, w, q in fed[:k]:
            if v == w and r.start < q.stop and q.start < r.stop:
                out.append((at, f"{text} overlaps the {field} {other}: give them disjoint ranges"))
    for _, at, text, v, r in (s for s in spans if s[0] == "complete"):
        inside = [s for s in fed if s[0] == "input" and s[3] == v and s[4].start <= r.start and r.stop <= s[4].stop]
        if not inside:
            out.append((at, f"{text} must be a range inside the input {listed(data, 'input')}"))
        elif r == inside[0][4]:
            out.append((at, "hiding the whole input leaves nothing to complete from"))
    return out


class _Budget:
    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self, nbytes: int, path: str, what: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise SpecError(f"{what} brings the estimated memory to {self.used / 2**30:,.3g} GiB, over the "
                            f"limit of {self.limit / 2**30:,.3g} GiB (set PCGRAPH_MAX_BYTES to raise it)", path)


def build_edge(e, nodes: dict[str, NodeSpec], path: str, budget: _Budget | None = None,
               depth: int | None = None) -> Edge:
    """An :class:`Edge` module for the edge spec ``e`` between ``nodes``; SpecErrors name ``path``.
    ``depth`` (edges on the graph's longest path) is what a ``scale`` of ``1/sqrt(fan_in*depth)`` reads."""
    budget = budget or _Budget(max_bytes_default())
    shapes = [tuple(nodes[s].shape) for s in e.source]
    if len(shapes) > 1:
        if e.combine == "concat":
            ok = all(len(s) == len(shapes[0]) and s[1:] == shapes[0][1:] for s in shapes)
            want = "shapes that agree except in their first dimension"
        else:
            ok = all(s == shapes[0] for s in shapes)
            want = "equal shapes"
        if not ok:
            raise SpecError(f"combine: {e.combine} needs {want}, got {shapes} from {e.source}", f"{path}.from")
    target = tuple(nodes[e.to].shape)
    x = combine(e.combine, [torch.zeros(2, *s) for s in shapes])
    modules = []
    for k, op in enumerate(e.fn):
        op: Op = op.for_edge(same_node=e.source == [e.to])
        in_shape = tuple(x.shape[1:])
        try:
            count = op.param_count(in_shape, target)
        except SpecError:
            count = 0  # build() below raises it again, with the path
        except (ValueError, IndexError):
            count = 0  # build() below says what is wrong
        budget.take(4 * 3 * count, f"{path}.fn[{k}]", f"op {op.kind!r}")
        try:
            m = adopt(op.build(in_shape, target))
            with torch.no_grad():
                x = m(x)
        except SpecError as err:  # the op names its own field
            raise SpecError([(f"{path}.fn[{k}].{p}" if p else f"{path}.fn[{k}]", msg)
                             for p, msg in err.problems]) from None
        except (RuntimeError, ValueError, IndexError, TypeError, OverflowError) as err:
            first = str(err).strip().splitlines()[0]
            raise SpecError(f"op {op.kind!r} cannot take input of shape {list(in_shape)}: {first}",
                            f"{path}.fn[{k}]") from None
        modules.append(m)
    if tuple(x.shape[1:]) != target:
        raise SpecError(f"the pipeline outputs shape {list(x.shape[1:])} but target node "
                        f"{e.to!r} has shape {list(target)}", f"{path}.fn")
    modules, kinds = pool_first(modules, [op.kind for op in e.fn])
    crop_before_pools(modules)
    if e.scale != 1:
        modules.append(ScaleModule(_scale(e.scale, modules, depth, f"{path}.scale")))
        kinds.append("scale")
    return Edge([f"{s}@prev" for s in e.source] if e.delay else list(e.source), e.to, e.combine, modules, kinds)


def _scale(scale: float | str, modules: list, depth: int | None, path: str) -> float:
    """An edge's output scale: a number, or a muPC form of the fan-in of its first weighted op
    (torch's definition: in_features, or in_channels * k * k) and the graph's depth."""
    if not isinstance(scale, str):
        return scale
    weights = [m.weight for m in modules if isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not weights or weights[0].dim() < 2:
        raise SpecError(f"scale {scale!r} reads the fan-in of a weighted op (linear, conv2d), and this edge has "
                        "none; give a number", path)
    fan_in = nn.init._calculate_fan_in_and_fan_out(weights[0])[0]
    if "depth" in scale and depth is None:
        raise SpecError(f"scale {scale!r} needs the graph's depth, and a cyclic graph has none; give a number", path)
    return {"1/sqrt(fan_in)": fan_in ** -0.5, "1/sqrt(fan_in*depth)": (fan_in * (depth or 1)) ** -0.5,
            "1/fan_in": 1 / fan_in}[scale]
