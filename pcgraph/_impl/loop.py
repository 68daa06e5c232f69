"""The inner loop of inference and the two gradient routes it can take.

:class:`Plan` decides, from the clamp set, which nodes are relaxed, which edges are constant for
the whole relaxation and which energy terms the loop evaluates. :func:`fixed_loop` runs T steps
with no host sync; :class:`Captured` compiles it (on CUDA: captured once as a CUDA graph and
replayed), falling back to the eager loop if that fails. The gradient routes return the same
thing, (E, {node: dE/dx}, {param: batch-mean dE/dtheta}): :func:`local_grads` from the closed-form
rules of :mod:`pcgraph._impl.local`, :func:`autograd_grads` from ``torch.autograd.grad``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from pcgraph._impl import local
from pcgraph.compile import CompiledGraph, States
from pcgraph.errors import PCGraphWarning


class Plan:
    """Which nodes are relaxed, which edges are constant and which energy terms the loop needs."""

    def __init__(self, graph: CompiledGraph, clamped: set[str], free: States | None = None):
        nodes = graph.nodes
        self.free = free or {}  # partly clamped nodes: {node: 1 at inferred neurons, 0 at clamped ones}
        unclamped = [v for v in graph.order if v not in clamped]
        self.leaves = [v for v in unclamped if nodes[v].incoming and not nodes[v].outgoing and v not in self.free]
        self.relaxed = [v for v in unclamped if v not in self.leaves]
        relaxed = set(self.relaxed)
        self.const_edges = frozenset(
            i for i, e in enumerate(graph.edges) if all(s in clamped for s in e.sources))
        energetic = [v for v in graph.order if nodes[v].has_energy and v not in self.leaves]
        self.terms = [v for v in energetic if v in relaxed or any(
            s in relaxed for i in nodes[v].incoming for s in graph.edges[i].sources)]
        self.fixed_terms = [v for v in energetic if v not in self.terms]
        self.clamped = clamped

    def step_grads(self, gx: States) -> list:
        """dE/dx of the relaxed nodes, in order, zero at the clamped neurons of partly clamped nodes."""
        return [g * self.free[v] if g is not None and v in self.free else g
                for v, g in ((v, gx.get(v)) for v in self.relaxed)]

    def schedule(self, graph: CompiledGraph, steps: int, cached: frozenset[int], fresh: bool,
                 fixed_prediction: bool = False) -> list:
        """Per step (and once more for the pass after the last step): the energy terms whose
        error can be nonzero and the edges whose output can differ from the cached one.

        After a forward init (``fresh``) every relaxed node sits at its prediction, so only errors
        at clamped nodes are nonzero; a node moves only once an error reaches it, one edge per step.
        Terms with a zero error contribute nothing and edges whose sources have not moved keep
        their cached output, so both are skipped: the result is the same, with less work. With
        ``fixed_prediction`` no edge is ever recomputed: predictions and their Jacobians stay at
        the feedforward pass (the exact-BP variant).
        """
        nodes, edges = graph.nodes, graph.edges
        moved = set() if fresh else set(self.relaxed)
        relaxed = set(self.relaxed)
        out = []
        for _ in range(steps + 1):
            recompute = frozenset(i for i in range(len(edges)) if i not in self.const_edges
                                  and (i not in cached or any(s in moved for s in edges[i].sources)))
            if fixed_prediction:
                recompute = frozenset()
            terms = [v for v in self.terms if v in self.clamped or v in self.free or v in moved or not nodes[v].incoming
                     or any(i in recompute for i in nodes[v].incoming)]
            out.append((terms, recompute))
            for v in terms:  # the nodes these errors push move from the next step on
                moved |= {v} & relaxed
                moved |= {s for i in nodes[v].incoming for s in edges[i].sources if s in relaxed}
        return out


def fixed_loop(grads_fn, optimizer, graph, plan, states, const, steps, learn, params):
    """T inference steps with no host sync, then the energy (and, when ``learn``, the parameter
    gradients) at the relaxed states. Returns (energy trace, parameter gradients or None)."""
    xs = [states[v] for v in plan.relaxed]
    buffers = optimizer.init(xs)
    trace = []
    schedule = plan.schedule(graph, steps if xs else 0, frozenset(const["cache"]), const["fresh"],
                             const.get("fixed", False))
    for terms, recompute in schedule[:-1]:
        e, gx, _ = grads_fn(graph, plan, states, const, terms, False, params, recompute=recompute)
        trace.append(e)
        with torch.no_grad():  # a node with no gradient yet has not moved: no update at all
            optimizer.step(xs, plan.step_grads(gx), buffers)
    return finish(grads_fn, graph, plan, states, const, learn, params, trace, *schedule[-1])


def pure_loop(grads_fn, optimizer, graph, plan, states, const, steps, learn, params):
    """:func:`fixed_loop` on copies of the relaxed states, returned with the result: (energy trace,
    parameter gradients as a list in ``params`` order or None, relaxed states in ``plan.relaxed``
    order). No input is changed in place, which CUDA-graph capture needs (torch.compile skips the
    capture of a function that mutates its inputs)."""
    states = {v: x.clone() if v in plan.relaxed else x for v, x in states.items()}
    trace, gp = fixed_loop(grads_fn, optimizer, graph, plan, states, const, steps, learn, params)
    return trace, None if gp is None else [gp.get(p) for p in params], [states[v] for v in plan.relaxed]


def zero_scalar(states: States) -> Tensor:
    """A scalar 0 on the states' device and dtype (a CPU scalar would keep a CUDA loop from being
    captured as a CUDA graph)."""
    ref = next(iter(states.values()))
    return torch.zeros((), dtype=ref.dtype, device=ref.device)


def finish(grads_fn, graph, plan, states, const, learn, params, trace, terms=None, recompute=None):
    """Append the energy at the relaxed states to ``trace``; when ``learn``, the same pass gives
    the parameter gradients (over every energy term, the fixed ones included)."""
    terms = plan.terms if terms is None else terms
    terms = terms + plan.fixed_terms if learn else terms
    e, _, gp = grads_fn(graph, plan, states, const, terms, learn, params, need_states=False,
                        recompute=recompute)
    if learn:  # the trace counts fixed terms separately
        e = e - sum((graph.node_energy(states, v).sum() for v in plan.fixed_terms), zero_scalar(states))
    return [*trace, e.detach()], gp


def graph_device(graph: CompiledGraph) -> torch.device:
    """The device of the graph's parameters (cpu for a graph without any)."""
    return next((p.device for p in graph.parameters()), torch.device("cpu"))


