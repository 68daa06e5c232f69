"""The Laplace energy: an L1 prediction error, robust to outliers.

    e = sum_i |x_i - mu_i| / b        (the negative log density of Laplace(mu, b), less a constant)

An outlier adds to e in proportion to its size, not to its square, so it pulls the predictions
(and, through them, the weights) far less than under a Gaussian energy.
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveFloat
from torch import Tensor

from pcgraph.energies import Energy, per_sample, register_energy


@register_energy
class Laplace(Energy):
    """e = sum_i |x_i - mu_i| / b: the L1 prediction error with scale b."""

    kind = "laplace"
    translation_invariant = True
    scale: PositiveFloat = Field(1.0, description="Scale b (the mean absolute error it expects).")

    def value(self, x: Tensor, mu: Tensor) -> Tensor:
        return per_sample((x - mu).abs()) / self.scale

    def local(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """dE/dx = sign(x - mu) / b = -dE/dmu (0 where x = mu)."""
        diff = x - mu
        g = torch.sign(diff) / self.scale
        return diff.abs().sum() / self.scale, g, -g

    def scaled(self, factor: float) -> Laplace:
        return self.model_copy(update={"scale": self.scale / factor})
