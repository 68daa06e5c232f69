"""Recurrent PC over time: run a graph with delayed edges along a sequence (the notes' Fig. 5).

At each step t the observed nodes are clamped to y_t and every delayed edge reads its source's
relaxed value from step t - 1 (``<node>@prev``, clamped; at t = 0 the node's prior mean). The
states start at their prediction (forward init), relax on the step's energy (eq. 60), and are
carried forward. With an optimizer the parameters (A and C, eqs. 62-63; learnt precisions) take
one step per time step at the relaxed states: online learning.

The prediction precision of a linearly recurrent state x_t = A x_{t-1} + w can be
``fixed`` (the declared one, e.g. Q^-1: the notes' approximation), ``steady_state`` (the inverse of
the steady-state Kalman prior covariance) or ``propagated`` (P^- = A P A^T + Q, then the
posterior P = (P^-^-1 + C^T R^-1 C)^-1 every step, the Riccati recursion), with which the relaxed
state is the Kalman filter's posterior mean.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pcgraph import kalman
from pcgraph.compiler import CompiledGraph, States
from pcgraph.energies.gaussian import GaussianTerm
from pcgraph.errors import SpecError
from pcgraph.solver import Solver


@dataclass
class SequenceResult:
    """Per step: relaxed ``estimates`` {node: (T, B, *shape)}, one-step-ahead ``predictions`` of the
    observed nodes made before seeing them {node: (T, B, *shape)}, and the relaxed ``energy`` (T,)."""

    estimates: dict[str, Tensor]
    predictions: dict[str, Tensor]
    energy: Tensor


def linear_system(graph: CompiledGraph) -> tuple[kalman.LinearGaussian, str, str]:
    """(A, C, Q, R, m0, P0), the state node and the observed node of a linear-Gaussian graph: one
    delayed self-edge x -> x and one edge x -> y, each a single bias-free linear op; Q, R the
    declared covariances of x and y; m0, P0 from x's prior. SpecError otherwise."""
    delayed = [i for i, e in enumerate(graph.edges) if any(s in graph.delayed for s in e.sources)]
    where = "graph.edges"
    if len(delayed) != 1 or len(graph.edges) != 2:
        raise SpecError("steady_state and propagated prior precisions need a linear-Gaussian graph: one delayed "
                        f"edge x -> x and one edge x -> y, got {len(graph.edges)} edges", where)
    rec, obs = graph.edges[delayed[0]], graph.edges[1 - delayed[0]]
    x = rec.target
    ok = rec.sources == [f"{x}@prev"] and obs.sources == [x]
    for e in (rec, obs):
        ok = ok and len(e.pipeline) == 1 and isinstance(e.pipeline[0], nn.Linear) and e.pipeline[0].bias is None
    if not ok:
        raise SpecError("steady_state and propagated prior precisions need x -> x (delay: 1) and x -> y, each "
                        "one linear op with bias: false", where)
    y = obs.target
    prior = graph.priors.get(x)
    if prior is None:
        raise SpecError(f"the recurrent state {x!r} needs a prior (its distribution at t = 0)", f"graph.nodes.{x}.prior")
    for v in (x, y):
        if not isinstance(graph.terms[v], GaussianTerm):
            raise SpecError(f"a linear-Gaussian graph needs gaussian energies; {v!r} has {graph.terms[v].energy.kind}",
                            f"graph.nodes.{v}.energy")
    size, f64 = graph.nodes[x].shape[0], torch.float64
    m0 = torch.as_tensor(prior.center, dtype=f64).reshape(-1).expand(size)
    system = kalman.LinearGaussian(
        rec.pipeline[0].weight.detach().to(f64), obs.pipeline[0].weight.detach().to(f64),
        torch.linalg.inv(graph.terms[x].energy.matrix(size)), torch.linalg.inv(_precision(graph.terms[y], graph.nodes[y].shape[0])),
        m0.clone(), torch.linalg.inv(prior.energy.matrix(size)))
    return system, x, y


