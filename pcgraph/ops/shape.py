"""Reshaping ops (per-sample shapes; the batch dimension is never touched)."""

from __future__ import annotations

from pydantic import Field, PositiveInt
from torch import nn

from pcgraph.ops import STOCK, Op, OpModule, Shape, register_op


class _Reshape(OpModule):
    has_local_rule = True
    elementwise = True

    def local_vjp(self, x, g, grads, need_input):
        return g.reshape(x.shape)


class FlattenModule(nn.Flatten, _Reshape):
    pass


class UnflattenModule(nn.Unflatten, _Reshape):
    pass


STOCK.update({nn.Flatten: FlattenModule, nn.Unflatten: UnflattenModule})


@register_op
class Flatten(Op):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...)."""

    kind = "flatten"

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return FlattenModule(start_dim=1)


@register_op
class Unflatten(Op):
    """(B, d) -> (B, *shape); ``shape`` defaults to the target node's shape."""

    kind = "unflatten"
    shape: tuple[PositiveInt, ...] | None = Field(
        None, description="Per-sample output shape; default: the target node's shape."
    )

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return UnflattenModule(1, tuple(self.shape or target_shape))
