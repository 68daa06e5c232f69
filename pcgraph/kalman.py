"""A reference Kalman filter: the closed-form Bayesian filter of a linear-Gaussian system.

    x_{t+1} = A x_t + w,  w ~ N(0, Q)        (eq. 50)
    y_t     = C x_t + v,  v ~ N(0, R)        (eq. 54)

Predict: m^- = A m, P^- = A P A^T + Q (eqs. 52-53). Update with y: K = P^- C^T (C P^- C^T + R)^-1,
m = m^- + K (y - C m^-), P = (I - K C) P^- (Joseph form in code, for symmetry). PC on the
recurrent graph of the notes' Figure 5 minimises, at each step, the energy (eq. 60)

    1/2 (y - C x)^T R^-1 (y - C x) + 1/2 (x - A m_{t-1})^T (P^-)^-1 (x - A m_{t-1}),

whose minimiser is exactly this filter's posterior mean when P^- is propagated as above: that is
what the tests check. Everything here is plain torch linear algebra, float64 recommended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearGaussian:
    """The system (A, C, Q, R) and the initial belief x_0 ~ N(m0, P0)."""

    A: Tensor
    C: Tensor
    Q: Tensor
    R: Tensor
    m0: Tensor
    P0: Tensor

    def simulate(self, length: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(states (length, n), observations (length, m)): x_1 = A x_0 + w, y_t = C x_t + v."""
        n, m = self.A.shape[0], self.C.shape[0]
        dtype = self.A.dtype
        chol_q, chol_r = _chol(self.Q), _chol(self.R)
        x = self.m0 + _chol(self.P0) @ torch.randn(n, generator=generator, dtype=dtype)
        xs, ys = [], []
        for _ in range(length):
            x = self.A @ x + chol_q @ torch.randn(n, generator=generator, dtype=dtype)
            xs.append(x)
            ys.append(self.C @ x + chol_r @ torch.randn(m, generator=generator, dtype=dtype))
        return torch.stack(xs), torch.stack(ys)


@dataclass
class FilterResult:
    means: Tensor  # (T, n) posterior means m_t
    covariances: Tensor  # (T, n, n) posterior covariances P_t
    prior_covariances: Tensor  # (T, n, n) predicted covariances P^-_t
    innovations: Tensor  # (T, m) one-step-ahead prediction errors y_t - C A m_{t-1}


def predict(system: LinearGaussian, m: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:
    """m^- = A m, P^- = A P A^T + Q."""
    return system.A @ m, system.A @ P @ system.A.T + system.Q


def update(system: LinearGaussian, m_prior: Tensor, P_prior: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The posterior (m, P) given the observation y."""
    C, R = system.C, system.R
    S = C @ P_prior @ C.T + R
    K = torch.linalg.solve(S, C @ P_prior).T  # P^- C^T S^-1 (S and P^- symmetric)
    m = m_prior + K @ (y - C @ m_prior)
    I_KC = torch.eye(len(m), dtype=m.dtype) - K @ C
    P = I_KC @ P_prior @ I_KC.T + K @ R @ K.T
    return m, 0.5 * (P + P.T)


def kalman_filter(system: LinearGaussian, observations: Tensor) -> FilterResult:
    """Run predict/update over ``observations`` (T, m), starting from (m0, P0)."""
    m, P = system.m0, system.P0
    means, covs, priors, innovations = [], [], [], []
    for y in observations:
        m_prior, P_prior = predict(system, m, P)
        innovations.append(y - system.C @ m_prior)
        m, P = update(system, m_prior, P_prior, y)
        means.append(m)
        covs.append(P)
        priors.append(P_prior)
    return FilterResult(torch.stack(means), torch.stack(covs), torch.stack(priors), torch.stack(innovations))


def steady_state_prior(system: LinearGaussian, tol: float = 1e-12, max_iter: int = 100_000) -> Tensor:
    """The fixed point P^-_inf of the Riccati recursion P^- <- A (P^- - P^- C^T S^-1 C P^-) A^T + Q
    (iterated from Q to convergence), i.e. the predicted covariance of the filter in steady state."""
    P = system.Q.clone()
    for _ in range(max_iter):
        _, post = update(system, torch.zeros(len(P), dtype=P.dtype), P, torch.zeros(system.C.shape[0], dtype=P.dtype))
        nxt = system.A @ post @ system.A.T + system.Q
        if torch.max(torch.abs(nxt - P)) <= tol * max(1.0, float(torch.max(torch.abs(P)))):
            return 0.5 * (nxt + nxt.T)
        P = nxt
    raise RuntimeError("the Riccati recursion did not converge: is (A, C) detectable and the system stabilisable?")


def _chol(M: Tensor) -> Tensor:
    return torch.linalg.cholesky(0.5 * (M + M.T))
