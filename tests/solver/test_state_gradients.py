"""Solver.state_gradients (dE/dx at given states) against torch.autograd.grad of graph.energy, its
per-sample convention (no batch mean), clamps and precision schedules; and parameter_names, the one
naming that links Solver.gradients' keys with verify_bp's rows."""

import pytest
import torch

import pcgraph
from pcgraph.spec.run import PrecisionSpec
from tests.strategies import small_net

f64 = torch.float64


def mixed_graph():
    """z (vector-mean prior) and x (observed) -> h (tanh, matrix precision) -> y (categorical leaf),
    and x -> y: priors, two sources, a matrix precision and a free leaf in one graph."""
    g = pcgraph.Graph("mixed")
    g.node("z", 2, prior={"mean": [0.5, -1.0], "precision": 2.0})
    g.node("x", 3, observed=True)
    g.node("h", 4, energy={"kind": "gaussian", "precision": [[2.0, 0.3, 0, 0], [0.3, 1.0, 0, 0], [0, 0, 1.5, 0],
                                                              [0, 0, 0, 0.5]]})
    g.node("y", 3, energy="categorical")
    g.edge(["z", "x"], "h", "linear", "tanh")
    g.edge("h", "y", "linear")
    g.edge("x", "y", {"kind": "linear", "bias": False})
    return pcgraph.compile(g.spec(), dtype=f64)


