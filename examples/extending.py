"""Extending pcgraph: a custom op, a custom node energy and a custom PC variant, one class each.

    python examples/extending.py

Each is registered by its ``kind`` and is usable from YAML at once (and appears in `pcgraph
schema`). The script builds a small graph that uses all three from a YAML spec, checks that the
closed-form local rules agree with autograd on it, and trains it for a few epochs on random data.
"""

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

import pcgraph
from pcgraph.energies import per_sample
from pcgraph.ops import accumulate


# --- an op: mu = a * x with one learnt scalar a ---------------------------------------------------
class ScaleModule(nn.Module, pcgraph.OpModule):
    has_local_rule = True  # local_vjp below is the closed form; without it the solver uses autograd

    def __init__(self, init: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(init))

    def forward(self, x):
        return self.a * x

    def local_vjp(self, x, g, grads, need_input):
        if grads is not None:  # dE/da = sum g x (summed over the batch; the solver averages)
            accumulate(grads, self.a, (g * x).sum())
        return g * self.a if need_input else None  # dE/dx = a g


@pcgraph.register_op
class Scale(pcgraph.Op):
    """mu = a x, one learnt scalar a."""

    kind = "scale"
    init: float = Field(1.0, description="Initial value of a.")

    @property
    def has_params(self) -> bool:
        return True

    def build(self, in_shape, target_shape):
        return ScaleModule(self.init)


# --- a node energy: the Cauchy (Lorentzian) error, heavier-tailed still than Laplace -------------
@pcgraph.register_energy
class Cauchy(pcgraph.Energy):
    """e = sum_i log(1 + ((x_i - mu_i) / c)^2): a Cauchy likelihood's negative log density."""

    kind = "cauchy"
    translation_invariant = True
    width: PositiveFloat = Field(1.0, description="Half-width c.")

    def value(self, x, mu):
        return per_sample(torch.log1p(((x - mu) / self.width) ** 2))

    def local(self, x, mu):  # optional: without it, autograd on value() gives the same
        r = (x - mu) / self.width
        g = 2 * r / (1 + r * r) / self.width
        return torch.log1p(r * r).sum(), g, -g


# --- a variant: standard PC with T set by the graph's depth -------------------------------------
@pcgraph.register_variant
class DepthScaled(pcgraph.Variant):
    """Standard PC with T = per_edge x depth: an error needs one step per edge to reach the bottom."""

    kind = "depth_scaled"
    per_edge: PositiveInt = Field(3, description="Inference steps per edge of the longest path.")

    def inference(self, graph, steps):
        return self.per_edge * graph.depth, None


SPEC = """
name: extending
graph:
  nodes:
    x: {shape: [8], role: observed}
    h: {shape: [16]}
    s: {shape: [16]}
    y: {shape: [4], role: observed, energy: {kind: cauchy, width: 0.5}}
  edges:
    - {from: x, to: h, fn: [linear, tanh]}
    - {from: h, to: s, fn: [{kind: scale, init: 0.5}]}
    - {from: s, to: y, fn: [linear]}
inference: {steps: 1, optimizer: {kind: sgd, lr: 0.1}}
learning: {optimizer: {kind: adam, lr: 0.01}, variant: {kind: depth_scaled, per_edge: 4}}
"""


def main(epochs: int = 20) -> dict:
    spec = pcgraph.spec_from_yaml(SPEC)
    graph = pcgraph.compile(spec, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen, dtype=torch.float64)
    y = torch.tanh(x[:, :4] * 2) + 0.05 * torch.randn(256, 4, generator=gen, dtype=torch.float64)
    batch = {"x": x[:32], "y": y[:32]}
    solver = pcgraph.Solver.from_spec(spec)
    relaxed, local_grads = solver.gradients(graph, batch)
    _, autograd_grads = pcgraph.Solver.from_spec(spec, local_rules=False).gradients(graph, batch)
    worst = max(float((local_grads[k] - autograd_grads[k]).abs().max()) for k in local_grads)
    print(f"variant depth_scaled: {relaxed.steps} inference steps (depth {graph.depth} x 4)")
    print(f"local rules vs autograd, largest parameter-gradient difference: {worst:.1e}")
    opt = torch.optim.Adam(graph.parameters(), lr=spec.learning.optimizer.lr)

    def held_out() -> float:
        with torch.no_grad():
            states = graph({"x": x[192:]})
            return float(graph.node_energy({**states, "y": y[192:]}, "y").mean())

    before = held_out()
    print(f"held-out Cauchy energy before training: {before:.4f}")
    for _ in range(epochs):
        for i in range(0, 192, 32):
            solver.step(graph, {"x": x[i:i + 32], "y": y[i:i + 32]}, opt)
    after = held_out()
    print(f"held-out Cauchy energy after {epochs} epochs: {after:.4f}")
    return {"steps": relaxed.steps, "depth": graph.depth, "worst_difference": worst, "before": before, "after": after}


if __name__ == "__main__":
    main()
