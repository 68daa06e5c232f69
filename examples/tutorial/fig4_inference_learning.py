"""Predictive coding on one observation: inference moves the state, then learning moves the weight
(the lecture notes' Figure 4, eqs. 34-39).

    python examples/tutorial/fig4_inference_learning.py [--out fig4_inference_learning.png]

Model (``latent_model.py``): z ~ N(1, 1), y | z ~ N(w z, 1), one observation y = 2.5 and a poor
initial weight w = 0.5. The energy of the two-node pcgraph graph is

    E(z, w) = (z - 1)^2 / 2 + (y - w z)^2 / 2.

Inference (pcgraph's solver, plain gradient steps z <- z - lr dE/dz from the prior mean) takes z
down the energy to the MAP state, the exact posterior mean z*(w) = (1 + w y) / (1 + w^2) of this
linear-Gaussian model; learning (``Solver.learn``: one SGD step on w at the relaxed state) then
takes w <- w - eta dE/dw, dE/dw = -(y - w z) z, so that w z predicts y better. The rounds repeat on
the same observation, each inference starting where the last one ended. Panels: (a) the path in
the (z, w) plane over the energy landscape, (b) z and w against the step count, (c) the energy.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from latent_model import LatentModel

import pcgraph

MODEL = LatentModel(prior_mean=1.0, prior_std=1.0, weight=0.5, obs_std=1.0)
Y = 2.5
ROUNDS, STEPS = 10, 25  # inference-then-learning rounds; inference steps per round
STATE_LR, WEIGHT_LR = 0.3, 0.1


def run(model: LatentModel = MODEL, y: float = Y, rounds: int = ROUNDS, steps: int = STEPS,
        state_lr: float = STATE_LR, weight_lr: float = WEIGHT_LR) -> dict:
    """Alternate ``steps`` inference steps and one learning step, ``rounds`` times. The solver runs
    one step per call (each starting where the last ended, which is what a ``steps``-step run does
    with plain gradient steps) so that the figure can draw the path. Returns the path (one entry
    per point: "z", "w", "energy", "phase" in {"start", "infer", "learn"}) and per round the
    relaxed state, the closed-form MAP state, and the weight before and after learning."""
    spec = model.spec(steps=1, lr=state_lr)
    graph = pcgraph.compile(spec, dtype=torch.float64)
    solver = pcgraph.Solver.from_spec(spec)
    weight = graph.edges[0].pipeline[0].weight  # (1, 1): the generative parameter w
    optimizer = torch.optim.SGD([weight], lr=weight_lr)
    batch = {"y": torch.tensor([[y]], dtype=torch.float64)}  # (B=1, 1): y is clamped, z is inferred
    z = torch.tensor([[model.prior_mean]], dtype=torch.float64)  # inference starts at the prior mean

    def energy_at(z: torch.Tensor) -> float:
        with torch.no_grad():
            return graph.energy({"z": z, **batch}).item()

    path = {"z": [z.item()], "w": [weight.item()], "energy": [energy_at(z)], "phase": ["start"]}
    record = []
    for _ in range(rounds):
        w = weight.item()
        for _ in range(steps):
            relaxation = solver.relax(graph, batch, init={"z": z})
            z = relaxation.states["z"]
            for key, value in (("z", z.item()), ("w", w), ("energy", energy_at(z)), ("phase", "infer")):
                path[key].append(value)
        solver.learn(graph, relaxation, optimizer)
        for key, value in (("z", z.item()), ("w", weight.item()), ("energy", energy_at(z)), ("phase", "learn")):
            path[key].append(value)
        record.append({"z": z.item(), "z_map": replace(model, weight=w).posterior(y)[0].item(),
                       "w_before": w, "w_after": weight.item()})
    return {"path": path, "rounds": record, "steps": steps}


def plot(result: dict, path: str | Path, model: LatentModel = MODEL, y: float = Y) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = result["path"]
    z, w, energy = (torch.tensor(trace[k]) for k in ("z", "w", "energy"))
    learn = [i for i, p in enumerate(trace["phase"]) if p == "learn"]
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(17, 5.2))

    zs = torch.linspace(0.6, 2.2, 200, dtype=torch.float64)
    ws = torch.linspace(0.3, 2.7, 200, dtype=torch.float64)
    zz, wg = torch.meshgrid(zs, ws, indexing="xy")  # (w, z)
    landscape = (zz - model.prior_mean) ** 2 / (2 * model.prior_std**2) + (y - wg * zz) ** 2 / (2 * model.obs_std**2)
    contours = ax_a.contourf(zs, ws, landscape.log1p(), levels=30, cmap="viridis")
    fig.colorbar(contours, ax=ax_a, label="log(1 + E)")
    z_map = torch.stack([replace(model, weight=v.item()).posterior(y)[0] for v in ws])
    ax_a.plot(z_map, ws, "w--", lw=1.2, label="MAP state z*(w) (closed form)")
    ax_a.plot(z, w, "-", color="white", lw=0.8)
    infer = [i for i, p in enumerate(trace["phase"]) if p == "infer"]
    ax_a.plot(z[infer], w[infer], ".", color="tab:orange", markersize=4, label="inference steps (z moves)")
    ax_a.plot(z[learn], w[learn], "^", color="tab:red", markersize=7, label="learning steps (w moves)")
    ax_a.plot(z[0], w[0], "o", color="white", markersize=8, label=f"start: z = prior mean, w = {w[0].item():g}")
    ax_a.plot(model.prior_mean, y / model.prior_mean, "*", color="gold", markersize=14,
              label=f"E = 0 at z = {model.prior_mean:g}, w = {y / model.prior_mean:g}")
    ax_a.set(title="(a) the path over the energy landscape E(z, w)", xlabel="latent state z",
             ylabel="generative weight w", xlim=(zs[0].item(), zs[-1].item()), ylim=(ws[0].item(), ws[-1].item()))
    ax_a.legend(fontsize=8, loc="upper right")

    steps = torch.arange(len(z))
    ax_b.plot(steps, z, color="tab:orange", label="state z (inference)")
    ax_b.plot(steps, w, color="tab:red", label="weight w (learning)")
    maps = [r["z_map"] for r in result["rounds"]]
    starts = [0] + learn[:-1]
    ax_b.hlines(maps, starts, learn, colors="black", linestyles=":", label="closed-form MAP z*(w) of each round")
    ax_b.plot(steps, w * z, color="tab:blue", lw=1, label="prediction w z")
    ax_b.axhline(y, color="tab:blue", ls="--", lw=1, label=f"observation y = {y:g}")
    ax_c.plot(steps, energy, color="black", label="energy E (graph.energy)")
    ax_c.plot(learn, energy[learn], "^", color="tab:red", label="after a learning step")
    for ax in (ax_b, ax_c):
        for i in learn:
            ax.axvline(i, color="grey", lw=0.5, alpha=0.5)
        ax.set_xlabel(f"step ({len(learn)} rounds of {result['steps']} inference steps, then 1 learning step)")
        ax.legend(fontsize=8, loc="lower right" if ax is ax_b else "upper right")
    ax_b.set(title="(b) inference moves the state, learning moves the weight", ylabel="value")
    ax_c.set(title="(c) both phases go down the same energy", ylabel="energy E(z, w)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(out: str | Path | None = None) -> dict:
    """Run, plot to ``out`` (default: next to this script) and print a one-line summary."""
    out = Path(out) if out is not None else Path(__file__).with_suffix(".png")
    result = run()
    plot(result, out)
    first, energy = result["rounds"][0], result["path"]["energy"]
    print(f"round 1: inference took z from {MODEL.prior_mean:g} to {first['z']:.4f} (closed-form MAP "
          f"{first['z_map']:.4f}), then learning took w from {first['w_before']:g} to {first['w_after']:.4f}; "
          f"energy {energy[0]:.3f} -> {energy[-1]:.3f} after {len(result['rounds'])} rounds; saved {out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="PNG to write (default: next to this script)")
    main(parser.parse_args().out)
