"""The op registry: parsing, serialisation, shape inference and registering new ops."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pcgraph import SpecError, compile, spec_from_yaml
from pcgraph.ops import OPS, Op, parse_op, register_op

BUILTIN = sorted(OPS)

# Non-default arguments for the ops that take any.
ARGS = {
    "leaky_relu": [{"negative_slope": 0.2}],
    "linear": [{"features": 5}, {"bias": False}, {"init": "zeros"},
               {"features": 3, "bias": False, "init": "xavier_normal"}],
    "unflatten": [{"shape": [2, 3]}],
    "conv2d": [{"out_channels": 4}, {"kernel_size": 5, "stride": 2, "padding": 1}, {"in_channels": 3, "init": "xavier_uniform"}],
    "conv_transpose2d": [{"stride": 2, "output_padding": 1}, {"bias": False}],
    "max_pool2d": [{"kernel_size": 3, "stride": 1}, {"padding": 1}],
    "avg_pool2d": [{"kernel_size": 4}],
    "sparse": [{"edges": [[0, 1]]}, {"generator": "cycle_graph", "bias": False},
               {"generator": "erdos_renyi_graph", "args": {"p": 0.5}, "seed": 3, "self_loops": True}],
}
WEIGHTED = {"linear", "conv2d", "conv_transpose2d", "sparse"}


def _required(kind: str) -> bool:
    """True when the op cannot be written as its bare name (some argument must be given)."""
    try:
        OPS[kind]()
    except ValidationError:
        return True
    return False


def test_builtin_ops_registered():
    assert {"identity", "relu", "tanh", "sigmoid", "gelu", "leaky_relu", "linear", "flatten",
            "unflatten", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"} <= set(OPS)
    for kind, cls in OPS.items():
        assert issubclass(cls, Op)
        assert cls.kind == kind


@pytest.mark.parametrize("kind", BUILTIN)
def test_parse_by_name(kind):
    if _required(kind):
        with pytest.raises(ValidationError):
            parse_op(kind)
        return
    op = parse_op(kind)
    assert isinstance(op, OPS[kind])
    assert op.kind == kind
    assert parse_op({"kind": kind}) == op
    assert parse_op(op) is op
    # every argument at its default: written as the bare name
    assert op.model_dump() == kind
    assert op.model_dump(mode="json") == kind


@pytest.mark.parametrize(("kind", "args"), [(k, a) for k in BUILTIN for a in ARGS.get(k, [])])
def test_dump_round_trip_with_arguments(kind, args):
    op = parse_op({"kind": kind, **args})
    dumped = op.model_dump()
    assert isinstance(dumped, dict) and dumped["kind"] == kind
    assert parse_op(dumped) == op
    assert parse_op(op.model_dump(mode="json")) == op
    assert set(dumped) == {"kind", *args}


@pytest.mark.parametrize("kind", BUILTIN)
def test_dump_round_trip(kind):
    if _required(kind):
        pytest.skip(f"{kind} has required arguments")
    op = parse_op(kind)
    assert parse_op(op.model_dump()) == op
    assert parse_op(op.model_dump(mode="json")) == op


def test_parse_errors():
    with pytest.raises(ValueError, match="unknown op 'conv9d'.*known:.*linear"):
        parse_op("conv9d")
    with pytest.raises(ValueError, match="unknown op"):
        parse_op({"kind": "conv9d"})
    with pytest.raises(ValueError, match="expected an op name or a mapping"):
        parse_op({"features": 3})
    with pytest.raises(ValueError, match="expected an op name or a mapping"):
        parse_op(3)
    with pytest.raises(ValidationError):
        parse_op({"kind": "linear", "feature": 3})
    with pytest.raises(ValidationError):
        parse_op({"kind": "linear", "features": 0})
    with pytest.raises(ValidationError):
        parse_op({"kind": "linear", "init": "he"})


def test_ops_are_frozen():
    op = parse_op({"kind": "linear", "features": 3})
    with pytest.raises(ValidationError):
        op.features = 4


def test_has_params():
    for kind in BUILTIN:
        op = parse_op({"kind": kind, **ARGS[kind][0]}) if _required(kind) else parse_op(kind)
        assert op.has_params == (kind in WEIGHTED), kind


@pytest.mark.parametrize(("kind", "fn"), [
    ("identity", lambda x: x),
    ("relu", torch.relu),
    ("tanh", torch.tanh),
    ("sigmoid", torch.sigmoid),
    ("gelu", nn.functional.gelu),
    ("leaky_relu", lambda x: nn.functional.leaky_relu(x, 0.01)),
])
def test_elementwise(kind, fn):
    x = torch.randn(4, 6)
    m = parse_op(kind).build((6,), (6,))
    torch.testing.assert_close(m(x), fn(x))
    assert sum(p.numel() for p in m.parameters()) == 0


def test_leaky_relu_slope():
    m = parse_op({"kind": "leaky_relu", "negative_slope": 0.3}).build((2,), (2,))
    torch.testing.assert_close(m(torch.tensor([[-1.0, 2.0]])), torch.tensor([[-0.3, 2.0]]))


# --- linear ----------------------------------------------------------------------------------


def test_linear_infers_features_from_target():
    m = parse_op("linear").build((4,), (7,))
    assert isinstance(m, nn.Linear)
    assert (m.in_features, m.out_features) == (4, 7)
    assert m(torch.zeros(2, 4)).shape == (2, 7)
    # on the last dimension of a multi-dimensional input and target
    m = parse_op("linear").build((3, 4), (3, 9))
    assert m(torch.zeros(2, 3, 4)).shape == (2, 3, 9)


def test_linear_explicit_features_win():
    m = parse_op({"kind": "linear", "features": 5}).build((4,), (7,))
    assert m.out_features == 5


def test_linear_in_a_spec_takes_the_target_size():
    spec = spec_from_yaml("""
