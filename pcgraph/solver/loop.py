"""The inner loop of inference and the two gradient routes it can take.

A :class:`Run` binds what one relaxation reads (graph, plan, constants, parameters, route) once
per call. :func:`fixed_loop` runs T steps with no host sync; :class:`Captured` compiles it (on
CUDA: captured once as a CUDA graph and replayed), falling back to the eager loop if that fails.
The gradient routes return the same thing, (E, {node: dE/dx}, {param: batch-mean dE/dtheta}):
:func:`local_grads` from the closed-form rules (ops' :meth:`~pcgraph.ops.OpModule.local_vjp`,
energies' :meth:`~pcgraph.energies.Energy.local`), :func:`autograd_grads` from ``torch.autograd.grad``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, States, edge_forward
from pcgraph.errors import PCGraphWarning
from pcgraph.solver import local
from pcgraph.solver.plan import Constants, Plan
from pcgraph.solver.weight_step import weight_step


@dataclass(frozen=True)
class Run:
    """The inputs of one relaxation's loop. ``fixed_predictions``: predictions stay at the
    feedforward pass and the relaxed states hold their deviation from it (the exact variant).
    ``precision``: per inference step, {node: pi_v(t)} multipliers of the energy terms
    (:mod:`pcgraph.precision`); ``weights`` is the current step's (None: unit precision).
    ``learn_weights``: the weights of the learning pass (None: unit precision).
    ``forward_states``: the feedforward pass, where the forward update takes the weight gradient's
    inputs (:mod:`pcgraph.updates`). ``observe``: called with the states before every step and
    after the last one (the per-node energy trace). ``errors``: ePC's relaxed errors, which the
    closed-form rules read as x_v - mu_v exactly (a difference of two large numbers would lose
    the float32 digits of a small error)."""

    graph: CompiledGraph
    plan: Plan
    const: Constants
    params: list[Tensor]
    route: Callable
    fixed_predictions: bool = False
    precision: tuple = ()
    weights: dict | None = None
    learn_weights: dict | None = None
    forward_states: States | None = None
    observe: Callable | None = None
    errors: States | None = None

    def grads(self, states: States, terms: list[str], want_params: bool, need_states: bool = True,
              recompute: frozenset[int] | None = None):
        """(E over ``terms``, {relaxed node: dE/dx}, {param: batch-mean dE/dtheta} or None)."""
        return self.route(self, states, terms, want_params, need_states, recompute)

    def at(self, step: int) -> Run:
        """This run at inference step ``step``: its precision weights set."""
        return replace(self, weights=self.precision[step]) if self.precision else self

    def weighted(self, v: str, e: Tensor) -> Tensor:
        """pi_v(t) e for the current step's weights."""
        w = self.weights.get(v) if self.weights else None
        return e if w is None else e * w


def fixed_loop(run: Run, optimizer, states: States, steps: int, learn: bool):
    """T inference steps with no host sync, then the energy (and, when ``learn``, the parameter
    gradients) at the relaxed states. Returns (energy trace, parameter gradients or None)."""
    plan = run.plan
    xs = [states[v] for v in plan.relaxed]
    buffers = optimizer.init(xs)
    trace = []
    schedule = plan.schedule(run.graph, steps if xs else 0, frozenset(run.const.cache), run.const.fresh,
                             run.fixed_predictions)
    for t, (terms, recompute) in enumerate(schedule[:-1]):
        if run.observe is not None:
            run.observe(states)
        e, gx, _ = run.at(t).grads(states, terms, False, recompute=recompute)
        trace.append(e)
        with torch.no_grad():  # a node with no gradient yet has not moved: no update at all
            optimizer.step(xs, plan.step_grads(gx), buffers)
    return finish(run, states, learn, trace, *schedule[-1])


def pure_loop(run: Run, optimizer, states: States, steps: int, learn: bool):
    """:func:`fixed_loop` on copies of the relaxed states, returned with the result: (energy trace,
    parameter gradients as a list in ``run.params`` order or None, relaxed states in ``plan.relaxed``
    order). No input is changed in place, which CUDA-graph capture needs (torch.compile skips the
    capture of a function that mutates its inputs)."""
    relaxed = run.plan.relaxed
    if run.const.fresh and not run.fixed_predictions and run.errors is None:
        run, states = refed(run, states)  # fresh copies of the relaxed states too
    else:
        states = {v: x.clone() if v in relaxed else x for v, x in states.items()}
    trace, gp = fixed_loop(run, optimizer, states, steps, learn)
    return trace, None if gp is None else [gp.get(p) for p in run.params], [states[v] for v in relaxed]


