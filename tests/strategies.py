"""Shared by the tests: a small valid spec, and hypothesis strategies for random layered DAG specs
and batches for them."""

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import pcgraph

f64 = torch.float64

SMALL_SPEC = """\
name: t
graph:
  nodes:
    image: {shape: [4], role: observed}
    h:     {shape: [3]}
    label: {shape: [2], role: observed}
  edges:
    - {from: image, to: h,     fn: [linear, leaky_relu]}
    - {from: h,     to: label, fn: [linear]}
"""

# A small generative model of the embedded digits and its backprop autoencoder baseline.
DIGITS_AE = """
name: digits-ae
graph:
  nodes:
    z: {shape: [8]}
    h: {shape: [32]}
    image: {shape: [64], role: observed}
  edges:
    - {from: z, to: h, fn: [linear, tanh]}
    - {from: h, to: image, fn: [linear, relu]}
inference: {steps: 10, optimizer: {kind: sgd, lr: 0.1, momentum: 0.25}}
learning: {optimizer: {kind: adam, lr: 0.003}}
bp:
  encoder: {from: image, to: z, fn: [{kind: linear, features: 32}, tanh, linear, tanh]}
data: {dataset: digits, input: image, target: null, batch_size: 50, normalize: unit}
train: {epochs: 3, eval: inference}
"""

def small_net(sizes=(3, 4, 2), fns=(("linear", "tanh"), ("linear",)), hidden="gaussian", output="gaussian"):
    """The small net many tests use: x (observed) -> h -> y (observed), ``fns`` the two edges' ops,
    ``hidden`` and ``output`` the energies of h and y. Returns its spec."""
    g = pcgraph.Graph("small")
    g.node("x", sizes[0], observed=True)
    g.node("h", sizes[1], energy=hidden)
    g.node("y", sizes[2], observed=True, energy=output)
    g.edge("x", "h", *fns[0])
    g.edge("h", "y", *fns[1])
    return g.spec()


SMOOTH = ["tanh", "sigmoid", "gelu", "identity"]
ALL_ACTIVATIONS = SMOOTH + ["relu", "leaky_relu"]


@st.composite
def layered_graphs(draw, ops=SMOOTH, joins=True):
    """A random layered DAG: input -> hidden layers -> output, with skip edges and multi-source
    joins (concat / add / mul), plus optionally a categorical and a Gaussian extra output."""
    depth = draw(st.integers(1, 4))
    widths = [draw(st.integers(1, 6)) for _ in range(depth + 2)]
    g = pcgraph.Graph("random")
    names = [f"n{i}" for i in range(depth + 2)]
    for i, (v, w) in enumerate(zip(names, widths)):
        g.node(v, w, observed=i in (0, depth + 1))
    for i in range(1, depth + 2):
        act = draw(st.sampled_from(ops))
        skip = draw(st.integers(0, i - 2)) if joins and i >= 2 else None
        if skip is not None and draw(st.booleans()):
            mode = draw(st.sampled_from(["concat", "add", "mul"]))
            if mode != "concat" and widths[skip] != widths[i - 1]:
                mode = "concat"
            g.edge([names[i - 1], names[skip]], names[i], "linear", act, combine=mode)
        else:
            g.edge(names[i - 1], names[i], "linear", act)
            if skip is not None and draw(st.booleans()):
                g.edge(names[skip], names[i], {"kind": "linear", "bias": False})
    outputs = [names[-1]]
    if joins and draw(st.booleans()):
        g.node("cls", 3, observed=True, energy="categorical")
        g.edge(names[draw(st.integers(1, depth))], "cls", "linear")
        outputs.append("cls")
    if joins and draw(st.booleans()):  # a second Gaussian output branching off a hidden layer
        g.node("aux", draw(st.integers(1, 4)), observed=True)
        g.edge(names[draw(st.integers(1, depth))], "aux", "linear", draw(st.sampled_from(ops)))
        outputs.append("aux")
    return g.spec(), widths, outputs


def random_batch(graph, outputs, b=4, dtype=f64):
    batch = {"n0": torch.randn(b, graph.nodes["n0"].shape[0], dtype=dtype)}
    for v in outputs:
        n = graph.nodes[v].shape[0]
        batch[v] = F.one_hot(torch.randint(0, n, (b,)), n).to(dtype) if v == "cls" else torch.randn(b, n, dtype=dtype)
    return batch


@st.composite
def cyclic_graphs(draw):
    """x (n neurons) predicts itself through a random sparse graph (loops when drawn); the sparse
    edges x -> y and y -> x close a second cycle. Returns (spec, self_loops)."""
    n, m = draw(st.integers(2, 9)), draw(st.integers(1, 6))
    loops = draw(st.booleans())
    g = pcgraph.Graph("cyclic")
    g.node("x", n)
    g.node("y", m)
    g.edge("x", "x", "tanh", {"kind": "sparse", "generator": "erdos_renyi_graph",
                              "args": {"p": draw(st.floats(0.2, 1.0)), "directed": draw(st.booleans())},
                              "seed": draw(st.integers(0, 99)), "self_loops": loops,
                              "bias": draw(st.booleans())})
    g.edge("x", "y", {"kind": "sparse", "generator": "random", "args": {"p": 0.6}, "seed": draw(st.integers(0, 9))})
    g.edge("y", "x", "sigmoid", {"kind": "sparse", "edges": [[j % m, (3 * j) % n] for j in range(min(m, n))]})
    g.inference(init="zeros")
    return g.spec(), loops
