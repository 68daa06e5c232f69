"""Max pooling moved ahead of a monotone activation (pcgraph.ops.pool_first): the compiled edge
computes exactly what the spec's order computes, with the same gradients, against plain torch
functions applied in the spec's order."""

import pytest
import torch
import torch.nn.functional as F

import pcgraph
from pcgraph.compiled import edge_forward
from pcgraph.ops import OpModule, pool_first
from pcgraph.ops.activation import LeakyReLUModule
from pcgraph.ops.conv import MaxPool2dModule
from pcgraph.solver.local import edge_backward

ACTS = {"relu": F.relu, "leaky_relu": lambda z: F.leaky_relu(z, 0.01), "tanh": torch.tanh, "gelu": F.gelu,
        "leaky_relu_negative": lambda z: F.leaky_relu(z, -0.5)}
POOLS = [{"kind": "max_pool2d", "kernel_size": 2},
         {"kind": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
         {"kind": "max_pool2d", "kernel_size": 2, "stride": 1}]


def act_op(name):
    return {"kind": "leaky_relu", "negative_slope": -0.5} if name == "leaky_relu_negative" else name


def pooled(y, op):
    return F.max_pool2d(y, op["kernel_size"], op.get("stride"), op.get("padding", 0))


def is_pool(op):
    return isinstance(op, dict) and op["kind"] == "max_pool2d"


def edge_of(fn, dtype=torch.float64):
    """The compiled edge image (2, 9, 9) -> h for the pipeline ``fn`` (a padded conv first)."""
    y = torch.zeros(1, 4, 9, 9)
    for op in fn[1:]:
        y = pooled(y, op) if is_pool(op) else y
    g = pcgraph.Graph("pool")
    g.node("image", (2, 9, 9), observed=True)
    g.node("h", tuple(y.shape[1:]))
    g.edge("image", "h", *fn)
    torch.manual_seed(0)
    return pcgraph.compile(g.spec()).to(dtype).edges[0]


def reference(edge, fn, x):
    """The spec's order with plain torch functions and the edge's own conv weights."""
    conv = edge.pipeline[0]
    y = F.conv2d(x, conv.weight, conv.bias, padding=1)
    for op in fn[1:]:
        y = pooled(y, op) if is_pool(op) else ACTS["leaky_relu_negative" if isinstance(op, dict) else op](y)
    return y


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("acts", [["relu"], ["leaky_relu"], ["relu", "leaky_relu"]])
def test_pooling_moves_first_and_computes_the_same(acts, pool):
    fn = [{"kind": "conv2d", "out_channels": 4, "padding": 1}, *acts, pool]
    edge = edge_of(fn)
    assert isinstance(edge.pipeline[1], MaxPool2dModule)  # moved ahead of every activation
    assert edge.kinds == ["conv2d", "max_pool2d", *acts]
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    y, tape = edge_forward(edge, {"image": x})
    want = reference(edge, fn, x)
    assert torch.equal(y, want)
    g = torch.randn_like(want)
    grads = {}
    dx = edge_backward(edge, tape, g, grads)[0]
    conv = edge.pipeline[0]
    rx, rw, rb = torch.autograd.grad((want * g).sum(), [x, conv.weight, conv.bias])
    torch.testing.assert_close(dx, rx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[conv.weight], rw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[conv.bias], rb, rtol=1e-12, atol=1e-12)


def test_float32_output_is_bitwise_the_spec_orders():
    fn = [{"kind": "conv2d", "out_channels": 4, "padding": 1}, "leaky_relu", POOLS[0]]
    edge = edge_of(fn, torch.float32)
    x = torch.randn(5, 2, 9, 9)
    with torch.no_grad():
        assert torch.equal(edge_forward(edge, {"image": x})[0], reference(edge, fn, x))


@pytest.mark.parametrize("act", ["tanh", "gelu", "leaky_relu_negative"])
def test_other_activations_keep_their_place(act):
    fn = [{"kind": "conv2d", "out_channels": 4, "padding": 1}, act_op(act), POOLS[0]]
    edge = edge_of(fn)
    assert isinstance(edge.pipeline[2], MaxPool2dModule)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(edge_forward(edge, {"image": x})[0], reference(edge, fn, x), rtol=0, atol=0)
    assert not LeakyReLUModule(-0.5).monotone and LeakyReLUModule(0.01).monotone


def test_parameter_names_keep_the_spec_positions():
    """A parameter named edges.i.pipeline.k.* belongs to the spec's op fn[k] (checkpoints name them so)."""
    spec = pcgraph.load_spec("specs/cifar10_cnn.yaml")
    graph = pcgraph.compile(spec)
    assert [type(m).__name__ for m in graph.edges[2].pipeline] == ["Conv2dModule", "MaxPool2dModule",
                                                                    "LeakyReLUModule", "FlattenModule"]
    for name, _ in graph.named_parameters():
        _, i, _, k, _ = name.split(".")
        assert spec.graph.edges[int(i)].fn[int(k)].kind in ("conv2d", "linear"), name


def test_only_stateless_modules_move():
    """A monotone module holding a parameter stays put (moving it would renumber the parameter)."""

    class Shifted(torch.nn.Module, OpModule):
        monotone = True

        def __init__(self):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x + self.shift

    pool, shifted, relu = MaxPool2dModule(2), Shifted(), torch.nn.ReLU()
    modules, kinds = pool_first([shifted, pool], ["shifted", "max_pool2d"])
    assert modules == [shifted, pool] and kinds == ["shifted", "max_pool2d"]
    assert pool_first([relu, pool], ["relu", "max_pool2d"])[0] == [relu, pool]  # a plain module declares nothing
