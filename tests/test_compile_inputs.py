"""Bad arguments to compile and bad batches get messages naming the argument or node, not raw torch
errors (issue 15, items 10 and 13)."""

import pytest
import torch

import pcgraph
from pcgraph.cli import main
from pcgraph.errors import UsageError
from tests.strategies import SMALL_SPEC


def classifier(dtype=None):
    """image (4) -> h (3) -> label (2, categorical)."""
    g = pcgraph.Graph("t")
    x = g.node("image", 4, observed=True)
    h = g.node("h", 3)
    y = g.node("label", 2, observed=True, energy="categorical")
    g.edge(x, h, "linear", "tanh")
    g.edge(h, y, "linear")
    spec = g.spec()
    return spec, pcgraph.compile(spec, dtype=dtype)


def batch(b=5, dtype=torch.float32):
    labels = torch.arange(b) % 2
    return {"image": torch.rand(b, 4, dtype=dtype), "label": torch.nn.functional.one_hot(labels, 2).to(dtype)}


# --- compile's arguments -----------------------------------------------------------------------

@pytest.mark.parametrize("wrong", [{"name": "t"}, "specs/digits_mlp.yaml", None])
def test_compile_takes_a_spec_and_says_how_to_get_one(wrong):
    with pytest.raises(TypeError, match=r"compile\(\) takes a GraphSpec, got \w+: validate a dict with "
                                        r"pcgraph\.spec_from_dict"):
        pcgraph.compile(wrong)


def test_a_dict_validated_first_compiles():
    spec, _ = classifier()
    assert isinstance(pcgraph.compile(pcgraph.spec_from_dict(spec.model_dump(by_alias=True))), pcgraph.CompiledGraph)


@pytest.mark.parametrize("max_bytes", [0, -1, float("nan"), "8e9", True])
def test_compile_max_bytes_must_be_positive(max_bytes):
    spec, _ = classifier()
    with pytest.raises(UsageError, match=r"compile\(max_bytes=\.\.\.\) must be a positive number of bytes"):
        pcgraph.compile(spec, max_bytes=max_bytes)


@pytest.mark.parametrize("dtype", [torch.int64, "float64", torch.complex64])
def test_compile_dtype_must_be_a_floating_dtype(dtype):
    spec, _ = classifier()
    with pytest.raises(TypeError, match=r"compile\(dtype=\.\.\.\) takes a floating-point torch\.dtype"):
        pcgraph.compile(spec, dtype=dtype)


# --- PCGRAPH_MAX_BYTES -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["abc", "-1", "0", "nan", "inf", "", "8 GiB"])
def test_bad_max_bytes_variable_is_named(monkeypatch, text):
    spec, _ = classifier()
    monkeypatch.setenv("PCGRAPH_MAX_BYTES", text)
    with pytest.raises(UsageError, match=rf"PCGRAPH_MAX_BYTES must be a positive number of bytes \(e\.g\. 8e9\), "
                                         rf"got {text!r}"):
        pcgraph.compile(spec)


def test_max_bytes_variable_takes_float_notation_and_small_limits_read_well(monkeypatch):
    spec, _ = classifier()
    monkeypatch.setenv("PCGRAPH_MAX_BYTES", "1e9")
    pcgraph.compile(spec)
    monkeypatch.setenv("PCGRAPH_MAX_BYTES", "100")
    with pytest.raises(pcgraph.SpecError, match=r"over the limit of 9.31e-08 GiB"):
        pcgraph.compile(spec)


def test_bad_max_bytes_variable_is_one_cli_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PCGRAPH_MAX_BYTES", "abc")
    path = tmp_path / "s.yaml"
    path.write_text(SMALL_SPEC)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PCGRAPH_MAX_BYTES" in err[0] and "'abc'" in err[0]


# --- batches -----------------------------------------------------------------------------------

def relax(graph, values):
    return pcgraph.Solver(steps=2).relax(graph, values)


@pytest.mark.parametrize("run", [relax, lambda graph, values: graph(values), lambda graph, values: graph.bp_loss(values)])
def test_empty_batch_dict(run):
    _, graph = classifier()
    with pytest.raises(UsageError, match=r"batch is empty: give at least one node's values \(observed nodes: "
                                         r"image, label\)"):
        run(graph, {})


@pytest.mark.parametrize("run", [relax, lambda graph, values: graph(values)])
def test_float64_batch_for_a_float32_graph(run):
    _, graph = classifier()
    with pytest.raises(TypeError, match=r"batch\['image'\] is torch\.float64 and the graph computes in "
                                        r"torch\.float32: convert the batch .* dtype=torch\.float64\)"):
        run(graph, batch(dtype=torch.float64))


