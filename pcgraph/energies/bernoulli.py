"""The Bernoulli energy: binary cross-entropy, with mu the logits.

    e = sum_i KL(x_i || sigmoid(mu_i))
      = sum_i [x_i log x_i + (1 - x_i) log(1 - x_i)] + softplus(mu_i) - x_i mu_i

For binary x the entropy part is 0 and e is the binary cross-entropy of the data under
p = sigmoid(mu); for x = sigmoid(mu) (a free node at its optimum) e is exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pcgraph.energies import Energy, per_sample, register_energy


def _entropy(x: Tensor) -> Tensor:
    return torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x)


@register_energy
class Bernoulli(Energy):
    """e = KL(x || sigmoid(mu)): binary cross-entropy for x in {0, 1}; mu are logits."""

    kind = "bernoulli"
    leaf_only = True  # x are probabilities

    def value(self, x: Tensor, mu: Tensor) -> Tensor:
        return per_sample(_entropy(x) + F.softplus(mu) - x * mu)

    def optimum(self, mu: Tensor) -> Tensor:
        return torch.sigmoid(mu)

    def local(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """dE/dmu = sigmoid(mu) - x; dE/dx = log(x / (1 - x)) - mu inside (0, 1), 0 at the ends."""
        e = (_entropy(x) + F.softplus(mu) - x * mu).sum()
        inside = (x > 0) & (x < 1)
        d_x = torch.where(inside, torch.logit(x.clamp(1e-30, 1 - 1e-7)) - mu, 0.0)
        return e, d_x, torch.sigmoid(mu) - x

    def random_data(self, size, shape, generator, dtype):
        """Random binary values."""
        return torch.randint(0, 2, (size, *shape), generator=generator).to(dtype)
