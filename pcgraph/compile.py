"""Compile a :class:`GraphSpec` into a :class:`CompiledGraph`, a ``torch.nn.Module``.

The compiler checks the graph with networkx (unknown names, unconnected nodes, shapes, cycles
where forward init is asked for), infers the shapes ops can infer, instantiates the parameters,
and fixes a node order. Nothing after this stage reads YAML or networkx.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import networkx as nx
import torch
from torch import Tensor, nn

from pcgraph import energy as E
from pcgraph._impl.local import combine, edge_forward
from pcgraph.errors import SpecError
from pcgraph.ops import Op, Shape
from pcgraph.precision import Precision, node_precisions
from pcgraph.spec import Categorical, GraphSpec, NodeSpec

States = dict[str, Tensor]


class Edge(nn.Module):
    """f_e(x_src): ``combine`` the source states, then run the op pipeline."""

    def __init__(self, sources: list[str], target: str, combine: str, pipeline: list[nn.Module]):
        super().__init__()
        self.sources, self.target, self.combine = sources, target, combine
        self.pipeline = nn.Sequential(*pipeline)

    def forward(self, states: States) -> Tensor:
        return edge_forward(self, states)[0]

    def extra_repr(self) -> str:
        return f"{'+'.join(self.sources)} -> {self.target}"


@dataclass(frozen=True)
class Node:
    name: str
    shape: Shape
    spec: NodeSpec
    incoming: tuple[int, ...]  # indices of edges predicting this node
    outgoing: tuple[int, ...]  # indices of edges reading this node

    @property
    def has_energy(self) -> bool:
        return bool(self.incoming) or self.spec.prior is not None


class CompiledGraph(nn.Module):
    """A PC graph ready to run: parameters, predictions and energies.

    ``mu_v = sum_{e into v} f_e(x_src(e))`` and ``E = sum_v sum_batch e_v(x_v, mu_v)`` (eq. 27).
    States are plain dicts ``{node: (B, *shape) tensor}``; the module holds only parameters.
    """

    def __init__(self, spec: GraphSpec, nodes: dict[str, Node], order: list[str], edges: list[Edge], acyclic: bool,
                 precisions: dict[str, Precision] | None = None, delayed: dict[str, str] | None = None):
        super().__init__()
        self.spec = spec
        self.nodes = nodes
        self.order = order  # topological when acyclic, declaration order otherwise
        self.edges = nn.ModuleList(edges)
        self.acyclic = acyclic
        self.precisions = nn.ModuleDict(precisions or {})  # nodes whose Pi is not a fixed scalar
        self.delayed = delayed or {}  # {"x@prev": "x"}: the previous time step's values, clamped

    def require_time(self, batch: States) -> None:
        """Raise SpecError when a delayed edge's previous-step values are missing from ``batch``."""
        for prev, src in self.delayed.items():
            if prev not in batch:
                i = next(i for i, e in enumerate(self.edges) if prev in e.sources)
                raise SpecError(f"this edge has delay: 1, so it reads {src!r} at the previous time step: run the "
                                "graph over a sequence (pcgraph filter, pcgraph.run_sequence), not on single batches",
                                f"graph.edges[{i}].delay")

    # --- predictions, errors, energies --------------------------------------------------------

    def prediction(self, states: States, node: str) -> Tensor | None:
        """mu_v: the sum of the incoming edges' outputs, or None for a root node."""
        out = None
        for i in self.nodes[node].incoming:
            y = self.edges[i](states)
            out = y if out is None else out + y
        return out

    def predictions(self, states: States) -> States:
        return {v: mu for v in self.order if (mu := self.prediction(states, v)) is not None}

    def errors(self, states: States) -> States:
        """eps_v = x_v - mu_v for every predicted node (before precision weighting)."""
        return {v: states[v] - mu for v, mu in self.predictions(states).items()}

    def node_energy(self, states: States, node: str, mu: Tensor | None = None) -> Tensor:
        """e_v per sample, shape (B,); ``mu`` may be passed when already computed."""
        n = self.nodes[node]
        if n.incoming:
            mu = self.prediction(states, node) if mu is None else mu
            if node in self.precisions:
                return self.precisions[node].energy(states[node] - mu)
            return E.node_energy(n.spec.energy, states[node], mu)
        return E.prior_energy(n.spec.prior, states[node])

    def node_energies(self, states: States) -> States:
        """{node: (B,) energy} for every node with an energy term."""
        return {v: self.node_energy(states, v) for v in self.order if self.nodes[v].has_energy}

    def energy(self, states: States) -> Tensor:
        """Total energy E, summed over nodes and over the batch (a scalar)."""
        return sum(e.sum() for e in self.node_energies(states).values())

    # --- the feedforward pass -------------------------------------------------------------

    def forward(self, batch: States) -> States:
        """Feedforward pass in topological order: given nodes keep their values, every other
        node takes the state that minimises its energy given its prediction (its mean), roots
        their prior mean (or zeros)."""
        return self.feedforward(batch)[0]

    def feedforward(self, batch: States, keep: frozenset[int] = frozenset(),
                    free: States | None = None) -> tuple[States, dict]:
        """:meth:`forward`, also returning ``{edge index: (output, tape)}`` for the edges in ``keep``
        (the tape is what :mod:`pcgraph._impl.local` needs to differentiate the edge later). A node in
        ``free`` is partly given: its neurons where the mask is 1 are computed like any other node's."""
        free = free or {}
        if not self.acyclic:
            raise SpecError("a feedforward pass needs an acyclic graph, and this one has a cycle", "graph.edges")
        self.require_time(batch)
        ref = next(iter(batch.values()))
        states, kept = dict(batch), {}
        for v in self.order:
            if v in batch and v not in free:
                continue
            n = self.nodes[v]
            if not n.incoming:
                states[v] = self._given(v, self.root_value(v, ref), batch, free)
                continue
            mu = None
            for i in n.incoming:
                y, tape = edge_forward(self.edges[i], states)
                if i in keep:
                    kept[i] = (y, tape)
                mu = y if mu is None else mu + y
            states[v] = self._given(v, E.mean(n.spec.energy, mu), batch, free)
        return states, kept

    @staticmethod
    def _given(v: str, value: Tensor, batch: States, free: States) -> Tensor:
        return torch.where(free[v] > 0, value, batch[v]) if v in free else value

    def root_value(self, node: str, like: Tensor, use_prior: bool = True) -> Tensor:
        """Initial value of an unclamped node: its prior mean (if any and asked for) or zeros."""
        n = self.nodes[node]
        value = n.spec.prior.mean if (use_prior and n.spec.prior is not None) else 0.0
        return torch.full((like.shape[0], *n.shape), value, dtype=like.dtype, device=like.device)

    def bp_loss(self, batch: States) -> Tensor:
        """Backprop's loss on the same graph: the energies of the given nodes that have
        predictions, evaluated at the feedforward pass, averaged over the batch."""
        states = self.forward({k: v for k, v in batch.items()})
        targets = [v for v in batch if self.nodes[v].incoming]
        b = next(iter(batch.values())).shape[0]
        out = {v: self.node_energy(states, v) for v in targets}
        return sum(e.sum() for e in out.values()) / b

    # --- sizes --------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Edges on the longest path (acyclic graphs): how far an error may have to travel."""
        dist = dict.fromkeys(self.order, 0)
        for v in self.order:
            for i in self.nodes[v].incoming:
                dist[v] = max(dist[v], 1 + max(dist[s] for s in self.edges[i].sources))
        return max(dist.values())

    def states_per_sample(self, clamped: set[str] | None = None) -> int:
        """Number of inferred scalars per sample (``clamped`` defaults to the observed nodes)."""
        if clamped is None:
            clamped = {v for v, n in self.nodes.items() if n.spec.role == "observed"}
        return sum(math.prod(n.shape) for v, n in self.nodes.items() if v not in clamped)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())



