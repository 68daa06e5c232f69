"""Given sparse weights in the listed order (a spec's ``weight:``, ``SparseLinear.listed_weights``)
against dense matrices built by hand from the same (source, target, weight) triples."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import pcgraph
from pcgraph import SpecError, compile
from pcgraph.ops.message_passing import SparseLinear

f64 = torch.float64
EDGES = [[2, 0], [0, 1], [3, 1], [1, 0], [0, 0]]  # not sorted by target, then source
WEIGHTS = [0.5, -1.25, 2.0, 0.75, -0.1]
SPEC = """
name: t
graph:
  nodes: {{x: {{shape: [4]}}, y: {{shape: [2]}}}}
  edges:
    - {{from: x, to: y, fn: [{op}]}}
inference: {{init: zeros}}
"""


def by_hand(triples, n_target, n_source):
    """W[i, j] = w for every (j, i, w): the dense matrix of the connections j -> i."""
    w = torch.zeros(n_target, n_source, dtype=f64)
    for j, i, value in triples:
        w[i, j] = value
    return w


def built(op: str, dtype=f64):
    graph = compile(pcgraph.spec_from_yaml(SPEC.format(op=op)), dtype=dtype)
    return graph, graph.edges[0].pipeline[0]


def test_given_weights_predict_as_the_dense_matrix_of_the_listed_triples():
    graph, _ = built(f"{{kind: sparse, edges: {EDGES}, weight: {WEIGHTS}, bias: [0.25, -3.0]}}")
    x = torch.randn(6, 4, dtype=f64)
    w = by_hand([(j, i, v) for (j, i), v in zip(EDGES, WEIGHTS)], 2, 4)
    expected = x @ w.T + torch.tensor([0.25, -3.0], dtype=f64)
    torch.testing.assert_close(graph.prediction({"x": x}, "y"), expected, rtol=0, atol=1e-12)


def test_weights_read_back_in_the_listed_order():
    _, m = built(f"{{kind: sparse, edges: {EDGES}, weight: {WEIGHTS}}}")
    assert m.listed_connections().tolist() == EDGES
    assert m.listed_weights().tolist() == WEIGHTS
    assert m.bias.tolist() == [0.0, 0.0]  # a learnt bias starting at zero, as linear's with a weight


def test_float64_values_survive_unrounded():
    values = [0.1 + 1e-12, 1 / 3, -2.000000000000001, 1e-300, 123456789.123456789]
    _, m = built(f"{{kind: sparse, edges: {EDGES}, weight: {[repr(v) for v in values]}, "
                 f"bias: [{1 / 7!r}, 0.2]}}".replace("'", ""))
    assert m.weight.dtype == f64
    assert m.listed_weights().tolist() == values  # exactly: no float32 rounding on the way
    assert m.bias.tolist() == [1 / 7, 0.2]
    _, m32 = built(f"{{kind: sparse, edges: {EDGES}, weight: {WEIGHTS}}}", dtype=torch.float32)
    assert m32.weight.dtype == torch.float32
    assert torch.equal(m32.listed_weights(), torch.tensor(WEIGHTS, dtype=torch.float32))  # rounded once


@pytest.mark.parametrize(("op", "path", "message"), [
    ("{kind: sparse, edges: [[0, 1], [2, 0]], weight: [1.0]}", "graph.edges[0].fn[0].weight",
     "expected 2 weights, one per connection in the order of edges, got 1"),
    ("{kind: sparse, generator: complete_bipartite_graph, weight: [1, 2, 3]}", "graph.edges[0].fn[0].weight",
     "expected 8 weights.*complete_bipartite_graph makes, got 3"),
    ("{kind: sparse, edges: [[0, 1]], bias: [1, 2, 3]}", "graph.edges[0].fn[0].bias",
     "expected 2 biases, one per target neuron, got 3"),
    ("{kind: sparse, edges: [[0, 1]], weight: [.nan]}", "graph.edges[0].fn[0].weight[0]", "finite number"),
    ("{kind: sparse, edges: [[0, 1]], weight: [high]}", "graph.edges[0].fn[0].weight[0]", "number"),
])
def test_bad_given_values_name_their_path_and_the_expected_count(op, path, message):
    with pytest.raises(SpecError, match=message) as err:
        built(op)
    assert err.value.path == path


def test_a_generators_listed_order_is_its_graphs_edge_order():
    """A node to itself: each undirected edge {u, v} of ``G.edges()`` is u -> v, then v -> u."""
    g = pcgraph.Graph("t")
    g.node("x", 6)
    weights = [float(k + 1) for k in range(12)]
    g.edge("x", "x", {"kind": "sparse", "generator": "watts_strogatz_graph", "args": {"k": 2, "p": 0.5},
                      "seed": 3, "bias": False, "weight": weights})
    g.inference(init="zeros")
    m = compile(g.spec(), dtype=f64).edges[0].pipeline[0]
    order = [[a, b] for u, v in nx.watts_strogatz_graph(6, 2, 0.5, seed=3).edges() for a, b in ((u, v), (v, u))]
    assert m.listed_connections().tolist() == order
    torch.testing.assert_close(m.dense(), by_hand([(j, i, w) for (j, i), w in zip(order, weights)], 6, 6))


def test_between_two_nodes_the_listed_order_follows_the_crossing_edges():
    _, m = built("{kind: sparse, generator: complete_bipartite_graph, bias: false, weight: [1, 2, 3, 4, 5, 6, 7, 8]}")
    order = [[u, v - 4] for u, v in nx.complete_bipartite_graph(4, 2).edges()]
    assert m.listed_connections().tolist() == order
    torch.testing.assert_close(m.dense(), by_hand([(j, i, k + 1.0) for k, (j, i) in enumerate(order)], 2, 4))


def test_a_registered_topologys_tensor_keeps_its_column_order():
    pairs = torch.tensor([[3, 0, 2, 3, 1], [1, 0, 0, 1, 1]])  # a repeat (3 -> 1) keeps its first place
    pcgraph.register_topology("listed_test")(lambda n_s, n_t, seed: pairs)
    try:
        _, m = built("{kind: sparse, generator: listed_test, weight: [1, 2, 3, 4]}")
    finally:
        pcgraph.topology.TOPOLOGIES.pop("listed_test")
    assert m.listed_connections().tolist() == [[3, 1], [0, 0], [2, 0], [1, 1]]
    assert m.listed_weights().tolist() == [1, 2, 3, 4]
    assert m.dense().tolist() == [[2, 0, 3, 0], [0, 4, 0, 1]]


def test_set_listed_weights_from_python_and_its_checks():
    src, dst = torch.tensor([2, 0, 3, 1]), torch.tensor([1, 1, 0, 0])  # listed: 2->1, 0->1, 3->0, 1->0
    m = SparseLinear(src, dst, 4, 2, bias=False).double()
    m.set_listed_weights([0.5, -1.0, 2.0, 3.0])
    assert m.listed_connections().tolist() == [[2, 1], [0, 1], [3, 0], [1, 0]]
    assert m.listed_weights().tolist() == [0.5, -1.0, 2.0, 3.0]
    w = by_hand([(2, 1, 0.5), (0, 1, -1.0), (3, 0, 2.0), (1, 0, 3.0)], 2, 4)
    x, g = torch.randn(5, 4, dtype=f64), torch.randn(5, 2, dtype=f64)
    torch.testing.assert_close(m(x), x @ w.T)
    torch.testing.assert_close(m.local_vjp(x, g, None, True), g @ w)  # the cached A^T follows the edit
    with pytest.raises(ValueError, match="expected 4 weights"):
        m.set_listed_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        m.set_listed_weights([1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(ValueError, match="repeated"):
        SparseLinear(torch.tensor([0, 0]), torch.tensor([1, 1]), 2, 2)


def test_given_weights_round_trip_through_yaml_and_keep_checkpoints_as_they_were():
    spec = pcgraph.spec_from_yaml(SPEC.format(op=f"{{kind: sparse, edges: {EDGES}, weight: {WEIGHTS}, "
                                                 "bias: [1, 2]}"))
    assert pcgraph.spec_from_yaml(spec.to_yaml()) == spec
    state = compile(spec).state_dict()
    assert sorted(k.rsplit(".", 1)[1] for k in state) == ["bias", "edge_index", "weight"]
