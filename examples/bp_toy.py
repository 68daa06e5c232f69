"""The notes' two-parameter toy: PC energy landscapes against the backprop loss.

    python examples/bp_toy.py [--grid 21] [--out examples/bp_toy.png]

Model y = th1 * tanh(th0 * tanh(x)), 100 points x on [-2, 2], targets made by th* = (1, 2). As a
PC graph: x (clamped) -> h with mu_h = th0 tanh(x), h -> y (clamped) with mu_y = th1 tanh(h) and
output variance k (precision 1/k). For each (th0, th1) on a grid over [-3, 3]^2 the hidden state
is relaxed to equilibrium; the PC energy there is F_k(th), its gradient the PC learning signal.
As k grows, F_k / (1/k) approaches the BP loss and the PC gradient's direction approaches BP's
(Whittington & Bogacz 2017). Saves one PNG (landscapes and direction fields for k = 1, 5, 50 next to
BP) and prints the mean cosine between PC and BP gradient directions over the grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import pcgraph

THETA_STAR = (1.0, 2.0)


def toy_graph(k: float) -> pcgraph.CompiledGraph:
    g = pcgraph.Graph("bp-toy")
    g.node("x", 1, observed=True)
    g.node("h", 1)
    g.node("y", 1, observed=True, energy={"kind": "gaussian", "precision": 1.0 / k})
    g.edge("x", "h", "tanh", {"kind": "linear", "bias": False})
    g.edge("h", "y", "tanh", {"kind": "linear", "bias": False})
    return pcgraph.compile(g.spec()).double()


def data() -> dict[str, torch.Tensor]:
    x = torch.linspace(-2, 2, 100, dtype=torch.float64).unsqueeze(1)
    th0, th1 = THETA_STAR
    return {"x": x, "y": th1 * torch.tanh(th0 * torch.tanh(x))}


def set_theta(graph: pcgraph.CompiledGraph, th0: float, th1: float) -> None:
    with torch.no_grad():
        graph.edges[0].pipeline[1].weight.fill_(th0)
        graph.edges[1].pipeline[1].weight.fill_(th1)


def landscape(ks=(1.0, 5.0, 50.0), grid: int = 31, log=lambda line: None):
    """Energies and gradients on the grid: {"theta": (grid,), "bp": (loss, grad), k: (energy, grad),
    "cosine": {k: mean cosine between PC and BP gradient directions}}."""
    batch = data()
    thetas = torch.linspace(-3, 3, grid, dtype=torch.float64)
    solver = pcgraph.Solver(steps=3000, optimizer=pcgraph.StateSGD(0.05, momentum=0.9), tol=1e-10,
                            check_every=20)
    out = {"theta": thetas}
    bp_graph = toy_graph(1.0)
    loss, bp_grad = torch.zeros(grid, grid, dtype=torch.float64), torch.zeros(grid, grid, 2, dtype=torch.float64)
    for i, th1 in enumerate(thetas):
        for j, th0 in enumerate(thetas):
            set_theta(bp_graph, th0, th1)
            with torch.enable_grad():
                loss[i, j] = bp_graph.bp_loss(batch).item()
            g = pcgraph.bp_gradients(bp_graph, batch)
            bp_grad[i, j] = torch.stack([g["edges.0.pipeline.1.weight"].sum(), g["edges.1.pipeline.1.weight"].sum()])
    out["bp"] = (loss, bp_grad)
    out["cosine"] = {}
    for n, k in enumerate(ks, 1):
        log(f"relaxing PC on the {grid} x {grid} grid for output variance k = {k:g} ({n} of {len(ks)})")
        graph = toy_graph(k)
        energy, grad = torch.zeros(grid, grid, dtype=torch.float64), torch.zeros(grid, grid, 2, dtype=torch.float64)
        for i, th1 in enumerate(thetas):
            for j, th0 in enumerate(thetas):
                set_theta(graph, th0, th1)
                relaxed, g = solver.gradients(graph, batch)
                energy[i, j] = relaxed.energy[-1].item() / len(batch["x"])
                grad[i, j] = torch.stack([g["edges.0.pipeline.1.weight"].sum(), g["edges.1.pipeline.1.weight"].sum()])
        cos = torch.nn.functional.cosine_similarity(grad.reshape(-1, 2), bp_grad.reshape(-1, 2), dim=1, eps=1e-30)
        out[k] = (energy, grad)
        out["cosine"][k] = cos.mean().item()
    return out


def plot(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th = result["theta"].numpy()
    panels = [(f"PC energy, k = {k:g} (cos {result['cosine'][k]:.3f})", *result[k])
              for k in result["cosine"]] + [("BP loss", *result["bp"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    step = max(1, len(th) // 10)
    for ax, (title, value, grad) in zip(axes, panels):
        ax.contourf(th, th, value.log1p().numpy(), levels=30, cmap="viridis")
        d = -grad / grad.norm(dim=2, keepdim=True).clamp_min(1e-30)  # descent directions
        ax.quiver(th[::step], th[::step], d[::step, ::step, 0].numpy(), d[::step, ::step, 1].numpy(),
                  color="white", scale=25, width=0.004)
        ax.plot(*THETA_STAR, "r*", markersize=10)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("theta 0")
        ax.set_ylabel("theta 1")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, default=21, help="grid points per axis")
    p.add_argument("--out", default=str(Path(__file__).with_name("bp_toy.png")), help="PNG (default: next to this script)")
    args = p.parse_args()
    result = landscape(grid=args.grid, log=lambda line: print(line, file=sys.stderr, flush=True))
    plot(result, args.out)
    for k, c in result["cosine"].items():
        print(f"output variance k = {k:g}: mean cosine(PC gradient, BP gradient) over the grid = {c:.4f}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
