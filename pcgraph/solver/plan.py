"""What a clamp set leaves to inference, and what stays constant while it runs.

:class:`Plan` decides, from the clamp set, which nodes are relaxed, which edges are constant for
the whole relaxation and which energy terms the loop evaluates; :class:`Constants` holds what is
computed once per batch (the constant edges' predictions and tapes, the initial pass's outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

from pcgraph.compiler import CompiledGraph, States, edge_forward


class Plan:
    """Which nodes are relaxed, which edges are constant and which energy terms the loop needs."""

    def __init__(self, graph: CompiledGraph, clamped: set[str], free: States | None = None,
                 leaves_at_optimum: bool = True):
        """``leaves_at_optimum``: free leaves are set to their optimum instead of being relaxed
        (False: they are relaxed like any node, as a state gradient at given states needs)."""
        nodes = graph.nodes
        self.free = free or {}  # partly clamped nodes: {node: 1 at inferred neurons, 0 at clamped ones}
        unclamped = [v for v in graph.order if v not in clamped]
        self.leaves = [v for v in unclamped if nodes[v].incoming and not nodes[v].outgoing and v not in self.free
                       and leaves_at_optimum]
        self.relaxed = [v for v in unclamped if v not in self.leaves]
        relaxed = set(self.relaxed)
        self.const_edges = frozenset(
            i for i, e in enumerate(graph.edges) if all(s in clamped for s in e.sources))
        energetic = [v for v in graph.order if nodes[v].has_energy and v not in self.leaves]
        self.terms = [v for v in energetic if v in relaxed or any(
            s in relaxed for i in nodes[v].incoming for s in graph.edges[i].sources)]
        self.fixed_terms = [v for v in energetic if v not in self.terms]
        self.clamped = clamped

    def step_grads(self, gx: States) -> list:
        """dE/dx of the relaxed nodes, in order, zero at the clamped neurons of partly clamped nodes."""
        return [g * self.free[v] if g is not None and v in self.free else g
                for v, g in ((v, gx.get(v)) for v in self.relaxed)]

    def schedule(self, graph: CompiledGraph, steps: int, cached: frozenset[int], fresh: bool,
                 fixed_prediction: bool = False) -> list:
        """Per step (and once more for the pass after the last step): the energy terms whose
        error can be nonzero and the edges whose output can differ from the cached one.

        After a forward init (``fresh``) every relaxed node sits at its prediction, so only errors
        at clamped nodes are nonzero; a node moves only once an error reaches it, one edge per step.
        Terms with a zero error contribute nothing and edges whose sources have not moved keep
        their cached output, so both are skipped: the result is the same, with less work. With
        ``fixed_prediction`` no edge is ever recomputed: predictions and their Jacobians stay at
        the feedforward pass (the exact-BP variant).
        """
        nodes, edges = graph.nodes, graph.edges
        moved = set() if fresh else set(self.relaxed)
        relaxed = set(self.relaxed)
        out = []
        for _ in range(steps + 1):
            recompute = frozenset(i for i in range(len(edges)) if i not in self.const_edges
                                  and (i not in cached or any(s in moved for s in edges[i].sources)))
            if fixed_prediction:
                recompute = frozenset()
            terms = [v for v in self.terms if v in self.clamped or v in self.free or v in moved or not nodes[v].incoming
                     or any(i in recompute for i in nodes[v].incoming)]
            out.append((terms, recompute))
            for v in terms:  # the nodes these errors push move from the next step on
                moved |= {v} & relaxed
                moved |= {s for i in nodes[v].incoming for s in edges[i].sources if s in relaxed}
        return out


@dataclass(frozen=True)
class Constants:
    """Per batch: ``mu`` {node: summed prediction of its constant edges}, ``tapes`` {constant edge:
    (output, tape)}, ``cache`` {other edge: (output, tape) at the initial states}, and ``fresh``:
    the states come from a forward init (only errors at clamped nodes are nonzero)."""

    mu: States
    tapes: dict
    cache: dict
    fresh: bool = False

    @classmethod
    def at(cls, graph: CompiledGraph, plan: Plan, states: States) -> Constants:
        """The constant edges evaluated at ``states`` (no cache)."""
        return cls.collect(graph, plan, {i: edge_forward(graph.edges[i], states) for i in plan.const_edges})

    @classmethod
    def collect(cls, graph: CompiledGraph, plan: Plan, kept: dict, fresh: bool = False) -> Constants:
        """From {edge: (output, tape)}: sum the constant edges' outputs per target, cache the rest."""
        mu: States = {}
        for i in plan.const_edges:
            t = graph.edges[i].target
            mu[t] = kept[i][0] if t not in mu else mu[t] + kept[i][0]
        tapes = {i: kept[i] for i in plan.const_edges}
        cache = {i: out for i, out in kept.items() if i not in plan.const_edges}
        return cls(mu, tapes, cache, fresh)
