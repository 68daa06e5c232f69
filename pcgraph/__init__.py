"""pcgraph: predictive coding over arbitrary computation graphs, in PyTorch.

    spec = pcgraph.load_spec("specs/digits_mlp.yaml")   # or pcgraph.Graph(...).spec()
    graph = pcgraph.compile(spec)                          # a torch.nn.Module
    solver = pcgraph.Solver.from_spec(spec)
    relaxation = solver.relax(graph, {"image": x, "label": y})   # given nodes are clamped
    solver.step(graph, batch, torch.optim.Adam(graph.parameters()))

Extension points (one class each, registered by ``kind`` and usable from YAML at once):
:class:`Op` (:func:`register_op`), :class:`Energy` (:func:`register_energy`),
:class:`Variant` (:func:`register_variant`), weight-update rules :class:`WeightUpdate`
(:func:`register_update`), precision schedules :class:`Schedule` (:func:`register_schedule`),
topologies (:func:`register_topology`).
"""

from pcgraph.builder import Graph
from pcgraph.compile import CompiledGraph, compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.energies import Energy, Term, register_energy
from pcgraph.errors import DataError, DivergenceError, PCGraphError, PCGraphWarning, SpecError, UsageError
from pcgraph.ops import Op, OpModule, register_op
from pcgraph.precision import Schedule, register_schedule
from pcgraph.solver import Clamp, Relaxation, Solver, StateAdam, StateSGD, parameter_names
from pcgraph.spec import GraphSpec, json_schema, load_spec, spec_from_dict, spec_from_yaml
from pcgraph.tasks import BPCheck, TrainResult, bp_gradients, evaluate, train, verify_bp
from pcgraph.tasks.checkpoint import load
from pcgraph.tasks.sequence import SequenceResult, run_sequence
from pcgraph.topology import register_topology
from pcgraph.updates import WeightUpdate, register_update
from pcgraph.variants import Variant, register_variant

__version__ = "0.1.0"

__all__ = [
    # the pipeline: spec -> compile -> solve
    "Graph", "GraphSpec", "load_spec", "spec_from_dict", "spec_from_yaml", "json_schema",
    "compile", "CompiledGraph", "Solver", "Relaxation", "Clamp", "StateSGD", "StateAdam", "parameter_names",
    # extension points
    "Op", "OpModule", "register_op", "Energy", "Term", "register_energy", "Variant", "register_variant",
    "WeightUpdate", "register_update", "Schedule", "register_schedule", "register_topology",
    # tasks
    "train", "TrainResult", "evaluate", "verify_bp", "BPCheck", "bp_gradients", "run_sequence", "SequenceResult",
    "load", "Dataset", "load_dataset",
    # errors
    "PCGraphError", "SpecError", "DataError", "DivergenceError", "UsageError", "PCGraphWarning",
]
