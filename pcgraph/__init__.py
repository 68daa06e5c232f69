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

import importlib
import importlib.util

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so `import pcgraph.cli` does not import torch:
# `pcgraph --help` answers at once, and Ctrl-C during start-up reaches the CLI's handler.
_EXPORTS = {
    "pcgraph.builder": ["Graph"],
    "pcgraph.compiler": ["CompiledGraph", "compile"],
    "pcgraph.data": ["Dataset", "NodeBatches", "load_dataset", "to_nodes"],
    "pcgraph.energies": ["Energy", "Term", "register_energy"],
    "pcgraph.errors": ["DataError", "DivergenceError", "PCGraphError", "PCGraphWarning", "SpecError", "UsageError"],
    "pcgraph.ops": ["Op", "OpModule", "register_op"],
    "pcgraph.precision": ["Schedule", "register_schedule"],
    "pcgraph.solver": ["Clamp", "Relaxation", "Solver", "StateAdam", "StateSGD", "parameter_names"],
    "pcgraph.spec": ["GraphSpec", "json_schema", "load_spec", "spec_from_dict", "spec_from_yaml"],
    "pcgraph.tasks": ["BPCheck", "TrainResult", "bp_gradients", "evaluate", "train", "verify_bp"],
    "pcgraph.tasks.checkpoint": ["load"],
    "pcgraph.tasks.memory": ["keep_freed_memory"],
    "pcgraph.tasks.sequence": ["SequenceResult", "run_sequence"],
    "pcgraph.topology": ["register_topology"],
    "pcgraph.updates": ["WeightUpdate", "register_update"],
    "pcgraph.variants": ["Variant", "register_variant"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: pcgraph.spec
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    # the pipeline: spec -> compile -> solve
    "Graph", "GraphSpec", "load_spec", "spec_from_dict", "spec_from_yaml", "json_schema",
    "compile", "CompiledGraph", "Solver", "Relaxation", "Clamp", "StateSGD", "StateAdam", "parameter_names",
    # extension points
    "Op", "OpModule", "register_op", "Energy", "Term", "register_energy", "Variant", "register_variant",
    "WeightUpdate", "register_update", "Schedule", "register_schedule", "register_topology",
    # tasks
    "train", "TrainResult", "evaluate", "verify_bp", "BPCheck", "bp_gradients", "run_sequence", "SequenceResult",
    "load", "Dataset", "load_dataset", "NodeBatches", "to_nodes", "keep_freed_memory",
    # errors
    "PCGraphError", "SpecError", "DataError", "DivergenceError", "UsageError", "PCGraphWarning",
]