def test_a_float64_graph_takes_float64_batches():
    _, graph = classifier(torch.float64)
    r = relax(graph, batch(dtype=torch.float64))
    assert r.states["h"].dtype == torch.float64
    with pytest.raises(TypeError, match="computes in torch.float64"):
        relax(graph, batch())


def test_the_checks_follow_a_graph_converted_after_its_first_batch():
    """A batch is checked against the graph as it is now: converting the graph after a batch, or
    loading tensors of another dtype into it with assign=True, changes what the next batch must be."""
    _, graph = classifier()
    relax(graph, batch())
    graph.double()
    with pytest.raises(TypeError, match="computes in torch.float64"):
        relax(graph, batch())
    assert relax(graph, batch(dtype=torch.float64)).states["h"].dtype == torch.float64
    graph.load_state_dict({k: v.float() for k, v in graph.state_dict().items()}, assign=True)
    with pytest.raises(TypeError, match="computes in torch.float32"):
        relax(graph, batch(dtype=torch.float64))


def test_a_graph_without_parameters_takes_the_batch_dtype():
    g = pcgraph.Graph("t")
    g.edge(g.node("x", 3, observed=True), g.node("y", 3), "tanh")
    graph = pcgraph.compile(g.spec())
    x = torch.rand(4, 3, dtype=torch.float64)
    assert relax(graph, {"x": x}).states["y"].dtype == torch.float64


@pytest.mark.parametrize("run", [relax, lambda graph, values: graph(values)])
def test_uint8_pixels_are_refused(run):
    _, graph = classifier()
    pixels = (torch.rand(5, 4) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"batch\['image'\] is torch\.uint8, and node states are floating point "
                                        r"\(torch\.float32\): convert it: x\.to\(torch\.float32\)"):
        run(graph, {"image": pixels})


def test_integer_labels_are_told_to_go_one_hot():
    _, graph = classifier()
    with pytest.raises(TypeError, match=r"batch\['label'\] is torch\.int64.*one_hot\(y, 2\)\.to\(torch\.float32\)"):
        relax(graph, {"image": torch.rand(5, 4), "label": torch.randint(0, 2, (5,))})


@pytest.mark.parametrize("run", [relax, lambda graph, values: graph(values)])
def test_wrong_shape_names_node_expected_and_got(run):
    _, graph = classifier()
    with pytest.raises(ValueError, match=r"batch\['image'\] has shape \[5, 3\]: node 'image' expects a \(B, 4\) "
                                         r"tensor \(per-sample shape \[4\], got \[3\]\)"):
        run(graph, {"image": torch.rand(5, 3)})


@pytest.mark.parametrize("run", [relax, lambda graph, values: graph(values)])
def test_batch_of_zero_samples(run):
    _, graph = classifier()
    with pytest.raises(ValueError, match=r"batch\['image'\] holds no samples \(batch size 0\)"):
        run(graph, {"image": torch.rand(0, 4)})


def test_unknown_node_in_a_feedforward_batch_is_refused():
    _, graph = classifier()
    with pytest.raises(KeyError, match=r"batch names unknown node 'imag' \(known: image, h, label\)"):
        graph({"imag": torch.rand(5, 4)})


@pytest.mark.parametrize("run", [relax, lambda graph, values: graph(values)])
def test_a_list_is_not_a_tensor(run):
    _, graph = classifier()
    with pytest.raises(TypeError, match=r"batch\['image'\] must be a \(B, 4\) tensor, got list"):
        run(graph, {"image": [[0.0] * 4] * 5})
    with pytest.raises(TypeError, match=r"batch must be a dict \{node: tensor\}, got list"):
        run(graph, [torch.rand(5, 4)])


def test_batch_sizes_must_agree_and_clamps_are_checked_alike():
    _, graph = classifier()
    with pytest.raises(ValueError, match=r"disagree on the batch size: \[4, 5\]"):
        relax(graph, {"image": torch.rand(5, 4), "label": batch(4)["label"]})
    with pytest.raises(TypeError, match=r"batch\['image'\] is torch\.float64"):
        relax(graph, {"image": pcgraph.Clamp(torch.rand(5, 4, dtype=torch.float64), slice(0, 2))})


def test_batch_on_another_device():
    _, graph = classifier()
    with pytest.raises(ValueError, match=r"batch\['image'\] is on meta and the graph on cpu"):
        relax(graph, {"image": torch.empty(5, 4, device="meta")})


def test_energy_of_incomplete_states_names_the_missing_nodes():
    _, graph = classifier()
    with pytest.raises(KeyError, match=r"states lack node\(s\) 'h', 'label'"):
        graph.energy({"image": torch.rand(5, 4)})
    states = graph(batch())
    assert graph.energy(states).shape == ()
