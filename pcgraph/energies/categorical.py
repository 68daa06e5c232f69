"""The categorical energy: softmax cross-entropy, with mu the logits.

    e = KL(x || softmax(mu)) = sum_k x_k (log x_k - log softmax(mu)_k)

For a one-hot x it is the cross-entropy -log softmax(mu)_y; for x = softmax(mu) (a free label at
its optimum) it is exactly 0, as a Gaussian node's is at x = mu.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pcgraph.energies import Energy, register_energy


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


@register_energy
class Categorical(Energy):
    """e = KL(x || softmax(mu)): softmax cross-entropy for one-hot x; mu are logits."""

    kind = "categorical"
    leaf_only = True  # x is a distribution over classes

    def value(self, x: Tensor, mu: Tensor) -> Tensor:
        x, mu = _flat(x), _flat(mu)
        return (torch.xlogy(x, x) - x * F.log_softmax(mu, dim=1)).sum(1)

    def optimum(self, mu: Tensor) -> Tensor:
        return torch.softmax(_flat(mu), dim=1).reshape(mu.shape)

    def local(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """dE/dmu = softmax(mu) sum_k x_k - x; dE/dx = log x + 1 - log softmax(mu) where x > 0."""
        x2, mu2 = _flat(x), _flat(mu)
        logp = F.log_softmax(mu2, dim=1)
        e = (torch.xlogy(x2, x2) - x2 * logp).sum()
        d_mu = torch.exp(logp) * x2.sum(1, keepdim=True) - x2
        d_x = torch.where(x2 > 0, torch.log(x2.clamp_min(1e-30)) + 1 - logp, 0.0)
        return e, d_x.reshape(x.shape), d_mu.reshape(mu.shape)

    def random_data(self, size, shape, generator, dtype):
        """Random one-hot rows."""
        k = int(torch.Size(shape).numel())
        return F.one_hot(torch.randint(0, k, (size,), generator=generator), k).to(dtype).reshape(size, *shape)