def refed(run: Run, states: States) -> tuple[Run, States]:
    """The forward init once more, x_v = f_v(parents) for every relaxed node and every edge's output,
    by the kernels of the compiled loop that follows. The eager init's kernels round differently
    (fused or not), so an error that is exactly zero eagerly, x_v - mu_v at a node that has not
    moved, would come out of the compiled loop as rounding noise, which Adam turns into full-size
    steps; predicted here, the zeros stay exact. Clamped nodes keep their values."""
    graph, plan = run.graph, run.plan
    relaxed = set(plan.relaxed)
    every = frozenset(range(len(graph.edges)))
    states, kept = graph.feedforward({v: x for v, x in states.items() if v not in relaxed}, every)
    for i in every - kept.keys():  # edges into clamped nodes, which the pass does not predict
        kept[i] = edge_forward(graph.edges[i], states)
    # the loop steps the states in place; the tapes must keep the values they were taken at
    states = {v: x.clone() if v in relaxed else x for v, x in states.items()}
    return replace(run, const=Constants.collect(graph, plan, kept, fresh=True)), states


def zero_scalar(states: States) -> Tensor:
    """A scalar 0 on the states' device and dtype (a CPU scalar would keep a CUDA loop from being
    captured as a CUDA graph)."""
    ref = next(iter(states.values()))
    return torch.zeros((), dtype=ref.dtype, device=ref.device)


def fixed_energy(graph: CompiledGraph, plan: Plan, states: States) -> Tensor:
    """The summed energy of the terms no relaxed state reaches (``plan.fixed_terms``), a scalar."""
    return sum((graph.node_energy(states, v).sum() for v in plan.fixed_terms), zero_scalar(states))


def total_energy(trace: list[Tensor], fixed: Tensor) -> tuple[Tensor, Tensor]:
    """(E(t) for every step and after the last, the fixed terms' energy added: shape (T + 1,),
    whether all of them are finite, a 0-d bool tensor)."""
    energy = torch.stack(trace) + fixed
    return energy, torch.isfinite(energy).all()


def finish(run: Run, states: States, learn: bool, trace: list, terms=None, recompute=None):
    """Append the energy at the relaxed states to ``trace``; when ``learn``, the same pass gives
    the parameter gradients (over every energy term, the fixed ones included)."""
    plan = run.plan
    run = replace(run, weights=run.learn_weights)
    if run.observe is not None:
        run.observe(states)
    if learn and run.forward_states is not None:  # every error counts: x* against the feedforward predictions
        terms, recompute = None, frozenset()
    terms = plan.terms if terms is None else terms
    terms = terms + plan.fixed_terms if learn else terms
    e, _, gp = run.grads(states, terms, learn, need_states=False, recompute=recompute)
    if learn:  # the trace counts fixed terms separately
        e = e - fixed_energy(run.graph, plan, states)
    return [*trace, e.detach()], gp


def graph_device(graph: CompiledGraph) -> torch.device:
    """The device of the graph's parameters (cpu for a graph without any)."""
    return next((p.device for p in graph.parameters()), torch.device("cpu"))


class Captured:
    """A compiled :func:`pure_loop` called like :func:`fixed_loop`. Outputs are copied out at once
    (a replayed CUDA graph overwrites its outputs on the next replay). If compiling or capturing
    raises, it warns once and runs the eager loop from then on."""

    def __init__(self, device: torch.device):
        from pcgraph.solver import passes

        self.cuda = device.type == "cuda"
        self.fn = (torch.compile(pure_loop, dynamic=False, mode="reduce-overhead") if self.cuda else
                   torch.compile(pure_loop, dynamic=False, options=passes.cpu_options()))
        self.failed = False

    def __call__(self, run: Run, optimizer, states: States, steps: int, learn: bool):
        try:
            if self.cuda:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():  # the loop builds no autograd graph: compiled as inference, nothing saved
                trace, gp, relaxed = self.fn(run, optimizer, states, steps, learn)
        except Exception as err:  # noqa: BLE001 - any compiler or capture failure: run eagerly
            self.failed = True
            first = (str(err).strip().splitlines() or [""])[0]
            warnings.warn(f"compiling the inference loop failed ({type(err).__name__}: {first}); running it "
                          "eagerly", PCGraphWarning, stacklevel=3)
            return fixed_loop(run, optimizer, states, steps, learn)  # untouched: the compiled loop relaxes copies
        states.update({v: x.clone() for v, x in zip(run.plan.relaxed, relaxed)})
        gp = None if gp is None else {p: g.clone() for p, g in zip(run.params, gp) if g is not None}
        return [t.clone() for t in trace], gp


# --- gradient routes: closed-form local rules, or autograd --------------------------------------


