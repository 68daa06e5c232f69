"""Recurrent PC on a nonlinear system: the tanh oscillator of specs/tanh_oscillator.yaml.

    python examples/nonlinear_filter.py [--plot examples/nonlinear_filter.png]

Simulates 200 steps of x_t = A tanh(x_{t-1}) + w with only x[0] observed (noisily), runs PC along
the sequence (the tanh sits in the delayed edge) and prints the RMSE of PC's estimate of each
coordinate against the true state, next to the observation noise level (for x[0]) and the spread of
x[1] itself (what guessing its mean would score). Saves a plot of both coordinates over time.
"""

from __future__ import annotations

import argparse

import torch

import pcgraph
from pcgraph.tasks.sequence import run_sequence, simulate


def main(length: int = 200, plot: str | None = None) -> dict:
    spec = pcgraph.load_spec("specs/tanh_oscillator.yaml")
    graph = pcgraph.compile(spec).double()
    truth, obs = simulate(graph, length, 1, torch.Generator().manual_seed(spec.sequence.seed), torch.float64)
    est = run_sequence(graph, obs).estimates["x"][:, 0]
    x = truth["x"][:, 0]
    rmse = ((est - x) ** 2).mean(0).sqrt()
    result = {"rmse_x0": float(rmse[0]), "rmse_x1": float(rmse[1]),
              "observation_noise_std": 0.3, "std_x1": float(x[:, 1].std())}
    print(f"PC estimate RMSE: x[0] {result['rmse_x0']:.3f} (observation noise std 0.3), "
          f"x[1] {result['rmse_x1']:.3f} (never observed; its own std {result['std_x1']:.3f})")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        t = range(length)
        axes[0].plot(t, obs["y"][:, 0, 0], ".", color="0.6", ms=3, label="observation y = x[0] + noise")
        for ax, k in zip(axes, range(2)):
            ax.plot(t, x[:, k], "k-", lw=1.5, label=f"true x[{k}]")
            ax.plot(t, est[:, k], "C1-", lw=1.2, label=f"PC estimate of x[{k}]")
            ax.legend(fontsize=8, loc="upper right")
        axes[1].set_xlabel("time step")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
        plt.close(fig)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--plot", default="examples/nonlinear_filter.png")
    args = p.parse_args()
    main(args.length, args.plot)
