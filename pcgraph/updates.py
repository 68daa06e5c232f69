"""Weight-update rules: where the learning step takes dE/dtheta, as registered classes.

The standard rule (eqs. 38-39) differentiates the energy at the relaxed states x*:

    dtheta = -dE/dtheta (x*),   with  eps_v = x*_v - f_v(x*_parents).

- ``forward``: the targets are relaxed, the inputs are the feedforward values x^ff:
  eps_v = x*_v - f_v(x^ff_parents), Jacobians at x^ff (Qi et al. 2025, arXiv 2506.23800). The error
  of an inferred node is then how far inference moved it from its feedforward value.
- ``nudged``: the outputs are nudged towards their data y by a strength beta, and the weight
  gradient is scaled by 1 / (s beta), with ``sign`` s: ``positive`` (+1), ``negative`` (-1) or
  ``centered`` (+1 on even epochs, -1 on odd). Two forms:
  ``target`` (pcx, arXiv 2407.01163): the output leaves are clamped to u + s beta (y - u), where u
  is their feedforward prediction; ``energy`` (equilibrium propagation, Scellier & Bengio 2017):
  the outputs' energies are weighted by s beta, so the relaxed errors are s beta times backprop's
  deltas to first order and the scaled gradient tends to backprop's as beta -> 0. (The target
  form does not: the clamped output's error spreads over the layers below, and its limit is
  backprop's with the output error preconditioned by (I + J J^T)^-1, J the output's Jacobian.)

The solver reads ``at_forward``, ``nudges``, :meth:`WeightUpdate.target`, :meth:`WeightUpdate.output_weight`
and :meth:`WeightUpdate.factor`; it
never compares names. In a spec ``learning.update`` is a name or ``{kind: ..., options}``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from pcgraph.registry import Registered, Registry


class WeightUpdate(Registered):
    """Base class of weight-update rules; the default is the standard one, at the relaxed states."""

    at_forward: ClassVar[bool] = False  # sources at the feedforward pass instead of the relaxed states
    nudges: ClassVar[bool] = False  # the output leaves are clamped to :meth:`target`, not the data

    def target(self, data: Tensor, predicted: Tensor, epoch: int) -> Tensor:
        """The value an output leaf is clamped to, from its ``data`` and feedforward ``predicted`` value."""
        return data

    def output_weight(self, epoch: int) -> float:
        """The multiplier of the clamped outputs' energies, in inference and learning."""
        return 1.0

    def factor(self, epoch: int) -> float:
        """The factor the weight gradient is multiplied by."""
        return 1.0


UPDATES = Registry("weight update", WeightUpdate)
register_update = UPDATES.register
parse_update = UPDATES.parse
update_json_schema = UPDATES.json_schema


@register_update
class Relaxed(WeightUpdate):
    """The standard rule: dE/dtheta at the relaxed states (eqs. 38-39)."""

    kind = "relaxed"


@register_update
class Forward(WeightUpdate):
    """eps_v = x*_v - f_v(x^ff_parents): relaxed targets, feedforward inputs and Jacobians."""

    kind = "forward"
    at_forward = True


@register_update
class Nudged(WeightUpdate):
    """Outputs nudged towards the data by s beta; the weight gradient scaled by 1 / (s beta)."""

    kind = "nudged"
    nudges = True
    beta: float = Field(0.1, gt=0, le=1, description="Nudging strength beta in (0, 1]; 1 is the standard rule.")
    sign: Literal["positive", "negative", "centered"] = Field(
        "positive", description="positive: +beta; negative: -beta; centered: +beta on even epochs, -beta on odd.")
    form: Literal["target", "energy"] = Field(
        "target", description="target: outputs clamped to u + s beta (y - u) (pcx); energy: the outputs' energies "
        "weighted by s beta (equilibrium propagation; tends to backprop as beta -> 0).")

    def _s(self, epoch: int) -> int:
        return {"positive": 1, "negative": -1}.get(self.sign, 1 if epoch % 2 == 0 else -1)

    def target(self, data: Tensor, predicted: Tensor, epoch: int) -> Tensor:
        if self.form == "energy":
            return data
        return predicted + self._s(epoch) * self.beta * (data - predicted)

    def output_weight(self, epoch: int) -> float:
        return self._s(epoch) * self.beta if self.form == "energy" else 1.0

    def factor(self, epoch: int) -> float:
        return 1.0 / (self._s(epoch) * self.beta)
