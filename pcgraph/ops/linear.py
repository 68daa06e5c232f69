"""Affine map ``mu = W x + b`` over the last dimension."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from pcgraph.ops import STOCK, Op, OpModule, Shape, accumulate, register_op

_INITS = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "zeros": nn.init.zeros_,
    "normal": nn.init.normal_,  # N(0, 1), as muPC's parametrisation starts from (the edge's scale does the rest)
}
Init = Literal["torch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "zeros", "normal"]


class LinearModule(nn.Linear, OpModule):
    """y = x W^T + b, with its local rule: dE/dx = g W, dE/dW = g^T x, dE/db = sum g (eqs. 34, 38)."""

    has_local_rule = True

    def local_vjp(self, x, g, grads, need_input):
        if grads is not None:  # (out, B) @ (B, in) -> (out, in)
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
            accumulate(grads, self.weight, g2.T @ x2)
            if self.bias is not None:
                accumulate(grads, self.bias, g2.sum(0))
        return g @ self.weight if need_input else None  # (B, out) @ (out, in) -> (B, in)


STOCK[nn.Linear] = LinearModule


@register_op
class Linear(Op):
    """Affine map W x + b on the last dimension; ``features`` defaults to the target's size."""

    kind = "linear"
    features: PositiveInt | None = Field(
        None, description="Output size; default: the last dimension of the target node."
    )
    bias: bool = Field(True, description="Add a learnt bias b.")
    init: Init = Field("torch", description="Weight initialisation (normal: N(0, 1); biases start at zero "
                       "unless torch).")
    weight: list[list[float]] | None = Field(
        None, description="Initial weight matrix W, one row per output (e.g. a known A or C); biases start at 0.")

    @property
    def has_params(self) -> bool:
        return True

    def _out(self, target_shape: Shape) -> int:
        return self.features or (len(self.weight) if self.weight else target_shape[-1])

    def param_count(self, in_shape: Shape, target_shape: Shape) -> int:
        out = self._out(target_shape)
        return in_shape[-1] * out + (out if self.bias else 0)

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        out = self._out(target_shape)
        layer = LinearModule(in_shape[-1], out, bias=self.bias)
        if self.weight is not None:
            w = torch.tensor(self.weight)
            if w.shape != layer.weight.shape:
                raise ValueError(f"weight must have {out} rows of {in_shape[-1]} values, got shape {list(w.shape)}")
            with torch.no_grad():
                layer.weight.copy_(w)
                if layer.bias is not None:
                    layer.bias.zero_()
            return layer
        return initialise(layer, self.init)


def initialise(layer: nn.Module, init: str) -> nn.Module:
    """Apply a named weight initialisation (``torch`` keeps PyTorch's own); biases start at zero."""
    if init != "torch":
        with torch.no_grad():
            _INITS[init](layer.weight)
            if layer.bias is not None:
                layer.bias.zero_()
    return layer
