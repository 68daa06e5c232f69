"""pcgraph.to_nodes / pcgraph.NodeBatches: DataLoader batches (tuples or dicts) to node dicts,
checked against one-hot labels and shapes made by hand, and the errors that name the node."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pcgraph
from pcgraph.errors import DataError

SPEC = """
name: adapter
graph:
  nodes:
    image: {shape: [2, 3], role: observed}
    h: {shape: [4]}
    label: {shape: [5], role: observed, energy: categorical}
  edges:
    - {from: image, to: h, fn: [flatten, linear, tanh]}
    - {from: h, to: label, fn: [linear]}
"""


@pytest.fixture
def graph():
    return pcgraph.compile(pcgraph.spec_from_yaml(SPEC))


def test_a_tuple_batch_is_reshaped_and_one_hot(graph):
    x, y = torch.arange(24.0).reshape(4, 6), torch.tensor([0, 4, 2, 2])
    out = pcgraph.to_nodes((x, y), graph, inputs="image", targets="label")
    assert set(out) == {"image", "label"}
    assert torch.equal(out["image"], torch.tensor([[[0.0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]],
                                                   [[12, 13, 14], [15, 16, 17]], [[18, 19, 20], [21, 22, 23]]]))
    one_hot = torch.zeros(4, 5)
    for i, label in enumerate([0, 4, 2, 2]):
        one_hot[i, label] = 1.0
    assert torch.equal(out["label"], one_hot)
    graph.check_values(out)  # what the graph takes


def test_a_dict_batch_by_name_or_mapping_in_the_graphs_dtype(graph):
    graph = graph.to(torch.float64)
    x = torch.rand(3, 2, 3, dtype=torch.float32)
    out = pcgraph.to_nodes({"pixels": x, "digit": torch.tensor([1, 1, 3]), "extra": 0}, graph,
                           inputs={"image": "pixels"}, targets={"label": "digit"})
    assert out["image"].dtype == out["label"].dtype == torch.float64
    assert torch.equal(out["image"], x.double())
    assert out["label"].argmax(1).tolist() == [1, 1, 3]
    assert set(pcgraph.to_nodes({"image": x}, graph, inputs=["image"])) == {"image"}


def test_float_targets_pass_as_values(graph):
    soft = torch.full((2, 5), 0.2)
    assert torch.equal(pcgraph.to_nodes((torch.zeros(2, 6), soft), graph, "image", "label")["label"], soft)


@pytest.mark.parametrize(("batch", "words"), [
    ((torch.zeros(4, 7), torch.zeros(4, dtype=torch.long)), "node 'image' expects a (B, 2, 3) batch (6 values per "
     "sample), got shape [4, 7] (7 per sample)"),
    ((torch.zeros(4, 6), torch.tensor([0, 5, 1, 1])), "node 'label' has 5 classes, so its labels must lie in 0..4; "
     "got labels from 0 to 5"),
    ((torch.zeros(4, 6), torch.zeros(4)), "1-D class labels go one-hot only as integers"),
    ((torch.zeros(4, 6),), "the batch has 1 part(s) but 2 node(s) are named (image, label)"),
    ((torch.zeros(4, 6), torch.zeros(3, dtype=torch.long)), "disagree on the batch size: {'image': 4, 'label': 3}"),
    ({"image": torch.zeros(4, 6)}, "node 'label' reads the batch's 'label', but the batch holds 'image'"),
    (torch.zeros(4, 6), "a batch must be a tuple/list (x, y, ...) or a dict, got Tensor"),
])
def test_a_batch_that_does_not_fit_names_the_node(graph, batch, words):
    with pytest.raises(DataError) as err:
        pcgraph.to_nodes(batch, graph, inputs="image", targets="label")
    assert words in str(err.value)


def test_an_unknown_node_is_named(graph):
    with pytest.raises(DataError, match="unknown node 'pixels' \\(known: image, h, label\\)"):
        pcgraph.to_nodes((torch.zeros(2, 6),), graph, inputs="pixels")


def test_node_batches_wrap_a_loader(graph):
    x, y = torch.rand(10, 2, 3), torch.randint(0, 5, (10,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    batches = pcgraph.NodeBatches(loader, graph, inputs="image", targets="label")
    assert len(batches) == 3
    got = list(batches)
    assert [len(b["image"]) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b["image"] for b in got]), x)
    assert torch.equal(torch.cat([b["label"] for b in got]).argmax(1), y)
    assert len(list(batches)) == 3  # iterable again, as the loader is


def test_training_clamps_through_the_same_adapter(graph):
    """The training loop's batches (Objective.batch) equal to_nodes' for the same values."""
    from pcgraph.tasks.objective import Objective

    spec = pcgraph.spec_from_yaml(SPEC + "data: {dataset: digits, input: image, target: label}\n")
    x, y = torch.rand(3, 6), torch.tensor([4, 0, 1])
    ours = Objective(spec, graph).batch({"image": x, "label": y})
    assert {k: v.tolist() for k, v in ours.items()} == {
        k: v.tolist() for k, v in pcgraph.to_nodes((x, y), graph, "image", "label").items()}
    with pytest.raises(DataError, match="node 'label' has 5 classes"):
        Objective(spec, graph).batch({"image": x, "label": torch.tensor([4, 0, 7])})
