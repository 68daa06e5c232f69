"""Weight-update rules (learning.update): the nudged gradient tends to backprop's as beta -> 0 on
random DAGs, the forward update equals its definition written out by hand, centered nudging
alternates its sign per epoch, and runs a rule is not defined on are refused."""

import pytest
import torch
from hypothesis import given, settings

import pcgraph
from pcgraph.solver import StateSGD
from pcgraph.updates import Forward, Nudged, Relaxed, parse_update
from tests.solver.test_solver import chain
from tests.strategies import layered_graphs, random_batch

f64 = torch.float64


def flat(grads):
    return torch.cat([g.flatten() for g in grads.values()])


@settings(max_examples=6, deadline=None)
@given(layered_graphs())
def test_nudged_gradient_tends_to_backprop_as_beta_shrinks(drawn):
    spec, _, outputs = drawn
    torch.manual_seed(0)
    graph = pcgraph.compile(spec, dtype=f64)
    batch = random_batch(graph, outputs)
    bp = flat(pcgraph.bp_gradients(graph, batch))
    errors = []
    for beta in (0.1, 0.01, 0.001):
        solver = pcgraph.Solver(steps=400, optimizer=StateSGD(0.1, momentum=0.5),
                                update={"kind": "nudged", "beta": beta, "form": "energy"})
        _, pc = solver.gradients(graph, batch)
        errors.append(float((flat(pc) - bp).norm() / bp.norm().clamp_min(1e-12)))
    assert errors[2] < 0.02 or float(bp.norm()) < 1e-9
    assert errors[2] <= errors[0] + 1e-9  # it gets closer as beta shrinks


def test_target_form_tends_to_the_preconditioned_gradient():
    """Clamping the output to u + beta (y - u) on a linear chain x0 -> x1 -> x2: the relaxed output
    error is (I + W2 W2^T)^-1 beta (y - u), not backprop's beta (y - u)."""
    graph = chain([3, 4, 2], act=None, bias=False)
    W1, W2 = (e.pipeline[0].weight.detach() for e in graph.edges)
    x0, y = torch.randn(5, 3, dtype=f64), torch.randn(5, 2, dtype=f64)
    u = x0 @ W1.T @ W2.T
    d = torch.linalg.solve(torch.eye(2, dtype=f64) + W2 @ W2.T, (y - u).T).T  # the output error / beta
    e1 = d @ W2  # the hidden error at equilibrium: W2^T e2
    want = {"edges.1.pipeline.0.weight": -(d.T @ (x0 @ W1.T + 0.01 * e1)) / 5, "edges.0.pipeline.0.weight": -(e1.T @ x0) / 5}
    solver = pcgraph.Solver(steps=600, optimizer=StateSGD(0.1, momentum=0.5), update={"kind": "nudged", "beta": 0.01})
    _, pc = solver.gradients(graph, {"x0": x0, "x2": y})
    for name, g in want.items():
        assert torch.allclose(pc[name], g, atol=1e-9), name


def test_beta_one_is_the_standard_rule():
    graph = chain([3, 4, 2])
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x2": torch.randn(5, 2, dtype=f64)}
    _, standard = pcgraph.Solver(steps=10).gradients(graph, batch)
    _, nudged = pcgraph.Solver(steps=10, update={"kind": "nudged", "beta": 1.0}).gradients(graph, batch)
    assert torch.allclose(flat(standard), flat(nudged), atol=1e-12)


def test_centered_nudging_alternates_the_sign_per_epoch():
    graph = chain([3, 4, 2])
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x2": torch.randn(5, 2, dtype=f64)}

    def grads(sign, epoch):
        solver = pcgraph.Solver(steps=10, update={"kind": "nudged", "beta": 0.2, "sign": sign})
        return flat(solver.gradients(graph, batch, epoch=epoch)[1])

    assert torch.equal(grads("centered", 0), grads("positive", 5))
    assert torch.equal(grads("centered", 1), grads("negative", 0))
    assert not torch.allclose(grads("positive", 0), grads("negative", 0))
    rule = Nudged(beta=0.2, sign="negative")
    y, u = torch.ones(2), torch.zeros(2)
    assert torch.equal(rule.target(y, u, 0), torch.full((2,), -0.2)) and rule.factor(0) == pytest.approx(-5.0)