def _precision(term: GaussianTerm, size: int) -> Tensor:
    """A Gaussian term's current precision as an (n, n) float64 matrix (learnt ones as learnt so far)."""
    if term.scalar is not None:
        return term.scalar * torch.eye(size, dtype=torch.float64)
    return term.matrix().detach().to(torch.float64)


def run_sequence(graph: CompiledGraph, observations: dict[str, Tensor], solver: Solver | None = None,
                 prior_precision: str | None = None, optimizer: torch.optim.Optimizer | None = None,
                 progress: bool = False) -> SequenceResult:
    """Filter (and with ``optimizer``, learn online) along ``observations`` {node: (T, B, *shape)}.
    ``solver`` defaults to the spec's; ``prior_precision`` to ``spec.sequence.prior_precision``.
    ``progress``: a bar over the time steps on stderr, shown only when stderr is a terminal."""
    spec = graph.spec
    solver = solver or Solver.from_spec(spec, compile=False)
    mode = prior_precision or spec.sequence.prior_precision
    if mode not in ("fixed", "steady_state", "propagated"):
        raise ValueError(f"prior_precision must be fixed, steady_state or propagated, got {mode!r}")
    if not graph.delayed:
        raise SpecError("the graph has no delayed edge (delay: 1), so it has no time axis to run along", "graph.edges")
    length = {len(v) for v in observations.values()}
    if len(length) != 1:
        raise ValueError(f"observation sequences disagree on their length: {sorted(length)}")
    first = next(iter(observations.values()))
    prev = {p: graph.root_value(s, first[0]) for p, s in graph.delayed.items()}
    for v, term in graph.terms.items():  # start from the declared precisions (a previous run may have set them)
        if isinstance(term, GaussianTerm) and term.learn == "none" and term.scalar is None:
            term.set_(term.energy.matrix(graph.nodes[v].shape[0]))
    if mode != "fixed":
        system, x, _ = linear_system(graph)
        if graph.terms[x].scalar is not None or graph.terms[x].learn != "none":
            raise SpecError(f"give {x!r} a covariance matrix (Q) so its precision can be set per step",
                            f"graph.nodes.{x}.energy")
        P = system.P0
        obs_information = system.C.T @ torch.linalg.inv(system.R) @ system.C  # C^T R^-1 C, the same every step
        if mode == "steady_state":
            graph.terms[x].set_(torch.linalg.inv(kalman.steady_state_prior(system)))
    estimates: dict[str, list[Tensor]] = {v: [] for v in graph.nodes if v not in graph.delayed}
    predictions: dict[str, list[Tensor]] = {v: [] for v in observations}
    energy = []
    for t in _steps(length.pop(), f"pc ({mode})" + (", learning" if optimizer is not None else ""), progress):
        if mode == "propagated":
            prior_precision_t = torch.linalg.inv(system.A @ P @ system.A.T + system.Q)
            graph.terms[x].set_(prior_precision_t)
        with torch.no_grad():
            guess = graph.feedforward(dict(prev))[0]
        for v in observations:
            predictions[v].append(guess[v])
        batch = {**prev, **{v: y[t] for v, y in observations.items()}}
        r = solver.step(graph, batch, optimizer) if optimizer is not None else solver.relax(graph, batch)
        for v in estimates:
            estimates[v].append(r.states[v].detach())
        energy.append(r.energy[-1])
        prev = {p: r.states[s].detach() for p, s in graph.delayed.items()}
        if mode == "propagated":
            P = torch.linalg.inv(prior_precision_t + obs_information)
    return SequenceResult({v: torch.stack(xs) for v, xs in estimates.items()},
                          {v: torch.stack(ps) for v, ps in predictions.items()}, torch.stack(energy))


def _steps(length: int, desc: str, progress: bool):
    """range(length), through a tqdm bar on stderr (off when stderr is not a terminal, as in train)."""
    if not progress:
        return range(length)
    from tqdm import tqdm

    return tqdm(range(length), desc=desc, leave=False, file=sys.stderr, disable=None, unit="step")