# --- the compiler ------------------------------------------------------------------------------


def max_bytes_default() -> int:
    """The memory limit of :func:`compile`: $PCGRAPH_MAX_BYTES, else 8 GiB."""
    return int(float(os.environ.get("PCGRAPH_MAX_BYTES", 8 * 2**30)))


def compile(spec: GraphSpec, max_bytes: int | None = None) -> CompiledGraph:  # noqa: A001 - the stage's name
    """Validate ``spec`` and build its :class:`CompiledGraph` (parameters on the CPU, float32).

    Raises :class:`SpecError` naming the YAML path of the first problem in each category, also when
    the parameters and a batch's states would need more than ``max_bytes`` (default
    :func:`max_bytes_default`); that is checked before anything is allocated.
    """
    body = spec.graph
    budget = _Budget(max_bytes if max_bytes is not None else max_bytes_default())
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
        if isinstance(n.energy, Categorical) and g.out_degree(v) > 0:
            problems.append((f"{path}.energy", "a categorical node must be a leaf (no outgoing "
                             f"edges); {v!r} feeds {sorted(set(g.successors(v)))}"))
    if spec.data is not None:
        problems += _data_problems(spec.data, body.nodes)
    if problems:
        raise SpecError(problems)

    acyclic = nx.is_directed_acyclic_graph(g)
    if not acyclic and spec.inference.init == "forward":
        cycle = " -> ".join([u for u, _, _ in nx.find_cycle(g)] + [nx.find_cycle(g)[0][0]])
        raise SpecError(f"forward init needs an acyclic graph, but it has the cycle {cycle}; "
                        "use init: zeros or prior", "inference.init")
    if not acyclic and spec.data is not None and spec.train.eval == "feedforward":
        raise SpecError("a feedforward evaluation needs an acyclic graph, but it has a cycle; "
                        "use train.eval: inference", "train.eval")
    order = list(nx.topological_sort(g)) if acyclic else [*delayed, *body.nodes]

    edges = [build_edge(e, all_nodes, f"graph.edges[{i}]", budget) for i, e in enumerate(body.edges)]
    nodes = {
        v: Node(v, tuple(n.shape), n,
                tuple(i for i, e in enumerate(edges) if e.target == v and v in body.nodes),
                tuple(i for i, e in enumerate(edges) if v in e.sources))
        for v, n in all_nodes.items()
    }
    return CompiledGraph(spec, nodes, order, edges, acyclic, node_precisions(body.nodes), delayed)


