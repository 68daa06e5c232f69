"""The spec format: shipped specs, YAML round trips, the builder, bad specs and the JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import pcgraph
from pcgraph import Graph, SpecError, compile, json_schema, load_spec, spec_from_yaml
from pcgraph.ops import OPS
from tests.strategies import SMALL_SPEC

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
SPEC_IDS = [p.stem for p in SPECS]


def test_specs_are_shipped():
    assert {"digits_mlp", "mnist_mlp", "fmnist_mlp"} <= set(SPEC_IDS)


# --- shipped specs ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_shipped_spec_loads_and_compiles(path):
    spec = load_spec(path)
    assert isinstance(spec, pcgraph.GraphSpec)
    graph = compile(spec)
    assert isinstance(graph, pcgraph.CompiledGraph)
    assert graph.num_params() > 0
    assert len(graph.edges) == len(spec.graph.edges)
    assert set(graph.nodes) - set(graph.delayed) == set(spec.graph.nodes)  # + "x@prev" per delayed source


@pytest.mark.parametrize("name", ["mnist_mlp", "fmnist_mlp"])
def test_mnist_mlp_sizes(name):
    graph = compile(load_spec(ROOT / "specs" / f"{name}.yaml"))
    assert graph.num_params() == 134_794
    assert graph.states_per_sample() == 384


def test_digits_mlp_sizes():
    graph = compile(load_spec(ROOT / "specs" / "digits_mlp.yaml"))
    # 64 -> 64 -> 64 -> 10, every linear layer with a bias.
    sizes = [64, 64, 64, 10]
    expected = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
    assert expected == 8970
    assert graph.num_params() == expected
    # image and label are observed (clamped); the two hidden layers are inferred.
    assert graph.states_per_sample() == 64 + 64
    assert graph.states_per_sample(clamped={"image"}) == 64 + 64 + 10


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_yaml_round_trip(path):
    spec = load_spec(path)
    text = spec.to_yaml()
    again = spec_from_yaml(text)
    assert again == spec
    assert again.to_yaml() == text
    resolved = spec.to_yaml(resolved=True)  # every default written out: the same spec
    assert spec_from_yaml(resolved) == spec and len(resolved) > len(text)
    assert spec_from_yaml(resolved).to_yaml(resolved=True) == resolved


NON_DEFAULT = """
name: rt
description: every section set away from its defaults
graph:
  nodes:
    a: {shape: [4], role: observed}
    b: {shape: [3, 2], prior: {mean: 0.5, precision: 2.0}}
    c: {shape: [5], energy: {kind: gaussian, precision: 3.0}}
    d: {shape: [6], energy: categorical}
  edges:
    - {from: b, to: c, fn: [flatten, {kind: linear, bias: false, init: zeros}, tanh]}
    - {from: [a, c], to: d, fn: [{kind: leaky_relu, negative_slope: 0.2}, linear]}
    - {from: b, to: a, fn: [flatten, {kind: linear, features: 4}, identity], combine: add}
