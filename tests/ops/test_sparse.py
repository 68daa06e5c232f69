"""The sparse op against a dense masked-matrix computation written out by hand with autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pcgraph
from pcgraph import SpecError, compile
from pcgraph.ops.message_passing import SparseLinear
from pcgraph.solver.loop import Run, autograd_grads, local_grads
from pcgraph.solver.plan import Constants, Plan
from tests.strategies import cyclic_graphs

f64 = torch.float64


def dense_reference(graph, states):
    """E = 1/2 sum_v ||x_v - sum_e W_e f_e(x_src)||^2 with W_e a dense matrix that is zero off the
    edge list; returns E and its gradients in the states, the dense weights and the biases."""
    xs = {v: s.detach().clone().requires_grad_() for v, s in states.items()}
    dense, biases, mu = [], [], {v: 0.0 for v in xs}
    for edge in graph.edges:
        *acts, sp = edge.pipeline
        w = sp.dense().clone().requires_grad_()
        h = xs[edge.sources[0]]
        for a in acts:
            h = a(h)
        out = h @ w.T
        if sp.bias is not None:
            b = sp.bias.detach().clone().requires_grad_()
            biases.append(b)
            out = out + b
        dense.append(w)
        mu[edge.target] = mu[edge.target] + out
    energy = sum(0.5 * ((xs[v] - mu[v]) ** 2).sum() for v in xs)
    grads = torch.autograd.grad(energy, [*xs.values(), *dense, *biases])
    return energy, dict(zip(xs, grads[:len(xs)])), grads[len(xs):len(xs) + len(dense)], grads[len(xs) + len(dense):]


@settings(max_examples=25, deadline=None)
@given(cyclic_graphs(), st.integers(1, 5))
def test_sparse_equals_dense_masked_matrix(case, batch):
    spec, loops = case
    graph = compile(spec).to(f64)
    states = {v: torch.randn(batch, *n.shape, dtype=f64) for v, n in graph.nodes.items()}
    e_ref, gx_ref, gw_ref, gb_ref = dense_reference(graph, states)
    mods = [e.pipeline[-1] for e in graph.edges]
    src, dst = mods[0].edge_index
    assert bool((src == dst).any()) == (loops and bool((src == dst).any()))  # loops only when asked
    if not loops:
        assert not bool((src == dst).any())
    plan = Plan(graph, set())
    params = list(graph.parameters())
    for route in (local_grads, autograd_grads):
        s = {v: x.clone() for v, x in states.items()}
        e, gx, gp = Run(graph, plan, Constants.at(graph, plan, s), params, route).grads(s, plan.terms, True)
        torch.testing.assert_close(e, e_ref.detach(), atol=1e-6, rtol=1e-6)
        for v in states:
            torch.testing.assert_close(gx[v], gx_ref[v], atol=1e-6, rtol=1e-6)
        # a learning step's gradient is the batch mean; a dense grad's masked entries are the edges'
        s_local = {v: x.clone() for v, x in states.items()}
        _, _, gp = Run(graph, plan, Constants.at(graph, plan, s_local), params, route).grads(s_local, plan.terms, True)
        for m, g_dense in zip(mods, gw_ref):
            i, j = m.edge_index[1], m.edge_index[0]
            torch.testing.assert_close(gp[m.weight] * batch, g_dense[i, j], atol=1e-6, rtol=1e-6)
        with_bias = [m for m in mods if m.bias is not None]
        for m, g_b in zip(with_bias, gb_ref):
            torch.testing.assert_close(gp[m.bias] * batch, g_b, atol=1e-6, rtol=1e-6)


def test_learning_updates_exactly_the_existing_edges():
    spec = pcgraph.Graph("t")
    spec.node("x", 12)
    spec.edge("x", "x", "tanh", {"kind": "sparse", "generator": "watts_strogatz_graph", "args": {"k": 4, "p": 0.2}})
    spec.inference(init="zeros", steps=5)
    s = spec.spec()
    graph = compile(s)
    sp = graph.edges[0].pipeline[-1]
    assert sp.weight.numel() == 12 * 4  # 24 undirected edges, both directions
    before = sp.dense().clone()
    opt = torch.optim.SGD(graph.parameters(), lr=0.5)
    x = torch.randn(8, 12)
    pcgraph.Solver.from_spec(s).step(graph, {"x": pcgraph.Clamp(x, slice(0, 6))}, opt)
    after = sp.dense()
    assert torch.equal(after == 0, before == 0)  # the same pattern (no weight was exactly zero)
    assert not torch.equal(after, before)


def test_module_is_message_passing_and_never_dense():
    from torch_geometric.nn import MessagePassing

    m = SparseLinear(torch.tensor([0, 2, 1]), torch.tensor([1, 1, 3]), 3, 4)
    assert isinstance(m, MessagePassing)
    x = torch.randn(5, 3)
    expected = torch.zeros(5, 4) + m.bias
    expected[:, 1] += m.weight[0] * x[:, 0] + m.weight[1] * x[:, 2]
    expected[:, 3] += m.weight[2] * x[:, 1]
    torch.testing.assert_close(m(x), expected)
    # MessagePassing.propagate on the CSR matrix (fused) and on the edge list (unfused): the same sums
    fused = m.propagate(m.adjacency(), x=x.T).T + m.bias
    torch.testing.assert_close(fused, expected)
    unfused = m.propagate(m.edge_index, x=x.T, edge_weight=m.weight, size=(3, 4)).T + m.bias
    torch.testing.assert_close(unfused, expected)
    assert "3 connections" in repr(m)


def test_fan_in_init_bounds():
    m = SparseLinear(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 0, 1]), 4, 2)
    w = m.weight.detach()
    assert bool((w[:3].abs() <= 3 ** -0.5).all()) and float(w[3].abs()) <= 1.0
    z = SparseLinear(torch.tensor([0]), torch.tensor([0]), 1, 1, init="zeros")
    assert float(z.weight.detach()) == 0.0


YAML = """
name: t
graph:
  nodes: {{x: {{shape: [{n}]}}, y: {{shape: [3, 2]}}}}
  edges:
    - {{from: {src}, to: x, fn: [tanh, {op}]}}
    - {{from: x, to: y, fn: [{{kind: linear, features: 6}}, {{kind: unflatten, shape: [3, 2]}}]}}
