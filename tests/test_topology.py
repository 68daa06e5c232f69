"""Connectivity of sparse edges: how generator vertices map to neurons, edge lists, the random
topology and registered ones."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from pcgraph import SpecError, register_topology
from pcgraph.topology import TOPOLOGIES, connections, known_generator


def pairs(*args, same_node=True, **kwargs):
    src, dst = connections(*args, same_node=same_node, **kwargs)
    return set(zip(src.tolist(), dst.tolist()))


def test_undirected_generator_on_a_node_to_itself_gives_both_directions():
    got = pairs(None, "cycle_graph", {}, 0, False, 4, 4)
    assert got == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (3, 0), (0, 3)}


def test_directed_generator_keeps_directions_and_self_loops_only_when_asked():
    g = nx.gnp_random_graph(6, 0.5, seed=4, directed=True)
    args = {"p": 0.5, "directed": True}
    assert pairs(None, "gnp_random_graph", args, 4, False, 6, 6) == set(g.edges())
    # complete_graph has no loops; a registered topology may return them
    register_topology("loops_and_ring")(lambda n_s, n_t, seed: torch.tensor([[0, 1, 2, 2], [0, 2, 0, 2]]))
    try:
        assert pairs(None, "loops_and_ring", {}, 0, False, 3, 3) == {(1, 2), (2, 0)}
        assert pairs(None, "loops_and_ring", {}, 0, True, 3, 3) == {(0, 0), (1, 2), (2, 0), (2, 2)}
    finally:
        TOPOLOGIES.pop("loops_and_ring")


def test_between_two_nodes_the_graph_has_both_parts_and_its_crossing_edges_are_used():
    # complete_bipartite_graph(3, 2): every source neuron to every target neuron
    full = pairs(None, "complete_bipartite_graph", {}, 0, False, 3, 2, same_node=False)
    assert full == {(j, i) for j in range(3) for i in range(2)}
    bip = nx.algorithms.bipartite.random_graph(3, 2, 0.5, seed=1)
    got = pairs(None, "bipartite.random_graph", {"p": 0.5}, 1, False, 3, 2, same_node=False)
    assert got == {(min(u, v), max(u, v) - 3) for u, v in bip.edges()}
    # a path 0-1-2-3-4 over 2 source + 3 target vertices crosses once: 1-2 -> source 1, target 0
    assert pairs(None, "path_graph", {}, 0, False, 2, 3, same_node=False) == {(1, 0)}
    # two different nodes of the same size: bipartite numbering too (no "self-loops" between them)
    same_size = pairs(None, "complete_graph", {}, 0, False, 2, 2, same_node=False)
    assert same_size == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_edge_lists_are_sorted_by_target_and_checked():
    src, dst = connections([(2, 0), (0, 1), (1, 0)], None, {}, 0, False, 3, 2, same_node=False)
    assert src.tolist() == [1, 2, 0] and dst.tolist() == [0, 0, 1]
    with pytest.raises(SpecError, match="self-loop") as err:
        connections([(0, 1), (1, 1)], None, {}, 0, False, 3, 3, same_node=True)
    assert err.value.path == "edges[1]"
    assert pairs([(1, 1)], None, {}, 0, True, 3, 3) == {(1, 1)}
    assert pairs([(1, 1)], None, {}, 0, False, 3, 3, same_node=False) == {(1, 1)}


@pytest.mark.parametrize(("n_s", "n_t", "same"), [(50, 50, True), (40, 30, False)])
def test_random_topology_draws_exactly_that_many_distinct_edges(n_s, n_t, same):
    src, dst = connections(None, "random", {"edges": 700}, 3, False, n_s, n_t, same_node=same)
    assert len(src) == 700
    assert len(set(zip(src.tolist(), dst.tolist()))) == 700
    assert int(src.max()) < n_s and int(dst.max()) < n_t
    assert bool((src != dst).all()) == same or not same
    again = connections(None, "random", {"edges": 700}, 3, False, n_s, n_t, same_node=same)
    assert torch.equal(again[0], src) and torch.equal(again[1], dst)  # seeded
    other = connections(None, "random", {"edges": 700}, 4, False, n_s, n_t, same_node=same)
    assert not torch.equal(other[0], src)


def test_random_topology_with_a_probability_is_near_its_expectation():
    src, _ = connections(None, "random", {"p": 0.1}, 0, False, 200, 200, same_node=True)
    expected = 0.1 * 200 * 199
    assert abs(len(src) - expected) < 5 * (expected * 0.9) ** 0.5


def test_known_generators():
    assert known_generator("watts_strogatz_graph") and known_generator("random")
    assert known_generator("complete_bipartite_graph") and known_generator("bipartite.gnmk_random_graph")
    for name in ("os", "_private", "nope", "shortest_path", "Graph", "bipartite.math", "bipartite.nx"):
        assert not known_generator(name), name
