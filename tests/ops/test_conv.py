"""Convolution and pooling ops: shapes, errors naming the edge, and energies, state gradients and
weight gradients against autograd on the equivalent plain torch modules."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pcgraph
from pcgraph.errors import SpecError
from pcgraph.solver.loop import Run, autograd_grads, local_grads
from pcgraph.solver.plan import Constants, Plan

f64 = torch.float64


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


@st.composite
def conv_nets(draw):
    """image (c0, n, n) -> [conv2d, act, pool?] -> h (c1, m, m) -> [conv_transpose2d | conv2d, act]
    -> g (c2, r, r) -> [flatten, linear] -> label: every conv/pool argument drawn at random."""
    c0, c1, c2 = (draw(st.integers(1, 3)) for _ in range(3))
    n = draw(st.integers(5, 9))
    k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2))
    m = out_size(n, k, s, p)
    pool = draw(st.sampled_from([None, "max_pool2d", "avg_pool2d"]))
    first = [{"kind": "conv2d", "kernel_size": k, "stride": s, "padding": p}, draw(st.sampled_from(["tanh", "relu"]))]
    if pool and m >= 2:
        first.append({"kind": pool, "kernel_size": 2})
        m = out_size(m, 2, 2, 0)
    if draw(st.booleans()):
        k2, s2 = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        p2 = draw(st.integers(0, (k2 - 1) // 2))
        op2 = draw(st.integers(0, s2 - 1))
        second = {"kind": "conv_transpose2d", "kernel_size": k2, "stride": s2, "padding": p2, "output_padding": op2}
        r = (m - 1) * s2 - 2 * p2 + k2 + op2
    else:
        k2 = draw(st.integers(1, min(3, m)))
        second = {"kind": "conv2d", "kernel_size": k2, "padding": 0}
        r = out_size(m, k2, 1, 0)
    g = pcgraph.Graph("convnet")
    g.node("image", (c0, n, n), observed=True)
    g.node("h", (c1, m, m))
    g.node("g", (c2, r, r))
    g.node("label", 3, observed=True)
    g.edge("image", "h", *first)
    g.edge("h", "g", second, "sigmoid")
    g.edge("g", "label", "flatten", "linear")
    return g.spec()


def batch_for(graph, b=3):
    return {"image": torch.randn(b, *graph.nodes["image"].shape, dtype=f64),
            "label": torch.randn(b, 3, dtype=f64)}


@settings(max_examples=30, deadline=None)
@given(conv_nets())
def test_energy_and_gradients_equal_autograd_on_torch_modules(spec):
    """E and dE/dx, dE/dtheta of the compiled graph against the same net written as plain torch
    modules (F.conv2d, F.conv_transpose2d, pooling) and differentiated by autograd."""
    torch.manual_seed(0)
    graph = pcgraph.compile(spec).double()
    batch = batch_for(graph)
    with torch.no_grad():
        states = graph(batch)
        states = {v: x + 0.1 * torch.randn_like(x) if v in ("h", "g") else x for v, x in states.items()}
    # reference: the same maths with torch modules, autograd through the energy
    h = states["h"].clone().requires_grad_()
    gg = states["g"].clone().requires_grad_()
    mods = [list(e.pipeline) for e in graph.edges]

    def run(ms, x):
        for m in ms:
            x = m(x)
        return x

    energy = 0.5 * ((h - run(mods[0], batch["image"])) ** 2).sum() \
        + 0.5 * ((gg - run(mods[1], h)) ** 2).sum() + 0.5 * ((batch["label"] - run(mods[2], gg)) ** 2).sum()
    params = list(graph.parameters())
    ref = torch.autograd.grad(energy, [h, gg, *params])
    plan = Plan(graph, {"image", "label"})
    const = Constants.at(graph, plan, states)
    for route in (local_grads, autograd_grads):
        e, gx, gp = Run(graph, plan, const, params, route).grads(states, plan.terms + plan.fixed_terms, True)
        assert torch.allclose(e, energy.detach(), rtol=1e-10)
        for want, got in zip(ref[2:], params):  # local/autograd routes give batch means
            assert torch.allclose(gp[got] * 3, want, rtol=1e-8, atol=1e-10)
        e, gx, _ = Run(graph, plan, const, params, route).grads(states, plan.terms, False)
        assert torch.allclose(gx["h"], ref[0], rtol=1e-8, atol=1e-10)
        assert torch.allclose(gx["g"], ref[1], rtol=1e-8, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(conv_nets())
def test_conv_nets_are_exactly_backprop_in_the_exact_variant(spec):
    torch.manual_seed(1)
    graph = pcgraph.compile(spec).double()
    check = pcgraph.verify_bp(graph, batch_for(graph), mode="exact")
    assert check.worst_rel_error < 1e-9, check


def test_shapes_match_torch_modules():
    x = torch.randn(2, 3, 11, 11)
    cases = [
        ({"kind": "conv2d", "out_channels": 5, "kernel_size": 3, "stride": 2, "padding": 1}, nn.Conv2d(3, 5, 3, 2, 1)),
        ({"kind": "conv_transpose2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1,
          "output_padding": 1}, nn.ConvTranspose2d(3, 4, 3, 2, 1, 1)),
        ({"kind": "max_pool2d", "kernel_size": 3, "stride": 2}, nn.MaxPool2d(3, 2)),
        ({"kind": "avg_pool2d", "kernel_size": 2}, nn.AvgPool2d(2)),
    ]
    for op, module in cases:
        built = pcgraph.ops.parse_op(op).build((3, 11, 11), (1,))
        assert built(x).shape == module(x).shape


def test_cnn_pipeline_with_pooling_inside_an_edge():
    g = pcgraph.Graph("cnn")
    g.node("image", (3, 32, 32), observed=True)
    g.node("h1", (8, 15, 15))
    g.node("label", 10, observed=True)
    g.edge("image", "h1", "conv2d", "leaky_relu", "max_pool2d")
    g.edge("h1", "label", "flatten", "linear")
    graph = pcgraph.compile(g.spec())
    assert graph.num_params() == 3 * 8 * 9 + 8 + 8 * 225 * 10 + 10
    assert graph.states_per_sample() == 8 * 225


def bad(edge_fn, image=(3, 8, 8), h=(4, 6, 6)):
    g = pcgraph.Graph("bad")
    g.node("image", image, observed=True)
    g.node("h", h)
    g.node("y", 2, observed=True)
    g.edge("image", "h", *edge_fn)
    g.edge("h", "y", "flatten", "linear")
    with pytest.raises(SpecError) as err:
        pcgraph.compile(g.spec())
    return str(err.value)


def test_kernel_larger_than_input_names_the_edge():
    msg = bad([{"kind": "conv2d", "kernel_size": 5}], image=(3, 3, 3))
    assert "graph.edges[0].fn[0]" in msg and "kernel 5" in msg and "[3, 3, 3]" in msg


def test_wrong_channel_count_names_the_edge():
    msg = bad([{"kind": "conv2d", "in_channels": 1}])
    assert "graph.edges[0].fn[0]" in msg and "1 input channels, got 3" in msg
    msg = bad([{"kind": "conv2d", "out_channels": 5}])  # output channels do not fit the target
    assert "graph.edges[0].fn" in msg and "[5, 6, 6]" in msg and "[4, 6, 6]" in msg


def test_flat_input_to_conv_names_the_edge():
    msg = bad(["conv2d"], image=(64,))
    assert "graph.edges[0].fn[0]" in msg and "[channels, height, width]" in msg and "[64]" in msg


def test_bad_pool_and_transpose_arguments():
    assert "at most half" in bad([{"kind": "max_pool2d", "kernel_size": 2, "padding": 2}], h=(3, 4, 4))
    msg = bad([{"kind": "conv_transpose2d", "stride": 1, "output_padding": 1}], h=(4, 11, 11))
    assert "output_padding (1) must be smaller than stride (1)" in msg


def test_conv_init_and_counts():
    op = pcgraph.ops.parse_op({"kind": "conv2d", "out_channels": 6, "init": "zeros", "bias": False})
    assert op.param_count((2, 5, 5), (6, 3, 3)) == 2 * 6 * 9
    m = op.build((2, 5, 5), (6, 3, 3))
    assert m.bias is None and float(m.weight.detach().abs().sum()) == 0.0
    assert F.conv2d(torch.ones(1, 2, 5, 5), m.weight).shape == (1, 6, 3, 3)