class Captured:
    """A compiled :func:`~pcgraph._impl.loop.pure_loop` called like :func:`fixed_loop`. Outputs
    are copied out at once (a replayed CUDA graph overwrites its outputs on the next replay). If
    compiling or capturing raises, it warns once and runs the eager loop from then on."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.fn = torch.compile(pure_loop, dynamic=False, mode="reduce-overhead" if self.cuda else None)
        self.failed = False

    def __call__(self, grads_fn, optimizer, graph, plan, states, const, steps, learn, params):
        args = (grads_fn, optimizer, graph, plan, states, const, steps, learn, params)
        try:
            if self.cuda:
                torch.compiler.cudagraph_mark_step_begin()
            trace, gp, relaxed = self.fn(*args)
        except Exception as err:  # noqa: BLE001 - any compiler or capture failure: run eagerly
            self.failed = True
            first = (str(err).strip().splitlines() or [""])[0]
            warnings.warn(f"compiling the inference loop failed ({type(err).__name__}: {first}); running it "
                          "eagerly", PCGraphWarning, stacklevel=3)
            return fixed_loop(*args)  # the states are untouched: the compiled loop relaxes copies
        states.update({v: x.clone() for v, x in zip(plan.relaxed, relaxed)})
        gp = None if gp is None else {p: g.clone() for p, g in zip(params, gp) if g is not None}
        return [t.clone() for t in trace], gp


# --- gradient routes: closed-form local rules, or autograd --------------------------------------


def constant_edges(graph: CompiledGraph, plan: Plan, states: States) -> dict:
    return sum_constants(graph, plan, {i: local.edge_forward(graph.edges[i], states) for i in plan.const_edges})


def sum_constants(graph: CompiledGraph, plan: Plan, kept: dict, fresh: bool = False) -> dict:
    """{edge: (output, tape)} -> {"mu": {node: summed constant prediction}, "tapes": the constant
    edges', "cache": the other edges' (outputs at the initial states), "fresh": forward init?}."""
    mu: States = {}
    for i in plan.const_edges:
        t = graph.edges[i].target
        mu[t] = kept[i][0] if t not in mu else mu[t] + kept[i][0]
    tapes = {i: kept[i] for i in plan.const_edges}
    cache = {i: out for i, out in kept.items() if i not in plan.const_edges}
    return {"mu": mu, "tapes": tapes, "cache": cache, "fresh": fresh}


def local_grads(graph, plan, states, const, terms, want_params, params, need_states=True, recompute=None):
    """(E, {node: dE/dx}, {param: batch mean of dE/dtheta} or None) from the closed-form rules.

    With ``const["fixed"]`` (the exact variant) relaxed states hold their deviation from the
    initial feedforward pass, which under fixed predictions is exactly their error: computing it
    as a difference of two large numbers would lose float32 digits to cancellation."""
    relaxed = set(plan.relaxed) if need_states else set()
    deviations = set(plan.relaxed) if const.get("fixed") else set()
    gx: States = {}
    gp: dict | None = {} if want_params else None
    total = zero_scalar(states)
    with torch.no_grad():
        for v in terms:
            x, spec = states[v], graph.nodes[v].spec
            if not graph.nodes[v].incoming:  # prior term
                diff = x if v in deviations else x - spec.prior.mean
                eps = spec.prior.precision * diff
                total = total + 0.5 * torch.dot(eps.reshape(-1), diff.reshape(-1))
                if v in relaxed:
                    _add(gx, v, eps)
                continue
            mu, tapes = const["mu"].get(v), []
            for i in graph.nodes[v].incoming:
                if i in plan.const_edges:
                    if want_params:
                        tapes.append((i, const["tapes"][i][1]))
                    continue
                if recompute is None or i in recompute:
                    y, tape = local.edge_forward(graph.edges[i], states)
                else:  # its sources have not moved since the initial pass
                    y, tape = const["cache"][i]
                mu = y if mu is None else mu + y
                tapes.append((i, tape))
            e, d_x, d_mu = local.node_terms(spec.energy, x, 0.0 if v in deviations else mu)
            total = total + e
            if want_params and not relaxed:  # pre-scale so parameter gradients are batch means
                d_mu = d_mu / x.shape[0]
            if v in relaxed:
                _add(gx, v, d_x)
            for i, tape in tapes:
                edge = graph.edges[i]
                need = any(s in relaxed for s in edge.sources)
                g_src = local.edge_backward(edge, tape, d_mu, gp, need_inputs=need)
                for s, g in zip(edge.sources, g_src or []):
                    if s in relaxed:
                        _add(gx, s, g)
        if gp is not None and relaxed:
            gp = {p: g / states[plan.relaxed[0]].shape[0] for p, g in gp.items()}
    return total, gx, gp


def _add(grads: States, v: str, g: Tensor) -> None:
    grads[v] = grads[v] + g if v in grads else g


def autograd_grads(graph, plan, states, const, terms, want_params, params, need_states=True, recompute=None):
    """The same as :func:`local_grads` by ``torch.autograd.grad`` (the reference route)."""
    xs = [states[v].requires_grad_() for v in plan.relaxed] if need_states else []
    wrt = xs + (params if want_params else [])
    with torch.enable_grad():
        total = zero_scalar(states)
        for v in terms:
            mu = None if want_params else const["mu"].get(v)  # parameters need every edge's graph
            for i in graph.nodes[v].incoming:
                if want_params or i not in plan.const_edges:
                    y = graph.edges[i](states)
                    mu = y if mu is None else mu + y
            total = total + graph.node_energy(states, v, mu).sum()
        grads = torch.autograd.grad(total, wrt, allow_unused=True) if wrt and total.requires_grad else []
        grads = list(grads) or [None] * len(wrt)  # no term depends on them: no gradient
    for x in xs:
        x.requires_grad_(False)
    gx = dict(zip(plan.relaxed, grads[: len(xs)]))
    b = next(iter(states.values())).shape[0]
    gp = {p: g / b for p, g in zip(params, grads[len(xs):]) if g is not None} if want_params else None
    return total.detach(), gx, gp


def param_step(opt: torch.optim.Optimizer, grads: dict) -> None:
    """Install the (batch-mean) gradients and step the weight optimizer. A parameter missing from
    ``grads`` had only zero-error terms below it: its gradient is exactly zero. Frozen parameters
    (``requires_grad=False``) get no gradient, so the optimizer leaves them alone."""
    for group in opt.param_groups:
        for p in group["params"]:
            g = grads.get(p)
            p.grad = None if not p.requires_grad else torch.zeros_like(p) if g is None else g
    opt.step()
