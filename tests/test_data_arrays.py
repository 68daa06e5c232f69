"""An npz data set feeding several input and several target nodes from the CLI: the training run
equals feeding the same tensors by hand, each target is scored, and the data section's problems
are named at their YAML paths."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pcgraph
from pcgraph.cli import main
from pcgraph.errors import DataError, SpecError

GRAPH = """
name: two-halves
graph:
  nodes:
    left: {shape: [32], role: observed}
    right: {shape: [4, 8], role: observed}
    h: {shape: [32]}
    digit: {shape: [10], role: observed, energy: categorical}
    parity: {shape: [2], role: observed, energy: categorical}
  edges:
    - {from: left, to: h, fn: [{kind: linear, init: xavier_uniform}, tanh]}
    - {from: right, to: h, fn: [flatten, {kind: linear, init: xavier_uniform}, tanh]}
    - {from: h, to: digit, fn: [{kind: linear, init: xavier_uniform}]}
    - {from: h, to: parity, fn: [{kind: linear, init: xavier_uniform}]}
inference: {steps: 5, optimizer: {kind: sgd, lr: 0.1}}
learning: {optimizer: {kind: sgd, lr: 0.05}}
train: {epochs: 1, seed: 3}
"""
DATA = ("data: {dataset: {kind: npz, train: train.npz, test: test.npz}, input: [left, right], "
        "target: [digit, parity], batch_size: 64}\n")


@pytest.fixture
def halves(tmp_path):
    """The digits split into left and right halves (centered), with digit and parity labels."""
    d = pcgraph.load_dataset("digits")
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        x = ((x - 0.5) / 0.5).numpy()
        np.savez(tmp_path / f"{split}.npz", left=x[:, :32], right=x[:, 32:], digit=y.numpy(), parity=y.numpy() % 2)
    return tmp_path


def by_hand(folder, spec):
    """One epoch of PC fed by hand, as the training loop is documented to do."""
    train, test = (dict(np.load(folder / f"{s}.npz")) for s in ("train", "test"))
    torch.manual_seed(spec.train.seed)
    graph = pcgraph.compile(spec)
    solver = pcgraph.Solver.from_spec(spec)
    optimizer = torch.optim.SGD(graph.parameters(), lr=0.05)
    n = len(train["digit"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.train.seed))
    t = {k: torch.from_numpy(v) for k, v in train.items()}
    for i in range(0, n, 64):
        idx = perm[i: i + 64]
        solver.step(graph, {"left": t["left"][idx], "right": t["right"][idx].reshape(-1, 4, 8),
                            "digit": F.one_hot(t["digit"][idx], 10).float(),
                            "parity": F.one_hot(t["parity"][idx], 2).float()}, optimizer)
    with torch.no_grad():
        out = graph({"left": torch.from_numpy(test["left"]), "right": torch.from_numpy(test["right"]).reshape(-1, 4, 8)})
    return graph, {k: float((out[k].argmax(1) == torch.from_numpy(test[k])).double().mean()) for k in ("digit", "parity")}


def test_two_inputs_and_two_targets_train_as_by_hand(halves, capsys):
    (halves / "spec.yaml").write_text(GRAPH + DATA)
    code = main(["train", str(halves / "spec.yaml"), "--data-root", str(halves), "--out", str(halves / "run"),
                 "--no-progress", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    graph, accuracy = by_hand(halves, pcgraph.spec_from_yaml(GRAPH + DATA))
    trained = torch.load(halves / "run" / "model.pt", weights_only=True)
    for name, p in graph.state_dict().items():
        assert torch.allclose(trained[name], p, atol=1e-6), name
    row = result["history"][0]
    assert row["test_accuracy_by_target"] == pytest.approx(accuracy, abs=1e-9)
    assert result["test_accuracy"] == pytest.approx((accuracy["digit"] + accuracy["parity"]) / 2, abs=1e-9)
    assert accuracy["parity"] > 0.6 and "train_accuracy" not in row  # train accuracy: one target only
    assert main(["eval", str(halves / "run"), "--data-root", str(halves), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test_accuracy"] == pytest.approx(result["test_accuracy"])


@pytest.mark.parametrize(("data", "path", "words"), [
    ("{dataset: digits, input: [left, right]}", "data.input", "digits supplies one image per sample, not 2; several "
     "input nodes need an npz dataset"),
    ("{dataset: {kind: npz, train: a.npz, test: b.npz}, input: [left, left]}", "data.input", "names left twice"),
    ("{dataset: {kind: npz, train: a.npz, test: b.npz}, input: [left, right], target: [digit, nope]}",
     "data.target[1]", "unknown node 'nope'"),
    ("{dataset: {kind: npz, train: a.npz, test: b.npz}, input: [left, h], target: [digit, parity]}",
     "data.input[1]", "'h' is a latent node, which is inferred, not clamped"),
    ("{dataset: {kind: npz, train: a.npz, test: b.npz}, input: [left, right], target: digit}",
     "graph.nodes.parity.role", "(data.input: left, right, data.target: digit)"),
    ("{dataset: {kind: npz, train: a.npz}, input: [left, right], target: [digit, parity]}",
     "data.dataset.test", "required field is missing"),
])
def test_problems_of_several_nodes_are_named_at_their_paths(data, path, words):
    with pytest.raises(SpecError) as err:
        pcgraph.compile(pcgraph.spec_from_yaml(GRAPH + f"data: {data}\n"))
    assert any(p == path and words in m for p, m in err.value.problems), err.value.problems


def test_overlapping_ranges_of_two_inputs_are_refused():
    spec = GRAPH.replace("left: {shape: [32], role: observed}", "left: {shape: [32]}")
    data = "data: {dataset: {kind: npz, train: a, test: b}, input: ['left[0:20]', 'left[10:32]', right], target: [digit, parity]}\n"
    with pytest.raises(SpecError) as err:
        pcgraph.compile(pcgraph.spec_from_yaml(spec + data))
    assert err.value.problems == [("data.input[1]", "left[10:32] overlaps the input left[0:20]: give them disjoint ranges")]


def test_reconstruction_takes_one_input():
    from pcgraph.tasks.objective import Objective

    spec = pcgraph.spec_from_yaml(GRAPH.replace("role: observed, energy: categorical", "energy: categorical")
                                  + "data: {dataset: {kind: npz, train: a, test: b}, input: [left, right], target: null}\n")
    with pytest.raises(SpecError, match="reconstruction takes one input node, got 2: left, right"):
        Objective(spec, pcgraph.compile(spec))


@pytest.mark.parametrize(("change", "words"), [
    (lambda a: a.pop("parity"), "holds no array 'parity' (it holds: left, right, digit)"),
    (lambda a: a.update(right=a["right"][:, :30]), "array 'right' has [30] per sample (30 values), and data.input[1] "
     "expects [4, 8] (32)"),
    (lambda a: a.update(parity=a["digit"]), "'parity' holds class labels for a node of 2 classes, so 0..1"),
    (lambda a: a.update(left=a["left"][:-1]), "all the same number of them"),
])
def test_arrays_that_do_not_fit_name_the_file_and_the_key(halves, change, words):
    arrays = dict(np.load(halves / "train.npz"))
    change(arrays)
    np.savez(halves / "train.npz", **arrays)
    spec = pcgraph.spec_from_yaml(GRAPH + DATA)
    with pytest.raises(DataError) as err:
        pcgraph.train(spec, data_root=str(halves), progress=False, log=lambda line: None)
    assert words in str(err.value) and "train.npz" in str(err.value)


def test_a_missing_file_is_one_line(halves, capsys):
    (halves / "spec.yaml").write_text(GRAPH + DATA.replace("test.npz", "nowhere.npz"))
    assert main(["train", str(halves / "spec.yaml"), "--data-root", str(halves), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "nowhere.npz (data.dataset.test" in err and len(err.strip().splitlines()) == 1
