"""Closed-form local rules: an edge's VJP composed from its ops' own rules.

For an edge mu = f(W x + b) and a Gaussian target, the state and weight gradients are the
notes' Box 2 rules: dE/dx_src = -W^T (f'(a) * eps) (eq. 34), dE/dW = -(f'(a) * eps) x^T (eq. 38),
with eps = pi (x_t - mu) (eq. 31). Each op's module brings its own piece
(:meth:`pcgraph.ops.OpModule.local_vjp`, in the op's file) and each node energy its dE/dx and
dE/dmu (:meth:`pcgraph.energies.Energy.local`); here they are composed along an edge. This avoids
autograd's bookkeeping in the inner loop (most of its cost at these sizes) and lets learning reuse
the last inference step's errors instead of running a second backward pass. A graph with a module
that has no local rule runs on autograd instead (the solver warns once); the tests check that both
routes agree.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from pcgraph.errors import PCGraphWarning
from pcgraph.ops import OpModule


def has_local_rule(m: nn.Module) -> bool:
    return isinstance(m, OpModule) and bool(m.has_local_rule)


def without_local_rule(graph) -> list[str]:
    """The ops of ``graph`` whose modules have no local rule, as ``graph.edges[i].fn[k] (op 'kind',
    module Name)`` (empty: the fast path applies)."""
    return [f"graph.edges[{i}].fn[{k}] (op {e.kinds[k]!r}, module {type(m).__name__})"
            for i, e in enumerate(graph.edges) for k, m in enumerate(e.pipeline) if not has_local_rule(m)]


def rules_apply(graph) -> bool:
    """True when every op of ``graph`` has a local rule; otherwise warn once per graph, naming the ops."""
    missing = without_local_rule(graph)
    if missing and not graph.warned_autograd:
        graph.warned_autograd = True
        warnings.warn(f"no local rule (pcgraph.OpModule.local_vjp) for {', '.join(missing)}: this graph runs "
                      "inference on autograd, which is slower", PCGraphWarning, stacklevel=4)
    return not missing


def refresh(graph) -> None:
    """Let modules with cached derived weights (the sparse op's A^T) rebuild them: called at the
    start of every relaxation, so edits made between relaxations, even through ``.data``, count."""
    for e in graph.edges:
        for m in e.pipeline:
            if isinstance(m, OpModule):
                m.refresh()


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def edge_backward(edge, tape: list[Tensor], g: Tensor, grads: dict | None = None,
                  need_inputs: bool = True) -> list[Tensor] | None:
    """Pull dE/dy back through the edge: returns dE/dx for each source, in order. With
    ``grads`` it also accumulates parameter gradients; ``need_inputs=False`` skips the source
    gradients (for edges whose sources are all clamped) and returns None."""
    n_src = len(edge.sources)
    mods = list(zip(edge.pipeline, tape[n_src:]))
    for k in range(len(mods) - 1, -1, -1):
        if not need_inputs and not any(_has_params(m) for m, _ in mods[:k + 1]):
            return None  # nothing left that holds parameters
        g = mods[k][0].local_vjp(mods[k][1], g, grads, need_inputs or k > 0)
    if not need_inputs:
        return None
    if n_src == 1:
        return [g]
    xs = tape[:n_src]
    if edge.combine == "concat":
        return list(torch.split(g, [x.shape[1] for x in xs], dim=1))
    if edge.combine == "add":
        return [g] * n_src
    out = []
    for k in range(n_src):  # product rule
        prod = g
        for j, x in enumerate(xs):
            if j != k:
                prod = prod * x
        out.append(prod)
    return out
