"""Precision schedules: a per-node multiplier of the energy over the inference steps.

At inference step t the solver descends

    E_t = sum_v pi_v(t) e_v(x_v, mu_v)

where pi_v(t) is 1 unless a schedule selects node v. A schedule is a registered class with one
method, :meth:`Schedule.factor` (t, d) -> pi, where d is the node's distance to the clamped output
(edges on the shortest path from v to an output leaf; 0 at the output itself). This is how Qi et
al. (2025, arXiv 2506.23800) balance the errors of deep graphs: a spike of precision that travels
down from the output one edge per step, so every layer's error counts when it first arrives.
Learning always differentiates E at unit precision (the schedule shapes inference only).

In a spec, ``inference.precisions`` is a list of ``{nodes: [...] | distance: d | [lo, hi],
schedule: ...}``; a node takes the schedule of the last entry that selects it.
"""

from __future__ import annotations

import math

from pydantic import Field, FiniteFloat, NonNegativeFloat, NonNegativeInt

from pcgraph.errors import SpecError
from pcgraph.registry import Registered, Registry


class Schedule(Registered):
    """Base class of precision schedules: pi(t, d) for step t and distance d to the output."""

    def needs_distance(self) -> bool:
        """True when :meth:`factor` reads d (a selected node that reaches no output is refused)."""
        return False

    def factor(self, step: int, distance: int | None) -> float:
        raise NotImplementedError


SCHEDULES = Registry("precision schedule", Schedule)
register_schedule = SCHEDULES.register
parse_schedule = SCHEDULES.parse
schedule_json_schema = SCHEDULES.json_schema


@register_schedule
class Constant(Schedule):
    """pi(t) = value at every step."""

    kind = "constant"
    value: NonNegativeFloat = Field(1.0, allow_inf_nan=False, description="The precision multiplier.")

    def factor(self, step: int, distance: int | None) -> float:
        return self.value


class _Switched(Schedule):
    at: NonNegativeInt | None = Field(
        None, description="The step the precision switches on; default: the node's distance to the output.")
    shift: int = Field(0, description="Added to the default switch-on step (the distance).")
    before: NonNegativeFloat = Field(0.0, allow_inf_nan=False, description="pi before the switch-on step.")
    peak: FiniteFloat = Field(1.0, gt=0, description="pi at the switch-on step.")

    def needs_distance(self) -> bool:
        return self.at is None

    def _on(self, distance: int | None) -> int:
        return self.at if self.at is not None else distance + self.shift

    def factor(self, step: int, distance: int | None) -> float:
        j = step - self._on(distance)
        return self.before if j < 0 else self.peak if j == 0 else self._after(j)

    def _after(self, j: int) -> float:
        raise NotImplementedError


@register_schedule
class Spike(_Switched):
    """pi = before until step ``at``, peak at it, ``after`` from then on (Qi et al.'s spiking precision)."""

    kind = "spike"
    after: NonNegativeFloat = Field(0.001, allow_inf_nan=False, description="pi after the spike.")

    def _after(self, j: int) -> float:
        return self.after


@register_schedule
class Decay(_Switched):
    """pi = before until step ``at``, peak at it, then peak * exp(-rate * j), j steps later."""

    kind = "decay"
    rate: NonNegativeFloat = Field(1.0, allow_inf_nan=False, description="Decay rate per step.")

    def _after(self, j: int) -> float:
        return self.peak * math.exp(-self.rate * j)


def output_distances(graph, outputs: set[str]) -> dict[str, int]:
    """{node: edges on the shortest path from it to a node in ``outputs``} (nodes that reach none
    are left out), by a breadth-first search against the edges' direction."""
    dist = dict.fromkeys(outputs, 0)
    frontier = list(outputs)
    while frontier:
        nxt = []
        for v in frontier:
            for i in graph.nodes[v].incoming:
                for s in graph.edges[i].sources:
                    if s in graph.nodes and s not in dist:
                        dist[s] = dist[v] + 1
                        nxt.append(s)
        frontier = nxt
    return dist


def precision_table(entries: list, graph, plan, steps: int) -> tuple[dict[str, float], ...]:
    """Per inference step t < ``steps``: {node: pi_v(t)} for the nodes some entry of ``entries``
    (``inference.precisions``) selects; () without entries. Distances are measured to the clamped
    outputs of ``plan`` (clamped nodes with predictions and no outgoing edges, else any clamped
    node with predictions)."""
    if not entries:
        return ()
    clamped = [v for v in plan.clamped if graph.nodes[v].incoming]
    outputs = {v for v in clamped if not graph.nodes[v].outgoing} or set(clamped)
    dist = output_distances(graph, outputs)
    chosen: dict[str, tuple[int, object]] = {}
    for k, entry in enumerate(entries):
        unknown = [v for v in entry.nodes or () if v not in graph.nodes]
        if unknown:
            raise SpecError(f"unknown node {unknown[0]!r} (known: {', '.join(graph.nodes)})",
                            f"inference.precisions[{k}].nodes")
        for v in graph.nodes:
            if graph.nodes[v].has_energy and entry.selects(v, dist.get(v)):
                chosen[v] = (k, entry.schedule)
    for v, (k, schedule) in chosen.items():
        if schedule.needs_distance() and v not in dist:
            raise SpecError(f"this schedule switches on at a node's distance to the clamped output, and {v!r} reaches "
                            "no clamped output; select nodes that do, or give `at`", f"inference.precisions[{k}]")
    return tuple({v: float(s.factor(t, dist.get(v))) for v, (_, s) in chosen.items()} for t in range(steps))
