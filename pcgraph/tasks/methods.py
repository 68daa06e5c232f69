"""The training methods of :func:`pcgraph.tasks.train.train`: predictive coding (``pc``) and the
spec's backprop baseline (``bp``). Each makes one update on a batch and scores the test set, so
the epoch loop has no ``if method == ...`` in it."""

from __future__ import annotations

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, compile
from pcgraph.data.adapter import samples
from pcgraph.errors import SpecError
from pcgraph.solver import Solver
from pcgraph.spec import GraphSpec
from pcgraph.tasks.objective import Backprop, Objective
from pcgraph.tasks.setup import weight_optimizer


class Method:
    """What the two methods share: the graph, the objective, the solver (also used to score) and
    ``scored``, whether train accuracy is scored from feedforward predictions (acyclic graphs with
    whole input nodes and one whole target node)."""

    name = ""
    steps = 1  # parameter updates per batch (how often a distributed stepper all-reduces)
    epoch = 0  # the epoch being trained (set by run_epoch; centered nudging reads it)

    def __init__(self, spec: GraphSpec, graph: CompiledGraph, task: Objective, solver: Solver):
        self.graph, self.task, self.solver = graph, task, solver
        self.node_sums: dict[str, Tensor] = {}  # the solver's node trace, summed over the epoch's samples
        self.node_count = 0
        self.inputs, self.target = [ref.node for _, ref in task.inputs], task.target
        self.scored = task.classify and graph.acyclic and len(task.targets) == 1 \
            and all(ref.neurons is None for _, ref in task.inputs + task.targets)
        self.model: torch.nn.Module = graph  # what is trained, broadcast and saved
        self.optimizer_spec, self.optimizer_path = spec.learning.optimizer, "learning.optimizer"

    def node_energy(self) -> dict | None:
        """{node: [energy per sample at each inference step]} over the epoch so far (then reset),
        when the solver traces nodes; else None."""
        sums, count = self.node_sums, self.node_count
        self.node_sums, self.node_count = {}, 0
        return {v: (e / count).tolist() for v, e in sums.items()} if sums and count else None

    def step(self, batch: dict, stepper, n: int) -> tuple[Tensor | None, Tensor | None]:
        """One update on ``batch`` holding ``n`` real samples (0: a stand-in of weight 0); returns
        (the energy to add to the epoch's sum or None, the target's predictions or None)."""
        raise NotImplementedError

    def scores(self, data: dict) -> dict[str, float]:
        """The test metric per target on ``data``, ``{reference: values}`` (:meth:`Objective.scores`)."""
        return self.task.scores(self.graph, self.solver, data, None)

    def states_per_sample(self) -> int:
        return self.task.states_per_sample(self.graph)

    def parameters(self) -> list[Tensor]:
        """What the method's weight optimizer trains (and the run reports as its parameters)."""
        return list(self.model.parameters())

    def _feedforward(self, batch: dict) -> Tensor:
        with torch.no_grad():
            return self.graph({v: batch[v] for v in self.inputs})[self.target]


class PCMethod(Method):
    """Predictive coding: :meth:`Solver.step` (relax, then learn or learn every step)."""

    name = "pc"

    def __init__(self, spec: GraphSpec, graph: CompiledGraph, task: Objective, solver: Solver):
        super().__init__(spec, graph, task, solver)
        if solver.variant.learn_every_step:
            self.steps = solver.variant.inference(graph, solver.steps)[0]
        # forward init makes the feedforward predictions of a leaf target for free
        variant = spec.learning.variant
        forward_init = spec.inference.init == "forward" or variant.fixed_predictions or variant.relaxes == "errors"
        self.extra_pass = self.scored and not (forward_init and not graph.nodes[task.target].outgoing)

    def step(self, batch: dict, stepper, n: int) -> tuple[Tensor | None, Tensor | None]:
        predicted = self._feedforward(batch) if self.extra_pass else None
        r = self.solver.step(self.graph, batch, stepper, epoch=self.epoch)
        if r.node_energy is not None:  # sums over the epoch's samples, per node and step
            for v, e in r.node_energy.items():
                self.node_sums[v] = _add_traces(self.node_sums[v], e) if v in self.node_sums else e
            self.node_count += samples(batch)
        predicted = r.predicted.get(self.target, predicted) if self.scored else None
        return (r.energy[-1] if n > 0 else None), predicted


class BPMethod(Method):
    """The backprop baseline (:class:`Backprop`); its energy is the loss."""

    name = "bp"

    def __init__(self, spec: GraphSpec, graph: CompiledGraph, task: Objective, solver: Solver, device):
        super().__init__(spec, graph, task, solver)
        self.baseline = Backprop(spec, graph).to(device)
        if self.baseline.encoder is not None:
            self.model = self.baseline
        if spec.bp.optimizer is not None:
            self.optimizer_spec, self.optimizer_path = spec.bp.optimizer, "bp.optimizer"

    def step(self, batch: dict, stepper, n: int) -> tuple[Tensor | None, Tensor | None]:
        predicted = self._feedforward(batch) if self.scored else None
        return self.baseline.step(batch, stepper) * n, predicted

    def scores(self, data: dict) -> dict[str, float]:
        return self.task.scores(self.graph, self.solver, data, self.baseline)

    def states_per_sample(self) -> int:
        return 0

    def parameters(self) -> list[Tensor]:
        return self.baseline.trained_parameters()


def make_method(name: str, spec: GraphSpec, graph: CompiledGraph, task: Objective, device) -> Method:
    """The method ``name`` (``pc`` or ``bp``) for ``spec``; checks that a feedforward evaluation
    can predict the target."""
    if task.classify and spec.train.eval == "feedforward" and not graph.nodes[task.target].incoming:
        raise SpecError(f"the target {spec.data.target!r} has no incoming edges, so a feedforward pass cannot "
                        "predict it; use train.eval: inference", "train.eval")
    solver = Solver.from_spec(spec)
    if name == "bp":
        return BPMethod(spec, graph, task, solver, device)
    return PCMethod(spec, graph, task, solver)


def check_buildable(spec: GraphSpec, methods: tuple[str, ...] = ("pc",)) -> None:
    """Build what training ``spec`` with each method builds, short of the data: the graph, solver,
    objective, method and weight optimizer; raises the SpecError that training would raise.
    Without a data section only the graph, solver and PC's weight optimizer are built."""
    graph = compile(spec)
    Solver.from_spec(spec)
    weight_optimizer(spec.learning.optimizer, graph.parameters())
    if spec.bp.optimizer is not None:
        weight_optimizer(spec.bp.optimizer, graph.parameters(), "bp.optimizer")
    if spec.data is not None:
        task = Objective(spec, graph)
        for name in methods:
            m = make_method(name, spec, graph, task, "cpu")
            weight_optimizer(m.optimizer_spec, m.parameters(), m.optimizer_path)


def _add_traces(a: Tensor, b: Tensor) -> Tensor:
    """a + b for per-step traces; a shorter one (a tolerance stop) holds its last value."""
    n = max(len(a), len(b))
    a, b = (torch.cat([t, t[-1:].expand(n - len(t))]) for t in (a, b))
    return a + b
