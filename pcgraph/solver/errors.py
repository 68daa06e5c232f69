"""Error-parametrised inference (ePC): relax the errors e_v instead of the states.

    x_v = f_v(x_parents) + e_v  (x_v = m_v + e_v for a root with prior mean m_v, else e_v)

for every inferred node, in topological order, so the states are a function x(e) of the errors and
the clamped values. Inference runs gradient steps on E(x(e)) in e, starting at e = 0 (the
feedforward pass); dE/de flows back through the whole graph (autograd through x(e)), so an error
at the output reaches every layer in one step instead of one edge per step. The map e -> x is a
bijection for fixed clamped values on an acyclic graph, so the minimisers in e are exactly the
minimisers of standard PC in x: the same equilibria, reached by a different path. The weight
update is then the ordinary local one at the relaxed states x(e*).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pcgraph.compile import States
from pcgraph.solver.loop import Run, zero_scalar


def states_from_errors(run: Run, clamped: States, errors: States) -> States:
    """x(e): the feedforward pass with each inferred node offset by its error (free leaves sit at
    their optimum, e = 0)."""
    graph = run.graph
    ref = next(iter(clamped.values()))
    states = dict(clamped)
    for v in graph.order:
        if v in clamped:
            continue
        mu = graph.prediction(states, v)
        base = graph.root_value(v, ref) if mu is None else graph.terms[v].optimum(mu)
        states[v] = base + errors[v] if v in errors else base
    return states


def relax_errors(run: Run, optimizer, clamped: States, steps: int) -> tuple[list[Tensor], States]:
    """T steps of ``optimizer`` on the errors of ``run.plan.relaxed``, from e = 0. Returns (the
    energy of the relaxed terms before each step, the states x(e) after the last one)."""
    plan = run.plan
    ref = next(iter(clamped.values()))
    errors = {v: ref.new_zeros(ref.shape[0], *run.graph.nodes[v].shape) for v in plan.relaxed}
    es = list(errors.values())
    buffers = optimizer.init(es)
    trace = []
    for _ in range(steps if es else 0):
        with torch.enable_grad():
            for e in es:
                e.requires_grad_()
            states = states_from_errors(run, clamped, errors)
            total = sum((run.graph.node_energy(states, v).sum() for v in plan.terms), zero_scalar(clamped))
            grads = torch.autograd.grad(total, es, allow_unused=True) if total.requires_grad else [None] * len(es)
        for e in es:
            e.requires_grad_(False)
        trace.append(total.detach())
        with torch.no_grad():
            optimizer.step(es, list(grads), buffers)
    with torch.no_grad():
        return trace, states_from_errors(run, clamped, errors)
