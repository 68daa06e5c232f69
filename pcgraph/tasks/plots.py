"""Figures the CLI writes (matplotlib, headless): the verify-bp sweep, filter tracks and the
per-node energy over inference steps."""

from __future__ import annotations

from pcgraph.errors import UsageError


def bp_sweep(result, path: str) -> None:
    """Max relative error of PC / s against BP over the output precision scale s, per T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.mode != "approx":
        raise UsageError("--plot draws the approx-mode sweep; add --mode approx")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for t in sorted({r["steps"] for r in result.sweep}):
        rows = [r for r in result.sweep if r["steps"] == t]
        ax.loglog([r["scale"] for r in rows], [r["max_rel_error"] for r in rows], "o-", label=f"T = {t}")
    ax.set_xlabel("output precision scale s")
    ax.set_ylabel("max relative error of PC / s vs BP")
    ax.legend()
    save(fig, path)


def node_energy(trace: dict[str, list[float]], path: str, title: str = "") -> None:
    """A heat map of log10 energy per sample, node (rows, in graph order) against inference step:
    where the errors are at each step, and where they stop propagating."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(trace)
    grid = [[math.log10(max(e, 1e-12)) for e in trace[v]] for v in names]
    fig, ax = plt.subplots(figsize=(6, 1.5 + 0.25 * len(names)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("inference step (last column: after the last step)")
    ax.set_title(title or "log10 energy per sample of each node")
    fig.colorbar(im, ax=ax, label="log10 energy")
    save(fig, path)


def tracks(estimates, truth, observations, path: str) -> None:
    """The first two state coordinates over time (as a 2-D track), observations, estimates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    if truth is not None:
        t = next(iter(truth.values()))[:, 0].reshape(len(next(iter(truth.values()))), -1)
        ax.plot(t[:, 0], t[:, 1] if t.shape[1] > 1 else range(len(t)), "k-", lw=2, label="true state")
    y = next(iter(observations.values()))[:, 0].reshape(len(next(iter(observations.values()))), -1)
    if y.shape[1] >= 2:
        ax.plot(y[:, 0], y[:, 1], ".", color="0.6", ms=4, label="observations")
    for name, est in estimates.items():
        est = est.reshape(len(est), -1)
        ax.plot(est[:, 0], est[:, 1] if est.shape[1] > 1 else range(len(est)), "--" if name == "kalman" else "-",
                lw=1.2, label=name)
    ax.set_xlabel("state 0")
    ax.set_ylabel("state 1")
    ax.legend(fontsize=8)
    save(fig, path, dpi=110)


def save(fig, path: str, dpi: int = 120) -> None:
    """Lay out, write and close ``fig``; an unwritable path is a UsageError (one CLI line)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as err:
        raise UsageError(f"cannot write the figure to {path!r}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
