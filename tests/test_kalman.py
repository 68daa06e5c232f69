"""The reference Kalman filter against Gaussian conditioning on the whole joint distribution of
states and observations (an independent closed form), and its steady state against the limit."""

import torch

from pcgraph.kalman import LinearGaussian, kalman_filter, steady_state_prior

f64 = torch.float64


def random_system(n=4, m=2, seed=0) -> LinearGaussian:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=f64)
    A = 0.9 * A / torch.linalg.eigvals(A).abs().max()  # stable: spectral radius 0.9
    C = torch.randn(m, n, generator=g, dtype=f64)
    B = torch.randn(n, n, generator=g, dtype=f64)
    D = torch.randn(m, m, generator=g, dtype=f64)
    return LinearGaussian(A, C, 0.1 * B @ B.T + 0.05 * torch.eye(n, dtype=f64), 0.2 * D @ D.T + 0.1 * torch.eye(m, dtype=f64),
                          torch.randn(n, generator=g, dtype=f64), torch.eye(n, dtype=f64))


def joint_moments(s: LinearGaussian, T: int):
    """Mean and covariance of (x_1..x_T, y_1..y_T) as one Gaussian vector."""
    n = s.A.shape[0]
    # x_t = A^t x_0 + sum_{k<=t} A^{t-k} w_k: x = F x_0 + G w, y = H x + v
    F = torch.cat([torch.linalg.matrix_power(s.A, t) for t in range(1, T + 1)])
    G = torch.zeros(T * n, T * n, dtype=f64)
    for t in range(T):
        for k in range(t + 1):
            G[t * n:(t + 1) * n, k * n:(k + 1) * n] = torch.linalg.matrix_power(s.A, t - k)
    H = torch.block_diag(*[s.C] * T)
    Sx = F @ s.P0 @ F.T + G @ torch.block_diag(*[s.Q] * T) @ G.T
    mx = F @ s.m0
    Sxy, Syy = Sx @ H.T, H @ Sx @ H.T + torch.block_diag(*[s.R] * T)
    return mx, H @ mx, Sx, Sxy, Syy


def test_filter_equals_gaussian_conditioning():
    s = random_system()
    T = 6
    _, ys = s.simulate(T, torch.Generator().manual_seed(1))
    result = kalman_filter(s, ys)
    n, m = 4, 2
    mx, my, Sx, Sxy, Syy = joint_moments(s, T)
    y = ys.reshape(-1)
    for t in range(T):
        obs = slice(0, (t + 1) * m)
        xt = slice(t * n, (t + 1) * n)
        gain = torch.linalg.solve(Syy[obs, obs], Sxy[xt, obs].T).T
        mean = mx[xt] + gain @ (y[obs] - my[obs])
        cov = Sx[xt, xt] - gain @ Sxy[xt, obs].T
        assert torch.allclose(result.means[t], mean, atol=1e-10)
        assert torch.allclose(result.covariances[t], cov, atol=1e-10)


def test_steady_state_prior_is_the_limit_of_the_filter():
    s = random_system(seed=3)
    _, ys = s.simulate(400, torch.Generator().manual_seed(2))
    P = steady_state_prior(s)
    assert torch.allclose(kalman_filter(s, ys).prior_covariances[-1], P, atol=1e-9)
    assert torch.linalg.eigvalsh(P).min() > 0
