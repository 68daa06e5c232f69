"""Amortised initialisation (init: amortised, graph.encoders): on a linear-Gaussian generative
model the relaxed point is the exact posterior mean whatever the start, the encoder learns the
posterior-mean map (I + A^T A)^-1 A^T from the relaxed latents, and once learnt it shortens the
inference needed; bad encoder specs are refused with their paths."""

import pytest
import torch

import pcgraph
from pcgraph.solver import StateSGD

f64 = torch.float64


def generative(encoders=True, init="amortised"):
    """z (2, prior N(0, I)) -> x (4, observed) by x = A z, with an encoder x -> z."""
    spec = {
        "name": "amortised",
        "graph": {
            "nodes": {"z": {"shape": [2], "prior": {"mean": 0.0, "precision": 1.0}},
                      "x": {"shape": [4], "role": "observed"}},
            "edges": [{"from": "z", "to": "x", "fn": {"kind": "linear", "bias": False}}],
            "encoders": [{"from": "x", "to": "z", "fn": {"kind": "linear", "bias": False, "init": "zeros"}}]
            if encoders else [],
        },
        "inference": {"init": init},
    }
    return pcgraph.spec_from_dict(spec)


def posterior_map(graph):
    A = graph.edges[0].pipeline[0].weight.detach()
    return torch.linalg.solve(torch.eye(2, dtype=f64) + A.T @ A, A.T)  # z* = M x


def test_the_fixed_point_is_the_posterior_mean_from_any_start():
    torch.manual_seed(0)
    graph = pcgraph.compile(generative(), dtype=f64)
    with torch.no_grad():
        graph.encoders[0].pipeline[0].weight.normal_()  # a poor proposal
    x = torch.randn(6, 4, dtype=f64)
    want = x @ posterior_map(graph).T
    for init in ("amortised", "zeros"):
        r = pcgraph.Solver(steps=300, optimizer=StateSGD(0.1, momentum=0.5), init=init).relax(graph, {"x": x})
        assert torch.allclose(r.states["z"], want, atol=1e-9), init
    r0 = pcgraph.Solver(steps=1, optimizer=StateSGD(1e-12), init="amortised").relax(graph, {"x": x})
    assert torch.allclose(r0.states["z"], graph.encoders[0]({"x": x}), atol=1e-9)  # it starts at the proposal


def test_the_encoder_learns_the_posterior_map_and_shortens_inference():
    torch.manual_seed(1)
    graph = pcgraph.compile(generative(), dtype=f64)
    graph.edges[0].pipeline[0].weight.requires_grad_(False)  # a fixed generative model
    opt = torch.optim.Adam(graph.encoders.parameters(), lr=0.05)
    solver = pcgraph.Solver(steps=60, optimizer=StateSGD(0.1, momentum=0.5), init="amortised")
    for _ in range(300):
        solver.step(graph, {"x": torch.randn(32, 4, dtype=f64)}, opt)
    assert torch.allclose(graph.encoders[0].pipeline[0].weight.detach(), posterior_map(graph), atol=5e-3)
    x = torch.randn(64, 4, dtype=f64)
    short = {init: pcgraph.Solver(steps=2, optimizer=StateSGD(0.1), init=init).relax(graph, {"x": x}).energy[-1]
             for init in ("amortised", "zeros")}
    optimum = pcgraph.Solver(steps=300, optimizer=StateSGD(0.1, momentum=0.5)).relax(graph, {"x": x}).energy[-1]
    assert short["amortised"] - optimum < 0.01 * (short["zeros"] - optimum)


def test_the_generative_weights_still_learn_by_the_local_rule():
    torch.manual_seed(2)
    graph = pcgraph.compile(generative(), dtype=f64)
    x = torch.randn(5, 4, dtype=f64)
    r, grads = pcgraph.Solver(steps=50, optimizer=StateSGD(0.1), init="amortised").gradients(graph, {"x": x})
    with torch.enable_grad():
        ref = torch.autograd.grad(graph.energy(r.states) / 5, [graph.edges[0].pipeline[0].weight])[0]
    assert torch.allclose(grads["edges.0.pipeline.0.weight"], ref, atol=1e-12)
    assert grads["encoders.0.pipeline.0.weight"].abs().sum() > 0


def test_refusals():
    with pytest.raises(pcgraph.SpecError, match="inference.init: init: amortised and graph.encoders go together"):
        pcgraph.compile(generative(encoders=False))
    with pytest.raises(pcgraph.SpecError, match="inference.init: init: amortised and graph.encoders go together"):
        pcgraph.compile(generative(init="zeros"))
    data = generative().model_dump(mode="json", by_alias=True)
    data["graph"]["encoders"][0].update({"from": "z", "to": "x"})
    with pytest.raises(pcgraph.SpecError, match=r"graph.encoders\[0\].from: .*'z' is latent"):
        pcgraph.compile(pcgraph.spec_from_dict(data))
    with pytest.raises(pcgraph.SpecError, match="starts from the feedforward pass"):
        pcgraph.Solver(init="amortised", variant="epc")
