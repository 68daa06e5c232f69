"""The per-node energy trace (Solver(trace_nodes=True), inference.trace_nodes, pcgraph train
--node-energies): it sums to the relaxation's energy at every step, shows an output error
travelling down a chain one edge per step after a forward init, and reaches the training
history, metrics.jsonl and a PNG."""

import json

import pytest
import torch

import pcgraph
from pcgraph.solver import StateSGD
from tests.solver.test_solver import chain

f64 = torch.float64


@pytest.mark.parametrize("variant", ["standard", "epc", "exact"])
def test_the_trace_sums_to_the_energy(variant):
    graph = chain([3, 4, 4, 4, 2])
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x4": torch.randn(5, 2, dtype=f64)}
    r = pcgraph.Solver(steps=6, optimizer=StateSGD(0.1), variant=variant, trace_nodes=True).relax(graph, batch)
    total = sum(r.node_energy.values())
    assert total.shape == (r.energy.shape[0],)
    if variant != "exact":  # exact holds its predictions fixed: its energy is not E(x)
        assert torch.allclose(total, r.energy, atol=1e-10)
    assert torch.allclose(total[-1], graph.energy(r.states), atol=1e-10)


def test_errors_travel_one_edge_per_step_in_standard_pc():
    graph = chain([3, 4, 4, 4, 2])
    batch = {"x0": torch.randn(5, 3, dtype=f64), "x4": torch.randn(5, 2, dtype=f64)}
    r = pcgraph.Solver(steps=4, optimizer=StateSGD(0.1), trace_nodes=True).relax(graph, batch)
    first_nonzero = {v: int(torch.nonzero(r.node_energy[v] > 1e-20)[0, 0]) for v in ("x1", "x2", "x3", "x4")}
    assert first_nonzero == {"x4": 0, "x3": 1, "x2": 2, "x1": 3}
    epc = pcgraph.Solver(steps=4, optimizer=StateSGD(0.1), variant="epc", trace_nodes=True).relax(graph, batch)
    assert all(float(epc.node_energy[v][1]) > 0 for v in ("x1", "x2", "x3"))  # ePC: every layer after one step


def test_train_history_metrics_and_png(tmp_path, capsys):
    from pcgraph.cli import main

    out = tmp_path / "run"
    code = main(["train", "specs/digits_mlp.yaml", "--epochs", "1", "--node-energies", "--out", str(out),
                 "--no-progress", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    trace = result["history"][0]["node_energy"]
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    assert set(trace) == {v for v in spec.graph.nodes if any(e.to == v for e in spec.graph.edges)}
    assert all(len(e) == spec.inference.steps + 1 for e in trace.values())
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["node_energy"] == trace
    assert (out / "node_energy.png").stat().st_size > 1000
