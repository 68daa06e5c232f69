"""Reshaping ops (per-sample shapes; the batch dimension is never touched)."""

from __future__ import annotations

from pydantic import Field, PositiveInt
from torch import nn

from pcgraph.ops import Op, Shape, register_op


@register_op
class Flatten(Op):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...)."""

    kind = "flatten"

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return nn.Flatten(start_dim=1)


@register_op
class Unflatten(Op):
    """(B, d) -> (B, *shape); ``shape`` defaults to the target node's shape."""

    kind = "unflatten"
    shape: tuple[PositiveInt, ...] | None = Field(
        None, description="Per-sample output shape; default: the target node's shape."
    )

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return nn.Unflatten(1, tuple(self.shape or target_shape))
