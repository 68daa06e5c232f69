"""The compiled graph: a ``torch.nn.Module`` holding a PC graph's parameters and energy terms.

``mu_v = sum_{e into v} f_e(x_src(e))`` and ``E = sum_v sum_batch e_v(x_v, mu_v)`` (eq. 27). States
are plain dicts ``{node: (B, *shape) tensor}`` passed in and out; the module holds only the
parameters, the edges' op pipelines and the nodes' energy terms (:mod:`pcgraph.energies`), all
resolved from the spec by :func:`pcgraph.compile` so that nothing after it reads the spec.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pcgraph.energies import Term
from pcgraph.errors import SpecError, UsageError
from pcgraph.ops import OpModule, Shape
from pcgraph.spec import GraphSpec, NodeSpec

States = dict[str, Tensor]


def combine(mode: str, xs: list[Tensor]) -> Tensor:
    """Join an edge's sources: concat along dim 1, elementwise add, or elementwise product."""
    if len(xs) == 1:
        return xs[0]
    if mode == "concat":
        return torch.cat(xs, dim=1)
    out = xs[0]
    for x in xs[1:]:
        out = out + x if mode == "add" else out * x
    return out


def edge_forward(edge, states: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
    """y = f_e(x_src) and its tape: the sources, then what each module's local rule reads (its
    input, or what :meth:`~pcgraph.ops.OpModule.taped` saves)."""
    xs = [states[s] for s in edge.sources]
    x = combine(edge.combine, xs)
    tape = [*xs]
    for m in edge.pipeline:
        if isinstance(m, OpModule):
            x, saved = m.taped(x)
        else:
            x, saved = m(x), x
        tape.append(saved)
    return x, tape


class Edge(nn.Module):
    """f_e(x_src): ``combine`` the source states, then run the op pipeline."""

    def __init__(self, sources: list[str], target: str, combine: str, pipeline: list[nn.Module],
                 kinds: list[str] | None = None):
        super().__init__()
        self.sources, self.target, self.combine = sources, target, combine
        self.pipeline = nn.Sequential(*pipeline)
        self.kinds = kinds or [type(m).__name__ for m in pipeline]  # the ops' kinds, for messages

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
    States are plain dicts ``{node: (B, *shape) tensor}``; the module holds the parameters, the
    edges' modules and the nodes' energy terms (``terms``, ``priors``), never states.
    """

    def __init__(self, spec: GraphSpec, nodes: dict[str, Node], order: list[str], edges: list[Edge], acyclic: bool,
                 terms: dict[str, Term], priors: dict[str, Term], delayed: dict[str, str] | None = None,
                 encoders: list[Edge] | None = None):
        super().__init__()
        self.spec = spec
        self.nodes = nodes
        self.order = order  # topological when acyclic, declaration order otherwise
        self.edges = nn.ModuleList(edges)
        self.acyclic = acyclic
        self.terms = terms  # {node with incoming edges: its energy term}
        self.priors = priors  # {node with a prior: its term, centred on the prior mean}
        # the terms holding tensors (matrix or learnt precisions, vector means) are submodules
        self.energies = nn.ModuleDict({v: t for v, t in terms.items() if t.stateful})
        self.prior_energies = nn.ModuleDict({v: t for v, t in priors.items() if t.stateful})
        self.delayed = delayed or {}  # {"x@prev": "x"}: the previous time step's values, clamped
        self.encoders = nn.ModuleList(encoders or [])  # amortised init: proposals of latents, outside the energy
        self.warned_autograd = False  # the solver's warning that an op lacks a local rule: once per graph
        self._register_load_state_dict_pre_hook(_renamed_keys)

    def check_values(self, batch: States, name: str = "batch") -> int:
        """The batch size B of ``batch``, {node: (B, *shape) tensor}, after checking it as torch modules
        check their inputs, in messages naming the node: known nodes; tensors in the graph's floating
        dtype (no silent casts: a float64 batch for a float32 graph is refused, and so are integer
        labels, which a categorical node takes one-hot) on its device; each node's per-sample shape;
        one batch size B >= 1 for them all."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"{name} must be a dict {{node: tensor}}, got {type(batch).__name__}")
        if not batch:
            given = [v for v, n in self.nodes.items() if n.spec.role == "observed" and v not in self.delayed]
            raise UsageError(f"{name} is empty: give at least one node's values (observed nodes: {', '.join(given)})")
        ref = next((t for t in itertools.chain(self.parameters(), self.buffers()) if t.is_floating_point()), None)
        dtype = ref.dtype if ref is not None else next(  # a graph without parameters: the batch's dtype
            (x.dtype for x in batch.values() if isinstance(x, Tensor) and x.is_floating_point()), torch.get_default_dtype())
        sizes = set()
        for v, x in batch.items():
            if v not in self.nodes:
                raise KeyError(f"{name} names unknown node {v!r} (known: {', '.join(self.nodes)})")
            shape, where = self.nodes[v].shape, f"{name}[{v!r}]"
            want = f"a (B, {', '.join(map(str, shape))}) tensor"
            if not isinstance(x, Tensor):
                raise TypeError(f"{where} must be {want}, got {type(x).__name__}")
            if not x.is_floating_point():
                fix = (f"class labels go one-hot: torch.nn.functional.one_hot(y, {shape[0]}).to({dtype})"
                       if self.nodes[v].spec.energy.kind == "categorical" else f"convert it: x.to({dtype})")
                raise TypeError(f"{where} is {x.dtype}, and node states are floating point ({dtype}): {fix}")
            if x.dtype != dtype:
                raise TypeError(f"{where} is {x.dtype} and the graph computes in {dtype}: convert the batch "
                                f"(x.to({dtype})) or compile the graph in its dtype: pcgraph.compile(spec, dtype={x.dtype})")
            if ref is not None and x.device != ref.device:
                raise UsageError(f"{where} is on {x.device} and the graph on {ref.device}: move one of them (.to(device))")
            if x.dim() == 0 or x.shape[1:] != shape:
                raise UsageError(f"{where} has shape {list(x.shape)}: node {v!r} expects {want} (per-sample shape "
                                 f"{list(shape)}, got {list(x.shape[1:])})")
            if len(x) == 0:
                raise UsageError(f"{where} holds no samples (batch size 0): give at least one")
            sizes.add(len(x))
        if len(sizes) > 1:
            raise UsageError(f"{name} tensors disagree on the batch size: {sorted(sizes)}")
        return sizes.pop()

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
        if self.nodes[node].incoming:
            mu = self.prediction(states, node) if mu is None else mu
            return self.terms[node].value(states[node], mu)
        prior = self.priors[node]
        return prior.value(states[node], prior.center)

    def node_energies(self, states: States) -> States:
        """{node: (B,) energy} for every node with an energy term."""
        return {v: self.node_energy(states, v) for v in self.order if self.nodes[v].has_energy}

    def energy(self, states: States) -> Tensor:
        """Total energy E, summed over nodes and over the batch (a scalar); ``states`` holds every node."""
        missing = [v for v in self.order if v not in states]
        if missing:
            raise KeyError(f"states lack node(s) {', '.join(map(repr, missing))}: the energy needs every node's value "
                           "(a relaxation's .states, or graph(batch) for the feedforward states)")
        return sum(e.sum() for e in self.node_energies(states).values())

    # --- the feedforward pass -------------------------------------------------------------

    def forward(self, batch: States) -> States:
        """Feedforward pass in topological order: given nodes keep their values, every other
        node takes the state that minimises its energy given its prediction (its mean), roots
        their prior mean (or zeros). ``batch`` is checked (:meth:`check_values`)."""
        self.check_values(batch)
        return self.feedforward(batch)[0]

    def feedforward(self, batch: States, keep: frozenset[int] = frozenset(), free: States | None = None,
                    offsets: States | None = None) -> tuple[States, dict]:
        """:meth:`forward`, also returning ``{edge index: (output, tape)}`` for the edges in ``keep``
        (the tape is what :mod:`pcgraph.solver.local` needs to differentiate the edge later). A node in
        ``free`` is partly given: its neurons where the mask is 1 are computed like any other node's.
        A node in ``offsets`` takes its value plus the offset, x_v = f_v(parents) + e_v (ePC's errors)."""
        free, offsets = free or {}, offsets or {}
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
                states[v] = self._given(v, self._offset(v, self.root_value(v, ref), offsets), batch, free)
                continue
            mu = None
            for i in n.incoming:
                y, tape = edge_forward(self.edges[i], states)
                if i in keep:
                    kept[i] = (y, tape)
                mu = y if mu is None else mu + y
            states[v] = self._given(v, self._offset(v, self.terms[v].optimum(mu), offsets), batch, free)
        return states, kept

    @staticmethod
    def _offset(v: str, value: Tensor, offsets: States) -> Tensor:
        return value + offsets[v] if v in offsets else value

    @staticmethod
    def _given(v: str, value: Tensor, batch: States, free: States) -> Tensor:
        return torch.where(free[v] > 0, value, batch[v]) if v in free else value

    def root_value(self, node: str, like: Tensor, use_prior: bool = True) -> Tensor:
        """Initial value of an unclamped node: its prior mean (if any and asked for) or zeros."""
        shape = (like.shape[0], *self.nodes[node].shape)
        prior = self.priors.get(node) if use_prior else None
        if prior is None or isinstance(prior.center, float):
            return torch.full(shape, 0.0 if prior is None else prior.center, dtype=like.dtype, device=like.device)
        return prior.center.to(like).expand(shape).clone()

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


def _renamed_keys(state_dict, prefix, *args) -> None:
    """Checkpoints written before energies were terms keep precisions under ``precisions.<node>``."""
    for key in [k for k in state_dict if k.startswith(prefix + "precisions.")]:
        state_dict[prefix + "energies." + key[len(prefix + "precisions."):]] = state_dict.pop(key)
