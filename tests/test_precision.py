"""Precision schedules (inference.precisions): the table of pi_v(t) a spec asks for, and inference
that descends exactly sum_v pi_v(t) e_v at step t (checked against autograd on that sum), with
learning at unit precision."""

import math

import pytest
import torch

import pcgraph
from pcgraph.precision import Constant, Decay, Spike, output_distances, precision_table
from pcgraph.solver import StateSGD
from pcgraph.solver.plan import Plan
from pcgraph.spec.run import PrecisionSpec
from tests.solver.test_solver import chain

f64 = torch.float64


def entries(*items):
    return [PrecisionSpec.model_validate(i) for i in items]


def test_distances_and_a_spike_travelling_down():
    graph = chain([3, 4, 4, 4, 2])  # x0 (clamped) -> x1 -> x2 -> x3 -> x4 (clamped)
    plan = Plan(graph, {"x0", "x4"})
    assert output_distances(graph, {"x4"}) == {"x4": 0, "x3": 1, "x2": 2, "x1": 3, "x0": 4}
    table = precision_table(entries({"schedule": "spike"}), graph, plan, 5)
    for t, w in enumerate(table):
        for v, d in (("x4", 0), ("x3", 1), ("x2", 2), ("x1", 3)):
            assert w[v] == (0.0 if t < d else 1.0 if t == d else 0.001), (t, v)
        assert "x0" not in w  # no energy term


def test_selection_by_name_and_distance_last_entry_wins():
    graph = chain([3, 4, 4, 4, 2])
    plan = Plan(graph, {"x0", "x4"})
    table = precision_table(entries({"distance": [1, 2], "schedule": {"kind": "constant", "value": 3}},
                                    {"nodes": ["x2"], "schedule": {"kind": "decay", "at": 1, "rate": 0.5}}),
                            graph, plan, 4)
    assert [w["x3"] for w in table] == [3.0] * 4
    assert [w["x2"] for w in table] == [0.0, 1.0, math.exp(-0.5), math.exp(-1.0)]
    assert set(table[0]) == {"x2", "x3"}  # exactly the selected nodes
    assert Constant(value=2).factor(7, None) == 2 and Spike(at=2, after=0.5).factor(3, None) == 0.5
    assert Decay(shift=1).factor(2, 1) == 1.0


@pytest.mark.parametrize("local_rules", [True, False])
def test_inference_descends_the_scheduled_energy(local_rules):
    graph = chain([3, 4, 5, 2], act="tanh")
    batch = {"x0": torch.randn(4, 3, dtype=f64), "x3": torch.randn(4, 2, dtype=f64)}
    sched = entries({"nodes": ["x2"], "schedule": {"kind": "spike", "at": 1, "before": 0.5, "peak": 4.0,
                                                   "after": 0.1}},
                    {"nodes": ["x3"], "schedule": {"kind": "constant", "value": 2.0}})
    lr, steps = 0.1, 3
    start = {"x1": torch.randn(4, 4, dtype=f64), "x2": torch.randn(4, 5, dtype=f64)}
    solver = pcgraph.Solver(steps=steps, optimizer=StateSGD(lr), init="zeros", precisions=sched,
                            local_rules=local_rules)
    r = solver.relax(graph, batch, init={v: x.clone() for v, x in start.items()})
    pis = {"x2": [0.5, 4.0, 0.1], "x3": [2.0, 2.0, 2.0], "x1": [1.0] * 3}
    xs = {v: x.clone() for v, x in start.items()}
    for t in range(steps):  # by hand: autograd on sum_v pi_v(t) e_v
        x1, x2 = (xs[v].requires_grad_() for v in ("x1", "x2"))
        states = {**batch, "x1": x1, "x2": x2}
        with torch.enable_grad():
            total = sum(pis[v][t] * graph.node_energy(states, v).sum() for v in ("x1", "x2", "x3"))
            g1, g2 = torch.autograd.grad(total, [x1, x2])
        assert torch.allclose(r.energy[t], total.detach(), atol=1e-10)
        xs = {"x1": (x1 - lr * g1).detach(), "x2": (x2 - lr * g2).detach()}
    for v in ("x1", "x2"):
        assert torch.allclose(r.states[v], xs[v], atol=1e-10), v
    assert torch.allclose(r.energy[-1], graph.energy(r.states), atol=1e-10)  # the last entry: unit precision
    _, grads = solver.gradients(graph, batch)  # learning at unit precision: the plain energy's gradient
    relaxed = solver.relax(graph, batch).states
    with torch.enable_grad():
        ref = torch.autograd.grad(graph.energy(relaxed) / 4, list(graph.parameters()))
    for (name, _), g in zip(graph.named_parameters(), ref):
        assert torch.allclose(grads[name], g, atol=1e-10), name


def test_spec_errors_name_the_entry():
    spec = chain([3, 4, 2]).spec.model_dump(mode="json", by_alias=True)
    spec["inference"] = {"precisions": [{"nodes": ["x9"], "schedule": "spike"}]}
    with pytest.raises(pcgraph.SpecError, match=r"inference.precisions\[0\].nodes: unknown node 'x9'"):
        pcgraph.compile(pcgraph.spec_from_dict(spec))
    spec["inference"] = {"precisions": [{"nodes": ["x1"], "distance": 1, "schedule": "spike"}]}
    with pytest.raises(pcgraph.SpecError, match="by name or by distance, not both"):
        pcgraph.spec_from_dict(spec)
    spec["inference"] = {"precisions": [{"schedule": {"kind": "ramp"}}]}
    with pytest.raises(pcgraph.SpecError, match=r"inference.precisions\[0\].schedule: unknown precision schedule"):
        pcgraph.spec_from_dict(spec)
    graph = chain([3, 4, 2])  # nothing clamped below x1 reaches an output when only x0 is given
    with pytest.raises(pcgraph.SpecError, match="reaches no clamped output"):
        pcgraph.Solver(steps=2, precisions=entries({"schedule": "spike"})).relax(
            graph, {"x0": torch.randn(2, 3, dtype=f64)})
