"""Error-parametrised PC (variant epc): the same equilibrium as standard PC (a linear solve on a
linear-Gaussian chain), errors that reach every layer in one step, the local weight gradient at
the relaxed states, and graphs it is not defined on refused before any work."""

import copy

import pytest
import torch

import pcgraph
from pcgraph.solver import StateSGD
from tests.solver.test_solver import chain, linears

f64 = torch.float64


def test_relaxed_point_is_the_linear_solve_of_standard_pc():
    p1, p2, p3 = 1.0, 2.0, 0.5
    graph = chain([3, 4, 3, 2], act=None, precisions=[1.0, p1, p2, p3], bias=False)
    A, B, C = (m.weight.detach() for m in linears(graph))
    x0, x3 = torch.randn(2, 3, dtype=f64), torch.randn(2, 2, dtype=f64)
    n1, n2 = 4, 3  # the minimiser of E over (x1, x2) solves H z = c (see test_solver)
    H = torch.zeros(n1 + n2, n1 + n2, dtype=f64)
    H[:n1, :n1] = p1 * torch.eye(n1, dtype=f64) + p2 * B.T @ B
    H[:n1, n1:] = -p2 * B.T
    H[n1:, :n1] = -p2 * B
    H[n1:, n1:] = p2 * torch.eye(n2, dtype=f64) + p3 * C.T @ C
    z = torch.linalg.solve(H, torch.cat([p1 * x0 @ A.T, p3 * x3 @ C], dim=1).T).T
    r = pcgraph.Solver(steps=1500, optimizer=StateSGD(0.1, momentum=0.5), variant="epc").relax(
        graph, {"x0": x0, "x3": x3})
    assert torch.allclose(r.states["x1"], z[:, :n1], atol=1e-9)
    assert torch.allclose(r.states["x2"], z[:, n1:], atol=1e-9)
    assert r.energy[0] > r.energy[-1]  # e = 0 is the feedforward pass; the energy falls from there


def test_one_step_moves_every_layer():
    """From the feedforward pass, one standard-PC step moves only the layer next to the clamped
    output; one ePC step moves every inferred layer (the gradient flows through the whole graph)."""
    graph = chain([3, 4, 4, 4, 2], act="tanh")
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x4": torch.randn(5, 2, dtype=f64)}
    forward = graph({"x0": batch["x0"]})
    moved = {}
    for variant in ("standard", "epc"):
        r = pcgraph.Solver(steps=1, optimizer=StateSGD(0.1), variant=variant).relax(graph, batch)
        moved[variant] = [v for v in ("x1", "x2", "x3") if not torch.allclose(r.states[v], forward[v])]
    assert moved == {"standard": ["x3"], "epc": ["x1", "x2", "x3"]}


def test_weight_gradient_is_the_local_one_at_the_relaxed_states():
    graph = chain([3, 5, 4, 2], act="tanh")
    batch = {"x0": torch.randn(6, 3, dtype=f64), "x3": torch.randn(6, 2, dtype=f64)}
    r, grads = pcgraph.Solver(steps=20, optimizer=StateSGD(0.1), variant="epc").gradients(graph, batch)
    with torch.enable_grad():
        loss = graph.energy(r.states) / 6
        ref = torch.autograd.grad(loss, list(graph.parameters()))
    for (name, _), g in zip(graph.named_parameters(), ref):
        assert torch.allclose(grads[name], g, atol=1e-12), name


def test_epc_trains_from_a_spec():
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    data = spec.model_dump(mode="json", by_alias=True)
    data["learning"]["variant"] = "epc"
    result = pcgraph.train(pcgraph.spec_from_dict(data), epochs=3, progress=False, log=lambda _: None)
    assert result.test_accuracy > 0.85


def test_graphs_epc_is_not_defined_on_are_refused():
    g = pcgraph.Graph("cyc")
    g.node("x", 3, observed=True)
    g.node("h", 3)
    g.edge("x", "h", "linear")
    g.edge("h", "h", "linear")
    g.inference(init="zeros")
    graph = pcgraph.compile(g.spec())
    with pytest.raises(pcgraph.SpecError, match="learning.variant: ePC .* has a cycle"):
        pcgraph.Solver(variant="epc", init="zeros").relax(graph, {"x": torch.randn(2, 3)})
    with pytest.raises(pcgraph.SpecError, match="inference.tol"):
        pcgraph.Solver(variant="epc", tol=1e-6)


def test_small_errors_keep_their_digits_in_float32():
    """With a tiny error step, x_v - mu_v at the relaxed point is a difference of two large numbers;
    the local rule reads ePC's e_v instead, so a float32 weight gradient matches float64's."""
    torch.manual_seed(3)
    graph32 = pcgraph.compile(chain([20, 32, 32, 32, 32, 5], act="tanh").spec, dtype=torch.float32)
    graph64 = copy.deepcopy(graph32).double()  # the same (float32) values
    x0, x5 = torch.randn(16, 20), torch.randn(16, 5)
    grads = {}
    for dtype, graph in ((torch.float32, graph32), (f64, graph64)):
        batch = {"x0": x0.to(dtype), "x5": x5.to(dtype)}
        _, grads[dtype] = pcgraph.Solver(steps=1, optimizer=StateSGD(1e-5), variant="epc").gradients(graph, batch)
    for name, g64 in grads[f64].items():
        g32 = grads[torch.float32][name].double()
        assert float((g32 - g64).norm() / g64.norm()) < 1e-3, name
