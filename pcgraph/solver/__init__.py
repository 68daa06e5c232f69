"""The engine: inference (state relaxation) and learning on a compiled graph.

- :mod:`~pcgraph.solver.solver`: :class:`Solver`, the one public entry point (relax, step, gradients);
- :mod:`~pcgraph.solver.batch`: the values a call gives (whole nodes, or some neurons: :class:`Clamp`);
- :mod:`~pcgraph.solver.plan`: what a clamp set leaves to relax and which work is constant;
- :mod:`~pcgraph.solver.start`: the initial states (forward, amortised, zeros, prior) and nudged targets;
- :mod:`~pcgraph.solver.loop`: the inner loop and its two gradient routes;
- :mod:`~pcgraph.solver.errors`: the inner loop over errors instead of states (ePC);
- :mod:`~pcgraph.solver.local`: an edge's local rule, chained from its ops' own ``local_vjp``;
- :mod:`~pcgraph.solver.optim`: state optimizers;
- :mod:`~pcgraph.solver.checks`: whether the loop compiles, and divergence reports;
- :mod:`~pcgraph.solver.gradients`: dE/dx at given states, and readable parameter names.
"""

from pcgraph.solver.batch import Clamp
from pcgraph.solver.gradients import parameter_names, state_gradients
from pcgraph.solver.optim import StateAdam, StateSGD, state_optimizer
from pcgraph.solver.solver import Relaxation, Solver

__all__ = ["Clamp", "Relaxation", "Solver", "StateAdam", "StateSGD", "parameter_names", "state_gradients",
           "state_optimizer"]
