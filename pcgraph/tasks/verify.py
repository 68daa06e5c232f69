"""How PC's parameter gradients relate to backprop's, on any acyclic graph (notes, eqs. 43-49).

Backprop's reference is built from the same compiled graph: the feedforward pass in topological
order, loss = the clamped output nodes' energies at that pass (batch mean), gradients by autograd.
- ``exact`` mode runs the solver's fixed-prediction variant; its gradient must equal backprop's
  (Millidge et al. 2022; Song et al. 2020) up to rounding.
- ``approx`` mode runs standard PC with the outputs' precision scaled by s and rescales the PC
  gradient by 1/s: as s -> 0 (a large output variance) and inference reaches equilibrium, the
  result approaches backprop's gradient (Whittington & Bogacz 2017).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, States, compile
from pcgraph.errors import SpecError
from pcgraph.solver import Solver, StateSGD, parameter_names


@dataclass
class ParamCheck:
    """One parameter: cosine(PC, BP), ||PC - BP|| / ||BP|| and ||PC|| / ||BP||. ``name`` is the
    readable name (``h2->h3 linear[0].weight``, :func:`pcgraph.parameter_names`); ``parameter`` the
    tensor's name in ``graph.named_parameters()`` and the key of :meth:`Solver.gradients`."""

    name: str
    cosine: float
    rel_error: float
    norm_ratio: float | None  # None when backprop's gradient is zero
    parameter: str = ""


@dataclass
class BPCheck:
    """The result of :func:`verify_bp`. ``rows`` compare the PC gradient with backprop's per
    parameter (exact mode; in approx mode, the last (steps, scale) pair swept). ``sweep`` has one
    summary per (scale, steps) in approx mode. ``ok``: every rel_error <= ``tol`` (exact mode)."""

    mode: str
    rows: list[ParamCheck]
    tol: float | None = None
    sweep: list[dict] = field(default_factory=list)

    @property
    def worst_rel_error(self) -> float:
        return max(r.rel_error for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.tol is None or self.worst_rel_error <= self.tol

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "worst_rel_error": self.worst_rel_error, "ok": self.ok})


def compare(pc: dict[str, Tensor], bp: dict[str, Tensor]) -> list[ParamCheck]:
    rows = []
    for name, g in bp.items():
        p, g = pc[name].flatten().double(), g.flatten().double()
        gn, pn = g.norm().item(), p.norm().item()
        cos = (p @ g).item() / (pn * gn) if pn and gn else float(pn == gn)
        rel = (p - g).norm().item() / gn if gn else (0.0 if pn == 0 else float("inf"))
        rows.append(ParamCheck(name, cos, rel, pn / gn if gn else None, name))
    return rows


def check_verifiable(graph: CompiledGraph, batch: States) -> None:
    """verify-bp needs a DAG (for the feedforward pass) and a clamped node with a prediction."""
    if not graph.acyclic:
        raise SpecError("verify-bp needs an acyclic graph (backprop runs a feedforward pass), but this "
                        "graph has a cycle", "graph.edges")
    if not any(True for _ in graph.parameters()):
        raise SpecError("verify-bp compares parameter gradients, and this graph has no parameters", "graph.edges")
    if not any(graph.nodes[v].incoming for v in batch):
        raise SpecError("verify-bp needs an observed output: a clamped node with incoming edges, whose "
                        "energy is the loss; none of the given nodes has one", "graph.nodes")


