"""Elementwise nonlinearities: ``mu = f(x)``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from pcgraph.ops import Op, Shape, register_op


class _Elementwise(Op):
    module: ClassVar[type[nn.Module]] = nn.Identity

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return type(self).module()


@register_op
class Identity(_Elementwise):
    """f(x) = x."""

    kind = "identity"


@register_op
class ReLU(_Elementwise):
    """f(x) = max(x, 0)."""

    kind = "relu"
    module = nn.ReLU


@register_op
class Tanh(_Elementwise):
    """f(x) = tanh(x)."""

    kind = "tanh"
    module = nn.Tanh


@register_op
class Sigmoid(_Elementwise):
    """f(x) = 1 / (1 + exp(-x))."""

    kind = "sigmoid"
    module = nn.Sigmoid


@register_op
class GELU(_Elementwise):
    """f(x) = x Phi(x), Phi the standard normal CDF."""

    kind = "gelu"
    module = nn.GELU


@register_op
class LeakyReLU(Op):
    """f(x) = x for x > 0, else negative_slope * x."""

    kind = "leaky_relu"
    negative_slope: float = Field(0.01, description="Slope for negative inputs.")

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return nn.LeakyReLU(self.negative_slope)
