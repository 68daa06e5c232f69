"""The solver: inference (state relaxation, eqs. 34-35) and learning (eqs. 38-39).

Given a batch ``{node: tensor}``, the given nodes are clamped and every other node is inferred:
``x <- x - lr * dE/dx`` (or momentum / Adam) for T steps or until the gradient is small. Learning
then takes one optimizer step on ``dE/dtheta`` at the relaxed states, averaged over the batch.
Standard and incremental PC are settings of one :class:`Solver`, never copies of it.

The clamp set is known before inference starts, so :class:`_Plan` splits the work:
- an edge whose sources are all clamped predicts a constant: computed once per batch;
- a free node with no outgoing edge sits at its optimum (x = mean(mu), energy 0, no gradient to its
  parents), so it is set once after relaxation instead of being relaxed;
- only the energy terms that depend on a relaxed state are evaluated inside the loop, and
  autograd differentiates them with respect to the states only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pcgraph import energy as E
from pcgraph.compile import CompiledGraph, States
from pcgraph.errors import DivergenceError
from pcgraph.optim import StateAdam, StateSGD, state_optimizer
from pcgraph.spec import SGD, GraphSpec


@dataclass
class Relaxation:
    """What inference returns: relaxed ``states`` (every node, detached), the total ``energy``
    before each step and after the last one (shape (steps + 1,)), and the number of ``steps`` run."""

    states: States
    energy: Tensor
    steps: int
    predicted: States  # forward init only: the feedforward prediction of each clamped leaf


class _Plan:
    """Which nodes are relaxed, which edges are constant and which energy terms the loop needs."""

    def __init__(self, graph: CompiledGraph, clamped: set[str]):
        nodes = graph.nodes
        free = [v for v in graph.order if v not in clamped]
        self.leaves = [v for v in free if nodes[v].incoming and not nodes[v].outgoing]
        self.relaxed = [v for v in free if v not in self.leaves]
        relaxed = set(self.relaxed)
        self.const_edges = frozenset(
            i for i, e in enumerate(graph.edges) if all(s in clamped for s in e.sources)
        )
        self.terms = [
            v for v in graph.order
            if nodes[v].has_energy and v not in self.leaves
            and (v in relaxed or any(s in relaxed for i in nodes[v].incoming for s in graph.edges[i].sources))
        ]
        self.fixed_terms = [
            v for v in graph.order if nodes[v].has_energy and v not in self.leaves and v not in self.terms
        ]


def _check_batch(graph: CompiledGraph, batch: States) -> int:
    if not batch:
        raise ValueError("the batch is empty: give at least one node's values")
    sizes = set()
    for v, x in batch.items():
        if v not in graph.nodes:
            raise KeyError(f"batch names unknown node {v!r} (known: {', '.join(graph.nodes)})")
        if tuple(x.shape[1:]) != graph.nodes[v].shape:
            raise ValueError(f"batch[{v!r}] has per-sample shape {list(x.shape[1:])}, "
                             f"node {v!r} expects {list(graph.nodes[v].shape)}")
        sizes.add(x.shape[0])
    if len(sizes) > 1:
        raise ValueError(f"batch tensors disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


class Solver:
    """Inference and learning settings, with defaults.

    Args:
        steps: maximum number of inference steps T.
        optimizer: state optimizer (:class:`~pcgraph.optim.StateSGD` or ``StateAdam``).
        init: ``forward`` (feedforward pass), ``zeros`` or ``prior`` (prior mean, else zeros).
        tol: stop when every sample's state-gradient norm is below ``tol`` (checked every
            ``check_every`` steps, the only host sync of the loop).
        variant: ``standard`` (relax, then one parameter step) or ``incremental`` (iPC: a
            parameter step after every inference step).
    """

    def __init__(self, steps: int = 20, optimizer: StateSGD | StateAdam | None = None, init: str = "forward",
                 tol: float | None = None, check_every: int = 4, variant: str = "standard"):
        if init not in ("forward", "zeros", "prior"):
            raise ValueError(f"init must be forward, zeros or prior, got {init!r}")
        if variant not in ("standard", "incremental"):
            raise ValueError(f"variant must be standard or incremental, got {variant!r}")
        self.steps, self.init, self.tol, self.check_every, self.variant = steps, init, tol, check_every, variant
        self.optimizer = optimizer or state_optimizer(SGD())

    @classmethod
    def from_spec(cls, spec: GraphSpec) -> Solver:
        inf = spec.inference
        return cls(inf.steps, state_optimizer(inf.optimizer), inf.init, inf.tol, inf.check_every,
                   spec.learning.variant)

    # --- inference ------------------------------------------------------------------------

    def relax(self, graph: CompiledGraph, batch: States, init: States | None = None,
              weight_optimizer: torch.optim.Optimizer | None = None) -> Relaxation:
        """Infer every node not in ``batch``. ``init`` optionally gives starting states (warm
        start). With ``weight_optimizer`` and the incremental variant, parameters step too."""
        b = _check_batch(graph, batch)
        plan = _Plan(graph, set(batch))
        incremental = weight_optimizer is not None and self.variant == "incremental"
        with torch.no_grad():
            states, const_mu, predicted = self._initial_states(graph, batch, plan, init)
            fixed = sum((graph.node_energy(states, v).sum() for v in plan.fixed_terms), torch.zeros(()))
        if incremental:
            const_mu = {}  # parameters change every step: nothing is constant
        xs = [states[v].requires_grad_() for v in plan.relaxed]
        params = [p for p in graph.parameters() if p.requires_grad] if incremental else []
        buffers = self.optimizer.init(xs)
        trace, steps = [], 0
        for _ in range(self.steps if xs else 0):
            with torch.enable_grad():
                e = self._loop_energy(graph, states, plan, const_mu)
                grads = torch.autograd.grad(e, xs + params, allow_unused=True)
            trace.append(e.detach())
            if incremental:
                self._param_step(weight_optimizer, params, grads[len(xs):], b)
            with torch.no_grad():
                self.optimizer.step(xs, list(grads[: len(xs)]), buffers)
            steps += 1
            if self.tol is not None and steps % self.check_every == 0 and self._converged(grads[: len(xs)], b):
                break
        with torch.no_grad():
            for x in xs:
                x.requires_grad_(False)
            trace.append(self._loop_energy(graph, states, plan, const_mu))
            for v in plan.leaves:
                states[v] = E.mean(graph.nodes[v].spec.energy, graph.prediction(states, v))
        energy = torch.stack(trace) + fixed
        if not bool(torch.isfinite(energy).all()):
            raise _divergence(graph, states, energy, "inference", self.optimizer)
        return Relaxation(states, energy, steps, predicted)

    def _initial_states(self, graph, batch, plan, init):
        const_mu: dict[str, Tensor] = {}
        predicted: States = {}
        if self.init == "forward" and init is None:
            # clamped leaves are left out of the pass so it predicts them too (one edge each)
            out = {v for v in batch if graph.nodes[v].incoming and not graph.nodes[v].outgoing}
            out = out if len(out) < len(batch) else set()
            states, kept = graph.feedforward({v: x for v, x in batch.items() if v not in out}, plan.const_edges)
            predicted = {v: states[v] for v in out}
            states.update(batch)
        else:
            states = dict(batch)
            ref = next(iter(batch.values()))
            for v in plan.relaxed:
                states[v] = init[v] if init is not None else graph.root_value(v, ref, self.init == "prior")
            kept = {i: graph.edges[i](states) for i in plan.const_edges}
        for i, y in kept.items():
            t = graph.edges[i].target
            const_mu[t] = y if t not in const_mu else const_mu[t] + y
        states = {v: x.detach().clone() if v in plan.relaxed else x for v, x in states.items()}
        return states, const_mu, predicted

    @staticmethod
    def _loop_energy(graph: CompiledGraph, states: States, plan: _Plan, const_mu: States) -> Tensor:
        total = torch.zeros(())
        for v in plan.terms:
            mu = const_mu.get(v)
            for i in graph.nodes[v].incoming:
                if i not in plan.const_edges or v not in const_mu:
                    y = graph.edges[i](states)
                    mu = y if mu is None else mu + y
            total = total + graph.node_energy(states, v, mu).sum()
        return total

    def _converged(self, grads, b: int) -> bool:
        sq = sum(g.reshape(b, -1).square().sum(1) for g in grads)
        return bool(sq.max() <= self.tol**2)

    # --- learning -------------------------------------------------------------------------

    @staticmethod
    def _param_step(opt: torch.optim.Optimizer, params: list[Tensor], grads, b: int) -> None:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g / b
        opt.step()

    def learn(self, graph: CompiledGraph, relaxation: Relaxation, optimizer: torch.optim.Optimizer,
              clamped: set[str] | None = None) -> Tensor:
        """One parameter step on dE/dtheta at the relaxed states (eqs. 38-39), batch-averaged.
        Returns the batch-mean energy it differentiated."""
        states = relaxation.states
        b = next(iter(states.values())).shape[0]
        leaves = set(_Plan(graph, clamped).leaves) if clamped is not None else set()
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            terms = {v: graph.node_energy(states, v) for v in graph.order
                     if graph.nodes[v].has_energy and v not in leaves}
            loss = sum(e.sum() for e in terms.values()) / b
        if not bool(torch.isfinite(loss)):
            raise _divergence(graph, states, loss.detach().reshape(1), "learning", self.optimizer)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def step(self, graph: CompiledGraph, batch: States, optimizer: torch.optim.Optimizer) -> Relaxation:
        """One PC update on ``batch``: relax, then learn (standard), or both at once (incremental)."""
        relaxation = self.relax(graph, batch, weight_optimizer=optimizer)
        if self.variant == "standard":
            self.learn(graph, relaxation, optimizer, set(batch))
        return relaxation


def _divergence(graph: CompiledGraph, states: States, energy: Tensor, phase: str, opt) -> DivergenceError:
    bad_step = int(torch.nonzero(~torch.isfinite(energy))[0, 0])
    bad = []
    with torch.no_grad():
        for v in graph.order:
            if not bool(torch.isfinite(states[v]).all()):
                bad.append(f"{v} (state)")
            elif graph.nodes[v].has_energy and not bool(torch.isfinite(graph.node_energy(states, v)).all()):
                bad.append(f"{v} (error)")
    where = f"at inference step {bad_step}" if phase == "inference" else "in the learning step"
    lr = getattr(opt, "lr", None)
    return DivergenceError(
        f"energy became {energy[bad_step].item()} {where}; non-finite: {', '.join(bad) or 'none found'}. "
        f"Lower inference.optimizer.lr (now {lr}) or the learning rate, or check the data for NaN/inf."
    )
