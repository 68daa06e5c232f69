"""The state gradient at a configuration, and the readable names of a graph's parameters.

    dE/dx_v = d/dx_v sum_b sum_u pi_u e_u(x_u, mu_u(x))        (eq. 34's right-hand side)

E sums over the batch, and sample b's energy reads only sample b's states, so row b of dE/dx_v is
that sample's own gradient: it does not depend on the batch size (inference steps by it as is).
Parameter gradients are the other convention: :meth:`Solver.gradients` and every learning step
use the batch mean (1/B) dE/dtheta, so learning rates do not depend on the batch size.

:func:`state_gradients` computes dE/dx by the route inference takes (the closed-form local rules
when every op has one, else autograd), at the states it is given, without relaxing anything.
:func:`parameter_names` maps the tensor names of ``graph.named_parameters()`` (the keys of
:meth:`Solver.gradients` and of checkpoints, ``edges.2.pipeline.0.weight``) to the names
:func:`pcgraph.verify_bp` prints (``h2->h3 linear[0].weight``).
"""

from __future__ import annotations

import torch

from pcgraph.compiler import CompiledGraph, States
from pcgraph.precision import precision_table
from pcgraph.solver import local
from pcgraph.solver.batch import check_batch
from pcgraph.solver.loop import Run, autograd_grads, local_grads
from pcgraph.solver.plan import Constants, Plan


def state_gradients(graph: CompiledGraph, states: States, batch: States | None = None, *,
                    local_rules: bool = True, precisions: list | tuple = (), step: int | None = None) -> States:
    """{node: dE/dx_v} at ``states`` (every node's values, as :meth:`CompiledGraph.energy` takes) for
    every node ``batch`` does not clamp; ``batch`` (whole nodes or :class:`~pcgraph.Clamp` entries, as
    :meth:`Solver.relax` takes) overrides their values, and a partly clamped node's gradient is 0 at
    its clamped neurons (what an inference step moves). Each row is one sample's gradient of its own
    energy (E sums over the batch; no batch mean). With ``precisions`` (``inference.precisions``
    entries) and ``step``, each term carries its schedule's pi_v(step), as inference's step ``step``
    does; else unit precision, the energy learning differentiates. The variant plays no part: this is
    dE/dx of the energy itself, also for the exact variant (which holds predictions fixed) and ePC
    (which relaxes errors)."""
    _, values, free = check_batch(graph, batch) if batch else (0, {}, {})
    check_batch(graph, states)
    full = {**states, **values}
    missing = [v for v in graph.order if v not in full]
    if missing:
        raise KeyError(f"states lack node(s) {', '.join(map(repr, missing))}: dE/dx is taken at a whole "
                       "configuration (a relaxation's .states, or graph(batch) for the feedforward states)")
    full = {v: x.detach() for v, x in full.items()}
    plan = Plan(graph, (set(values) - set(free)) | set(graph.delayed), free, leaves_at_optimum=False)
    table = precision_table(list(precisions), graph, plan, step + 1) if step is not None else ()
    use_local = local_rules and not local.without_local_rule(graph)
    run = Run(graph, plan, Constants.at(graph, plan, full), [], local_grads if use_local else autograd_grads,
              weights=table[step] if table else None)
    with torch.no_grad():
        _, gx, _ = run.grads(full, plan.terms, False)
    grads = [torch.zeros_like(full[v]) if g is None else g for v, g in zip(plan.relaxed, plan.step_grads(gx))]
    return {v: g.detach() for v, g in zip(plan.relaxed, grads)}


def parameter_names(graph: CompiledGraph) -> dict[str, str]:
    """{tensor name: readable name} for every parameter of ``graph``, in ``named_parameters()`` order:

    - ``edges.i.pipeline.k.<rest>`` -> ``a+b->c kind[k].<rest>`` (sources, target, the k-th op's kind);
    - ``encoders.i.pipeline.k.<rest>`` -> ``encoder x->z kind[k].<rest>``;
    - ``energies.v.<rest>`` -> ``v energy.<rest>`` (a learnt precision).

    Parallel edges (the same sources and target) carry their index, ``a->c#3 linear[0].weight``."""
    return {n: _readable(graph, n.split(".")) for n, _ in graph.named_parameters()}


def _arrow(edges, i: int) -> str:
    edge = edges[i]
    arrow = f"{'+'.join(edge.sources)}->{edge.target}"
    parallel = sum(e.sources == edge.sources and e.target == edge.target for e in edges) > 1
    return f"{arrow}#{i}" if parallel else arrow


def _readable(graph: CompiledGraph, parts: list[str]) -> str:
    head = parts[0]
    if head in ("edges", "encoders") and len(parts) > 4 and parts[2] == "pipeline":
        i, k = int(parts[1]), int(parts[3])
        edges = graph.edges if head == "edges" else graph.encoders
        op = edges[i].kinds[k]
        return f"{'encoder ' if head == 'encoders' else ''}{_arrow(edges, i)} {op}[{k}].{'.'.join(parts[4:])}"
    if head in ("energies", "prior_energies") and len(parts) > 2:  # a node holding tensors has no '.' in its name
        return f"{parts[1]} {'energy' if head == 'energies' else 'prior'}.{'.'.join(parts[2:])}"
    return ".".join(parts)
