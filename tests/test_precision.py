"""Matrix and learnt precisions: the energy against its closed form, positive definiteness by
construction, and spec errors that name the field."""

import pytest
import torch

import pcgraph
from pcgraph.errors import SpecError
from pcgraph.precision import Precision

f64 = torch.float64


def spd(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n, generator=g, dtype=f64)
    return b @ b.T + 0.5 * torch.eye(n, dtype=f64)


@pytest.mark.parametrize("learn", ["none", "diagonal", "full"])
def test_energy_is_the_gaussian_negative_log_density_up_to_a_constant(learn):
    pi = spd(3) if learn != "diagonal" else torch.diag(torch.tensor([0.5, 2.0, 3.0], dtype=f64))
    p = Precision(pi, learn).double()
    assert torch.allclose(p.matrix(), pi, atol=1e-10)
    diff = torch.randn(5, 3, dtype=f64)
    expected = 0.5 * torch.einsum("bi,ij,bj->b", diff, pi, diff)
    if learn != "none":
        expected = expected - 0.5 * torch.logdet(pi)
    assert torch.allclose(p.energy(diff), expected, atol=1e-10)
    # the Gaussian's own log density differs from -energy by the same constant for every sample
    if learn == "full":
        logp = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=f64), precision_matrix=pi).log_prob(diff)
        const = logp + p.energy(diff)
        assert torch.allclose(const, const[0].expand(5), atol=1e-10)


def test_learnt_full_precision_is_positive_definite_for_any_parameters():
    p = Precision(spd(4), "full").double()
    for seed in range(20):
        with torch.no_grad():
            p.tril.copy_(3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=f64))
        assert torch.linalg.eigvalsh(p.matrix()).min() > 0


def node_spec(energy, shape=(2,)):
    g = pcgraph.Graph("p")
    g.node("a", 2 if len(shape) == 1 else shape, observed=True)
    g.node("b", shape, observed=True, energy=energy)
    g.edge("a", "b", {"kind": "linear", "features": shape[-1]} if len(shape) == 1 else "identity")
    return g.spec()


def test_matrix_precision_in_a_graph_matches_the_closed_form():
    pi = [[2.0, 0.5], [0.5, 1.0]]
    graph = pcgraph.compile(node_spec({"kind": "gaussian", "precision": pi})).double()
    a, b = torch.randn(4, 2, dtype=f64), torch.randn(4, 2, dtype=f64)
    diff = b - graph.edges[0]({"a": a})
    expected = 0.5 * torch.einsum("bi,ij,bj->b", diff, torch.tensor(pi, dtype=f64), diff)
    assert torch.allclose(graph.node_energy({"a": a, "b": b}, "b"), expected)
    cov = pcgraph.compile(node_spec({"kind": "gaussian", "covariance": torch.linalg.inv(torch.tensor(pi)).tolist()}))
    assert torch.allclose(cov.precisions["b"].matrix(), torch.tensor(pi), atol=1e-5)


@pytest.mark.parametrize(("energy", "shape", "words"), [
    ({"kind": "gaussian", "precision": [[1.0, 2.0], [2.0, 1.0]]}, (2,), "positive definite"),
    ({"kind": "gaussian", "precision": [[1.0, 0.5], [0.0, 1.0]]}, (2,), "symmetric"),
    ({"kind": "gaussian", "precision": [1.0, 2.0, 3.0]}, (2,), "expected 2 values per side"),
    ({"kind": "gaussian", "precision": [1.0, 2.0], "covariance": [1.0, 2.0]}, (2,), "not both"),
    ({"kind": "gaussian", "precision": 3.0, "covariance": 2.0}, (2,), "not both"),
    ({"kind": "gaussian", "learn": "full"}, (2, 2), "1-D node"),
])
def test_bad_precisions_name_the_field(energy, shape, words):
    with pytest.raises(SpecError) as err:
        pcgraph.compile(node_spec(energy, shape))
    assert "graph.nodes.b.energy" in str(err.value) and words in str(err.value)
