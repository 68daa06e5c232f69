"""pcgraph: predictive coding over arbitrary computation graphs, in PyTorch.

    spec = pcgraph.load_spec("specs/digits_mlp.yaml")   # or pcgraph.Graph(...).spec()
    graph = pcgraph.compile(spec)                          # a torch.nn.Module
    solver = pcgraph.Solver.from_spec(spec)
    relaxation = solver.relax(graph, {"image": x, "label": y})   # given nodes are clamped
    solver.step(graph, batch, torch.optim.Adam(graph.parameters()))
"""

from pcgraph.builder import Graph
from pcgraph.compile import CompiledGraph, compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.errors import DataError, DivergenceError, PCGraphError, PCGraphWarning, SpecError, UsageError
from pcgraph.ops import Op, register_op
from pcgraph.optim import StateAdam, StateSGD
from pcgraph.solve import Clamp, Relaxation, Solver
from pcgraph.spec import GraphSpec, json_schema, load_spec, spec_from_dict, spec_from_yaml
from pcgraph.tasks import BPCheck, TrainResult, bp_gradients, evaluate, train, verify_bp
from pcgraph.tasks.checkpoint import load
from pcgraph.topology import register_topology

__version__ = "0.1.0"

__all__ = [
    "BPCheck", "Clamp", "bp_gradients", "load", "register_topology", "verify_bp",
    "CompiledGraph", "DataError", "Dataset", "DivergenceError", "Graph", "GraphSpec", "Op",
    "PCGraphError", "PCGraphWarning", "Relaxation", "Solver", "SpecError", "StateAdam", "StateSGD",
    "TrainResult", "compile", "evaluate", "json_schema", "load_dataset", "load_spec", "register_op",
    "UsageError", "spec_from_dict", "spec_from_yaml", "train",
]