def bp_gradients(graph: CompiledGraph, batch: States) -> dict[str, Tensor]:
    """Backprop's gradient of the outputs' energies at the feedforward pass, as a batch mean (the
    energy summed over the batch, divided by B: :meth:`Solver.gradients`' convention), keyed as
    ``graph.named_parameters()`` names the tensors (as :meth:`Solver.gradients` keys them)."""
    names, params = zip(*graph.named_parameters())
    with torch.enable_grad():
        loss = graph.bp_loss(batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
    return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def verify_bp(graph: CompiledGraph, batch: States, mode: str = "exact", *,
              scales: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001), steps: tuple[int, ...] = (200,),
              solver: Solver | None = None, tol: float | None = None) -> BPCheck:
    """Compare PC's parameter gradients with backprop's on ``batch`` (clamped nodes = its keys).

    Args:
        mode: ``exact`` (fixed prediction) or ``approx`` (output precision scaled by s, PC
            gradient rescaled by 1/s, for each s in ``scales`` and T in ``steps``).
        solver: inference settings for approx mode (default: state SGD 0.1 with momentum 0.9,
            which reaches equilibrium within 200 steps on the shipped MLPs).
        tol: largest relative error allowed in exact mode (default 1e-10 in float64, 1e-5 else).
    """
    check_verifiable(graph, batch)
    bp = bp_gradients(graph, batch)
    if mode == "exact":
        _, pc = Solver(variant="exact").gradients(graph, batch)
        if tol is None:
            tol = 1e-10 if next(iter(batch.values())).dtype == torch.float64 else 1e-5
        return BPCheck("exact", _named(graph, compare(pc, bp)), tol)
    if mode != "approx":
        raise ValueError(f"mode must be exact or approx, got {mode!r}")
    base = solver or Solver(optimizer=StateSGD(0.1, momentum=0.9))
    sweep, rows = [], []
    for t in steps:
        for s in scales:
            scaled = with_output_precision(graph, batch, s)
            run = Solver(steps=t, optimizer=base.optimizer, init="forward")
            _, pc = run.gradients(scaled, batch)
            rows = compare({n: g / s for n, g in pc.items()}, bp)
            sweep.append({"scale": s, "steps": t, "min_cosine": min(r.cosine for r in rows),
                          "mean_cosine": sum(r.cosine for r in rows) / len(rows),
                          "max_rel_error": max(r.rel_error for r in rows)})
    return BPCheck("approx", _named(graph, rows), None, sweep)


def _named(graph: CompiledGraph, rows: list[ParamCheck]) -> list[ParamCheck]:
    names = parameter_names(graph)
    return [replace(r, name=names[r.parameter]) for r in rows]


def with_output_precision(graph: CompiledGraph, batch: States, scale: float) -> CompiledGraph:
    """A copy of ``graph`` (same parameters) whose clamped outputs' precision is multiplied by
    ``scale`` (their variance divided by it)."""
    nodes, scaled = dict(graph.spec.graph.nodes), []
    for v in batch:
        if graph.nodes[v].incoming:
            energy = nodes[v].energy.scaled(scale)
            if energy is None:
                raise SpecError("approx mode scales output precisions, so it needs outputs whose energy has a fixed "
                                f"precision to scale (gaussian, laplace); {v!r} has a {nodes[v].energy.kind} energy "
                                "without one (use --mode exact)", f"graph.nodes.{v}.energy")
            nodes[v] = nodes[v].model_copy(update={"energy": energy})
            scaled.append(f"energies.{v}.")
    spec = graph.spec.model_copy(update={"graph": graph.spec.graph.model_copy(update={"nodes": nodes})})
    ref = next(iter(graph.parameters()), None)
    copy = compile(spec, dtype=None if ref is None else ref.dtype)  # scaled values not rounded on the way
    if ref is not None:
        copy = copy.to(ref.device)
    # the same parameters, but the scaled precisions (a matrix precision is a buffer) stay scaled
    state = {k: v for k, v in graph.state_dict().items() if not k.startswith(tuple(scaled))}
    copy.load_state_dict({**copy.state_dict(), **state})
    return copy


def random_batch(graph: CompiledGraph, nodes: list[str], size: int, dtype=torch.float32,
                 seed: int = 0) -> States:
    """Random values for ``nodes``, of the kind each node's energy scores (standard normal for
    gaussian, one-hot rows for categorical, binary for bernoulli)."""
    gen = torch.Generator().manual_seed(seed)
    batch = {}
    for v in nodes:
        n = graph.nodes[v]
        batch[v] = n.spec.energy.random_data(size, n.shape, gen, dtype)
    return batch