@pytest.mark.parametrize("local_rules", [True, False])
def test_forward_update_is_relaxed_targets_against_feedforward_predictions(local_rules):
    """dE/dtheta of sum_v e_v(x*_v, f_v(x^ff_parents)), written out with autograd."""
    graph = chain([3, 5, 4, 2], act="tanh", precisions=[1.0, 2.0, 0.5, 1.0])
    batch = {"x0": torch.randn(6, 3, dtype=f64), "x3": torch.randn(6, 2, dtype=f64)}
    solver = pcgraph.Solver(steps=12, optimizer=StateSGD(0.1), update="forward", local_rules=local_rules)
    r, pc = solver.gradients(graph, batch)
    standard = pcgraph.Solver(steps=12, optimizer=StateSGD(0.1)).relax(graph, batch)
    for v in ("x1", "x2"):  # inference is the standard one
        assert torch.allclose(r.states[v], standard.states[v], atol=1e-12)
    with torch.no_grad():  # the feedforward values are inputs here, not functions of the parameters
        ff = {**graph({"x0": batch["x0"]}), **batch}
    params = dict(graph.named_parameters())
    with torch.enable_grad():
        total = sum(graph.terms[v].value(r.states[v], graph.prediction(ff, v)).sum() for v in ("x1", "x2", "x3"))
        ref = torch.autograd.grad(total / 6, list(params.values()))
    for (name, _), g in zip(params.items(), ref):
        assert torch.allclose(pc[name], g, atol=1e-10), name
    _, relaxed = pcgraph.Solver(steps=12, optimizer=StateSGD(0.1)).gradients(graph, batch)
    assert not torch.allclose(flat(relaxed), flat(pc))  # a different rule


def test_spec_field_parses_and_round_trips():
    spec = pcgraph.spec_from_yaml(chain([3, 4, 2]).spec.to_yaml())
    data = spec.model_dump(mode="json", by_alias=True)
    data["learning"] = {"update": {"kind": "nudged", "beta": 0.05, "sign": "centered"}}
    spec = pcgraph.spec_from_dict(data)
    assert spec.learning.update == Nudged(beta=0.05, sign="centered")
    assert pcgraph.spec_from_yaml(spec.to_yaml()) == spec
    assert isinstance(pcgraph.Solver.from_spec(spec).update, Nudged)
    assert isinstance(parse_update("forward"), Forward) and isinstance(parse_update("relaxed"), Relaxed)
    data["learning"] = {"update": {"kind": "nudged", "beta": 0}}
    with pytest.raises(pcgraph.SpecError, match=r"learning.update.beta"):
        pcgraph.spec_from_dict(data)


def test_refusals():
    with pytest.raises(pcgraph.SpecError, match="learning.update.*init: forward"):
        pcgraph.Solver(init="zeros", update="nudged")
    with pytest.raises(pcgraph.SpecError, match="learns at every step"):
        pcgraph.Solver(variant="incremental", update="forward")
    graph = chain([3, 4, 2])
    with pytest.raises(pcgraph.SpecError, match="no clamped node is an output"):  # nothing to nudge
        pcgraph.Solver(update="nudged").relax(graph, {"x2": torch.randn(2, 2, dtype=f64)})


def test_learning_every_step_takes_the_nudged_factor_too():
    """Incremental PC with a nudged update: each step's parameter step is the scaled gradient. At
    T = 1 from the feedforward pass only the output's (beta-weighted) error is nonzero, so with plain
    SGD the step equals the standard rule's (beta = 1) for any beta."""
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x2": torch.randn(5, 2, dtype=f64)}
    moved = {}
    for beta in (1.0, 0.5):
        torch.manual_seed(0)
        graph = chain([3, 4, 2], act=None)
        before = [p.detach().clone() for p in graph.parameters()]
        opt = torch.optim.SGD(graph.parameters(), lr=0.01)
        pcgraph.Solver(steps=1, variant="incremental", update={"kind": "nudged", "beta": beta, "form": "energy"}
                       ).step(graph, batch, opt)
        moved[beta] = torch.cat([(p.detach() - q).flatten() for p, q in zip(graph.parameters(), before)])
    assert torch.allclose(moved[0.5], moved[1.0], atol=1e-12)  # gradient/beta of beta-weighted output = the same
