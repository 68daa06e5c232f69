"""Neuron-level graphs end to end: node[start:stop] data references, the completion task, the
shipped fully connected digits specs, and `pcgraph show` on them."""

from __future__ import annotations

import json

import pytest
import torch

import pcgraph
from pcgraph.cli import main
from pcgraph.tasks.objective import Objective

FC = "specs/digits_fc.yaml"
MEMORY = "specs/digits_memory.yaml"


def small(path: str, **train) -> pcgraph.GraphSpec:
    d = pcgraph.load_spec(path).model_dump(by_alias=True)
    d["train"].update(train)
    return pcgraph.spec_from_dict(d)


def test_fully_connected_graph_has_one_weight_per_ordered_pair():
    graph = pcgraph.compile(pcgraph.load_spec(FC))
    sp = graph.edges[0].pipeline[-1]
    assert not graph.acyclic
    assert sp.weight.numel() == 138 * 137 and graph.num_params() == 138 * 137 + 138
    src, dst = sp.edge_index
    assert not bool((src == dst).any())


def test_batches_clamp_neuron_ranges():
    spec = pcgraph.load_spec(FC)
    task = Objective(spec, pcgraph.compile(spec))
    x, y = torch.rand(5, 64), torch.tensor([0, 3, 9, 1, 1])
    batch = task.batch(x, y)
    entry = batch["x"]
    assert isinstance(entry, pcgraph.Clamp) and set(batch) == {"x"}
    assert torch.equal(entry.values[:, :64], x)
    assert torch.equal(entry.values[:, 64:74], torch.nn.functional.one_hot(y, 10).float())
    assert sorted(entry.index.tolist()) == list(range(74))
    test = task.test_batch(x)["x"]
    assert sorted(test.index.tolist()) == list(range(64))


def test_completion_hides_its_neurons_at_test_time():
    spec = pcgraph.load_spec(MEMORY)
    task = Objective(spec, pcgraph.compile(spec))
    assert task.metric == "mse" and not task.higher_is_better
    test = task.test_batch(torch.rand(3, 64))["x"]
    assert sorted(test.index.tolist()) == list(range(32))


def test_completion_scores_the_inferred_hidden_neurons():
    """The MSE is of the inferred lower half against the true one: checked against a relaxation
    run here by hand, and the clamped upper half never moves."""
    spec = pcgraph.load_spec(MEMORY)
    graph = pcgraph.compile(spec)
    task, solver = Objective(spec, graph), pcgraph.Solver.from_spec(spec)
    x = torch.rand(7, 64) * 2 - 1
    got = task.evaluate(graph, solver, x, torch.zeros(7, dtype=torch.long))
    states = solver.relax(graph, {"x": pcgraph.Clamp(torch.cat([x, torch.zeros(7, 74)], 1), slice(0, 32))}).states
    assert torch.equal(states["x"][:, :32], x[:, :32])
    assert got == pytest.approx(float(((states["x"][:, 32:64] - x[:, 32:]) ** 2).mean()), rel=1e-6)


@pytest.mark.parametrize(("data", "path", "words"), [
    ({"input": "x[0:64]", "target": "x[60:70]"}, "data.target", "overlaps the input"),
    ({"input": "x[0:64]", "target": "x[64:200]"}, "data.target", "out of range"),
    ({"input": "x[0:64]", "target": "x[64:74]", "complete": "x[60:70]"}, "data.complete", "inside the input"),
    ({"input": "x[0:64]", "target": "x[64:74]", "complete": "x[0:64]"}, "data.complete", "nothing to complete"),
    ({"input": "y[0:64]"}, "data.input", "unknown node 'y'"),
    ({"input": "x[5:2]"}, "data.input", "start < stop"),
    ({"input": "x[a:b]"}, "data.input", "node name or node"),
])
def test_bad_data_references_name_the_field(data, path, words):
    d = pcgraph.load_spec(FC).model_dump(by_alias=True)
    d["data"].update(data)
    with pytest.raises(pcgraph.SpecError, match=words) as err:
        pcgraph.compile(pcgraph.spec_from_dict(d))
    assert err.value.path == path


def test_feedforward_evaluation_of_neuron_ranges_is_refused():
    g = pcgraph.Graph("t")
    g.node("x", 6)
    g.node("h", 4, observed=True)
    g.edge("x", "h", "linear")
    g.data(dataset="digits", input="x[0:4]", target="h")
    spec = g.spec()
    with pytest.raises(pcgraph.SpecError, match="use train.eval: inference") as err:
        Objective(spec, pcgraph.compile(spec))
    assert err.value.path == "train.eval"


def test_wrong_label_range_size_is_refused():
    d = pcgraph.load_spec(FC).model_dump(by_alias=True)
    d["data"]["target"] = "x[64:73]"
    with pytest.raises(pcgraph.SpecError, match="must have 10 neurons") as err:
        pcgraph.train(pcgraph.spec_from_dict(d), progress=False, log=lambda s: None)
    assert err.value.path == "data.target"


def test_forward_init_is_refused_on_the_cyclic_graph():
    d = pcgraph.load_spec(FC).model_dump(by_alias=True)
    d["inference"]["init"] = "forward"
    with pytest.raises(pcgraph.SpecError, match="cycle x -> x; use init: zeros or prior") as err:
        pcgraph.compile(pcgraph.spec_from_dict(d))
    assert err.value.path == "inference.init"