@torch.no_grad()
def simulate(graph: CompiledGraph, length: int, batch: int = 1, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[States, States]:
    """Sample the system the graph declares: (true states, observations), each {node: (T, B, *shape)}.
    x at t = 0 from its prior; then every node in order = its prediction + Gaussian noise with the
    node's covariance (Pi^-1)."""
    if not graph.delayed:
        raise SpecError("the graph has no delayed edge (delay: 1), so it has no time axis to simulate", "graph.edges")
    prev = {}
    for p, s in graph.delayed.items():
        zeros = torch.zeros(batch, *graph.nodes[s].shape, dtype=dtype)
        prior = graph.priors.get(s)
        prev[p] = zeros if prior is None else prior.sample(graph.root_value(s, zeros), generator)
    out: dict[str, list[Tensor]] = {v: [] for v in graph.order if v not in graph.delayed}
    for _ in range(length):
        states = dict(prev)
        for v in graph.order:
            if v in graph.delayed:
                continue
            mu = graph.prediction(states, v)
            if mu is None:
                raise SpecError(f"cannot simulate: node {v!r} has no incoming edge", f"graph.nodes.{v}")
            term = graph.terms[v]
            if not isinstance(term, GaussianTerm):
                raise SpecError(f"cannot simulate a {term.energy.kind} node", f"graph.nodes.{v}.energy")
            states[v] = term.sample(mu, generator)
            out[v].append(states[v])
        prev = {p: states[s] for p, s in graph.delayed.items()}
    seq = {v: torch.stack(xs) for v, xs in out.items()}
    observed = {v for v in seq if graph.nodes[v].spec.role == "observed"}
    return {v: x for v, x in seq.items() if v not in observed}, {v: x for v, x in seq.items() if v in observed}


def read_observations(path: str, graph: CompiledGraph) -> dict[str, Tensor]:
    """The observations {node: (T, 1, *shape)} of a CSV or .npz file (see :mod:`sequence_io`)."""
    from pcgraph.tasks.sequence_io import read_sequence

    return read_sequence(path, graph)[0]


def tracked_state(graph: CompiledGraph) -> str:
    """The state a filter report scores: x of a linear-Gaussian graph, else the first latent node."""
    try:
        return linear_system(graph)[1]
    except SpecError:
        return next(v for v in graph.nodes if v not in graph.delayed and graph.nodes[v].spec.role != "observed")


def filter_report(graph: CompiledGraph, observations: dict[str, Tensor], truth: dict[str, Tensor] | None,
                  modes: list[str], solver: Solver | None = None,
                  progress: bool = False) -> tuple[list[dict], dict[str, Tensor]]:
    """Filter with each prior-precision mode (and, for a linear-Gaussian graph, the reference
    Kalman filter). Rows: {method, state_rmse (when ``truth`` holds the tracked state, see
    :func:`tracked_state`), prediction_mse}; also the state estimates by method, {method: (T, *shape)}
    of the first sequence. ``progress``: a bar per mode on stderr (see :func:`run_sequence`)."""
    try:
        system, _, y = linear_system(graph)
    except SpecError:
        system = None
    state = tracked_state(graph)
    rows, tracks = [], {}

    def row(name: str, est: Tensor, pred: dict[str, Tensor]) -> None:
        r = {"method": name, "prediction_mse": float(sum(((pred[v] - observations[v]) ** 2).mean() for v in pred))}
        if truth is not None and state in truth:
            r["state_rmse"] = float(((est - truth[state]) ** 2).mean().sqrt())
        rows.append(r)

    if system is not None:
        kf = kalman.kalman_filter(system, observations[y][:, 0])
        tracks["kalman"] = kf.means
        row("kalman", kf.means[:, None], {y: (observations[y][:, 0] - kf.innovations)[:, None]})
    for mode in modes:
        r = run_sequence(graph, observations, solver, mode, progress=progress)
        tracks[f"pc-{mode}"] = r.estimates[state][:, 0]
        row(f"pc ({mode})", r.estimates[state], r.predictions)
    return rows, tracks