def local_grads(run: Run, states: States, terms: list[str], want_params: bool, need_states: bool = True,
                recompute: frozenset[int] | None = None):
    """(E, {node: dE/dx}, {param: batch mean of dE/dtheta} or None) from the closed-form rules.

    With ``run.fixed_predictions`` relaxed states hold their deviation from the initial
    feedforward pass, which under fixed predictions is exactly their error: computing it as a
    difference of two large numbers would lose float32 digits to cancellation."""
    graph, plan, const = run.graph, run.plan, run.const
    relaxed = set(plan.relaxed) if need_states else set()
    deviations = set(plan.relaxed) if run.fixed_predictions else set()
    batch = next(iter(states.values())).shape[0]
    gx: States = {}
    gp: dict | None = {} if want_params else None
    total = zero_scalar(states)
    # with no state gradients wanted, dE/dmu is pre-scaled so parameter gradients come out as batch means
    pre = batch if want_params and not relaxed else 1
    with torch.no_grad():
        for v in terms:
            x, tapes = states[v], []
            if not graph.nodes[v].incoming:  # prior term
                term = graph.priors[v]
                mu = 0.0 if v in deviations else term.center
            else:
                term, mu = graph.terms[v], const.mu.get(v)
                for i in graph.nodes[v].incoming:
                    if i in plan.const_edges:
                        if want_params:
                            tapes.append((i, const.tapes[i][1]))
                        continue
                    if recompute is None or i in recompute:
                        y, tape = edge_forward(graph.edges[i], states)
                    else:  # its sources have not moved since the initial pass
                        y, tape = const.cache[i]
                    mu = y if mu is None else mu + y
                    tapes.append((i, tape))
                mu = 0.0 if v in deviations else mu
                if run.errors is not None and v in run.errors:  # x_v - mu_v is e_v by construction
                    x, mu = run.errors[v], 0.0
            w = run.weights.get(v) if run.weights else None
            if w == 0:
                continue
            e, d_x, d_mu = term.local(x, mu)
            if w is not None:
                e, d_x, d_mu = e * w, d_x * w, d_mu * w
            total = total + e
            if want_params:
                _energy_params(term, x, mu, gp, pre)
            if v in relaxed:
                _add(gx, v, d_x)
            if tapes and pre != 1:
                d_mu = d_mu / pre
            for i, tape in tapes:
                edge = graph.edges[i]
                need = any(s in relaxed for s in edge.sources)
                g_src = local.edge_backward(edge, tape, d_mu, gp, need_inputs=need)
                for s, g in zip(edge.sources, g_src or []):
                    if s in relaxed:
                        _add(gx, s, g)
        if gp is not None and relaxed:
            gp = {p: g / batch for p, g in gp.items()}
    return total, gx, gp


def _energy_params(term, x: Tensor, mu, gp: dict, divide: int) -> None:
    """The gradient of a term's own parameters (a learnt precision), by autograd on that term,
    divided by ``divide`` (the batch size when the caller wants batch means straight away)."""
    params = [p for p in term.parameters() if p.requires_grad]
    if not params:
        return
    with torch.enable_grad():
        grads = torch.autograd.grad(term.value(x, mu).sum(), params)
    for p, g in zip(params, grads):
        _add(gp, p, g / divide if divide != 1 else g)


def _add(grads: dict, key, g: Tensor) -> None:
    grads[key] = grads[key] + g if key in grads else g


def autograd_grads(run: Run, states: States, terms: list[str], want_params: bool, need_states: bool = True,
                   recompute: frozenset[int] | None = None):
    """The same as :func:`local_grads` by ``torch.autograd.grad`` (the reference route)."""
    graph, plan = run.graph, run.plan
    xs = [states[v].requires_grad_() for v in plan.relaxed] if need_states else []
    wrt = xs + (run.params if want_params else [])
    # the forward update reads the edges' inputs at the feedforward pass
    sources = run.forward_states if want_params and run.forward_states is not None else states
    with torch.enable_grad():
        total = zero_scalar(states)
        for v in terms:
            mu = None if want_params else run.const.mu.get(v)  # parameters need every edge's graph
            for i in graph.nodes[v].incoming:
                if want_params or i not in plan.const_edges:
                    y = graph.edges[i](sources)
                    mu = y if mu is None else mu + y
            total = total + run.weighted(v, graph.node_energy(states, v, mu)).sum()
        grads = torch.autograd.grad(total, wrt, allow_unused=True) if wrt and total.requires_grad else []
        grads = list(grads) or [None] * len(wrt)  # no term depends on them: no gradient
    for x in xs:
        x.requires_grad_(False)
    gx = dict(zip(plan.relaxed, grads[: len(xs)]))
    b = next(iter(states.values())).shape[0]
    gp = {p: g / b for p, g in zip(run.params, grads[len(xs):]) if g is not None} if want_params else None
    return total.detach(), gx, gp


def param_step(opt: torch.optim.Optimizer, grads: dict) -> None:
    """Install the (batch-mean) gradients and step the weight optimizer. A parameter missing from
    ``grads`` had only zero-error terms below it: its gradient is exactly zero. Frozen parameters
    (``requires_grad=False``) get no gradient, so the optimizer leaves them alone."""
    for group in opt.param_groups:
        for p in group["params"]:
            g = grads.get(p)
            p.grad = None if not p.requires_grad else torch.zeros_like(p) if g is None else g
    weight_step(opt)