def test_fully_connected_classifier_learns_the_digits():
    """Two epochs: far above chance (10%) with the label inferred from the pixels alone."""
    result = pcgraph.train(small(FC, epochs=2), progress=False, log=lambda s: None)
    assert result.metric == "accuracy" and result.train_accuracy is None
    assert result.test_metric > 0.7


def test_associative_memory_beats_the_mean_image():
    """Completion MSE of the lower half below that of predicting the training mean lower half."""
    spec = small(MEMORY, epochs=3)
    result = pcgraph.train(spec, progress=False, log=lambda s: None)
    data = pcgraph.load_dataset("digits")
    train_x = data.x_train.reshape(len(data.x_train), -1) * 2 - 1
    test_x = data.x_test.reshape(len(data.x_test), -1) * 2 - 1
    mean_mse = float(((test_x[:, 32:] - train_x[:, 32:].mean(0)) ** 2).mean())
    assert result.metric == "mse" and result.test_metric < mean_mse


def test_show_prints_degrees_and_draws(tmp_path, capsys):
    png = tmp_path / "fc.png"
    assert main(["show", "examples/small_world.yaml", "--png", str(png), "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out.strip().splitlines()[-1])["neuron_level"]
    # 40 neurons on a ring with k = 4 (160 directed connections) + 30 random ones to y
    assert stats["neurons"] == 50 and stats["connections"] == 190 and stats["self_loops"] == 0
    assert stats["in_degree_mean"] == pytest.approx(190 / 50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # too many neurons for a drawing: statistics only, and no file
    big = tmp_path / "big.png"
    assert main(["show", FC, "--png", str(big), "--max-neurons", "100"]) == 0
    assert "not drawn: 138 neurons" in capsys.readouterr().out and not big.exists()


def test_states_per_sample_count_only_the_unclamped_neurons():
    spec = pcgraph.load_spec(FC)
    graph = pcgraph.compile(spec)
    assert Objective(spec, graph).states_per_sample(graph) == 138 - 74
    mlp = pcgraph.load_spec("specs/digits_mlp.yaml")
    g = pcgraph.compile(mlp)
    assert Objective(mlp, g).states_per_sample(g) == g.states_per_sample() == 128


def test_backprop_and_verify_bp_refuse_neuron_ranges_in_one_line(tmp_path, capsys):
    g = pcgraph.Graph("t")
    g.node("x", 74)
    g.node("h", 16)
    g.edge("x", "h", "linear", "tanh")
    g.edge("h", "x", "linear")
    g.inference(init="zeros")
    g.data(dataset="digits", input="x[0:64]", target="x[64:74]")
    g.train(eval="inference")
    with pytest.raises(pcgraph.SpecError, match="has a cycle"):
        pcgraph.train(g.spec(), method="bp", progress=False, log=lambda s: None)
    acyclic = pcgraph.Graph("t")
    acyclic.node("x", 74)
    acyclic.node("h", 16)
    acyclic.edge("h", "x", "linear")
    acyclic.inference(init="zeros")
    acyclic.data(dataset="digits", input="x[0:64]", target="x[64:74]")
    acyclic.train(eval="inference")
    with pytest.raises(pcgraph.SpecError, match="clamps whole nodes") as err:
        pcgraph.train(acyclic.spec(), method="bp", progress=False, log=lambda s: None)
    assert err.value.path == "data.input"
    path = tmp_path / "a.yaml"
    path.write_text(acyclic.spec().to_yaml())
    assert main(["verify-bp", str(path)]) == 2
    err_line = capsys.readouterr().err.strip()
    assert len(err_line.splitlines()) == 1 and "data.input" in err_line


def test_flops_and_eval_of_the_neuron_level_specs(tmp_path, capsys):
    from pcgraph.tasks.bench import flops_per_update

    for path in (FC, MEMORY):
        assert flops_per_update(pcgraph.load_spec(path), "pc") > 0
    pcgraph.train(small(MEMORY, epochs=1), out=tmp_path / "run", progress=False, log=lambda s: None)
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "test mse" in out and "completing x[32:64]" in out
    assert "test_mse" in json.loads(out.strip().splitlines()[-1])


def test_show_counts_a_sparse_op_after_a_linear_one_as_dense(tmp_path, capsys):
    g = pcgraph.Graph("t")
    g.node("x", 10)
    g.node("y", 5)
    g.edge("x", "y", {"kind": "linear", "features": 20}, "tanh", {"kind": "sparse", "generator": "random",
                                                                  "args": {"edges": 9}})
    path = tmp_path / "s.yaml"
    path.write_text(g.spec().to_yaml())
    assert main(["show", str(path), "--png", str(tmp_path / "s.png"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["neuron_level"]
    assert stats["connections"] == 50


@pytest.mark.slow
def test_shipped_neuron_level_specs_reach_their_readme_figures():
    """The full runs behind README's table (seed 0, 20 epochs each, ~35 s)."""
    fc = pcgraph.train(pcgraph.load_spec(FC), progress=False, log=lambda s: None)
    assert fc.test_metric >= 0.93
    memory = pcgraph.train(pcgraph.load_spec(MEMORY), progress=False, log=lambda s: None)
    assert memory.test_metric <= 0.28
