"""The solver: inference (state relaxation, eqs. 34-35) and learning (eqs. 38-39).

Given a batch ``{node: tensor}``, the given nodes are clamped and every other node is inferred:
``x <- x - lr * dE/dx`` (or momentum / Adam) for T steps or until the gradient is small; a
:class:`~pcgraph.solver.batch.Clamp` entry clamps some neurons of a node and leaves the rest to
inference (its gradient is masked at the clamped ones). Learning then takes one optimizer step on
``dE/dtheta`` at the relaxed states, averaged over the batch. PC variants
(:mod:`pcgraph.variants`: standard, incremental, exact, ...) are settings of this one solver:
it reads what the variant states, never its name.

The clamp set is known before inference starts, so :class:`~pcgraph.solver.plan.Plan` splits the work:
- an edge whose sources are all clamped predicts a constant: computed once per batch;
- a free node with no outgoing edge sits at its optimum (its energy's ``optimum(mu)``, energy 0,
  no gradient to its parents), so it is set once after relaxation instead of being relaxed;
- only the energy terms that depend on a relaxed state are evaluated inside the loop.
Gradients come from the closed-form local rules when every op has one, else from autograd
(``torch.autograd.grad`` on the states only, with a warning naming the ops); the two agree (tested).
In standard PC the last energy evaluation also yields the parameter gradients, so learning costs
one extra pass of weight-gradient products and nothing else.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, States
from pcgraph.errors import SpecError
from pcgraph.precision import precision_table
from pcgraph.solver import local
from pcgraph.solver.aot import AheadOfTime
from pcgraph.solver.batch import check_batch
from pcgraph.solver.checks import compilable, divergence
from pcgraph.solver.errors import relax_errors
from pcgraph.solver.gradients import state_gradients
from pcgraph.solver.loop import (
    Captured,
    Run,
    autograd_grads,
    finish,
    fixed_energy,
    fixed_loop,
    graph_device,
    local_grads,
    param_step,
    total_energy,
)
from pcgraph.solver.optim import StateAdam, StateSGD, state_optimizer
from pcgraph.solver.plan import Constants, Plan
from pcgraph.solver.start import encoder_gradients, initial_states, output_leaves
from pcgraph.solver.weight_step import weight_step
from pcgraph.spec import SGD, GraphSpec
from pcgraph.updates import WeightUpdate, parse_update
from pcgraph.variants import Variant, parse_variant


@dataclass
class Relaxation:
    """What inference returns: relaxed ``states`` (every node, detached), the total ``energy``
    before each step and after the last one (shape (steps + 1,)), the number of ``steps`` run,
    (forward init only) the feedforward prediction of each clamped leaf in ``predicted``, and,
    when the solver traces nodes, ``node_energy``: {node: (steps + 1,) energy summed over the batch}
    (at unit precision: where errors are, whatever a precision schedule weighs them by). With a
    precision schedule ``energy`` is the scheduled energy inference descends, except its last
    entry: the energy at unit precision, which learning differentiates."""

    states: States
    energy: Tensor
    steps: int
    predicted: States
    node_energy: States | None = None


class Solver:
    """Inference and learning settings, with defaults.

    Args:
        steps: maximum number of inference steps T (0: no step, the states stay where they start).
        optimizer: state optimizer (:class:`~pcgraph.solver.optim.StateSGD` or ``StateAdam``).
        init: ``forward`` (feedforward pass), ``zeros``, ``prior`` (prior mean, else zeros) or
            ``amortised`` (the graph's encoders propose the latents; see :mod:`pcgraph.solver.start`).
        tol: stop when every sample's state-gradient norm is below ``tol`` (checked every
            ``check_every`` steps, the only host sync of the loop).
        variant: a :class:`~pcgraph.variants.Variant` or its registered name: ``standard`` (relax,
            then one parameter step), ``incremental`` (iPC: a parameter step after every inference
            step), ``exact`` (fixed prediction: the parameter gradient equals backprop's on any
            acyclic graph) or ``epc`` (inference relaxes the errors of x = f(parents) + e, see
            :mod:`pcgraph.solver.errors`); see :mod:`pcgraph.variants`.
        update: where the weight gradient is taken, a :class:`~pcgraph.updates.WeightUpdate` or its
            name: ``relaxed`` (default), ``forward`` or ``nudged``; see :mod:`pcgraph.updates`.
        precisions: precision schedules over the inference steps (``PrecisionSpec`` entries of
            ``inference.precisions``); see :mod:`pcgraph.precision`.
        trace_nodes: record every node's energy before each step and after the last one
            (:attr:`Relaxation.node_energy`; the loop then runs eagerly).
        local_rules: use the closed-form local rules when the graph's ops allow (default), or
            always autograd (``False``).
        compile: compile the fixed-step loop (local rules, no ``tol``, a variant that neither
            learns every step nor fixes the predictions) for the first batch size seen (other
            sizes run eagerly): on CPU ahead of time, cached on disk across runs
            (:mod:`pcgraph.solver.aot`; runs from another init go to ``torch.compile``); on CUDA
            ``torch.compile`` with the T-step loop captured once as a CUDA graph and replayed. If
            compiling fails, a warning says so and the eager loop runs. A spec's
            ``inference.compile: auto`` is ``False`` here; ``pcgraph train`` resolves it from the
            run's length (:func:`pcgraph.solver.aot.pays`).
    """

    def __init__(self, steps: int = 20, optimizer: StateSGD | StateAdam | None = None, init: str = "forward",
                 tol: float | None = None, check_every: int = 4, variant: str | dict | Variant = "standard",
                 update: str | dict | WeightUpdate = "relaxed", precisions: list | tuple = (),
                 trace_nodes: bool = False, local_rules: bool = True, compile: bool = False):
        if init not in ("forward", "zeros", "prior", "amortised"):
            raise ValueError(f"init must be forward, zeros, prior or amortised, got {init!r}")
        for name, value, least in (("steps", steps, 0), ("check_every", check_every, 1)):  # 0 steps: the start
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < float("inf")):
            raise ValueError(f"tol must be a finite number > 0 or None, got {tol!r}")
        self.steps, self.init, self.tol, self.check_every = steps, init, tol, check_every
        self.variant, self.update = parse_variant(variant), parse_update(update)
        self.precisions, self.trace_nodes = list(precisions), trace_nodes
        v = self.variant
        if v.relaxes not in ("states", "errors"):
            raise SpecError(f"variant {v.kind!r} relaxes {v.relaxes!r}; this solver relaxes the states or the "
                            "errors", "learning.variant")
        if v.relaxes == "errors" and tol is not None:
            raise SpecError("relaxing the errors runs a fixed number of steps; remove inference.tol", "inference.tol")
        starts_forward = init == "forward" or v.fixed_predictions or v.relaxes == "errors"
        if (self.update.at_forward or self.update.nudges) and not starts_forward:
            raise SpecError(f"the {self.update.kind} update reads the feedforward pass: use inference.init: forward",
                            "learning.update")
        if self.update.at_forward and v.learn_every_step:
            raise SpecError("the forward update takes the weight gradient once, after relaxation; variant "
                            f"{v.kind!r} learns at every step", "learning.update")
        if init == "amortised" and (v.fixed_predictions or v.relaxes == "errors"):
            raise SpecError(f"variant {v.kind!r} starts from the feedforward pass, so it cannot use amortised init",
                            "inference.init")
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.local_rules, self.compile = local_rules, compile
        self._cache: dict = {}
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {clamp set: _plan()}
        self.optimizer = optimizer or state_optimizer(SGD())

    @classmethod
    def from_spec(cls, spec: GraphSpec, **overrides) -> Solver:
        inf = spec.inference
        kwargs = dict(steps=inf.steps, optimizer=state_optimizer(inf.optimizer), init=inf.init, tol=inf.tol,
                      check_every=inf.check_every, variant=spec.learning.variant, update=spec.learning.update,
                      precisions=inf.precisions, trace_nodes=inf.trace_nodes, compile=inf.compile is True)
        return cls(**{**kwargs, **overrides})

    # --- the public calls --------------------------------------------------------------------

    def relax(self, graph: CompiledGraph, batch: States, init: States | None = None,
              weight_optimizer: torch.optim.Optimizer | None = None, epoch: int = 0) -> Relaxation:
        """Infer every node not in ``batch`` (and the free neurons of :class:`Clamp` entries);
        ``init`` optionally gives starting states (warm start). With ``weight_optimizer`` the
        parameters learn too: after relaxation, or after every step (``variant.learn_every_step``).
        ``epoch`` is read by updates that change over epochs (centered nudging's sign)."""
        return self._run(graph, batch, init, weight_optimizer, False, epoch)[0]

    def gradients(self, graph: CompiledGraph, batch: States, epoch: int = 0) -> tuple[Relaxation, dict[str, Tensor]]:
        """Relax, then return the parameter gradient a learning step would use, changing no parameter:
        the batch mean (1/B) dE/dtheta at the relaxed states (or where ``update`` says), where
        :meth:`CompiledGraph.energy` E sums over the batch. Keys are ``graph.named_parameters()``'s
        names (``edges.2.pipeline.0.weight``, as checkpoints write them);
        :func:`pcgraph.parameter_names` maps them to the readable ones :func:`pcgraph.verify_bp` rows
        show (``h2->h3 linear[0].weight``)."""
        relaxation, grads = self._run(graph, batch, None, None, True, epoch)
        return relaxation, {name: grads.get(p, torch.zeros_like(p)) for name, p in graph.named_parameters()}

    def state_gradients(self, graph: CompiledGraph, states: States, batch: States | None = None,
                        step: int | None = None) -> States:
        """{node: dE/dx_v} at ``states`` for the nodes ``batch`` does not clamp, relaxing nothing: per
        sample (no batch mean), by this solver's route; ``step``: the precision schedules' weights of
        that inference step. See :func:`pcgraph.solver.gradients.state_gradients`."""
        return state_gradients(graph, states, batch, local_rules=self.local_rules, precisions=self.precisions,
                               step=step)

    def step(self, graph: CompiledGraph, batch: States, optimizer: torch.optim.Optimizer,
             epoch: int = 0) -> Relaxation:
        """One PC update on ``batch`` (relax and learn, per ``variant``); returns the relaxation."""
        return self.relax(graph, batch, weight_optimizer=optimizer, epoch=epoch)

    def learn(self, graph: CompiledGraph, relaxation: Relaxation, optimizer: torch.optim.Optimizer) -> Tensor:
        """One parameter step on (1/B) dE/dtheta at given relaxed states (eqs. 38-39): the batch
        mean, by autograd on :meth:`CompiledGraph.energy` (which sums over the batch) divided by B.
        Returns the batch-mean energy."""
        states = {v: x.detach() for v, x in relaxation.states.items()}
        b = next(iter(states.values())).shape[0]
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = graph.energy(states) / b
        if not bool(torch.isfinite(loss)):
            raise divergence(graph, states, loss.detach().reshape(1), "learning", self.optimizer)
        loss.backward()
        weight_step(optimizer)
        return loss.detach()

    # --- the run -----------------------------------------------------------------------------

    def _run(self, graph, batch, init, weight_optimizer, want_grads, epoch=0):
        b, batch, free = check_batch(graph, batch)
        plan, dense = self._plan(graph, batch, free)
        local.refresh(graph)
        variant, update = self.variant, self.update
        use_local = self.local_rules and local.rules_apply(graph)
        variant.check(graph, plan.relaxed, use_local, bool(free))
        steps, unit_step = variant.inference(graph, self.steps)
        optimizer = StateSGD(unit_step) if unit_step is not None else self.optimizer
        fixed = variant.fixed_predictions
        from_errors = variant.relaxes == "errors"
        every_step = weight_optimizer is not None and variant.learn_every_step
        table, learn_weights = precision_table(self.precisions, graph, plan, steps), None
        # learning every step with nothing to infer has no steps to learn in: it learns once, at the end
        learn_now = (weight_optimizer is not None and (not every_step or not plan.relaxed)) or want_grads
        plain = not (from_errors or fixed or every_step or self.tol is not None)  # fixed T, no host sync
        compiled = plain and self.compile and use_local and not self.trace_nodes and dense
        forward = init is None and self.ahead_of_time(epoch)
        loop = self._compiled(graph, plan, b, ahead=forward) if compiled else None
        done = loop.attempt(Run(graph, plan, Constants({}, {}, {}, fresh=True), [], local_grads, precision=table),
                            optimizer, batch, output_leaves(graph, batch, plan), steps, learn_now) \
            if isinstance(loop, AheadOfTime) else None
        if done is not None:  # the forward init and the loop in one compiled program
            relaxed, energy, finite, gp, predicted = done
            states = {**batch, **relaxed}
        else:
            with torch.no_grad():
                states, const, predicted, batch = initial_states(
                    graph, batch, plan, self.init, None if fixed or from_errors else init, fixed or from_errors,
                    update, epoch)
                energy_fixed = fixed_energy(graph, plan, states)
            params = [p for p in graph.parameters() if p.requires_grad]
            node_trace: list[States] = []
            nudge = update.output_weight(epoch)
            if nudge != 1:  # the outputs' energies weighted by s beta, in inference and learning alike
                learn_weights = dict.fromkeys(predicted, nudge)
                table = tuple({**w, **{v: w.get(v, 1.0) * nudge for v in predicted}} for w in table or [{}] * steps)
            run = Run(graph, plan, const, params, local_grads if use_local else autograd_grads, fixed, table,
                      learn_weights=learn_weights, forward_states=dict(states) if update.at_forward else None,
                      observe=self._observer(graph, node_trace, {v: states[v] for v in plan.relaxed} if fixed else None))
            if update.at_forward:
                run.forward_states.update({v: states[v].clone() for v in plan.relaxed})
            if from_errors:  # ePC: relax the errors of x = f(parents) + e, then learn at x(e)
                trace, relaxed, errors = relax_errors(run, optimizer, batch, steps)
                states.update({v: relaxed[v] for v in plan.relaxed})
                exact = {v: e for v, e in errors.items() if v in graph.terms} if not update.at_forward else None
                trace, gp = finish(replace(run, errors=exact), states, learn_now, trace)
            elif fixed:  # the relaxed states hold their deviations from the feedforward values
                start = {v: states[v] for v in plan.relaxed}
                states.update({v: torch.zeros_like(x) for v, x in start.items()})
                trace, gp = fixed_loop(run, optimizer, states, steps, learn_now)
                states.update({v: start[v] + states[v] for v in start})
            elif not plain:
                learning = lambda gp: self._learning_gradient(graph, batch, plan, states, gp, epoch)  # noqa: E731
                trace, gp, steps = self._stepwise(run, states, optimizer, steps, weight_optimizer if every_step else None,
                                                  b, learn_now, learning)
            else:  # fixed T and no host sync: one function, compiled when asked for
                loop = loop if isinstance(loop, Captured) else fixed_loop
                trace, gp = loop(run, optimizer, states, steps, learn_now)
            energy, finite = total_energy(trace, energy_fixed)
        if not bool(finite):  # nothing has changed the parameters yet
            raise divergence(graph, states, energy, "inference", optimizer)
        if learn_now:
            gp = self._learning_gradient(graph, batch, plan, states, gp, epoch)
        if learn_now and weight_optimizer is not None:
            param_step(weight_optimizer, gp)
        with torch.no_grad():
            for v in plan.leaves:
                states[v] = graph.terms[v].optimum(graph.prediction(states, v))
        nodes = {v: torch.stack([t[v] for t in node_trace]) for v in node_trace[0]} if done is None and node_trace \
            else None
        return Relaxation(states, energy, steps if plan.relaxed else 0, predicted, nodes), gp

    def _plan(self, graph: CompiledGraph, batch: States, free: States) -> tuple[Plan, bool]:
        """(the plan, whether its loop can be compiled) for this clamp set; both depend on the graph
        and a whole-node clamp set alone, so they are worked out once for each."""
        if free:
            plan = Plan(graph, set(batch) - set(free), free)
            return plan, compilable(graph, plan)
        known = self._plans.setdefault(graph, {})
        clamped = frozenset(batch)
        if clamped not in known:
            plan = Plan(graph, set(clamped))
            known[clamped] = plan, compilable(graph, plan)
        return known[clamped]

    def _learning_gradient(self, graph, batch, plan, states, gp: dict, epoch: int) -> dict:
        """The update's factor on dE/dtheta (nudging's 1 / beta), plus the encoders' gradients."""
        factor = self.update.factor(epoch)
        if factor != 1:
            gp = {p: g * factor for p, g in gp.items()}
        if len(graph.encoders):
            gp = {**gp, **encoder_gradients(graph, batch, plan, states)}
        return gp

    def _observer(self, graph: CompiledGraph, trace: list, start: States | None):
        """With ``trace_nodes``: a callback appending {node: summed energy} at given states (``start``:
        they hold deviations from it, as under fixed predictions)."""
        if not self.trace_nodes:
            return None

        def observe(states: States) -> None:
            with torch.no_grad():
                at = states if start is None else {**states, **{v: start[v] + states[v] for v in start}}
                trace.append({v: e.sum() for v, e in graph.node_energies(at).items()})
        return observe

    def _stepwise(self, run: Run, states, optimizer, steps, weight_optimizer, b, learn, learning):
        """The loop with a tolerance stop and/or parameter steps after every step (eager only);
        ``learning`` turns dE/dtheta into the update's gradient (nudging's factor, encoders)."""
        graph, plan = run.graph, run.plan
        xs = [states[v] for v in plan.relaxed]
        buffers = optimizer.init(xs)
        trace, done = [], 0
        for t in range(steps if xs else 0):
            if run.observe is not None:
                run.observe(states)
            e, gx, gp = run.at(t).grads(states, plan.terms, weight_optimizer is not None)
            trace.append(e)
            if weight_optimizer is not None:  # parameters change every step: recompute constant edges next time
                if not bool(torch.isfinite(e)):  # never step the parameters on a diverged energy
                    raise divergence(graph, states, torch.stack(trace), "inference", optimizer)
                if plan.fixed_terms:  # terms with no relaxed state still teach their edges
                    _, _, more = run.grads(states, plan.fixed_terms, True, need_states=False)
                    gp = {p: gp.get(p, 0) + more.get(p, 0) for p in {**gp, **more}}
                param_step(weight_optimizer, learning(gp))
                with torch.no_grad():
                    run = replace(run, const=Constants.at(graph, plan, states))
            with torch.no_grad():
                optimizer.step(xs, plan.step_grads(gx), buffers)
            done += 1
            if self.tol is not None and done % self.check_every == 0 and self._converged(gx, plan, b):
                break
        trace, gp = finish(run, states, learn, trace)
        return trace, gp, done

    def ahead_of_time(self, epoch: int = 0) -> bool:
        """Whether this solver's runs are what a CPU compiles ahead of time (:mod:`~pcgraph.solver.aot`):
        T fixed steps on the states from the forward init, then one weight gradient where they end."""
        v, u = self.variant, self.update
        return self.init == "forward" and self.tol is None and not self.trace_nodes and v.relaxes == "states" \
            and not (v.fixed_predictions or v.learn_every_step or u.nudges or u.at_forward) and u.output_weight(epoch) == 1

    def _compiled(self, graph: CompiledGraph, plan: Plan, b: int, ahead: bool):
        """The compiled loop for the first batch size seen with this graph, clamp set and device, or
        None (other sizes, an epoch's last smaller batch, run eagerly instead of recompiling; so do
        all after a failure). ``ahead``: a run from the forward init, which CPUs compile ahead of time."""
        device = graph_device(graph)
        kind = AheadOfTime if ahead and device.type == "cpu" else Captured
        key = (id(graph), tuple(plan.relaxed), device, kind)
        if key not in self._cache:
            self._cache[key] = (b, AheadOfTime() if kind is AheadOfTime else Captured(device))
        size, fn = self._cache[key]
        return fn if size == b and not fn.failed else None

    def _converged(self, gx: States, plan: Plan, b: int) -> bool:
        sq = sum(g.reshape(b, -1).square().sum(1) for g in plan.step_grads(gx) if g is not None)
        return bool(torch.as_tensor(sq).max() <= self.tol**2)
