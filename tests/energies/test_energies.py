"""Node energies against hand-computed closed forms, their local gradients against autograd, and
each registered energy used from a spec, in training and in verify-bp's exact mode."""

import math

import pytest
import torch
import torch.nn.functional as F

import pcgraph
from pcgraph.energies import ENERGIES, Energy, autograd_local, parse_energy, per_sample, register_energy
from pcgraph.energies.bernoulli import Bernoulli
from pcgraph.energies.categorical import Categorical
from pcgraph.energies.gaussian import Gaussian
from pcgraph.energies.laplace import Laplace
from tests.strategies import small_net

f64 = torch.float64


def test_gaussian_closed_form():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # sample 0: 1/2 * 3 * (1 + 4) = 7.5; sample 1: 1/2 * 3 * (1 + 4) = 7.5
    assert torch.allclose(Gaussian(precision=3.0).build((2,)).value(x, mu), torch.tensor([7.5, 7.5]))


def test_categorical_is_cross_entropy_for_one_hot_and_zero_at_softmax():
    mu = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([[0.0, 1.0, 0.0]])
    expected = -(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert torch.allclose(Categorical().value(y, mu), torch.tensor([expected]))
    assert torch.allclose(Categorical().value(torch.softmax(mu, 1), mu), torch.zeros(1), atol=1e-6)
    assert torch.equal(Categorical().optimum(mu), torch.softmax(mu, 1))
    assert torch.equal(Gaussian().build((3,)).optimum(mu), mu)


def test_bernoulli_is_binary_cross_entropy_and_zero_at_the_sigmoid():
    mu = torch.tensor([[0.3, -1.2, 2.0]], dtype=f64)
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=f64)
    p = 1 / (1 + torch.exp(-mu))
    expected = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)  # by hand
    assert torch.allclose(Bernoulli().value(x, mu), expected)
    assert torch.allclose(Bernoulli().value(p, mu), torch.zeros(1, dtype=f64), atol=1e-12)
    assert torch.equal(Bernoulli().optimum(mu), torch.sigmoid(mu))


def test_laplace_is_the_scaled_l1_error_and_the_laplace_density():
    x = torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=f64)
    mu = torch.tensor([[0.0, 1.0], [0.5, -0.5]], dtype=f64)
    e = Laplace(scale=0.5).value(x, mu)
    assert torch.allclose(e, torch.tensor([(1 + 3) / 0.5, (0 + 1) / 0.5], dtype=f64))
    logp = torch.distributions.Laplace(mu, 0.5).log_prob(x).sum(1)
    assert torch.allclose(-logp - e, torch.full((2,), 2 * math.log(2 * 0.5), dtype=f64))


@pytest.mark.parametrize("kind", sorted(ENERGIES))
def test_closed_form_local_gradients_equal_autograd(kind):
    """Every registered energy: (sum e, dE/dx, dE/dmu) from its closed form equal autograd's, at
    data of the kind it scores (dE/dx for states inside the probability range where it exists)."""
    gen = torch.Generator().manual_seed(0)
    term = parse_energy(kind).build((5,), f64)
    mu = torch.randn(6, 5, generator=gen, dtype=f64)
    data = parse_energy(kind).random_data(6, (5,), gen, f64)
    inside = torch.rand(6, 5, generator=gen, dtype=f64) * 0.8 + 0.1
    if kind == "categorical":
        inside = inside / inside.sum(1, keepdim=True)
    for x, check_x in ((data, kind in ("gaussian", "laplace")), (inside, True)):
        e, d_x, d_mu = term.local(x, mu)
        e_ref, d_x_ref, d_mu_ref = autograd_local(term.value, x, mu)
        assert torch.allclose(e, e_ref, atol=1e-10)
        assert torch.allclose(d_mu, d_mu_ref, atol=1e-10)
        if check_x:
            assert torch.allclose(d_x, d_x_ref, atol=1e-10)


def test_an_energy_without_a_closed_form_gets_autograd_gradients():
    class Cauchy(Energy):
        kind = "test-cauchy"

        def value(self, x, mu):
            return per_sample(torch.log1p((x - mu) ** 2))

    x, mu = torch.randn(3, 2, dtype=f64), torch.randn(3, 2, dtype=f64)
    e, d_x, d_mu = Cauchy().build((2,)).local(x, mu)
    by_hand = 2 * (x - mu) / (1 + (x - mu) ** 2)
    assert torch.allclose(d_x, by_hand) and torch.allclose(d_mu, -by_hand)
    assert torch.allclose(e, torch.log1p((x - mu) ** 2).sum())


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
    s = {"a": torch.randn(4, 2, dtype=f64), "b": torch.randn(4, 3, dtype=f64), "c": torch.randn(4, 1, dtype=f64)}
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


def classifier(energy):
    return small_net((4, 6, 3), output=energy)