inference: {{init: zeros}}
"""


@pytest.mark.parametrize(("op", "path", "message"), [
    ("{kind: sparse, generator: complete_grph}", "graph.edges[0].fn[1].generator", "unknown generator"),
    ("{kind: sparse, generator: erdos_renyi_graph, args: {q: 0.1}}", "graph.edges[0].fn[1].args.q", "no argument 'q'"),
    ("{kind: sparse, generator: watts_strogatz_graph, args: {k: 9, p: 0.1}}", "graph.edges[0].fn[1].args",
     "failed: k>n"),
    ("{kind: sparse, generator: erdos_renyi_graph}", "graph.edges[0].fn[1].args", "missing"),
    ("{kind: sparse, generator: complete_graph, args: {n: 3}}", "graph.edges[0].fn[1].args", "3 vertices"),
    ("{kind: sparse, generator: random, args: {edges: 100}}", "graph.edges[0].fn[1].args", "between 0 and 20"),
    ("{kind: sparse, generator: is_regular}", "graph.edges[0].fn[1].generator", "unknown generator"),
    ("{kind: sparse, edges: [[0, 1], [5, 2]]}", "graph.edges[0].fn[1].edges[1]", "source neuron 5 is out of range"),
    ("{kind: sparse, edges: [[0, 9]]}", "graph.edges[0].fn[1].edges[0]", "target neuron 9 is out of range"),
    ("{kind: sparse, edges: [[0, 1], [0, 1]]}", "graph.edges[0].fn[1].edges[1]", r"repeats edges\[0\]"),
    ("{kind: sparse, edges: [[2, 2]]}", "graph.edges[0].fn[1].edges[0]", "self-loop"),
    ("{kind: sparse, edges: [[-1, 2]]}", "graph.edges[0].fn[1].edges[0][0]", "greater than or equal to 0"),
    ("{kind: sparse, edges: [[1, 2]], generator: cycle_graph}", "graph.edges[0].fn[1]", "exactly one"),
    ("{kind: sparse}", "graph.edges[0].fn[1]", "exactly one"),
    ("{kind: sparse, edges: [[1, 2]], args: {p: 1}}", "graph.edges[0].fn[1]", "args are for a generator"),
    # generators whose n is not the vertex count, and arguments the op owns or lacks
    ("{kind: sparse, generator: hypercube_graph}", "graph.edges[0].fn[1].args", "missing"),
    ("{kind: sparse, generator: hypercube_graph, args: {n: 138}}", "graph.edges[0].fn[1]", "over the limit"),
    ("{kind: sparse, generator: random, args: {edges: 5, self_loops: true}}", "graph.edges[0].fn[1].args.self_loops",
     "op's own setting"),
    ("{kind: sparse, generator: random, args: {edge: 5}}", "graph.edges[0].fn[1].args.edge", "no argument 'edge'"),
])
def test_bad_topologies_name_the_field(op, path, message):
    with pytest.raises(SpecError, match=message) as err:
        compile(pcgraph.spec_from_yaml(YAML.format(n=5, src="x", op=op)))
    assert err.value.path == path


def test_sparse_needs_flat_nodes():
    with pytest.raises(SpecError, match="flat nodes") as err:
        compile(pcgraph.spec_from_yaml(YAML.format(n=5, src="y", op="{kind: sparse, generator: random, "
                                                   "args: {p: 0.5}}")))
    assert err.value.path == "graph.edges[0].fn[1]"


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1),
    lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=True),
    lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=False),
])
def test_cached_transpose_follows_every_optimizer_step(make):
    """The local rule's A^T is cached between weight changes; fused optimizers change the weights
    without bumping their version counter, so the cache must notice optimizer steps too."""
    m = SparseLinear(torch.tensor([0, 2, 1, 3]), torch.tensor([1, 1, 3, 0]), 4, 4)
    opt = make(m.parameters())
    g, x = torch.randn(3, 4), torch.randn(3, 4)
    for _ in range(3):
        torch.testing.assert_close(m.local_vjp(x, g, None, True), g @ m.dense())
        m.weight.grad, m.bias.grad = torch.randn(4), torch.randn(4)
        opt.step()
    with torch.no_grad():
        m.weight.mul_(2.0)  # a manual in-place edit
    torch.testing.assert_close(m.local_vjp(x, g, None, True), g @ m.dense())


def test_networkx_graphs_too_large_to_build_are_refused_before_building():
    spec = pcgraph.spec_from_yaml(YAML.format(n=5000, src="x", op="{kind: sparse, generator: complete_graph}"))
    with pytest.raises(SpecError, match="about 1.25e.07 edges in networkx") as err:
        compile(spec)
    assert err.value.path == "graph.edges[0].fn[1].generator"


def test_edits_through_data_between_relaxations_are_seen():
    """The cached A^T is rebuilt for every relaxation, whatever changed the weights."""
    g = pcgraph.Graph("t")
    g.node("x", 9)
    g.edge("x", "x", "tanh", {"kind": "sparse", "generator": "cycle_graph"})
    g.inference(init="zeros", steps=5)
    spec = g.spec()
    graph, fresh = compile(spec), compile(spec)
    solver = pcgraph.Solver.from_spec(spec)
    batch = {"x": pcgraph.Clamp(torch.randn(4, 9), slice(0, 3))}
    solver.relax(graph, batch)  # fills the cache
    graph.edges[0].pipeline[-1].weight.data.mul_(3)
    fresh.load_state_dict(graph.state_dict())
    a, b = solver.relax(graph, batch), solver.relax(fresh, batch)
    torch.testing.assert_close(a.states["x"], b.states["x"])


def test_checkpoints_keep_the_connections_and_refuse_other_ones():
    g = pcgraph.Graph("t")
    g.node("x", 6)
    g.edge("x", "x", {"kind": "sparse", "generator": "erdos_renyi_graph", "args": {"p": 0.5}})
    g.inference(init="zeros")
    graph = compile(g.spec())
    state = graph.state_dict()
    assert sorted(k.rsplit(".", 1)[1] for k in state) == ["bias", "edge_index", "weight"]  # derived ones not saved
    state["edges.0.pipeline.0.edge_index"] = state["edges.0.pipeline.0.edge_index"].flip(1)
    with pytest.raises(RuntimeError, match="saved connections differ"):
        graph.load_state_dict(state)


def test_memory_limit_is_checked_before_the_connections_are_drawn():
    spec = pcgraph.spec_from_yaml(YAML.format(n=20000, src="x", op="{kind: sparse, generator: random, "
                                              "args: {edges: 50000000}}"))
    with pytest.raises(SpecError, match="over the limit") as err:
        compile(spec, max_bytes=10**8)
    assert err.value.path == "graph.edges[0].fn[1]"