inference: {steps: 3, init: zeros, optimizer: OPTIMIZER, tol: 0.001, check_every: 2}
learning: {optimizer: {kind: sgd, lr: 0.01, options: {momentum: 0.9}}, variant: incremental}
data: {dataset: digits, input: a, target: null, batch_size: 7, normalize: unit}
train: {epochs: 2, seed: 5, eval: inference}
"""


@pytest.mark.parametrize("optimizer", [
    "euler", "{kind: euler, alpha: 0.3, dt: 0.5}", "adam", "{kind: adam, lr: 0.05, betas: [0.8, 0.9]}",
    "{kind: sgd, lr: 0.2}",
])
def test_round_trip_of_non_default_settings(optimizer):
    spec = spec_from_yaml(NON_DEFAULT.replace("OPTIMIZER", optimizer))
    compile(spec)
    again = spec_from_yaml(spec.to_yaml())
    assert again == spec
    assert again.inference.optimizer == spec.inference.optimizer
    assert again.data.target is None


def _digits_builder() -> Graph:
    g = Graph("digits-mlp", "64-64-64-10 PC classifier of the embedded 8x8 digits; softmax label node.")
    image = g.node("image", [64], observed=True)
    h1 = g.node("h1", [64])
    h2 = g.node("h2", [64])
    label = g.node("label", [10], observed=True, energy="categorical")
    g.edge(image, h1, {"kind": "linear", "init": "xavier_uniform"}, "leaky_relu")
    g.edge(h1, h2, {"kind": "linear", "init": "xavier_uniform"}, "leaky_relu")
    g.edge(h2, label, {"kind": "linear", "init": "xavier_uniform"})
    g.inference(steps=8, init="forward", optimizer={"kind": "sgd", "lr": 0.1, "momentum": 0.5})
    g.learning(optimizer={"kind": "adam", "lr": 1.0e-3})
    g.data(dataset="digits", input="image", target="label", batch_size=32)
    g.train(epochs=20, seed=0)
    return g


def test_builder_matches_yaml():
    reference = load_spec(ROOT / "specs" / "digits_mlp.yaml")
    built = _digits_builder().spec()
    assert built == reference
    assert spec_from_yaml(built.to_yaml()) == reference
    assert built.to_yaml() == reference.to_yaml()


def test_builder_accepts_op_objects():
    from pcgraph.ops import parse_op

    g = Graph("ops")
    a = g.node("a", 4, observed=True)
    b = g.node("b", 3)
    g.edge(a, b, parse_op({"kind": "linear", "bias": False}), parse_op("relu"))
    spec = g.spec()
    assert spec == spec_from_yaml(
        "name: ops\ngraph:\n  nodes: {a: {shape: [4], role: observed}, b: {shape: [3]}}\n"
        "  edges: [{from: a, to: b, fn: [{kind: linear, bias: false}, relu]}]\n"
    )
    assert spec_from_yaml(spec.to_yaml()) == spec
    assert compile(spec).num_params() == 12


def test_builder_matches_the_shipped_neuron_level_and_recurrent_specs():
    g = Graph("digits-fc", "fully connected 138-neuron PC graph; pixels x[0:64], label x[64:74], 64 hidden neurons.")
    g.node("x", 138)
    g.edge("x", "x", "tanh", {"kind": "sparse", "generator": "complete_graph"})
    g.inference(steps=20, init="zeros", optimizer={"kind": "sgd", "lr": 0.1, "momentum": 0.5})
    g.learning(optimizer={"kind": "adam", "lr": 1.0e-3}, schedule="cosine")
    g.data(dataset="digits", input="x[0:64]", target="x[64:74]", batch_size=32)
    g.train(epochs=20, seed=0, eval="inference")
    assert g.spec() == load_spec(ROOT / "specs" / "digits_fc.yaml")
    r = Graph("r")
    r.node("x", 2, prior={"mean": 0.0, "precision": 1.0})
    r.edge("x", "x", {"kind": "linear", "bias": False}, delay=1)
    assert r.spec().graph.edges[0].delay == 1


def test_builder_errors_carry_yaml_paths():
    g = Graph("bad")
    g.node("a", 4, observed=True)
    g.node("b", 3)
    g.edge("a", "b", {"kind": "leaky_relu", "negative_slope": "steep"})
    with pytest.raises(SpecError) as info:
        g.spec()
    assert info.value.path == "graph.edges[0].fn[0].negative_slope"


# --- bad specs -------------------------------------------------------------------------------

BASE = SMALL_SPEC


def _sub(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (id, YAML text, stage that must reject it, expected SpecError.path, message fragment)
BAD_SPECS = [
    ("unknown-top-field", BASE + "colour: red\n", "parse", "colour", "unknown field"),
    ("unknown-node-field", _sub("h:     {shape: [3]}", "h:     {shape: [3], size: 3}"),
     "parse", "graph.nodes.h.size", "unknown field"),
    ("missing-name", _sub("name: t\n", ""), "parse", "name", "required field is missing"),
    ("missing-shape", _sub("h:     {shape: [3]}", "h:     {role: latent}"),
     "parse", "graph.nodes.h.shape", "required field is missing"),
    ("wrong-type", BASE + "inference: {steps: many}\n", "parse", "inference.steps", "valid integer"),
    ("negative-shape", _sub("{shape: [3]}", "{shape: [-3]}"), "parse", "graph.nodes.h.shape[0]",
     "expected positive integers, got -3"),
    ("negative-lr", BASE + "learning: {optimizer: {kind: adam, lr: -0.1}}\n", "parse",
     "learning.optimizer.lr", "greater than 0, got -0.1"),
    ("negative-state-lr", BASE + "inference: {optimizer: {kind: sgd, lr: -0.5}}\n", "parse",
     "inference.optimizer.lr", "greater than 0"),
    ("momentum-too-big", BASE + "inference: {optimizer: {kind: sgd, momentum: 1.5}}\n", "parse",
     "inference.optimizer.momentum", "less than 1"),
    ("bad-precision", _sub("{shape: [3]}", "{shape: [3], energy: {kind: gaussian, precision: 0}}"),
     "parse", "graph.nodes.h.energy.precision", "greater than 0"),
    ("unknown-energy", _sub("{shape: [3]}", "{shape: [3], energy: poisson}"), "parse",
     "graph.nodes.h.energy", "poisson"),
    ("unknown-op", _sub("fn: [linear]}", "fn: [linaer]}"), "parse", "graph.edges[1].fn[0]",
     "unknown op 'linaer'"),
    ("bad-op-argument", _sub("fn: [linear, leaky_relu]", "fn: [linear, {kind: leaky_relu, negative_slope: steep}]"),
     "parse", "graph.edges[0].fn[1].negative_slope", "valid number"),
    ("unknown-op-argument", _sub("fn: [linear, leaky_relu]", "fn: [{kind: linear, size: 3}, leaky_relu]"),
     "parse", "graph.edges[0].fn[0].size", "unknown field"),
    ("bad-combine", _sub("fn: [linear]}", "fn: [linear], combine: cat}"), "parse",
     "graph.edges[1].combine", "'concat', 'add' or 'mul'"),
    ("unknown-state-optimizer", BASE + "inference: {optimizer: {kind: rmsprop}}\n", "parse",
     "inference.optimizer", "rmsprop"),
    ("unknown-torch-optimizer", BASE + "learning: {optimizer: {kind: adamm}}\n", "parse",
     "learning.optimizer.kind", "unknown torch.optim optimizer 'adamm'"),
    ("unknown-dataset", BASE + "data: {dataset: cifar}\n", "parse", "data.dataset", "cifar"),
    ("duplicate-key", _sub("name: t\n", "name: t\nname: u\n"), "parse", "", "duplicate key 'name'"),
    ("invalid-yaml", BASE + "inference: {steps: [1, 2}\n", "parse", "", "invalid YAML: line 10"),
    ("not-a-mapping", "- a\n- b\n", "parse", "", "expected a mapping"),
    ("unknown-to", _sub("to: label", "to: lable"), "compile", "graph.edges[1].to", "unknown node 'lable'"),
    ("unknown-from", _sub("from: h, ", "from: hh,"), "compile", "graph.edges[1].from", "unknown node 'hh'"),
    ("unknown-multi-from", _sub("from: h, ", "from: [image, hx],"), "compile", "graph.edges[1].from[1]",
     "unknown node 'hx'"),
    ("source-twice", _sub("from: h, ", "from: [h, h],"), "compile", "graph.edges[1].from", "listed twice"),
    ("shape-mismatch", _sub("fn: [linear]}", "fn: [{kind: linear, features: 5}]}"), "compile",
     "graph.edges[1].fn", "outputs shape [5] but target node 'label' has shape [2]"),
    ("op-cannot-take-input", _sub("fn: [linear]}", "fn: [linear, {kind: unflatten, shape: [3, 3]}]}"),
     "compile", "graph.edges[1].fn[1]", "op 'unflatten' cannot take input of shape [2]"),
    ("concat-incompatible",
     _sub("from: h, ", "from: [image, h],", _sub("{shape: [4], role", "{shape: [4, 2], role",
                                                 _sub("fn: [linear, leaky_relu]", "fn: [flatten, linear]"))),
     "compile", "graph.edges[1].from", "combine: concat needs"),
    ("add-incompatible", _sub("fn: [linear]}", "fn: [linear], combine: add}", _sub("from: h, ", "from: [image, h],")),
     "compile", "graph.edges[1].from", "combine: add needs equal shapes"),
    ("unconnected-node", _sub("    label:", "    lonely: {shape: [5]}\n    label:"), "compile",
     "graph.nodes.lonely", "not connected"),
    ("prior-on-predicted", _sub("{shape: [3]}", "{shape: [3], prior: {mean: 1.0}}"), "compile",
     "graph.nodes.h.prior", "predicted by an edge"),
    ("categorical-with-outgoing", _sub("{shape: [3]}", "{shape: [3], energy: categorical}"), "compile",
     "graph.nodes.h.energy", "categorical node must be a leaf"),
    ("cycle-forward-init", BASE + "    - {from: label, to: image, fn: [linear]}\n", "compile",
     "inference.init", "cycle"),
    ("data-input-unknown", BASE + "data: {dataset: digits, input: img}\n", "compile", "data.input",
     "unknown node 'img'"),
    ("data-target-unknown", BASE + "data: {dataset: digits, target: y}\n", "compile", "data.target",
     "unknown node 'y'"),
    ("no-nodes", "name: t\ngraph: {nodes: {}}\n", "compile", "graph.nodes", "at least one node"),
]


@pytest.mark.parametrize(("text", "stage", "path", "fragment"), [c[1:] for c in BAD_SPECS],
                         ids=[c[0] for c in BAD_SPECS])
def test_bad_spec(text, stage, path, fragment):
    if stage == "parse":
        with pytest.raises(SpecError) as info:
            spec_from_yaml(text)
    else:
        spec = spec_from_yaml(text)  # valid field by field: only the compiler can tell
        with pytest.raises(SpecError) as info:
            compile(spec)
    err = info.value
    assert err.path == path
    assert err.problems and err.problems[0][0] == path
    assert fragment in str(err)
    assert isinstance(err, ValueError)
    if path:
        assert str(err).startswith(f"{path}: ")


def test_bad_spec_table_is_large_enough():
    assert len(BAD_SPECS) >= 15
    assert len({c[0] for c in BAD_SPECS}) == len(BAD_SPECS)


def test_bad_specs_fail_the_same_way_from_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(_sub("to: label", "to: lable"))
    with pytest.raises(SpecError) as info:
        compile(load_spec(path))
    assert info.value.path == "graph.edges[1].to"


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "cannot read spec file" in str(info.value)
    assert "nope.yaml" in str(info.value)

@pytest.mark.parametrize(("shape", "path", "message"), [
    ("[-3]", "graph.nodes.h.shape[0]", "expected positive integers, got -3"),  # once: no 'at least 1 item' too
    ("[3, 0, -1]", "graph.nodes.h.shape[1]", "expected positive integers, got 0, -1"),
    ("-3", "graph.nodes.h.shape", "expected positive integers, got -3"),
    ("[2.5]", "graph.nodes.h.shape[0]", "expected positive integers, got 2.5"),
    ("[]", "graph.nodes.h.shape", "expected a positive integer or a non-empty list of them, got []"),
])
def test_a_bad_shape_is_one_problem(shape, path, message):
    with pytest.raises(SpecError) as info:
        spec_from_yaml(_sub("{shape: [3]}", "{shape: " + shape + "}"))
    assert info.value.problems == [(path, message)]



def test_three_mistakes_three_problems():
    text = _sub("name: t\n", "") + "colour: red\ninference: {steps: 0}\n"
    with pytest.raises(SpecError) as info:
        spec_from_yaml(text)
    err = info.value
    assert len(err.problems) == 3
    assert {p for p, _ in err.problems} == {"name", "colour", "inference.steps"}
    assert len(str(err).splitlines()) == 3


def test_compile_reports_every_problem_of_a_category():
    text = _sub("to: label", "to: lable", _sub("from: h, ", "from: hh,"))
    with pytest.raises(SpecError) as info:
        compile(spec_from_yaml(text))
    assert [p for p, _ in info.value.problems] == ["graph.edges[1].from", "graph.edges[1].to"]


def test_cycle_is_fine_without_forward_init():
    text = BASE + "    - {from: label, to: image, fn: [linear]}\ninference: {init: zeros}\n"
    graph = compile(spec_from_yaml(text))
    assert not graph.acyclic


# --- JSON Schema -----------------------------------------------------------------------------


def test_json_schema():
    schema = json_schema()
    assert isinstance(schema, dict)
    assert {"graph", "inference", "learning", "data", "train"} <= set(schema["properties"])
    text = json.dumps(schema)  # JSON-serialisable
    for kind in OPS:
        assert f'"{kind}"' in text, kind


def test_json_schema_accepts_every_shipped_spec_and_rejects_unknown_fields():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(json_schema())
    for path in SPECS:
        data = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(data)), path
        next(iter(data["graph"]["nodes"].values()))["colour"] = "red"
        assert list(validator.iter_errors(data))


@pytest.mark.parametrize(("path", "value"), [
    ("inference.optimizer.lr", ".inf"), ("learning.optimizer.lr", ".inf"), ("graph.nodes.y.energy.precision", ".inf"),
    ("graph.nodes.z.prior.mean", ".nan"), ("graph.edges[0].scale", ".inf"),
])
def test_non_finite_numbers_are_spec_errors_with_their_path(path, value):
    """Issue 15, item 9: .inf / .nan pass no field (they used to validate and then "diverge")."""
    text = f"""
name: t
graph:
  nodes:
    x: {{shape: [2], role: observed}}
    z: {{shape: [2], prior: {{mean: {value if 'mean' in path else 0.0}}}}}
    y: {{shape: [2], role: observed, energy: {{kind: gaussian, precision: {value if 'precision' in path else 1.0}}}}}
  edges:
    - {{from: [x, z], to: y, fn: linear, scale: {value if 'scale' in path else 1.0}}}
inference: {{optimizer: {{kind: sgd, lr: {value if path.startswith('inference') else 0.1}}}}}
learning: {{optimizer: {{lr: {value if path.startswith('learning') else 0.001}}}}}
"""
    with pytest.raises(pcgraph.SpecError, match=re.escape(path)):
        pcgraph.spec_from_yaml(text)