@pytest.mark.parametrize("kind", sorted(ENERGIES))
def test_each_energy_at_an_output_gives_backprop_in_exact_mode(kind):
    """verify-bp's exact mode: PC's fixed-prediction gradient equals backprop's loss gradient
    (loss = the output's energy), for every registered energy at the output."""
    graph = pcgraph.compile(classifier(kind), dtype=f64)
    batch = pcgraph.tasks.verify.random_batch(graph, ["x", "y"], 8, f64)
    check = pcgraph.verify_bp(graph, batch, "exact")
    assert check.ok and check.worst_rel_error < 1e-10
    # and backprop's loss is the energy written out: autograd on it by hand gives the same gradient
    w = graph.edges[1].pipeline[0].weight
    with torch.enable_grad():
        states = graph({"x": batch["x"]})
        loss = graph.terms["y"].value(batch["y"], graph.prediction(states, "y")).mean()
        want = torch.autograd.grad(loss, w)[0]
    _, pc = pcgraph.Solver(variant="exact").gradients(graph, batch)
    assert torch.allclose(pc["edges.1.pipeline.0.weight"], want, atol=1e-12)


@pytest.mark.parametrize(("kind", "bad"), [("categorical", "categorical node must be a leaf"),
                                           ("bernoulli", "bernoulli node must be a leaf")])
def test_probability_energies_must_sit_at_leaves(kind, bad):
    g = pcgraph.Graph("e")
    g.node("x", 3, observed=True)
    g.node("h", 3, energy=kind)
    g.node("y", 3, observed=True)
    g.edge("x", "h", "linear")
    g.edge("h", "y", "linear")
    with pytest.raises(pcgraph.SpecError, match=bad):
        pcgraph.compile(g.spec())


def test_bernoulli_and_laplace_outputs_train():
    """Binary targets under a bernoulli output and noisy targets under a laplace output: PC training
    lowers the output's energy on held-out data (measured by the energy's own formula)."""
    gen = torch.Generator().manual_seed(1)
    w_true = torch.randn(4, 3, generator=gen)
    x = torch.randn(512, 4, generator=gen)
    targets = {"bernoulli": (x @ w_true > 0).float(), "laplace": x @ w_true + 0.1 * torch.randn(512, 3, generator=gen)}
    for kind, y in targets.items():
        torch.manual_seed(0)
        graph = pcgraph.compile(classifier(kind))
        solver = pcgraph.Solver(steps=10, optimizer=pcgraph.StateSGD(0.1))
        opt = torch.optim.Adam(graph.parameters(), lr=0.01)

        def held_out(graph=graph, y=y):
            with torch.no_grad():
                s = graph({"x": x[384:]})
                return float(graph.terms["y"].value(y[384:], graph.prediction(s, "y")).mean())

        before = held_out()
        for _ in range(12):
            for i in range(0, 384, 64):
                solver.step(graph, {"x": x[i:i + 64], "y": y[i:i + 64]}, opt)
        assert held_out() < 0.6 * before, kind


def test_a_registered_energy_is_usable_from_yaml_and_in_the_schema():
    @register_energy
    class Quartic(Energy):
        """e = sum_i (x_i - mu_i)^4 / 4."""

        kind = "test-quartic"
        translation_invariant = True

        def value(self, x, mu):
            return per_sample((x - mu) ** 4) / 4

    try:
        spec = pcgraph.spec_from_yaml(classifier("test-quartic").to_yaml())  # from YAML, by its kind
        assert spec.graph.nodes["y"].energy.kind == "test-quartic"
        assert pcgraph.spec_from_yaml(spec.to_yaml()) == spec
        graph = pcgraph.compile(spec, dtype=f64)
        x, y = torch.randn(5, 4, dtype=f64), torch.randn(5, 3, dtype=f64)
        states = pcgraph.Solver(steps=3).relax(graph, {"x": x, "y": y}).states
        mu = graph.prediction(states, "y")
        assert torch.allclose(graph.node_energy(states, "y"), ((y - mu) ** 4).sum(1) / 4)
        enum = pcgraph.json_schema()["$defs"]["NodeSpec"]["properties"]["energy"]["anyOf"][0]["enum"]
        assert "test-quartic" in enum
    finally:
        ENERGIES.pop("test-quartic")


def test_bad_energy_arguments_name_the_field():
    with pytest.raises(pcgraph.SpecError) as err:
        pcgraph.spec_from_dict({"name": "e", "graph": {"nodes": {"a": {"shape": [2], "energy": {
            "kind": "laplace", "scale": -1}}}}})
    assert "graph.nodes.a.energy.scale" in str(err.value) and "greater than 0" in str(err.value)
    with pytest.raises(pcgraph.SpecError, match="unknown energy 'poisson'"):
        pcgraph.spec_from_dict({"name": "e", "graph": {"nodes": {"a": {"shape": [2], "energy": "poisson"}}}})


def test_one_hot_random_data():
    d = Categorical().random_data(7, (4,), torch.Generator().manual_seed(0), f64)
    assert torch.equal(d.sum(1), torch.ones(7, dtype=f64)) and torch.equal(F.one_hot(d.argmax(1), 4).to(f64), d)


def test_the_shipped_bernoulli_spec_learns_the_digits():
    """specs/digits_bernoulli_ae.yaml: 2 epochs bring the test reconstruction MSE well under that of
    predicting every image by the mean image (computed here from the data)."""
    spec = pcgraph.load_spec("specs/digits_bernoulli_ae.yaml")
    assert spec.graph.nodes["image"].energy.kind == "bernoulli"
    result = pcgraph.train(spec, epochs=2, progress=False, log=lambda _: None)
    x = pcgraph.load_dataset("digits").x_test.reshape(-1, 64)
    mean_image_mse = float(((x - x.mean(0)) ** 2).mean())
    assert result.test_metric < 0.5 * mean_image_mse, (result.test_metric, mean_image_mse)