def _data_problems(data, nodes: dict[str, NodeSpec]) -> list[tuple[str, str]]:
    """The data section's node references: known nodes, neuron ranges inside them, ``complete``
    inside ``input``, ``input`` and ``target`` not overlapping."""
    out, spans = [], {}
    for field in ("input", "target", "complete"):
        ref = data.ref(field)
        if ref is None:
            continue
        if ref.node not in nodes:
            out.append((f"data.{field}", f"unknown node {ref.node!r} (known: {', '.join(nodes)})"))
            continue
        size = math.prod(nodes[ref.node].shape)
        r = ref.neurons or slice(0, size)
        if r.stop > size:
            out.append((f"data.{field}", f"{getattr(data, field)} is out of range: {ref.node!r} has {size} "
                        f"neurons (0..{size - 1})"))
        spans[field] = (ref.node, r)
    if "input" in spans and "target" in spans:
        (a, x), (b, y) = spans["input"], spans["target"]
        if a == b and x.start < y.stop and y.start < x.stop:
            out.append(("data.target", f"{data.target} overlaps the input {data.input}: give them disjoint ranges"))
    if "complete" in spans and "input" in spans:
        (a, x), (b, y) = spans["input"], spans["complete"]
        if a != b or y.start < x.start or y.stop > x.stop:
            out.append(("data.complete", f"{data.complete} must be a range inside the input {data.input}"))
        elif y.start == x.start and y.stop == x.stop:
            out.append(("data.complete", "hiding the whole input leaves nothing to complete from"))
    return out


class _Budget:
    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self, nbytes: int, path: str, what: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise SpecError(f"{what} brings the estimated memory to {self.used / 2**30:,.3g} GiB, over the "
                            f"limit of {self.limit / 2**30:.2f} GiB (set PCGRAPH_MAX_BYTES to raise it)", path)


def build_edge(e, nodes: dict[str, NodeSpec], path: str, budget: _Budget | None = None) -> Edge:
    """An :class:`Edge` module for the edge spec ``e`` between ``nodes``; SpecErrors name ``path``."""
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
            m = op.build(in_shape, target)
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
    return Edge([f"{s}@prev" for s in e.source] if e.delay else list(e.source), e.to, e.combine, modules)
