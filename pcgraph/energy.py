"""Node energies: tiny pure functions of a state x and its prediction mu.

Every function returns the per-sample energy, shape (B,). Inference differentiates their sum
with respect to the states; learning differentiates their batch mean with respect to the
parameters (DESIGN.md, section 1). The total energy is eq. 27 of the notes with its sign flipped
and constants dropped: E = sum_v e_v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pcgraph.spec import Categorical, Gaussian, Prior


def _per_sample(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)  # (B, ...) -> (B,)


def gaussian(x: Tensor, mu: Tensor, precision: float = 1.0) -> Tensor:
    """e = 1/2 pi ||x - mu||^2 (fixed precision: the -1/2 log pi term is a constant, dropped)."""
    return 0.5 * precision * _per_sample((x - mu).square())


def categorical(x: Tensor, mu: Tensor) -> Tensor:
    """e = KL(x || softmax(mu)) = sum_k x_k (log x_k - log softmax(mu)_k).

    For a one-hot x this is the softmax cross-entropy -log softmax(mu)_y; for x = softmax(mu)
    (a free label at its optimum) it is exactly 0, like a Gaussian node with x = mu.
    """
    x, mu = x.reshape(x.shape[0], -1), mu.reshape(mu.shape[0], -1)
    return (torch.xlogy(x, x) - x * F.log_softmax(mu, dim=1)).sum(1)


def node_energy(spec: Gaussian | Categorical, x: Tensor, mu: Tensor) -> Tensor:
    """Dispatch on the node's energy spec. Returns (B,)."""
    if isinstance(spec, Categorical):
        return categorical(x, mu)
    return gaussian(x, mu, spec.scalar)


def prior_energy(prior: Prior, x: Tensor) -> Tensor:
    """e = 1/2 pi_0 ||x - m_0||^2 for a root node with a prior. Returns (B,)."""
    return 0.5 * prior.precision * _per_sample((x - prior.mean).square())


def mean(spec: Gaussian | Categorical, mu: Tensor) -> Tensor:
    """The state that minimises the node's energy given mu: mu itself, or softmax(mu)."""
    if isinstance(spec, Categorical):
        return torch.softmax(mu.reshape(mu.shape[0], -1), dim=1).reshape(mu.shape)
    return mu
