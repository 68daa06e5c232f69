"""Classification and reconstruction objectives and the backprop baseline, against the same
computations written out with plain torch modules."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import Normalize

import pcgraph
from pcgraph.data import Dataset
from pcgraph.errors import SpecError
from pcgraph.tasks.objective import Backprop, Objective
from pcgraph.tasks.train import prepare

AE = """
name: ae
graph:
  nodes:
    z: {shape: [3]}
    h: {shape: [5]}
    x: {shape: [6], role: observed}
  edges:
    - {from: z, to: h, fn: [linear, tanh]}
    - {from: h, to: x, fn: [linear, sigmoid]}
inference: {steps: 6, optimizer: {kind: sgd, lr: 0.1}}
bp:
  encoder: {from: x, to: z, fn: [{kind: linear, features: 4}, tanh, linear]}
data: {dataset: digits, input: x, target: null, normalize: unit, test_batch_size: 3}
train: {eval: inference}
"""


def ae_spec(**changes):
    spec = pcgraph.spec_from_yaml(AE)
    return spec.model_copy(update=changes) if changes else spec


def test_reconstruction_mse_decodes_from_the_inferred_root():
    torch.manual_seed(0)
    spec = ae_spec()
    graph = pcgraph.compile(spec).double()
    solver = pcgraph.Solver.from_spec(spec)
    x = torch.rand(7, 6, dtype=torch.float64)
    got = Objective(spec, graph).evaluate(graph, solver, x, torch.zeros(7))
    expected = 0.0
    for i in range(0, 7, 3):  # test batches of 3, as the spec says
        z = solver.relax(graph, {"x": x[i:i + 3]}).states["z"]
        e0, e1 = graph.edges  # decoder by hand: x_hat = sigmoid(W1 tanh(W0 z + b0) + b1)
        with torch.no_grad():
            x_hat = torch.sigmoid(e1.pipeline[0](torch.tanh(e0.pipeline[0](z))))
        expected += float(((x_hat - x[i:i + 3]) ** 2).sum())
    assert got == pytest.approx(expected / x.numel(), rel=1e-12)


def test_backprop_autoencoder_loss_is_the_input_energy():
    torch.manual_seed(1)
    spec = ae_spec()
    graph = pcgraph.compile(spec).double()
    model = Backprop(spec, graph).double()
    x = torch.rand(4, 6, dtype=torch.float64)
    enc = model.encoder.pipeline
    with torch.no_grad():
        z = enc[2](torch.tanh(enc[0](x)))
        x_hat = torch.sigmoid(graph.edges[1].pipeline[0](torch.tanh(graph.edges[0].pipeline[0](z))))
        assert float(model.loss({"x": x})) == pytest.approx(float(0.5 * ((x - x_hat) ** 2).sum() / 4), rel=1e-12)
        assert torch.allclose(model.predict(x), x_hat)
    n_enc = 6 * 4 + 4 + 4 * 3 + 3
    assert sum(p.numel() for p in model.parameters()) == graph.num_params() + n_enc


def test_backprop_classifier_is_the_same_graph():
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    graph = pcgraph.compile(spec)
    model = Backprop(spec, graph)
    assert model.encoder is None
    assert {id(p) for p in model.parameters()} == {id(p) for p in graph.parameters()}


def test_backprop_leaves_the_amortised_encoders_to_pc():
    """graph.encoders propose PC's initial latents: the baseline neither trains nor counts them."""
    d = pcgraph.load_spec("specs/digits_mlp.yaml").model_dump(mode="json", exclude_none=True)
    d["graph"]["encoders"] = [{"from": "image", "to": "h2", "fn": ["linear"]}]
    d["inference"]["init"] = "amortised"
    d["train"]["epochs"] = 1
    spec = pcgraph.spec_from_dict(d)
    graph = pcgraph.compile(spec)
    encoders = {id(p) for p in graph.encoders.parameters()}
    trained = Backprop(spec, graph).trained_parameters()
    assert encoders and not encoders & {id(p) for p in trained}
    assert {id(p) for p in trained} | encoders == {id(p) for p in graph.parameters()}
    result = pcgraph.train(spec, method="bp", progress=False, log=lambda s: None)
    assert result.params == graph.num_params() - 64 * 64 - 64


@pytest.mark.parametrize(("encoder", "path", "words"), [
    ({"from": "h", "to": "z", "fn": ["linear"]}, "bp.encoder.from", "must read the data input 'x'"),
    ({"from": "x", "to": "h", "fn": ["linear"]}, "bp.encoder.to", "root latent ['z']"),
    ({"from": "x", "to": "z", "fn": [{"kind": "linear", "features": 5}]}, "bp.encoder.fn", "[5]"),
])
def test_bad_encoders_name_the_field(encoder, path, words):
    data = ae_spec().model_dump(mode="json", by_alias=True)
    data["bp"]["encoder"] = encoder
    spec = pcgraph.spec_from_dict(data)
    with pytest.raises(SpecError) as err:
        Backprop(spec, pcgraph.compile(spec))
    assert path in str(err.value) and words in str(err.value)


def test_encoder_on_a_classifier_is_refused():
    data = pcgraph.load_spec("specs/digits_mlp.yaml").model_dump(mode="json", by_alias=True)
    data["bp"] = {"encoder": {"from": "image", "to": "h1"}}
    spec = pcgraph.spec_from_dict(data)
    with pytest.raises(SpecError, match="bp.encoder"):
        Backprop(spec, pcgraph.compile(spec))


def test_reconstruction_needs_a_predicted_input():
    data = ae_spec().model_dump(mode="json", by_alias=True)
    data["data"]["input"] = "z"
    spec = pcgraph.spec_from_dict(data)
    with pytest.raises(SpecError, match="data.input"):
        Objective(spec, pcgraph.compile(spec))


def rgb_spec(normalize):
    g = pcgraph.Graph("rgb")
    g.node("image", (3, 4, 4), observed=True)
    g.node("label", 10, observed=True)
    g.edge("image", "label", "flatten", "linear")
    g.data(dataset="cifar10", input="image", target="label", normalize=normalize)
    return g.spec()


def test_per_channel_standardisation_matches_torchvision():
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    spec = rgb_spec({"mean": mean, "std": std})
    images = torch.rand(5, 3, 4, 4)
    data = Dataset("cifar10", images, torch.zeros(5, dtype=torch.long), images[:2], torch.zeros(2, dtype=torch.long))
    x, _, x_test, _ = prepare(data, spec.data, pcgraph.compile(spec), "cpu")
    assert torch.allclose(x, Normalize(mean, std)(images), atol=1e-6)
    assert torch.allclose(x_test, Normalize(mean, std)(images[:2]), atol=1e-6)


def test_standardisation_with_the_wrong_channel_count():
    spec = rgb_spec({"mean": [0.5], "std": [0.5]})
    images = torch.rand(2, 3, 4, 4)
    data = Dataset("cifar10", images, torch.zeros(2, dtype=torch.long), images, torch.zeros(2, dtype=torch.long))
    with pytest.raises(SpecError) as err:
        prepare(data, spec.data, pcgraph.compile(spec), "cpu")
    assert "data.normalize" in str(err.value) and "expected 3 per-channel values" in str(err.value)


def test_classification_batch_is_one_hot():
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    task = Objective(spec, pcgraph.compile(spec))
    batch = task.batch(torch.rand(3, 64), torch.tensor([1, 0, 9]))
    assert torch.equal(batch["label"], F.one_hot(torch.tensor([1, 0, 9]), 10).float())
    assert task.metric == "accuracy" and task.higher_is_better
