"""The compiled inference loop computes what the eager one does, zeros included (issue 16's defect:
a deep float32 graph's exactly-zero errors of a forward init came out of the compiled loop as
rounding noise, which Adam turns into full-size steps)."""

import pytest
import torch

import pcgraph


def deep_mlp(layers: int, width: int):
    g = pcgraph.Graph("deep")
    prev = g.node("image", 32, observed=True)
    for i in range(layers):
        h = g.node(f"h{i}", width)
        g.edge(prev, h, "linear", "gelu")
        prev = h
    g.edge(prev, g.node("label", 10, observed=True), "linear")
    g.inference(steps=layers + 2, optimizer={"kind": "sgd", "lr": 0.2, "momentum": 0.8})
    return g.spec()


def gradients(spec, graph, batch, compiled: bool):
    solver = pcgraph.Solver.from_spec(spec)
    solver.compile = compiled
    return solver.gradients(graph, batch)[1]


def test_compiled_loop_keeps_a_forward_inits_zero_errors_exact():
    torch.manual_seed(0)
    spec = deep_mlp(10, 32)
    graph = pcgraph.compile(spec)
    batch = {"image": torch.rand(16, 32), "label": torch.eye(10)[torch.randint(0, 10, (16,))]}
    eager, compiled = (gradients(spec, graph, batch, c) for c in (False, True))
    zero = [k for k, g in eager.items() if not g.any()]
    assert zero, "the lowest layers' float32 gradients underflow to exactly 0 eagerly (the case under test)"
    assert [k for k, g in compiled.items() if not g.any()] == zero  # fails before the fix: ~1e-10 noise
    # elsewhere the two agree as well as float32 agrees with the float64 truth
    g64 = pcgraph.compile(spec, dtype=torch.float64)
    g64.load_state_dict({k: v.double() for k, v in graph.state_dict().items()})
    truth = gradients(spec, g64, {k: v.double() for k, v in batch.items()}, False)
    for k in list(eager)[-4:]:
        err = [float((g[k].double() - truth[k]).norm() / truth[k].norm()) for g in (eager, compiled)]
        assert err[1] < 1e-5 and err[0] < 1e-5, (k, err)


@pytest.mark.slow
def test_compiled_loop_equals_the_eager_one_in_float64():
    torch.manual_seed(0)
    spec = deep_mlp(10, 32)
    graph = pcgraph.compile(spec, dtype=torch.float64)
    batch = {"image": torch.rand(16, 32, dtype=torch.float64),
             "label": torch.eye(10, dtype=torch.float64)[torch.randint(0, 10, (16,))]}
    eager, compiled = (gradients(spec, graph, batch, c) for c in (False, True))
    for k in eager:
        assert float((compiled[k] - eager[k]).norm()) <= 1e-6 * float(eager[k].norm()), k


def test_compiled_relaxation_returns_plain_tensors_as_the_eager_one():
    """The compiled loop runs as inference: its relaxed states carry no autograd history (they used
    to, through the feedforward init on parameters that require grad, which also made the compiler
    trace a training graph)."""
    torch.manual_seed(0)
    spec = deep_mlp(2, 8)
    graph = pcgraph.compile(spec)
    batch = {"image": torch.randn(4, 32), "label": torch.randn(4, 10)}
    for compiled in (False, True):
        solver = pcgraph.Solver.from_spec(spec)
        solver.compile = compiled
        relaxation = solver.relax(graph, batch)
        assert all(not x.requires_grad and x.grad_fn is None for x in relaxation.states.values()), compiled
