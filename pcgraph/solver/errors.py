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

from pcgraph.compiler import States
from pcgraph.solver.loop import Run, zero_scalar


def relax_errors(run: Run, optimizer, clamped: States, steps: int) -> tuple[list[Tensor], States, States]:
    """T steps of ``optimizer`` on the errors of ``run.plan.relaxed``, from e = 0. Returns (the
    energy of the relaxed terms before each step, the states x(e) after the last one, the errors e)."""
    plan = run.plan
    ref = next(iter(clamped.values()))
    errors = {v: ref.new_zeros(ref.shape[0], *run.graph.nodes[v].shape) for v in plan.relaxed}
    es = list(errors.values())
    buffers = optimizer.init(es)
    trace = []
    for t in range(steps if es else 0):
        at = run.at(t)
        with torch.enable_grad():
            for e in es:
                e.requires_grad_()
            states = run.graph.feedforward(clamped, offsets=errors)[0]
            if run.observe is not None:
                run.observe(states)
            total = sum((at.weighted(v, run.graph.node_energy(states, v)).sum() for v in plan.terms),
                        zero_scalar(clamped))
            grads = torch.autograd.grad(total, es, allow_unused=True) if total.requires_grad else [None] * len(es)
        for e in es:
            e.requires_grad_(False)
        trace.append(total.detach())
        with torch.no_grad():
            optimizer.step(es, list(grads), buffers)
    with torch.no_grad():
        return trace, run.graph.feedforward(clamped, offsets=errors)[0], errors
