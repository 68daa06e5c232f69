"""What the solver checks about a run: whether its loop can be compiled, and the report of a
diverged energy (which step, which nodes, what to lower)."""

from __future__ import annotations

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, States
from pcgraph.errors import DivergenceError
from pcgraph.ops import OpModule
from pcgraph.solver.plan import Plan


def compilable(graph: CompiledGraph, plan: Plan) -> bool:
    """torch.compile takes dense ops, whole-node clamps and closed-form energies without parameters
    (sparse tensors, masks and autograd on an energy term stay eager)."""
    terms = [*graph.terms.values(), *graph.priors.values()]
    return not plan.free and all(t.closed_form and not any(True for _ in t.parameters()) for t in terms) \
        and not any(isinstance(m, OpModule) and m.connections() is not None for e in graph.edges for m in e.pipeline)


def divergence(graph: CompiledGraph, states: States, energy: Tensor, phase: str, opt) -> DivergenceError:
    bad_step = int(torch.nonzero(~torch.isfinite(energy))[0, 0])
    bad = []
    with torch.no_grad():
        for v in (v for v in graph.order if v in states):
            if not bool(torch.isfinite(states[v]).all()):
                bad.append(f"{v} (state)")
            elif graph.nodes[v].has_energy and not bool(torch.isfinite(graph.node_energy(states, v)).all()):
                bad.append(f"{v} (error)")
    where = f"at inference step {bad_step}" if phase == "inference" else "in the learning step"
    return DivergenceError(
        f"energy became {energy[bad_step].item()} {where}; non-finite: {', '.join(bad) or 'none found'}. "
        f"Lower inference.optimizer.lr (now {getattr(opt, 'lr', '?')}) or the learning rate, "
        "or check the data for NaN/inf."
    )
