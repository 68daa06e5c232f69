"""The Python builder refuses what YAML refuses and does not drop settings (issue 15, item 14)."""

import pytest

import pcgraph


def test_a_repeated_node_is_refused():
    g = pcgraph.Graph("t")
    g.node("h", 3)
    with pytest.raises(ValueError, match="node 'h' is declared twice"):
        g.node("h", 4)


def test_section_calls_add_up():
    g = pcgraph.Graph("t")
    g.node("x", 2, observed=True)
    g.node("y", 2)
    g.edge("x", "y", "linear")
    g.inference(steps=5).inference(init="zeros").inference(steps=7)
    spec = g.spec()
    assert (spec.inference.steps, spec.inference.init) == (7, "zeros")
