"""Problems across spec sections (pcgraph.spec.problems): node roles against the data section, and
every setting a cyclic graph breaks, reported together."""

from pathlib import Path

import pytest

import pcgraph
from pcgraph.errors import SpecError
from pcgraph.spec import spec_from_yaml
from pcgraph.spec.problems import cycle_problems, role_problems
from tests.strategies import SMALL_SPEC

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/*/*.yaml"), *ROOT.glob("examples/*.yaml")])

CYCLIC = """\
name: loop
graph:
  nodes:
    image: {shape: [64], role: observed}
    h: {shape: [8]}
    g: {shape: [8]}
    label: {shape: [10], role: observed}
  edges:
    - {from: image, to: h, fn: [linear]}
    - {from: h, to: g, fn: [linear]}
    - {from: g, to: h, fn: [linear]}
    - {from: g, to: label, fn: [linear]}
data: {dataset: digits}
"""


def roles(text: str) -> list[tuple[str, str]]:
    spec = spec_from_yaml(text)
    return role_problems(spec.data, spec.graph.nodes)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_agree_with_their_roles(path):
    spec = pcgraph.load_spec(path)
    if spec.data is not None:
        assert role_problems(spec.data, spec.graph.nodes) == []


@pytest.mark.parametrize(("data", "path", "words"), [
    ("{dataset: digits, target: h}", "data.target", "'h' is a latent node, which is inferred, not clamped: declare it "
     "`role: observed` (graph.nodes.h.role)"),
    ("{dataset: digits, input: 'image[0:2]'}", "data.input", "image[0:2] clamps part of 'image' and leaves the rest "
     "to inference, so 'image' is latent: remove `role: observed` from graph.nodes.image"),
    ("{dataset: digits, target: null}", "graph.nodes.label.role", "'label' is observed, but the data section clamps "
     "nothing to it (data.input: image, data.target: None)"),
])
def test_a_role_the_data_contradicts_is_named_with_the_fix(data, path, words):
    found = roles(SMALL_SPEC + f"data: {data}\n")
    assert [p for p, _ in found] == [path] + (["graph.nodes.label.role"] if path == "data.target" else [])
    assert words in found[0][1]


def test_a_latent_population_may_have_clamped_ranges():
    """The neuron-level memory clamps ranges of one latent node and infers the rest: no problem."""
    text = ("name: m\ngraph:\n  nodes: {x: {shape: [20]}}\n  edges: [{from: x, to: x, fn: [tanh, {kind: sparse, "
            "generator: complete_graph}]}]\ninference: {init: zeros}\n"
            "data: {dataset: digits, input: 'x[0:8]', target: 'x[8:18]', complete: 'x[4:8]'}\n")
    assert roles(text) == []


def test_every_setting_a_cycle_breaks_is_reported_together():
    text = CYCLIC + "learning: {variant: exact}\n"
    found = cycle_problems(spec_from_yaml(text), ["h", "g"])
    assert [p for p, _ in found] == ["inference.init", "train.eval", "learning.variant"]
    assert all("h -> g -> h" in m for _, m in found)
    assert cycle_problems(spec_from_yaml(text), None) == []
    fixed = CYCLIC + "inference: {init: zeros}\ntrain: {eval: inference}\n"
    assert cycle_problems(spec_from_yaml(fixed), ["h", "g"]) == []


def test_compile_reports_a_cyclic_graphs_problems_at_once():
    with pytest.raises(SpecError) as info:
        pcgraph.compile(spec_from_yaml(CYCLIC))
    assert [p for p, _ in info.value.problems] == ["inference.init", "train.eval"]


def test_compile_refuses_data_on_a_latent_node():
    with pytest.raises(SpecError) as info:
        pcgraph.compile(spec_from_yaml(SMALL_SPEC.replace("label: {shape: [2], role: observed}", "label: {shape: [2]}")
                                       + "data: {dataset: digits}\n"))
    assert info.value.problems[0][0] == "data.target" and "latent" in str(info.value)
