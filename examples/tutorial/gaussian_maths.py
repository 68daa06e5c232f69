"""Closed forms for 1-D Gaussians that pcgraph itself has no notion of (entropy, cross-entropy, KL),
and a quadrature rule for expectations under a Gaussian. Every function takes numbers or float64
tensors (broadcast together) and returns a float64 tensor; logarithms are natural (nats).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def _t(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def density(x, mean, std) -> Tensor:
    """N(x; m, s^2) = exp(-(x - m)^2 / (2 s^2)) / sqrt(2 pi s^2)."""
    x, mean, std = _t(x), _t(mean), _t(std)
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def entropy(std) -> Tensor:
    """H(N(m, s^2)) = 1/2 log(2 pi e s^2): grows with the variance, independent of the mean, and
    negative once s^2 < 1 / (2 pi e) (a differential entropy, not a count of bits)."""
    return 0.5 * (LOG_2PI + 1 + 2 * torch.log(_t(std)))


def cross_entropy(mean_p, std_p, mean_q, std_q) -> Tensor:
    """H(p, q) = -E_p[log q] = 1/2 log(2 pi s_q^2) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2)
    for p = N(m_p, s_p^2), q = N(m_q, s_q^2); it equals H(p) + KL(p || q), so H(p, q) >= H(p),
    with equality exactly at q = p."""
    mean_p, std_p, mean_q, std_q = map(_t, (mean_p, std_p, mean_q, std_q))
    return 0.5 * (LOG_2PI + 2 * torch.log(std_q)) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2)


def kl(mean_q, std_q, mean_p, std_p) -> Tensor:
    """KL(q || p) = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2 = H(q, p) - H(q) >= 0,
    zero exactly at q = p."""
    mean_q, std_q, mean_p, std_p = map(_t, (mean_q, std_q, mean_p, std_p))
    return torch.log(std_p / std_q) + (std_q**2 + (mean_q - mean_p) ** 2) / (2 * std_p**2) - 0.5


def expectation(f, mean, std, points: int = 24) -> Tensor:
    """E_{z ~ N(m, s^2)}[f(z)] ~= sum_k w_k f(m + s t_k), Gauss-Hermite (probabilists') nodes t_k and
    weights w_k / sqrt(2 pi): exact when f is a polynomial of degree < 2 * points.

    ``f`` maps a tensor of z values (shape (..., points)) to f(z) of the same shape; ``mean`` and
    ``std`` may be tensors of any one shape S, and the result has shape S.
    """
    t, w = np.polynomial.hermite_e.hermegauss(points)
    t, w = _t(t), _t(w) / math.sqrt(2 * math.pi)  # (K,), weights sum to 1
    z = _t(mean).unsqueeze(-1) + _t(std).unsqueeze(-1) * t  # (*S, K)
    return (f(z) * w).sum(-1)