name: lin
graph:
  nodes: {x: {shape: [4], role: observed}, y: {shape: [7]}}
  edges: [{from: x, to: y, fn: [linear]}]
""")
    graph = compile(spec)
    (layer,) = graph.edges[0].pipeline
    assert layer.weight.shape == (7, 4)
    assert layer.bias.shape == (7,)
    assert graph.num_params() == 7 * 4 + 7


def test_linear_bias_and_init():
    m = parse_op({"kind": "linear", "bias": False}).build((4,), (3,))
    assert m.bias is None
    m = parse_op({"kind": "linear", "init": "zeros"}).build((4,), (3,))
    assert torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0
    for init in ("xavier_uniform", "xavier_normal", "kaiming_uniform"):
        m = parse_op({"kind": "linear", "init": init}).build((40,), (30,))
        assert torch.count_nonzero(m.bias) == 0, init
        assert m.weight.std() > 0, init
    bound = (6 / (40 + 30)) ** 0.5
    m = parse_op({"kind": "linear", "init": "xavier_uniform"}).build((40,), (30,))
    assert m.weight.abs().max() <= bound


# --- flatten / unflatten ---------------------------------------------------------------------


def test_flatten_shapes():
    m = parse_op("flatten").build((2, 3, 4), (24,))
    assert m(torch.zeros(5, 2, 3, 4)).shape == (5, 24)
    x = torch.arange(2 * 6.0).reshape(2, 2, 3)
    torch.testing.assert_close(m(x), x.reshape(2, 6))


def test_unflatten_shapes():
    m = parse_op("unflatten").build((12,), (3, 4))
    assert m(torch.zeros(5, 12)).shape == (5, 3, 4)
    m = parse_op({"kind": "unflatten", "shape": [2, 6]}).build((12,), (3, 4))
    assert m(torch.zeros(5, 12)).shape == (5, 2, 6)


def test_flatten_unflatten_in_a_spec():
    spec = spec_from_yaml("""
name: shapes
graph:
  nodes:
    img: {shape: [2, 3, 4], role: observed}
    code: {shape: [5]}
    grid: {shape: [3, 4]}
  edges:
    - {from: img, to: code, fn: [flatten, linear]}
    - {from: code, to: grid, fn: [{kind: linear, features: 12}, unflatten]}
""")
    graph = compile(spec)
    assert graph.num_params() == (24 * 5 + 5) + (5 * 12 + 12)
    states = graph({"img": torch.randn(3, 2, 3, 4)})
    assert states["code"].shape == (3, 5)
    assert states["grid"].shape == (3, 3, 4)
    assert graph.states_per_sample() == 5 + 12


def test_unflatten_wrong_size_is_a_spec_error():
    spec = spec_from_yaml("""
name: shapes
graph:
  nodes: {a: {shape: [10], role: observed}, b: {shape: [3, 4]}}
  edges: [{from: a, to: b, fn: [unflatten]}]
""")
    with pytest.raises(SpecError) as info:
        compile(spec)
    assert info.value.path == "graph.edges[0].fn[0]"


# --- registering a new op --------------------------------------------------------------------


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x


def test_register_custom_op():
    assert "test_scale" not in OPS

    @register_op
    class Scale(Op):
        """f(x) = factor * x."""

        kind = "test_scale"
        factor: float = 2.0

        def build(self, in_shape, target_shape):
            return _Scale(self.factor)

    try:
        assert OPS["test_scale"] is Scale
        assert parse_op("test_scale") == Scale()
        op = parse_op({"kind": "test_scale", "factor": 3.0})
        assert op.model_dump() == {"kind": "test_scale", "factor": 3.0}
        assert parse_op(op.model_dump()) == op

        spec = spec_from_yaml("""
name: custom
graph:
  nodes: {x: {shape: [4], role: observed}, y: {shape: [4]}}
  edges: [{from: x, to: y, fn: [{kind: linear, init: zeros}, {kind: test_scale, factor: 3.0}, test_scale]}]
""")
        assert spec_from_yaml(spec.to_yaml()) == spec
        graph = compile(spec)
        with torch.no_grad():
            graph.edges[0].pipeline[0].bias.fill_(1.0)
        out = graph({"x": torch.randn(2, 4)})["y"]
        torch.testing.assert_close(out, torch.full((2, 4), 6.0))

        with pytest.raises(SpecError) as info:
            spec_from_yaml(spec.to_yaml().replace("factor: 3.0", "factor: big"))
        assert info.value.path == "graph.edges[0].fn[1].factor"
    finally:
        OPS.pop("test_scale", None)
    assert "test_scale" not in OPS
    with pytest.raises(ValueError, match="unknown op 'test_scale'"):
        parse_op("test_scale")


def test_register_op_needs_a_kind():
    class Nameless(Op):
        def build(self, in_shape, target_shape):
            return nn.Identity()

    with pytest.raises(ValueError, match="kind"):
        register_op(Nameless)
    assert "" not in OPS
