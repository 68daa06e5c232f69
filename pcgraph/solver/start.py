"""Where a relaxation starts: the initial states and what stays constant from them.

- ``forward``: the feedforward pass from the clamped nodes (every inferred node at its
  prediction, so only the errors at clamped nodes are nonzero); clamped output leaves are left
  out of the pass so that it predicts them too (``predicted``), which is what a nudged weight
  update clamps them near (:mod:`pcgraph.updates`);
- ``amortised``: the graph's encoders propose the latents they target from the clamped nodes,
  x_z = g_z(x_clamped), and the feedforward pass fills in the rest from there (Tschantz et al.
  2023's hybrid inference); the encoders then learn to propose the relaxed values
  (:func:`encoder_gradients`);
- ``zeros`` / ``prior``: zeros, or the prior mean where a node has one; or given starting states.
"""

from __future__ import annotations

import torch

from pcgraph.compiler import CompiledGraph, States, edge_forward
from pcgraph.errors import SpecError
from pcgraph.solver.plan import Constants, Plan


def initial_states(graph: CompiledGraph, batch: States, plan: Plan, init: str, start: States | None,
                   forward: bool, update, epoch: int):
    """(states, constants, {clamped output: feedforward prediction}, the batch as clamped).

    ``forward`` forces the feedforward pass whatever ``init`` says (variants that start there);
    ``update`` may clamp the output leaves to a target of their data and their prediction."""
    predicted: States = {}
    amortised = init == "amortised" and start is None and not forward
    if (init == "forward" or forward or amortised) and start is None:
        out = set(output_leaves(graph, batch, plan))
        if update.nudges and not out:
            raise SpecError("a nudged update clamps the outputs near their feedforward prediction, and no clamped "
                            "node is an output predicted from other clamped nodes", "learning.update")
        every = frozenset(range(len(graph.edges)))
        given = {v: x for v, x in batch.items() if v not in out}
        if amortised:
            given.update(_proposals(graph, batch, plan))
        states, kept = graph.feedforward(given, every, plan.free)
        batch = {v: x for v, x in batch.items() if v not in plan.free}  # now set by the pass
        predicted = {v: states[v] for v in out}
        if update.nudges:
            batch = {v: update.target(x, predicted[v], epoch) if v in out else x for v, x in batch.items()}
        states.update(batch)
        for i in every - kept.keys():  # edges into clamped (or proposed) nodes
            kept[i] = edge_forward(graph.edges[i], states)
        const = Constants.collect(graph, plan, kept, fresh=not amortised)
    else:
        if update.nudges:
            raise SpecError("a nudged update needs the feedforward prediction of the outputs: use inference.init: "
                            "forward", "learning.update")
        states = dict(batch)
        ref = next(iter(batch.values()))
        missing = [v for v in plan.relaxed if start is not None and v not in start]
        if missing:
            raise KeyError(f"init gives no starting state for {missing}; give every inferred node")
        for v in plan.relaxed:
            x0 = start[v] if start is not None else graph.root_value(v, ref, init == "prior")
            states[v] = x0 if v not in plan.free else torch.where(plan.free[v] > 0, x0, batch[v])
        const = Constants.at(graph, plan, states)
    states = {v: x.detach().clone() if v in plan.relaxed else x for v, x in states.items()}
    return states, const, predicted, batch


def output_leaves(graph: CompiledGraph, batch: States, plan: Plan) -> list[str]:
    """The clamped leaves a forward init predicts too (it leaves them out of the pass), unless they
    are all the batch clamps."""
    out = [v for v in graph.order if v in batch and graph.nodes[v].incoming and not graph.nodes[v].outgoing
           and v not in plan.free]
    return out if len(out) < len(batch) else []


def _proposals(graph: CompiledGraph, batch: States, plan: Plan) -> States:
    """{latent: g(x_clamped)} from the graph's encoders (summed where several target one node)."""
    if not len(graph.encoders):
        raise SpecError("init: amortised needs encoders that propose the latents: add graph.encoders",
                        "inference.init")
    out: States = {}
    for k, enc in enumerate(graph.encoders):
        missing = [s for s in enc.sources if s not in batch or s in plan.free]
        if missing:
            raise SpecError(f"this encoder reads {missing}, which this batch does not clamp", f"graph.encoders[{k}].from")
        if enc.target in plan.relaxed:
            y = enc(batch)
            out[enc.target] = y if enc.target not in out else out[enc.target] + y
    return out


def encoder_gradients(graph: CompiledGraph, batch: States, plan: Plan, relaxed: States) -> dict:
    """{encoder parameter: batch-mean gradient} of sum_z 1/2 ||x*_z - g_z(x_clamped)||^2: the
    encoders learn to propose the states inference ends in."""
    params = [p for p in graph.encoders.parameters() if p.requires_grad]
    if not params:
        return {}
    b = next(iter(batch.values())).shape[0]
    with torch.enable_grad():
        proposals = _proposals(graph, batch, plan)
        loss = sum(0.5 * (relaxed[v].detach() - y).square().sum() for v, y in proposals.items())
        grads = torch.autograd.grad(loss / b, params, allow_unused=True)
    return {p: g for p, g in zip(params, grads) if g is not None}
