"""The solver against independent references: Box 2's update rules written out by hand, the
linear-Gaussian equilibrium as a linear solve, and autograd as a second gradient route."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pcgraph
from pcgraph.solver import StateSGD
from tests.strategies import SMOOTH, cyclic_graphs, layered_graphs, random_batch

f64 = torch.float64


def chain(sizes, act="tanh", precisions=None, bias=True):
    """x0 (observed) -> x1 -> ... -> xL (observed), mu_{l+1} = act(W x_l + b)."""
    g = pcgraph.Graph("chain")
    for i, n in enumerate(sizes):
        energy = {"kind": "gaussian", "precision": precisions[i]} if precisions else "gaussian"
        g.node(f"x{i}", n, observed=i in (0, len(sizes) - 1), energy=energy)
    for i in range(len(sizes) - 1):
        ops = [{"kind": "linear", "bias": bias}] + ([act] if act else [])
        g.edge(f"x{i}", f"x{i + 1}", *ops)
    return pcgraph.compile(g.spec()).double()


def linears(graph):
    return [e.pipeline[0] for e in graph.edges]


@pytest.mark.parametrize("local_rules", [True, False])
def test_box2_state_and_weight_updates(local_rules):
    """One inference step and one learning step equal the notes' Box 2 rules:
    dE/dx_l = eps_l - W_l^T (f'(a_l) * eps_{l+1}),  dE/dW_l = -(f'(a_l) * eps_{l+1}) x_l^T (batch mean),
    with a_l = W_l x_l + b_l, eps_l = pi_l (x_l - f(a_{l-1}))."""
    graph = chain([3, 4, 5, 2], "tanh", precisions=[1.0, 1.0, 2.0, 0.5])
    b = 6
    x = [torch.randn(b, n, dtype=f64) for n in (3, 4, 5, 2)]
    W = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in linears(graph)]
    pis = [1.0, 1.0, 2.0, 0.5]
    a = [x[i] @ W[i][0].T + W[i][1] for i in range(3)]
    eps = [None] + [pis[i + 1] * (x[i + 1] - torch.tanh(a[i])) for i in range(3)]
    fprime = [1 - torch.tanh(ai) ** 2 for ai in a]
    lr = 0.1
    expect = {f"x{k}": x[k] - lr * (eps[k] - (fprime[k] * eps[k + 1]) @ W[k][0]) for k in (1, 2)}

    solver = pcgraph.Solver(steps=1, optimizer=StateSGD(lr), init="zeros", local_rules=local_rules)
    r = solver.relax(graph, {"x0": x[0], "x3": x[3]}, init={"x1": x[1], "x2": x[2]})
    for v, want in expect.items():
        assert torch.allclose(r.states[v], want, rtol=1e-12, atol=1e-12)

    # learning at the given states: with steps=0 the update is taken at x as it is
    solver0 = pcgraph.Solver(steps=0, init="zeros", local_rules=local_rules)
    opt = torch.optim.SGD(graph.parameters(), lr=lr)
    r0 = solver0.relax(graph, {"x0": x[0], "x3": x[3]}, init={"x1": x[1], "x2": x[2]}, weight_optimizer=opt)
    assert r0.steps == 0
    for k, m in enumerate(linears(graph)):
        g_w = -(fprime[k] * eps[k + 1]).T @ x[k] / b
        g_b = -(fprime[k] * eps[k + 1]).mean(0)
        assert torch.allclose(m.weight, W[k][0] - lr * g_w, rtol=1e-12, atol=1e-12)
        assert torch.allclose(m.bias, W[k][1] - lr * g_b, rtol=1e-12, atol=1e-12)


def test_learn_by_autograd_equals_fused_learning():
    graph = chain([3, 4, 2], "leaky_relu")
    clone = chain([3, 4, 2], "leaky_relu")
    clone.load_state_dict(graph.state_dict())
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x2": torch.randn(5, 2, dtype=f64)}
    solver = pcgraph.Solver(steps=5, optimizer=StateSGD(0.1))
    solver.step(graph, batch, torch.optim.SGD(graph.parameters(), lr=0.5))
    r = solver.relax(clone, batch)
    solver.learn(clone, r, torch.optim.SGD(clone.parameters(), lr=0.5))
    for p, q in zip(graph.parameters(), clone.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-12)


def test_linear_gaussian_equilibrium_is_a_linear_solve():
    """With clamped ends, the minimiser of a linear-Gaussian chain solves H z = c (see below)."""
    p1, p2, p3 = 1.0, 2.0, 0.5
    graph = chain([3, 4, 3, 2], act=None, precisions=[1.0, p1, p2, p3], bias=False)
    A, Bm, C = (m.weight.detach() for m in linears(graph))
    x0, x3 = torch.randn(2, 3, dtype=f64), torch.randn(2, 2, dtype=f64)
    # dE/dx1 = p1 (x1 - A x0) - p2 B^T (x2 - B x1) = 0;  dE/dx2 = p2 (x2 - B x1) - p3 C^T (x3 - C x2) = 0
    n1, n2 = 4, 3
    H = torch.zeros(n1 + n2, n1 + n2, dtype=f64)
    H[:n1, :n1] = p1 * torch.eye(n1, dtype=f64) + p2 * Bm.T @ Bm
    H[:n1, n1:] = -p2 * Bm.T
    H[n1:, :n1] = -p2 * Bm
    H[n1:, n1:] = p2 * torch.eye(n2, dtype=f64) + p3 * C.T @ C
    c = torch.cat([p1 * x0 @ A.T, p3 * x3 @ C], dim=1)
    z = torch.linalg.solve(H, c.T).T
    solver = pcgraph.Solver(steps=5000, optimizer=StateSGD(0.1, momentum=0.5), tol=1e-11)
    r = solver.relax(graph, {"x0": x0, "x3": x3})
    assert r.steps < 5000
    assert torch.allclose(r.states["x1"], z[:, :n1], atol=1e-9)
    assert torch.allclose(r.states["x2"], z[:, n1:], atol=1e-9)


def test_states_are_per_sample_and_parameter_gradients_batch_means():
    graph = chain([3, 4, 4, 2], "tanh")
    batch = {"x0": torch.randn(6, 3, dtype=f64), "x3": torch.randn(6, 2, dtype=f64)}
    solver = pcgraph.Solver(steps=7, optimizer=pcgraph.StateAdam(0.05))
    whole = solver.relax(graph, batch).states
    one = solver.relax(graph, {k: v[2:3] for k, v in batch.items()}).states
    assert torch.allclose(whole["x1"][2:3], one["x1"], atol=1e-12)
    # a batch of two copies gives the same update as the single sample
    clone = chain([3, 4, 4, 2], "tanh")
    clone.load_state_dict(graph.state_dict())
    single = {k: v[:1] for k, v in batch.items()}
    doubled = {k: torch.cat([v, v]) for k, v in single.items()}
    solver.step(graph, single, torch.optim.SGD(graph.parameters(), lr=0.3))
    solver.step(clone, doubled, torch.optim.SGD(clone.parameters(), lr=0.3))
    for p, q in zip(graph.parameters(), clone.parameters()):
        assert torch.allclose(p, q, atol=1e-12)


def test_forward_init_gives_zero_latent_errors_and_predicts_clamped_leaves():
    graph = chain([3, 4, 2], "tanh")
    x0 = torch.randn(5, 3, dtype=f64)
    r = pcgraph.Solver(steps=1).relax(graph, {"x0": x0, "x2": torch.zeros(5, 2, dtype=f64)})
    ff = graph({"x0": x0})
    assert torch.allclose(r.predicted["x2"], ff["x2"])
    # only the clamped output has an error at step 0, so the first energy is its energy alone
    assert torch.allclose(r.energy[0], 0.5 * (ff["x2"] ** 2).sum())


def test_free_output_is_set_to_its_prediction():
    graph = chain([3, 4, 2], "tanh")
    x0 = torch.randn(5, 3, dtype=f64)
    r = pcgraph.Solver(steps=3, init="zeros").relax(graph, {"x0": x0})
    assert torch.allclose(r.states["x2"], graph.prediction(r.states, "x2"))


def test_incremental_steps_parameters_every_inference_step():
    graph = chain([3, 4, 2], "tanh")
    before = [p.detach().clone() for p in graph.parameters()]
    opt = torch.optim.SGD(graph.parameters(), lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x2": torch.randn(5, 2, dtype=f64)}
    pcgraph.Solver(steps=4, variant="incremental").step(graph, batch, opt)
    assert len(calls) == 4
    assert any(not torch.equal(p, q) for p, q in zip(graph.parameters(), before))


def test_divergence_names_the_node():
    graph = chain([3, 4, 2], "leaky_relu").float()
    batch = {"x0": torch.randn(5, 3), "x2": torch.randn(5, 2) * 1e3}
    with pytest.raises(pcgraph.DivergenceError, match=r"x1.*Lower inference\.optimizer\.lr"):
        pcgraph.Solver(steps=200, optimizer=StateSGD(50.0)).relax(graph, batch)


def test_bad_batch_is_refused():
    graph = chain([3, 4, 2])
    with pytest.raises(ValueError, match="expects"):
        pcgraph.Solver().relax(graph, {"x0": torch.randn(2, 5, dtype=f64)})
    with pytest.raises(KeyError, match="unknown node"):
        pcgraph.Solver().relax(graph, {"nope": torch.randn(2, 5, dtype=f64)})


# --- random graphs -----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(layered_graphs(), st.sampled_from(["forward", "zeros"]))
def test_energy_decreases_over_inference(case, init):
    spec, _, outputs = case
    torch.manual_seed(1)
    graph = pcgraph.compile(spec).double()
    r = pcgraph.Solver(steps=30, optimizer=StateSGD(0.02), init=init).relax(graph, random_batch(graph, outputs))
    diffs = r.energy[1:] - r.energy[:-1]
    assert (diffs <= 1e-12 * (1 + r.energy[:-1].abs())).all(), r.energy
    # the planned loop's last energy is the whole graph's energy at the relaxed states
    assert torch.allclose(r.energy[-1], graph.energy(r.states), rtol=1e-10)


def test_clamped_middle_node_keeps_its_constant_prediction():
    """a -> b <- c, b -> d with a, b, d clamped: the a -> b prediction is constant but counts."""
    g = pcgraph.Graph("t")
    for v, observed in (("a", True), ("b", True), ("c", False), ("d", True)):
        g.node(v, 3, observed=observed)
    g.node("z", 2, prior={"mean": 0.0, "precision": 1.0})
    g.edge("z", "c", "linear", "tanh")
    g.edge("a", "b", "linear")
    g.edge("c", "b", "linear", "tanh")
    g.edge("b", "d", "linear")
    graph = pcgraph.compile(g.spec()).double()
    batch = {v: torch.randn(4, 3, dtype=f64) for v in "abd"}
    for local_rules in (True, False):
        r = pcgraph.Solver(steps=5, local_rules=local_rules).relax(graph, batch)
        assert torch.allclose(r.energy[-1], graph.energy(r.states), rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(layered_graphs(ops=SMOOTH + ["relu", "leaky_relu"]), st.sampled_from(["standard", "incremental"]))
def test_local_rules_equal_autograd(case, variant):
    """Three routes give the same relaxation and update: closed-form local rules with the planned
    schedule (skipped zero-error terms, cached edges), autograd, and local rules evaluating every
    term and edge at every step (the loop with a tolerance check, here one that never stops it)."""
    spec, _, outputs = case
    torch.manual_seed(2)
    graphs = [pcgraph.compile(spec).double() for _ in range(3)]
    for g in graphs[1:]:
        g.load_state_dict(graphs[0].state_dict())
    batch = random_batch(graphs[0], outputs)
    results = []
    for graph, local, tol in zip(graphs, (True, False, True), (None, None, 1e-300)):
        solver = pcgraph.Solver(steps=6, optimizer=StateSGD(0.05, momentum=0.3), variant=variant,
                                local_rules=local, tol=tol, check_every=1)
        results.append(solver.step(graph, batch, torch.optim.Adam(graph.parameters(), lr=0.01, weight_decay=0.1)))
    assume(results[2].steps == 6)  # an exactly zero gradient (dead relu) meets any tolerance
    for other, graph in zip(results[1:], graphs[1:]):
        assert torch.allclose(results[0].energy, other.energy, rtol=1e-10, atol=1e-12)
        for v in results[0].states:
            assert torch.allclose(results[0].states[v], other.states[v], rtol=1e-10, atol=1e-12)
        for p, q in zip(graphs[0].parameters(), graph.parameters()):
            assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compiled_loop_matches_eager():
    graphs = [chain([6, 5, 4, 3], "tanh").float() for _ in range(2)]
    graphs[1].load_state_dict(graphs[0].state_dict())
    batch = {"x0": torch.randn(8, 6), "x3": torch.randn(8, 3)}
    results = []
    for graph, compiled in zip(graphs, (False, True)):
        solver = pcgraph.Solver(steps=5, optimizer=StateSGD(0.1, 0.5), compile=compiled)
        for _ in range(2):
            results.append(solver.step(graph, batch, torch.optim.SGD(graph.parameters(), lr=0.1)))
    assert torch.allclose(results[1].energy, results[3].energy, rtol=1e-5)
    for p, q in zip(*(g.parameters() for g in graphs)):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


def _clamped_middle_graph():
    g = pcgraph.Graph("t")
    for v, observed in (("x", True), ("m", True), ("h", False), ("y", True)):
        g.node(v, 2, observed=observed)
    g.edge("x", "m", "linear")
    g.edge("m", "h", "linear", "tanh")
    g.edge("h", "y", "linear")
    return pcgraph.compile(g.spec()).double()


@pytest.mark.parametrize("variant", ["standard", "incremental"])
def test_edges_between_clamped_nodes_learn_in_every_variant(variant):
    graph = _clamped_middle_graph()
    before = graph.edges[0].pipeline[0].weight.detach().clone()
    batch = {v: torch.randn(3, 2, dtype=f64) for v in "xmy"}
    pcgraph.Solver(steps=3, variant=variant).step(graph, batch, torch.optim.SGD(graph.parameters(), lr=0.1))
    assert not torch.equal(graph.edges[0].pipeline[0].weight, before)


def test_frozen_parameters_stay_put():
    graph = _clamped_middle_graph()
    graph.edges[0].pipeline[0].weight.requires_grad_(False)
    before = graph.edges[0].pipeline[0].weight.detach().clone()
    batch = {v: torch.randn(3, 2, dtype=f64) for v in "xmy"}
    for local_rules in (True, False):
        opt = torch.optim.AdamW(graph.parameters(), lr=0.1, weight_decay=0.5)
        pcgraph.Solver(steps=3, local_rules=local_rules).step(graph, batch, opt)
    assert torch.equal(graph.edges[0].pipeline[0].weight, before)


@pytest.mark.parametrize("settings_", [{"tol": 1e-3}, {"variant": "incremental"}, {"local_rules": False}])
def test_a_state_with_no_energy_gradient_is_left_alone(settings_):
    """z feeds only a free leaf, so nothing pulls on it; no route may crash on that."""
    g = pcgraph.Graph("t")
    g.node("x", 2, observed=True)
    g.node("y", 2, observed=True)
    g.node("z", 2)
    g.node("f", 2)
    g.edge("x", "y", "linear")
    g.edge("z", "f", "linear")
    g.inference(init="zeros")
    graph = pcgraph.compile(g.spec())
    r = pcgraph.Solver(steps=4, init="zeros", **settings_).step(
        graph, {"x": torch.randn(3, 2), "y": torch.randn(3, 2)}, torch.optim.SGD(graph.parameters(), lr=0.1))
    assert torch.equal(r.states["z"], torch.zeros(3, 2))


# --- cyclic graphs and partly clamped nodes ------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(cyclic_graphs(), st.integers(0, 9), st.sampled_from(["zeros", "prior"]))
def test_energy_decreases_on_cyclic_graphs(case, clamp_seed, init):
    """Gradient descent with a small step never raises the energy, whatever is clamped."""
    spec, _ = case
    graph = pcgraph.compile(spec).double()
    n = graph.nodes["x"].shape[0]
    gen = torch.Generator().manual_seed(clamp_seed)
    clamped = torch.randperm(n, generator=gen)[: int(torch.randint(0, n, (1,), generator=gen))]
    batch = {"x": pcgraph.Clamp(torch.randn(3, n, dtype=f64, generator=gen), clamped)}
    r = pcgraph.Solver(steps=30, optimizer=StateSGD(0.02), init=init).relax(graph, batch)
    diffs = r.energy[1:] - r.energy[:-1]
    assert (diffs <= 1e-12 * (1 + r.energy[:-1].abs())).all(), r.energy
    assert torch.allclose(r.energy[-1], graph.energy(r.states), rtol=1e-10)
    assert torch.equal(r.states["x"][:, clamped], batch["x"].values[:, clamped])


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_partly_clamped_node_follows_gradient_descent_on_the_free_neurons(momentum):
    """Reference: a plain autograd loop on E = 1/2 ||x - W tanh(x) - b||^2 with W dense and zero
    off the edges, stepping only the free neurons."""
    g = pcgraph.Graph("t")
    g.node("x", 10)
    g.edge("x", "x", "tanh", {"kind": "sparse", "generator": "watts_strogatz_graph", "args": {"k": 4, "p": 0.3}})
    g.inference(init="zeros")
    graph = pcgraph.compile(g.spec()).double()
    sp = graph.edges[0].pipeline[-1]
    values = torch.randn(5, 10, dtype=f64)
    clamped = [0, 3, 4, 9]
    free = torch.ones(10, dtype=f64)
    free[clamped] = 0
    lr, steps = 0.1, 15
    r = pcgraph.Solver(steps=steps, optimizer=StateSGD(lr, momentum), init="zeros").relax(
        graph, {"x": pcgraph.Clamp(values, clamped)})
    w, b = sp.dense(), sp.bias.detach()
    x = values * (1 - free)
    velocity, trace = torch.zeros_like(x), []
    for _ in range(steps + 1):
        x = x.detach().requires_grad_()
        e = 0.5 * ((x - torch.tanh(x) @ w.T - b) ** 2).sum()
        (grad,) = torch.autograd.grad(e, x)
        trace.append(e.detach())
        velocity = momentum * velocity + grad * free
        x = x - lr * velocity
    torch.testing.assert_close(r.energy, torch.stack(trace), atol=1e-10, rtol=1e-10)
    x_last = x + lr * velocity  # the reference stepped once more after its last energy
    torch.testing.assert_close(r.states["x"], x_last.detach(), atol=1e-10, rtol=1e-10)


def test_clamp_of_every_neuron_equals_clamping_the_node():
    graph = chain([3, 4, 2])
    batch = {"x0": torch.randn(6, 3, dtype=f64), "x2": torch.randn(6, 2, dtype=f64)}
    whole = pcgraph.Solver(steps=10).relax(graph, batch)
    parts = pcgraph.Solver(steps=10).relax(graph, {"x0": pcgraph.Clamp(batch["x0"], slice(0, 3)),
                                                   "x2": pcgraph.Clamp(batch["x2"], [0, 1])})
    torch.testing.assert_close(parts.energy, whole.energy, atol=1e-12, rtol=1e-12)
    for v in whole.states:
        torch.testing.assert_close(parts.states[v], whole.states[v], atol=1e-12, rtol=1e-12)


def test_forward_init_starts_free_neurons_at_their_prediction():
    graph = chain([3, 4, 2])
    x0, x2 = torch.randn(6, 3, dtype=f64), torch.randn(6, 2, dtype=f64)
    r = pcgraph.Solver(steps=0).relax(graph, {"x0": x0, "x2": pcgraph.Clamp(x2, torch.tensor([True, False]))})
    predicted = graph({"x0": x0})["x2"]
    assert torch.equal(r.states["x2"][:, 0], x2[:, 0])
    torch.testing.assert_close(r.states["x2"][:, 1], predicted[:, 1])


def test_bad_clamp_index_is_refused():
    graph = chain([3, 4, 2])
    with pytest.raises(ValueError, match="does not fit its 3 neurons"):
        pcgraph.Solver().relax(graph, {"x0": pcgraph.Clamp(torch.randn(2, 3, dtype=f64), [5])})


def test_clamp_index_forms():
    graph = chain([3, 4, 2])
    x0 = torch.randn(2, 3, dtype=f64)
    none = pcgraph.Solver(steps=2).relax(graph, {"x0": pcgraph.Clamp(x0, [])})
    assert torch.isfinite(none.energy).all()
    with pytest.raises(ValueError, match="integer indices or a boolean mask"):
        pcgraph.Solver().relax(graph, {"x0": pcgraph.Clamp(x0, torch.tensor([0.5]))})
