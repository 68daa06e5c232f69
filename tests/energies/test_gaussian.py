"""The Gaussian energy's precisions (scalar, diagonal, matrix, learnt) and priors: the energy
against its closed form and the Gaussian log density, positive definiteness by construction,
the closed-form local gradients against autograd, and spec errors that name the field."""

import pytest
import torch

import pcgraph
from pcgraph.energies import autograd_local
from pcgraph.energies.gaussian import Gaussian
from pcgraph.errors import SpecError

f64 = torch.float64


def spd(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n, generator=g, dtype=f64)
    return b @ b.T + 0.5 * torch.eye(n, dtype=f64)


@pytest.mark.parametrize("learn", ["none", "diagonal", "full"])
def test_energy_is_the_gaussian_negative_log_density_up_to_a_constant(learn):
    pi = spd(3) if learn != "diagonal" else torch.diag(torch.tensor([0.5, 2.0, 3.0], dtype=f64))
    p = Gaussian(precision=pi.tolist(), learn=learn).build((3,), f64)
    assert torch.allclose(p.matrix(), pi, atol=1e-10)
    x, mu = torch.randn(5, 3, dtype=f64), torch.randn(5, 3, dtype=f64)
    diff = x - mu
    expected = 0.5 * torch.einsum("bi,ij,bj->b", diff, pi, diff)
    if learn != "none":
        expected = expected - 0.5 * torch.logdet(pi)
    assert torch.allclose(p.value(x, mu), expected, atol=1e-10)
    # the closed-form local gradients (Pi (x - mu), its negative) and the summed energy, against autograd
    for got, want in zip(p.local(x, mu), autograd_local(p.value, x, mu)):
        assert torch.allclose(got, want, atol=1e-10)
    # the Gaussian's own log density differs from -energy by the same constant for every sample
    if learn == "full":
        logp = torch.distributions.MultivariateNormal(mu, precision_matrix=pi).log_prob(x)
        const = logp + p.value(x, mu)
        assert torch.allclose(const, const[0].expand(5), atol=1e-10)


def test_learnt_full_precision_is_positive_definite_for_any_parameters():
    p = Gaussian(precision=spd(4).tolist(), learn="full").build((4,), f64)
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
    assert torch.allclose(cov.terms["b"].matrix(), torch.tensor(pi), atol=1e-5)


@pytest.mark.parametrize(("energy", "shape", "words"), [
    ({"kind": "gaussian", "precision": [[1.0, 2.0], [2.0, 1.0]]}, (2,), "positive definite"),
    ({"kind": "gaussian", "precision": [[1.0, 0.5], [0.0, 1.0]]}, (2,), "symmetric"),
    ({"kind": "gaussian", "precision": [1.0, 2.0, 3.0]}, (2,), "expected 2 values (a diagonal) or a 2x2 matrix for a "
     "node of size 2, got 3 values"),
    ({"kind": "gaussian", "covariance": [[1.0, 0.0], [0.0, 1.0]]}, (3,), "expected 3 values (a diagonal) or a 3x3 "
     "matrix for a node of size 3, got a 2x2 matrix"),
    ({"kind": "gaussian", "precision": [1.0, 2.0], "covariance": [1.0, 2.0]}, (2,), "not both"),
    ({"kind": "gaussian", "precision": 3.0, "covariance": 2.0}, (2,), "not both"),
    ({"kind": "gaussian", "learn": "full"}, (2, 2), "1-D node"),
])
def test_bad_precisions_name_the_field(energy, shape, words):
    with pytest.raises(SpecError) as err:
        pcgraph.compile(node_spec(energy, shape))
    assert "graph.nodes.b.energy" in str(err.value) and words in str(err.value)


def test_values_written_in_a_spec_keep_float64_precision():
    """compile(dtype=float64) reads declared values in float64: no float32 rounding on the way."""
    third = 1 / 3
    pi = [[2.0 + third, third], [third, 1.0 + third]]
    spec = node_spec({"kind": "gaussian", "precision": pi})
    edges = spec.graph.edges[0].model_copy(update={"fn": [pcgraph.ops.parse_op(
        {"kind": "linear", "weight": [[third, 0.1], [0.7, third]], "bias": False})]})
    spec = spec.model_copy(update={"graph": spec.graph.model_copy(update={"edges": [edges]})})
    graph = pcgraph.compile(spec, dtype=f64)
    assert torch.equal(graph.terms["b"].matrix(), torch.tensor(pi, dtype=f64))
    assert torch.equal(graph.edges[0].pipeline[0].weight, torch.tensor([[third, 0.1], [0.7, third]], dtype=f64))
    assert graph.terms["b"].matrix().dtype == f64
    rounded = pcgraph.compile(spec).double()  # the float32 graph has lost digits: the test can fail
    assert not torch.equal(rounded.terms["b"].matrix(), torch.tensor(pi, dtype=f64))


def test_vector_prior_mean_and_matrix_covariance():
    """A prior N(m, Sigma) with a vector mean and a full covariance: energy against the closed form,
    and inference on a lone prior node (no data) relaxes to its mean."""
    m, sigma = [1.0, 0.0, 0.5], [[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]]
    g = pcgraph.Graph("p")
    g.node("z", 3, prior={"mean": m, "covariance": sigma})
    g.node("x", 3, observed=True)
    g.edge("z", "x", {"kind": "linear", "bias": False})
    graph = pcgraph.compile(g.spec(), dtype=f64)
    z = torch.randn(4, 3, dtype=f64)
    diff = z - torch.tensor(m, dtype=f64)
    expected = 0.5 * torch.einsum("bi,ij,bj->b", diff, torch.linalg.inv(torch.tensor(sigma, dtype=f64)), diff)
    assert torch.allclose(graph.node_energy({"z": z}, "z"), expected)
    assert torch.equal(graph.root_value("z", z), torch.tensor(m, dtype=f64).expand(4, 3))
    # the posterior of z given x under a linear-Gaussian model is a linear solve: PC reaches it
    w = graph.edges[0].pipeline[0].weight.detach()
    x = torch.randn(4, 3, dtype=f64)
    solver = pcgraph.Solver(steps=400, optimizer=pcgraph.StateSGD(0.1), init="prior")
    got = solver.relax(graph, {"x": x}).states["z"]
    prec0 = torch.linalg.inv(torch.tensor(sigma, dtype=f64))
    want = torch.linalg.solve(prec0 + w.T @ w, (prec0 @ torch.tensor(m, dtype=f64)).expand(4, 3).T + w.T @ x.T).T
    assert torch.allclose(got, want, atol=1e-8)


@pytest.mark.parametrize(("prior", "words"), [
    ({"mean": [1.0, 2.0]}, "expected 3 mean values"),
    ({"covariance": [[1.0, 0.0], [0.0, 1.0]]}, "expected 3 values (a diagonal) or a 3x3 matrix"),
    ({"precision": None}, "got None"),  # found by the spec fuzzer: None is no precision
])
def test_bad_priors_name_the_field(prior, words):
    g = pcgraph.Graph("p")
    g.node("z", 3, prior=prior)
    g.node("x", 3, observed=True)
    g.edge("z", "x", "linear")
    with pytest.raises(SpecError) as err:
        pcgraph.compile(g.spec())
    assert "graph.nodes.z.prior" in str(err.value) and words in str(err.value)
