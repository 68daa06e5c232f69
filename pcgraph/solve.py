"""The solver: inference (state relaxation, eqs. 34-35) and learning (eqs. 38-39).

Given a batch ``{node: tensor}``, the given nodes are clamped and every other node is inferred:
``x <- x - lr * dE/dx`` (or momentum / Adam) for T steps or until the gradient is small; a
:class:`Clamp` entry clamps some neurons of a node and leaves the rest to inference (its gradient
is masked at the clamped ones). Learning
then takes one optimizer step on ``dE/dtheta`` at the relaxed states, averaged over the batch.
Standard and incremental PC are settings of one :class:`Solver`, never copies of it.

The clamp set is known before inference starts, so :class:`Plan` splits the work:
- an edge whose sources are all clamped predicts a constant: computed once per batch;
- a free node with no outgoing edge sits at its optimum (x = mean(mu), energy 0, no gradient to its
  parents), so it is set once after relaxation instead of being relaxed;
- only the energy terms that depend on a relaxed state are evaluated inside the loop.
Gradients come from the closed-form local rules of :mod:`pcgraph._impl.local` when every op has
one, else from autograd (``torch.autograd.grad`` on the states only); the two agree (tested).
In standard PC the last energy evaluation also yields the parameter gradients, so learning costs
one extra pass of weight-gradient products and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from pcgraph import energy as E
from pcgraph._impl import local
from pcgraph._impl.loop import (
    Captured,
    Plan,
    autograd_grads,
    constant_edges,
    finish,
    fixed_loop,
    graph_device,
    local_grads,
    param_step,
    sum_constants,
    zero_scalar,
)
from pcgraph.compile import CompiledGraph, States
from pcgraph.errors import DivergenceError, SpecError
from pcgraph.optim import StateAdam, StateSGD, state_optimizer
from pcgraph.spec import SGD, GraphSpec


class Clamp(NamedTuple):
    """A batch entry that clamps only some neurons of a node: ``values`` (B, *shape) gives the
    node's values, ``index`` picks the clamped neurons (a slice, a list or tensor of indices, or a
    boolean mask, over the node's flattened neurons). The other neurons are inferred, starting where
    the solver's ``init`` puts them::

        solver.relax(graph, {"x": Clamp(x, slice(0, 64))})  # neurons 0..63 are the pixels
    """

    values: Tensor
    index: slice | Sequence[int] | Tensor


@dataclass
class Relaxation:
    """What inference returns: relaxed ``states`` (every node, detached), the total ``energy``
    before each step and after the last one (shape (steps + 1,)), the number of ``steps`` run,
    and (forward init only) the feedforward prediction of each clamped leaf in ``predicted``."""

    states: States
    energy: Tensor
    steps: int
    predicted: States


class Solver:
    """Inference and learning settings, with defaults.

    Args:
        steps: maximum number of inference steps T.
        optimizer: state optimizer (:class:`~pcgraph.optim.StateSGD` or ``StateAdam``).
        init: ``forward`` (feedforward pass), ``zeros`` or ``prior`` (prior mean, else zeros).
        tol: stop when every sample's state-gradient norm is below ``tol`` (checked every
            ``check_every`` steps, the only host sync of the loop).
        variant: ``standard`` (relax, then one parameter step), ``incremental`` (iPC: a
            parameter step after every inference step) or ``exact`` (fixed prediction: during
            inference every prediction and its Jacobian stay at the feedforward pass; T is the
            graph's depth with unit Euler steps, so each step carries the errors one edge further,
            as in Z-IL, and the parameter gradient equals backprop's on any acyclic graph).
        local_rules: use the closed-form local rules when the graph's ops allow (default), or
            always autograd (``False``).
        compile: ``torch.compile`` the fixed-step loop (local rules, no ``tol``, standard PC):
            a one-time compile for the first batch size seen (other sizes run eagerly), then
            less Python and kernel-launch overhead per batch. On CUDA the whole T-step loop is
            captured once as a CUDA graph (``mode="reduce-overhead"``) and replayed; if compiling
            or capturing fails, a warning says so and the eager loop runs.
    """

    def __init__(self, steps: int = 20, optimizer: StateSGD | StateAdam | None = None, init: str = "forward",
                 tol: float | None = None, check_every: int = 4, variant: str = "standard",
                 local_rules: bool = True, compile: bool = False):
        if init not in ("forward", "zeros", "prior"):
            raise ValueError(f"init must be forward, zeros or prior, got {init!r}")
        if variant not in ("standard", "incremental", "exact"):
            raise ValueError(f"variant must be standard, incremental or exact, got {variant!r}")
        self.steps, self.init, self.tol, self.check_every = steps, init, tol, check_every
        self.variant, self.local_rules, self.compile = variant, local_rules, compile
        self._cache: dict = {}
        self.optimizer = optimizer or state_optimizer(SGD())

    @classmethod
    def from_spec(cls, spec: GraphSpec, **overrides) -> Solver:
        inf = spec.inference
        kwargs = dict(steps=inf.steps, optimizer=state_optimizer(inf.optimizer), init=inf.init, tol=inf.tol,
                      check_every=inf.check_every, variant=spec.learning.variant,
                      compile=inf.compile)
        return cls(**{**kwargs, **overrides})

    # --- the public calls --------------------------------------------------------------------

    def relax(self, graph: CompiledGraph, batch: States, init: States | None = None,
              weight_optimizer: torch.optim.Optimizer | None = None) -> Relaxation:
        """Infer every node not in ``batch`` (and the free neurons of :class:`Clamp` entries);
        ``init`` optionally gives starting states (warm start). With ``weight_optimizer`` the
        parameters learn too: after relaxation (standard, exact) or after every step (incremental)."""
        return self._run(graph, batch, init, weight_optimizer, False)[0]

    def gradients(self, graph: CompiledGraph, batch: States) -> tuple[Relaxation, dict[str, Tensor]]:
        """Relax, then return the batch-mean parameter gradient dE/dtheta at the relaxed states
        (what a learning step would use), by parameter name, without changing any parameter."""
        relaxation, grads = self._run(graph, batch, None, None, True)
        return relaxation, {name: grads.get(p, torch.zeros_like(p)) for name, p in graph.named_parameters()}

    def _run(self, graph, batch, init, weight_optimizer, want_grads):
        b, batch, free = _check_batch(graph, batch)
        plan = Plan(graph, set(batch) - set(free), free)
        local.refresh(graph)
        exact = self.variant == "exact"
        use_local = self.local_rules and local.supported(graph)
        if exact and not (graph.acyclic and use_local and not free):
            raise SpecError("the exact variant needs an acyclic graph whose ops all have local rules, with "
                            "whole nodes clamped", "learning.variant")
        incremental = weight_optimizer is not None and self.variant == "incremental"
        with torch.no_grad():
            states, const, predicted = self._initial_states(graph, batch, plan, None if exact else init)
            fixed = sum((graph.node_energy(states, v).sum() for v in plan.fixed_terms), zero_scalar(states))
        grads_fn = local_grads if use_local else autograd_grads
        params = [p for p in graph.parameters() if p.requires_grad]
        # incremental PC with nothing to infer has no steps to learn in: it learns once, at the end
        learn_now = (weight_optimizer is not None and (not incremental or not plan.relaxed)) or want_grads
        if exact:  # unit Euler steps, one per edge of the longest path (eqs. 48-49)
            const["fixed"] = True
            start = {v: states[v] for v in plan.relaxed}  # the feedforward values
            states.update({v: torch.zeros_like(x) for v, x in start.items()})  # deviations from them
            steps, optimizer = graph.depth, StateSGD(1.0)
            trace, gp = fixed_loop(grads_fn, optimizer, graph, plan, states, const, steps, learn_now, params)
            states.update({v: start[v] + states[v] for v in start})
        elif incremental or self.tol is not None:
            trace, gp, steps = self._stepwise(graph, plan, states, const, grads_fn, params, weight_optimizer, b,
                                              learn_now)
        else:  # fixed T and no host sync: one function, compiled when asked for
            loop = self._compiled(graph, plan, b) if (self.compile and use_local and _compilable(graph, plan)) \
                else fixed_loop
            trace, gp = loop(grads_fn, self.optimizer, graph, plan, states, const, self.steps, learn_now, params)
            steps = self.steps if plan.relaxed else 0
        energy = torch.stack(trace) + fixed
        if not bool(torch.isfinite(energy).all()):
            raise _divergence(graph, states, energy, "inference", self.optimizer)
        if learn_now and weight_optimizer is not None:
            param_step(weight_optimizer, gp)
        with torch.no_grad():
            for v in plan.leaves:
                states[v] = E.mean(graph.nodes[v].spec.energy, graph.prediction(states, v))
        return Relaxation(states, energy, steps if plan.relaxed else 0, predicted), gp

    def _stepwise(self, graph, plan, states, const, grads_fn, params, weight_optimizer, b, learn):
        """The loop with a tolerance stop and/or incremental parameter steps (eager only)."""
        incremental = weight_optimizer is not None and self.variant == "incremental"
        xs = [states[v] for v in plan.relaxed]
        buffers = self.optimizer.init(xs)
        trace, steps = [], 0
        for _ in range(self.steps if xs else 0):
            e, gx, gp = grads_fn(graph, plan, states, const, plan.terms, incremental, params)
            trace.append(e)
            if incremental:  # parameters change every step: recompute constant edges next time
                if not bool(torch.isfinite(e)):  # never step the parameters on a diverged energy
                    raise _divergence(graph, states, torch.stack(trace), "inference", self.optimizer)
                if plan.fixed_terms:  # terms with no relaxed state still teach their edges
                    _, _, more = grads_fn(graph, plan, states, const, plan.fixed_terms, True, params,
                                          need_states=False)
                    gp = {p: gp.get(p, 0) + more.get(p, 0) for p in {**gp, **more}}
                param_step(weight_optimizer, gp)
                with torch.no_grad():
                    const = constant_edges(graph, plan, states)
            with torch.no_grad():
                self.optimizer.step(xs, plan.step_grads(gx), buffers)
            steps += 1
            if self.tol is not None and steps % self.check_every == 0 and self._converged(gx, plan, b):
                break
        trace, gp = finish(grads_fn, graph, plan, states, const, learn, params, trace)
        return trace, gp, steps

    def _compiled(self, graph: CompiledGraph, plan: Plan, b: int):
        """torch.compile of the fixed-step loop (:func:`~pcgraph._impl.loop.pure_loop`) for the
        first batch size seen with this graph, clamp set and device; other sizes (an epoch's last,
        smaller batch) run eagerly instead of recompiling. On CUDA the mode is ``reduce-overhead``:
        the whole T-step loop is captured once as a CUDA graph and replayed for every batch."""
        device = graph_device(graph)
        key = (id(graph), tuple(plan.relaxed), device)
        if key not in self._cache:
            self._cache[key] = (b, Captured(device))
        size, fn = self._cache[key]
        return fn if size == b and not fn.failed else fixed_loop

    def step(self, graph: CompiledGraph, batch: States, optimizer: torch.optim.Optimizer) -> Relaxation:
        """One PC update on ``batch`` (relax and learn, per ``variant``); returns the relaxation."""
        return self.relax(graph, batch, weight_optimizer=optimizer)

    def learn(self, graph: CompiledGraph, relaxation: Relaxation, optimizer: torch.optim.Optimizer) -> Tensor:
        """One parameter step on dE/dtheta at given relaxed states (eqs. 38-39), batch-averaged,
        by autograd on :meth:`CompiledGraph.energy`. Returns the batch-mean energy."""
        states = {v: x.detach() for v, x in relaxation.states.items()}
        b = next(iter(states.values())).shape[0]
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = graph.energy(states) / b
        if not bool(torch.isfinite(loss)):
            raise _divergence(graph, states, loss.detach().reshape(1), "learning", self.optimizer)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # --- pieces ------------------------------------------------------------------------------

    def _initial_states(self, graph: CompiledGraph, batch: States, plan: Plan, init: States | None):
        predicted: States = {}
        if (self.init == "forward" or self.variant == "exact") and init is None:
            # clamped leaves are left out of the pass so it predicts them too (one edge each)
            out = {v for v in batch if graph.nodes[v].incoming and not graph.nodes[v].outgoing and v not in plan.free}
            out = out if len(out) < len(batch) else set()
            every = frozenset(range(len(graph.edges)))
            given = {v: x for v, x in batch.items() if v not in out}
            states, kept = graph.feedforward(given, every, plan.free)
            batch = {v: x for v, x in batch.items() if v not in plan.free}  # now set by the pass
            predicted = {v: states[v] for v in out}
            states.update(batch)
            for i in every - kept.keys():  # edges into clamped nodes
                kept[i] = local.edge_forward(graph.edges[i], states)
            const = sum_constants(graph, plan, kept, fresh=True)
        else:
            states = dict(batch)
            ref = next(iter(batch.values()))
            missing = [v for v in plan.relaxed if init is not None and v not in init]
            if missing:
                raise KeyError(f"init gives no starting state for {missing}; give every inferred node")
            for v in plan.relaxed:
                start = init[v] if init is not None else graph.root_value(v, ref, self.init == "prior")
                states[v] = start if v not in plan.free else torch.where(plan.free[v] > 0, start, batch[v])
            const = constant_edges(graph, plan, states)
        states = {v: x.detach().clone() if v in plan.relaxed else x for v, x in states.items()}
        return states, const, predicted

    def _converged(self, gx: States, plan: Plan, b: int) -> bool:
        sq = sum(g.reshape(b, -1).square().sum(1) for g in plan.step_grads(gx) if g is not None)
        return bool(torch.as_tensor(sq).max() <= self.tol**2)


def _check_batch(graph: CompiledGraph, batch: dict) -> tuple[int, States, States]:
    """(batch size, {node: values}, {partly clamped node: mask of its free neurons, (1, *shape)})."""
    if not batch:
        raise ValueError("the batch is empty: give at least one node's values")
    sizes, values, free = set(), {}, {}
    for v, x in batch.items():
        if isinstance(x, Clamp):
            x, free[v] = x.values, _free_mask(graph, v, x)
        values[v] = x
        if v not in graph.nodes:
            raise KeyError(f"batch names unknown node {v!r} (known: {', '.join(graph.nodes)})")
        if tuple(x.shape[1:]) != graph.nodes[v].shape:
            raise ValueError(f"batch[{v!r}] has per-sample shape {list(x.shape[1:])}, "
                             f"node {v!r} expects {list(graph.nodes[v].shape)}")
        sizes.add(x.shape[0])
    if len(sizes) > 1:
        raise ValueError(f"batch tensors disagree on the batch size: {sorted(sizes)}")
    graph.require_time(values)
    return sizes.pop(), values, free


def _free_mask(graph: CompiledGraph, node: str, clamp: Clamp) -> Tensor:
    shape = graph.nodes[node].shape if node in graph.nodes else tuple(clamp.values.shape[1:])
    clamped = torch.zeros(math.prod(shape), dtype=torch.bool, device=clamp.values.device)
    index = clamp.index
    if not isinstance(index, slice):
        index = torch.as_tensor(index, device=clamped.device)
        if index.dtype != torch.bool:
            if (index.is_floating_point() or index.is_complex()) and index.numel():
                raise ValueError(f"Clamp index for node {node!r} must be a slice, integer indices or a boolean "
                                 f"mask, got a {index.dtype} tensor")
            index = index.to(torch.long)
    try:
        clamped[index] = True
    except (IndexError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"Clamp index for node {node!r} does not fit its {math.prod(shape)} neurons: {first}") from None
    return (~clamped).reshape(1, *shape).to(clamp.values.dtype)


def _compilable(graph: CompiledGraph, plan: Plan) -> bool:
    """torch.compile takes dense ops and whole-node clamps (sparse tensors and masks stay eager)."""
    return not plan.free and not any(local._has_own(m) for e in graph.edges for m in e.pipeline)


def _divergence(graph: CompiledGraph, states: States, energy: Tensor, phase: str, opt) -> DivergenceError:
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
