"""Elementwise nonlinearities: ``mu = f(x)``."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from pcgraph.ops import STOCK, Op, OpModule, Shape, _aten, register_op


class _Rule(OpModule):
    has_local_rule = True
    elementwise = True


# the local rules are aten's fused backward kernels: one pass each instead of 3-5 elementwise ops
class IdentityModule(nn.Identity, _Rule):
    monotone = True

    def local_vjp(self, x, g, grads, need_input):
        return g


class ReLUModule(nn.ReLU, _Rule):
    monotone = True

    def local_vjp(self, x, g, grads, need_input):  # f' = 1 if x > 0 else 0
        return _aten.threshold_backward(g, x, 0)


class LeakyReLUModule(nn.LeakyReLU, _Rule):
    @property
    def monotone(self) -> bool:  # a negative slope makes it decreasing below 0
        return self.negative_slope >= 0

    def local_vjp(self, x, g, grads, need_input):  # f' = 1 if x > 0 else slope
        return _aten.leaky_relu_backward(g, x, self.negative_slope, False)


class TanhModule(nn.Tanh, _Rule):
    def local_vjp(self, x, g, grads, need_input):  # f' = 1 - tanh(x)^2
        return _aten.tanh_backward(g, torch.tanh(x))


class SigmoidModule(nn.Sigmoid, _Rule):
    def local_vjp(self, x, g, grads, need_input):  # f' = s (1 - s)
        return _aten.sigmoid_backward(g, torch.sigmoid(x))


class GELUModule(nn.GELU, _Rule):
    @property
    def has_local_rule(self) -> bool:
        return self.approximate == "none"

    def local_vjp(self, x, g, grads, need_input):  # f' = Phi(x) + x phi(x)
        return _aten.gelu_backward(g, x)


class ScaleModule(nn.Module, _Rule):
    """y = c x for a fixed number c (an edge's ``scale``, e.g. muPC's 1/sqrt(fan_in)); dE/dx = c g."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor

    def local_vjp(self, x, g, grads, need_input):
        return g * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.6g}"


STOCK.update({nn.Identity: IdentityModule, nn.ReLU: ReLUModule, nn.LeakyReLU: LeakyReLUModule, nn.Tanh: TanhModule,
              nn.Sigmoid: SigmoidModule, nn.GELU: GELUModule})


class _Elementwise(Op):
    module: ClassVar[type[nn.Module]] = IdentityModule

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
    module = ReLUModule


@register_op
class Tanh(_Elementwise):
    """f(x) = tanh(x)."""

    kind = "tanh"
    module = TanhModule


@register_op
class Sigmoid(_Elementwise):
    """f(x) = 1 / (1 + exp(-x))."""

    kind = "sigmoid"
    module = SigmoidModule


@register_op
class GELU(_Elementwise):
    """f(x) = x Phi(x), Phi the standard normal CDF."""

    kind = "gelu"
    module = GELUModule


@register_op
class LeakyReLU(Op):
    """f(x) = x for x > 0, else negative_slope * x."""

    kind = "leaky_relu"
    negative_slope: float = Field(0.01, description="Slope for negative inputs.")

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return LeakyReLUModule(self.negative_slope)
