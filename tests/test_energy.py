"""Energies against hand-computed closed forms."""

import math

import torch

import pcgraph
from pcgraph import energy as E
from pcgraph.spec import Categorical, Gaussian


def test_gaussian_closed_form():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # sample 0: 1/2 * 3 * (1 + 4) = 7.5; sample 1: 1/2 * 3 * (1 + 4) = 7.5
    assert torch.allclose(E.gaussian(x, mu, 3.0), torch.tensor([7.5, 7.5]))


def test_categorical_is_cross_entropy_for_one_hot_and_zero_at_softmax():
    mu = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([[0.0, 1.0, 0.0]])
    expected = -(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert torch.allclose(E.categorical(y, mu), torch.tensor([expected]))
    assert torch.allclose(E.categorical(torch.softmax(mu, 1), mu), torch.zeros(1), atol=1e-6)
    assert torch.equal(E.mean(Categorical(), mu), torch.softmax(mu, 1))
    assert torch.equal(E.mean(Gaussian(), mu), mu)


def test_graph_energy_of_a_given_configuration():
    """E = sum over nodes of 1/2 pi ||x - W x_parent - b||^2, computed here by hand."""
    g = pcgraph.Graph("t")
    g.node("a", 2, observed=True)
    g.node("b", 3)
    g.node("c", 1, observed=True, energy={"kind": "gaussian", "precision": 2.0})
    g.edge("a", "b", "linear")
    g.edge("b", "c", "linear", "tanh")
    graph = pcgraph.compile(g.spec()).double()
    w1, b1 = graph.edges[0].pipeline[0].weight, graph.edges[0].pipeline[0].bias
    w2, b2 = graph.edges[1].pipeline[0].weight, graph.edges[1].pipeline[0].bias
    s = {"a": torch.randn(4, 2, dtype=torch.float64), "b": torch.randn(4, 3, dtype=torch.float64),
         "c": torch.randn(4, 1, dtype=torch.float64)}
    with torch.no_grad():
        e_b = 0.5 * ((s["b"] - s["a"] @ w1.T - b1) ** 2).sum(1)
        e_c = 0.5 * 2.0 * ((s["c"] - torch.tanh(s["b"] @ w2.T + b2)) ** 2).sum(1)
        assert torch.allclose(graph.energy(s), (e_b + e_c).sum())
        per_node = graph.node_energies(s)
        assert set(per_node) == {"b", "c"}
        assert torch.allclose(per_node["c"], e_c)


def test_prior_energy():
    g = pcgraph.Graph("t")
    g.node("z", 2, prior={"mean": 1.0, "precision": 4.0})
    g.node("x", 2, observed=True)
    g.edge("z", "x", "identity")
    graph = pcgraph.compile(g.spec())
    s = {"z": torch.tensor([[2.0, 1.0]]), "x": torch.tensor([[2.0, 1.0]])}
    assert torch.allclose(graph.energy(s), torch.tensor(0.5 * 4.0 * 1.0))
