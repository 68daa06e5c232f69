"""Entropy and cross-entropy of Gaussians (the lecture notes' Figure 1, eqs. 3-5).

    python examples/tutorial/fig1_gaussians.py [--out fig1_gaussians.png]

Top: the differential entropy H = 1/2 log(2 pi e s^2) of a 1-D Gaussian grows with its variance;
the more peaked the density, the lower (and, below s^2 = 1/(2 pi e), negative) its entropy.
Bottom: four Gaussians q_i against a reference p, and the cross-entropy
H(p, q) = H(p) + KL(p || q) as a function of q's mean and of q's standard deviation: never below
H(p), and equal to it only at q = p. The cross-entropies of the q_i are computed twice, by the
closed form and as pcgraph's Gaussian energy averaged under p (the energy is -log q up to the
constant 1/2 log(2 pi s_q^2)); the script checks that both agree.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from gaussian_maths import cross_entropy, density, entropy, expectation

from pcgraph.energies import parse_energy

REFERENCE = (0.0, 1.0)  # p = N(0, 1)
QS = [(0.8, 0.85), (-1.5, 0.7), (1.0, 1.8), (-0.3, 1.3)]  # (mean, std) of the four q_i
STDS = [0.15, 0.4, 1.0, 2.0]  # the densities drawn against the entropy curve
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]


def cross_entropy_by_energy(mean_p: float, std_p: float, mean_q: float, std_q: float) -> torch.Tensor:
    """H(p, q) = E_p[e_q(x)] + 1/2 log(2 pi s_q^2), with e_q(x) = (x - m_q)^2 / (2 s_q^2) pcgraph's
    Gaussian energy of variance s_q^2 around m_q, and E_p by quadrature."""
    energy = parse_energy({"kind": "gaussian", "covariance": std_q**2})

    def e_q(x):  # x: (..., K) -> (..., K), one sample per value
        return energy.value(x.reshape(-1, 1), torch.full((x.numel(), 1), mean_q, dtype=x.dtype)).reshape(x.shape)

    return expectation(e_q, mean_p, std_p) + 0.5 * math.log(2 * math.pi * std_q**2)


def compute() -> dict:
    """Every number the figure shows, and the checks the summary reports."""
    mp, sp = REFERENCE
    means = torch.linspace(-3, 3, 301, dtype=torch.float64)
    stds = torch.linspace(0.3, 3, 271, dtype=torch.float64)
    closed = torch.stack([cross_entropy(mp, sp, m, s) for m, s in QS])
    by_energy = torch.stack([cross_entropy_by_energy(mp, sp, m, s) for m, s in QS])
    grid = cross_entropy(mp, sp, means[:, None], stds[None, :])  # (means, stds)
    best = divmod(int(grid.argmin()), len(stds))
    return {
        "reference_entropy": entropy(sp).item(),
        "cross_entropies": closed.tolist(),
        "energy_route_error": (closed - by_energy).abs().max().item(),
        "grid_minimum": grid.min().item(),
        "grid_argmin": (means[best[0]].item(), stds[best[1]].item()),
        "means": means, "stds": stds,
    }


def plot(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mp, sp = REFERENCE
    hp = result["reference_entropy"]
    x = torch.linspace(-5, 5, 801, dtype=torch.float64)
    fig = plt.figure(figsize=(14, 8.5))
    grid = fig.add_gridspec(2, 6)
    ax_a, ax_b = fig.add_subplot(grid[0, :3]), fig.add_subplot(grid[0, 3:])
    ax_c, ax_d, ax_e = (fig.add_subplot(grid[1, 2 * i: 2 * i + 2]) for i in range(3))

    for s, c in zip(STDS, COLORS):
        ax_a.plot(x, density(x, 0.0, s), color=c, label=f"s = {s:g}: H = {entropy(s).item():+.2f} nats")
    ax_a.set(title="(a) Gaussians N(0, s$^2$): the more peaked, the lower the entropy", xlabel="x",
             ylabel="density", xlim=(-5, 5))
    ax_a.legend()

    var = torch.logspace(-2.5, 1.5, 200, dtype=torch.float64)
    ax_b.semilogx(var, entropy(var.sqrt()), color="black", label="H = 1/2 log(2$\\pi$e s$^2$)")
    for s, c in zip(STDS, COLORS):
        ax_b.plot(s**2, entropy(s), "o", color=c, markersize=8)
    ax_b.axhline(0, color="grey", lw=0.8)
    ax_b.axvline(1 / (2 * math.pi * math.e), color="grey", ls=":", label="s$^2$ = 1/(2$\\pi$e): H = 0")
    ax_b.set(title="(b) differential entropy against variance", xlabel="variance s$^2$ (log scale)",
             ylabel="entropy H (nats)")
    ax_b.legend(loc="upper left")

    ax_c.plot(x, density(x, mp, sp), "k--", lw=2, label=f"reference p = N({mp:g}, {sp:g}$^2$)")
    for (m, s), h, c in zip(QS, result["cross_entropies"], COLORS):
        ax_c.plot(x, density(x, m, s), color=c, label=f"q = N({m:g}, {s:g}$^2$): H(p,q) = {h:.2f}")
    ax_c.set(title="(c) four Gaussians q against a reference p", xlabel="x", ylabel="density", xlim=(-5, 5))
    ax_c.legend(fontsize=8)

    means, stds = result["means"], result["stds"]
    for (m, s), h, c in zip(QS, result["cross_entropies"], COLORS):
        ax_d.plot(means, cross_entropy(mp, sp, means, s), color=c, lw=1)
        ax_d.plot(m, h, "o", color=c, markersize=8)
        ax_e.plot(stds, cross_entropy(mp, sp, m, stds), color=c, lw=1, label=f"q mean {m:g}")
        ax_e.plot(s, h, "o", color=c, markersize=8)
    ax_d.plot(means, cross_entropy(mp, sp, means, sp), "k--", label=f"q std = {sp:g} (= p's)")
    ax_e.plot(stds, cross_entropy(mp, sp, mp, stds), "k--", label=f"q mean = {mp:g} (= p's)")
    for ax in (ax_d, ax_e):
        ax.axhline(hp, color="red", lw=1, label=f"H(p) = {hp:.3f}: reached only at q = p")
        ax.plot(mp if ax is ax_d else sp, hp, "r*", markersize=14)
        ax.set(ylabel="cross-entropy H(p, q) (nats)", ylim=(hp - 0.3, hp + 4))
    ax_d.set(title="(d) H(p, q) against q's mean (q's std as the dot's)", xlabel="mean of q")
    ax_e.set(title="(e) H(p, q) against q's std (q's mean as the dot's)", xlabel="standard deviation of q")
    ax_d.legend(fontsize=8, loc="upper center")
    ax_e.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(out: str | Path | None = None) -> dict:
    """Compute, plot to ``out`` (default: next to this script) and print a one-line summary."""
    out = Path(out) if out is not None else Path(__file__).with_suffix(".png")
    result = compute()
    plot(result, out)
    gap = ", ".join(f"{h - result['reference_entropy']:.3f}" for h in result["cross_entropies"])
    (m, s), e = result["grid_argmin"], result["energy_route_error"]
    print(f"H(p) = {result['reference_entropy']:.4f} nats; H(p, q_i) - H(p) = {gap} (all > 0); on a grid of q "
          f"the minimum {result['grid_minimum']:.4f} = H(p) is at q = N({m:.2f}, {s:.2f}^2) = p; closed form vs "
          f"pcgraph energy {e:.0e}; saved {out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="PNG to write (default: next to this script)")
    main(parser.parse_args().out)