def configuration(graph, b=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    states = {v: torch.randn(b, *n.shape, generator=gen, dtype=f64) for v, n in graph.nodes.items()}
    # a categorical node holds a distribution (log x is taken)
    return {v: x.softmax(1) if graph.nodes[v].spec.energy.kind == "categorical" else x for v, x in states.items()}


def autograd_reference(graph, states, nodes):
    xs = {v: x.clone().requires_grad_(v in nodes) for v, x in states.items()}
    grads = torch.autograd.grad(graph.energy(xs), [xs[v] for v in nodes])
    return dict(zip(nodes, grads))


@pytest.mark.parametrize("local_rules", [True, False])
@pytest.mark.parametrize("clamped", [(), ("x",), ("x", "y")])
def test_equals_autograd_of_the_graph_energy(local_rules, clamped):
    graph = mixed_graph()
    states = configuration(graph)
    batch = {v: states[v] for v in clamped}
    got = pcgraph.Solver(local_rules=local_rules).state_gradients(graph, states, batch)
    free = [v for v in graph.nodes if v not in clamped]
    assert sorted(got) == sorted(free)  # the free leaf y too: nothing is moved to its optimum
    want = autograd_reference(graph, states, free)
    for v in free:
        torch.testing.assert_close(got[v], want[v], rtol=1e-12, atol=1e-12)


def test_a_row_is_one_samples_gradient_whatever_the_batch_size():
    """E sums over the batch: sample b's gradient is its own, not divided by B (unlike dE/dtheta)."""
    graph = mixed_graph()
    states = configuration(graph, b=8)
    whole = pcgraph.Solver().state_gradients(graph, states, {"x": states["x"]})
    alone = pcgraph.Solver().state_gradients(graph, {v: x[3:4] for v, x in states.items()}, {"x": states["x"][3:4]})
    for v in alone:
        torch.testing.assert_close(whole[v][3:4], alone[v], rtol=1e-12, atol=1e-14)


def test_a_partial_clamp_zeroes_the_clamped_neurons_and_overrides_their_values():
    graph = pcgraph.compile(small_net(sizes=(3, 5, 2)), dtype=f64)
    states = configuration(graph)
    data = torch.randn(6, 5, dtype=f64)
    got = pcgraph.Solver().state_gradients(graph, states, {"x": states["x"], "h": pcgraph.Clamp(data, [0, 3])})
    want = autograd_reference(graph, {**states, "h": data}, ["h", "y"])
    assert torch.equal(got["h"][:, [0, 3]], torch.zeros(6, 2, dtype=f64))
    torch.testing.assert_close(got["h"][:, [1, 2, 4]], want["h"][:, [1, 2, 4]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["y"], want["y"], rtol=1e-12, atol=1e-12)


def test_it_is_the_step_a_unit_sgd_step_takes():
    """The old workaround (one SGD step of size 1 from the given states) moves x by -dE/dx."""
    graph = pcgraph.compile(small_net(), dtype=f64)
    states = configuration(graph)
    batch = {"x": states["x"], "y": states["y"]}
    stepped = pcgraph.Solver(steps=1, optimizer=pcgraph.StateSGD(1.0)).relax(graph, batch, init=states).states
    got = pcgraph.Solver().state_gradients(graph, states, batch)
    torch.testing.assert_close(states["h"] - stepped["h"], got["h"], rtol=1e-12, atol=1e-12)


def test_a_precision_schedule_weighs_the_terms_at_its_step():
    graph = pcgraph.compile(small_net(), dtype=f64)
    states = configuration(graph)
    batch = {"x": states["x"], "y": states["y"]}
    spike = PrecisionSpec(nodes=["y"], schedule={"kind": "spike", "at": 2, "peak": 5.0, "after": 1.0})
    solver = pcgraph.Solver(precisions=[spike])
    xs = {v: x.clone().requires_grad_(v == "h") for v, x in states.items()}
    energies = graph.node_energies(xs)
    scaled = torch.autograd.grad(energies["h"].sum() + 5.0 * energies["y"].sum(), xs["h"], retain_graph=True)[0]
    torch.testing.assert_close(solver.state_gradients(graph, states, batch, step=2)["h"], scaled)
    plain = autograd_reference(graph, states, ["h"])["h"]
    torch.testing.assert_close(solver.state_gradients(graph, states, batch)["h"], plain)  # default: unit
    torch.testing.assert_close(solver.state_gradients(graph, states, batch, step=0)["h"],  # before: pi_y = 0
                               torch.autograd.grad(energies["h"].sum(), xs["h"])[0])


def test_states_must_hold_every_node():
    graph = pcgraph.compile(small_net(), dtype=f64)
    states = configuration(graph)
    del states["h"]
    with pytest.raises(KeyError, match="states lack node.*'h'"):
        pcgraph.Solver().state_gradients(graph, states, {"x": configuration(graph)["x"]})


# --- parameter names --------------------------------------------------------------------------------


def test_parameter_names_are_readable_unique_and_cover_every_parameter():
    g = pcgraph.Graph("names")
    g.node("a", 3, observed=True)
    g.node("b", 2, observed=True)
    g.node("c", 4, energy={"kind": "gaussian", "learn": "diagonal"})
    g.edge(["a", "b"], "c", "linear", "tanh")
    g.edge("a", "c", "tanh", {"kind": "linear", "bias": False})
    g.edge("a", "c", {"kind": "linear", "bias": False})  # parallel to the edge above: both get their index
    graph = pcgraph.compile(g.spec())
    names = pcgraph.parameter_names(graph)
    assert list(names) == [n for n, _ in graph.named_parameters()]
    assert names == {
        "edges.0.pipeline.0.weight": "a+b->c linear[0].weight",
        "edges.0.pipeline.0.bias": "a+b->c linear[0].bias",
        "edges.1.pipeline.1.weight": "a->c#1 linear[1].weight",
        "edges.2.pipeline.0.weight": "a->c#2 linear[0].weight",
        "energies.c.log_diag": "c energy.log_diag",
    }


def test_verify_bp_rows_name_the_keys_of_solver_gradients():
    graph = pcgraph.compile(small_net(), dtype=f64)
    batch = {"x": torch.randn(4, 3, dtype=f64), "y": torch.randn(4, 2, dtype=f64)}
    check = pcgraph.verify_bp(graph, batch, "exact")
    _, grads = pcgraph.Solver(variant="exact").gradients(graph, batch)
    names = pcgraph.parameter_names(graph)
    assert [r.parameter for r in check.rows] == list(grads)
    assert [r.name for r in check.rows] == [names[r.parameter] for r in check.rows]
    assert check.rows[0].name == "x->h linear[0].weight" and check.rows[0].parameter == "edges.0.pipeline.0.weight"
    assert '"parameter": "edges.1.pipeline.0.bias"' in check.to_json()
