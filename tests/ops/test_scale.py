"""The edge field ``scale`` and N(0, 1) init (muPC): a compiled residual MLP's feedforward pass
equals the same network written by hand, the forms read the fan-in and the graph's depth, the
local rule carries the factor, and bad values are refused with their path."""

import math
import re

import pytest
import torch

import pcgraph
from pcgraph.solver import StateSGD

f64 = torch.float64


def resmlp(depth=3, width=6, d_in=5, d_out=4):
    g = pcgraph.Graph("mupc")
    g.node("x", d_in, observed=True)
    for i in range(1, depth + 1):
        g.node(f"h{i}", width)
    g.node("y", d_out, observed=True)
    w = {"kind": "linear", "init": "normal", "bias": False}
    g.edge("x", "h1", w, scale="1/sqrt(fan_in)")
    for i in range(1, depth):
        g.edge(f"h{i}", f"h{i + 1}", "relu", w, scale="1/sqrt(fan_in*depth)")
        g.edge(f"h{i}", f"h{i + 1}")
    g.edge(f"h{depth}", "y", "relu", w, scale="1/fan_in")
    return g.spec()


def test_forward_pass_equals_the_hand_written_network():
    torch.manual_seed(0)
    depth, width, d_in = 3, 6, 5
    graph = pcgraph.compile(resmlp(depth, width, d_in), dtype=f64)
    weights = [m.weight for e in graph.edges for m in e.pipeline if hasattr(m, "weight")]
    assert all(abs(float(w.detach().std()) - 1) < 0.5 for w in weights)  # N(0, 1), not torch's uniform
    L = depth + 1  # the graph's depth in edges: x -> h1 -> ... -> h3 -> y
    assert graph.depth == L
    x = torch.randn(7, d_in, dtype=f64)
    h = x @ weights[0].T / math.sqrt(d_in)
    for W in weights[1:-1]:
        h = h + torch.relu(h) @ W.T / math.sqrt(width * L)
    y = torch.relu(h) @ weights[-1].T / width
    out = graph({"x": x})
    assert torch.allclose(out["h3"], h, atol=1e-12) and torch.allclose(out["y"], y, atol=1e-12)


@pytest.mark.parametrize("local_rules", [True, False])
def test_the_local_rule_carries_the_factor(local_rules):
    graph = pcgraph.compile(resmlp(), dtype=f64)
    batch = {"x": torch.randn(4, 5, dtype=f64), "y": torch.randn(4, 4, dtype=f64)}
    r, grads = pcgraph.Solver(steps=5, optimizer=StateSGD(0.2), local_rules=local_rules).gradients(graph, batch)
    with torch.enable_grad():
        ref = torch.autograd.grad(graph.energy(r.states) / 4, list(graph.parameters()))
    for (name, _), g in zip(graph.named_parameters(), ref):
        assert torch.allclose(grads[name], g, atol=1e-12), name
    if local_rules:  # same relaxation by autograd
        r2 = pcgraph.Solver(steps=5, optimizer=StateSGD(0.2), local_rules=False).relax(graph, batch)
        assert torch.allclose(r.states["h1"], r2.states["h1"], atol=1e-12)


def test_numbers_round_trip_and_bad_values_are_refused():
    spec = resmlp()
    assert pcgraph.spec_from_yaml(spec.to_yaml()) == spec
    data = spec.model_dump(mode="json", by_alias=True)
    data["graph"]["edges"][0]["scale"] = 0.5
    graph = pcgraph.compile(pcgraph.spec_from_dict(data))
    assert graph.edges[0].pipeline[-1].factor == 0.5 and graph.edges[0].kinds[-1] == "scale"
    for bad, msg in ((0, "cuts the edge"), (float("inf"), "finite number"), ("1/n", "expected a finite number or one of")):
        data["graph"]["edges"][0]["scale"] = bad
        with pytest.raises(pcgraph.SpecError, match=r"graph.edges\[0\].scale.*" + re.escape(msg)):
            pcgraph.spec_from_dict(data)
    data["graph"]["edges"][0]["scale"] = 1.0
    data["graph"]["edges"][2]["scale"] = "1/fan_in"  # the identity skip has no weights
    with pytest.raises(pcgraph.SpecError, match=r"graph.edges\[2\].scale: .*reads the fan-in"):
        pcgraph.compile(pcgraph.spec_from_dict(data))
