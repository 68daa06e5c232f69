"""Depth benchmark: PC methods against backprop on residual and plain MLPs of growing depth.

    python examples/bench_depth.py --data-root ../shared/data --datasets mnist fashion_mnist \\
        --depths 16 32 64 --methods bp pc epc nudged exact --epochs 5 --markdown depth.md --plot depth.png
    python examples/bench_depth.py --write-specs specs/deep     # the shipped deep specs

A residual MLP of depth H has H hidden layers of width N in muPC's parametrisation (Ishikawa et
al. 2025, arXiv 2505.13124, as jpc builds it): weights N(0, 1), no biases, h_1 = W_1 x / sqrt(D),
h_l = h_{l-1} + W_l relu(h_{l-1}) / sqrt(N L) and y = W_L relu(h_H) / N, with L = H + 1 the
graph's depth in edges (the edge field ``scale``). A plain MLP has no skips (Xavier init, GELU).
Each method is the same graph with other settings (no copied solver): ``bp`` (backprop on the
same graph and optimizer), ``pc`` (standard PC at a fixed budget of T = 8 steps), ``epc``
(error-parametrised PC, T = 1: one step on the errors from the feedforward pass),
``nudged`` (ePC inference with the energy-form nudged update), ``forward`` (ePC inference with the
forward update), ``mupc`` (standard PC with jpc's T = H), ``exact`` (fixed predictions:
backprop computed by PC's machinery, the reference). Prints one row per (dataset, net, depth,
method): best and final test accuracy, median seconds per epoch, PC/BP time ratio, inference
steps; one JSON line at the end. Run it on an otherwise idle machine: the times are wall clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import pcgraph
from pcgraph.tasks.train import train

METHODS = {  # name: (learning.variant, learning.update, inference steps as a function of depth H)
    "bp": ("standard", "relaxed", lambda h: 1),
    "pc": ("standard", "relaxed", lambda h: 8),
    "mupc": ("standard", "relaxed", lambda h: h),
    "epc": ("epc", "relaxed", lambda h: 1),
    "nudged": ("epc", {"kind": "nudged", "beta": 0.1, "form": "energy"}, lambda h: 1),
    "forward": ("epc", "forward", lambda h: 1),
    "exact": ("exact", "relaxed", lambda h: h + 1),
}
# state step sizes: ePC's one step moves every layer at once, and the output moves by about the
# sum over the L layers of their effect, so its step shrinks as 1 / L (4 / L: no overshoot at any depth)
# (a plain MLP's Jacobians are not bounded by muPC's scales: its step is 4000 times smaller)
STATE_LR = {"standard": lambda h: 0.5, "epc": lambda h: 4 / (h + 1), "exact": lambda h: 1.0}
PLAIN_EPC_LR = lambda h: 1e-3 / (h + 1)  # noqa: E731


def deep_mlp(dataset: str, depth: int, width: int = 128, residual: bool = True, method: str = "epc",
             epochs: int = 5, lr: float | None = None) -> dict:
    """The spec (as a dict) of a residual (muPC) or plain MLP with ``depth`` hidden layers."""
    variant, update, steps = METHODS[method]
    nodes = {"image": {"shape": [64 if dataset == "digits" else 784], "role": "observed"},
             **{f"h{i}": {"shape": [width]} for i in range(1, depth + 1)},
             "label": {"shape": [10], "role": "observed"}}
    if residual:
        w = {"kind": "linear", "init": "normal", "bias": False}
        edges = [{"from": "image", "to": "h1", "fn": [w], "scale": "1/sqrt(fan_in)"}]
        for i in range(1, depth):
            edges += [{"from": f"h{i}", "to": f"h{i + 1}", "fn": ["relu", w], "scale": "1/sqrt(fan_in*depth)"},
                      {"from": f"h{i}", "to": f"h{i + 1}"}]
        edges.append({"from": f"h{depth}", "to": "label", "fn": ["relu", w], "scale": "1/fan_in"})
        lr = lr or 1e-2
    else:
        w = {"kind": "linear", "init": "xavier_uniform"}
        edges = [{"from": "image", "to": "h1", "fn": [w, "gelu"]}]
        edges += [{"from": f"h{i}", "to": f"h{i + 1}", "fn": [w, "gelu"]} for i in range(1, depth)]
        edges.append({"from": f"h{depth}", "to": "label", "fn": [w]})
        lr = lr or 1e-3
    kind = "residual (muPC)" if residual else "plain"
    state_lr = PLAIN_EPC_LR if variant == "epc" and not residual else STATE_LR[variant]
    return {
        "name": f"{dataset}-{'res' if residual else 'plain'}mlp{depth}-{method}",
        "description": f"{kind} MLP, {depth} hidden layers of {width}, {method}; examples/bench_depth.py",
        "graph": {"nodes": nodes, "edges": edges},
        "inference": {"steps": steps(depth), "init": "forward",
                      "optimizer": {"kind": "sgd", "lr": _rounded(state_lr(depth)), "momentum": 0.0}},
        "learning": {"optimizer": {"kind": "adam", "lr": lr}, "schedule": "cosine", "variant": variant,
                     "update": update},
        "data": {"dataset": dataset, "input": "image", "target": "label", "batch_size": 128},
        "train": {"epochs": epochs, "seed": 0},
    }


def _rounded(x: float) -> float:
    """4 decimals, or 2 significant digits below 1e-3 (a step is never rounded to 0)."""
    return round(x, 4) if x >= 1e-3 else float(f"{x:.2g}")


def write_specs(folder: Path) -> None:
    """The shipped deep specs: residual MLPs of depth 16-128 on MNIST and Fashion-MNIST, ePC."""
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in ("mnist", "fashion_mnist"):
        for depth in (16, 32, 64, 128):
            spec = pcgraph.spec_from_dict(deep_mlp(dataset, depth, method="epc"))
            path = folder / f"{dataset}_resmlp{depth}.yaml"
            path.write_text(f"# {spec.description}\n" + spec.to_yaml())
            print(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--datasets", nargs="+", default=["mnist"])
    p.add_argument("--depths", nargs="*", type=int, default=[16, 32, 64], help="residual MLPs (muPC)")
    p.add_argument("--plain-depths", nargs="*", type=int, default=[16, 32], help="plain MLPs (no skips)")
    p.add_argument("--methods", nargs="+", default=["bp", "pc", "epc", "nudged", "exact"], choices=list(METHODS))
    p.add_argument("--plain-methods", nargs="*", default=["bp", "epc"], choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--plot", type=Path, help="accuracy against depth per method (PNG)")
    p.add_argument("--write-specs", type=Path, help="write the shipped deep specs to this folder and stop")
    args = p.parse_args(argv)
    if args.write_specs:
        write_specs(args.write_specs)
        return 0
    for path in (args.markdown, args.plot):
        if path is not None and not path.parent.exists():
            p.error(f"cannot write {path}: folder {path.parent} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [(d, True, h, m) for d in args.datasets for h in args.depths for m in args.methods]
    runs += [(d, False, h, m) for d in args.datasets for h in args.plain_depths for m in args.plain_methods]
    rows, bp_seconds = [], {}
    header = "| data | net | depth | method | T | best test acc. | final | s/epoch | PC/BP time |"
    print(header + "\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for dataset, residual, depth, method in runs:
        spec = pcgraph.spec_from_dict(deep_mlp(dataset, depth, args.width, residual, method, args.epochs))
        try:
            result = train(spec, data_root=args.data_root, progress=False, log=lambda _: None,
                           method="bp" if method == "bp" else "pc")
        except pcgraph.DivergenceError as err:  # a row that says so; the other rows still run
            rows.append({"dataset": dataset, "net": "residual" if residual else "plain", "depth": depth,
                         "method": method, "steps": spec.inference.steps, "diverged": str(err)})
            print(_line(rows[-1]), flush=True)
            continue
        seconds = statistics.median(result.epoch_seconds[1:] or result.epoch_seconds)
        key = (dataset, residual, depth)
        if method == "bp":
            bp_seconds[key] = seconds
        ratio = seconds / bp_seconds[key] if key in bp_seconds and method != "bp" else None
        row = {"dataset": dataset, "net": "residual" if residual else "plain", "depth": depth, "method": method,
               "steps": 0 if method == "bp" else spec.inference.steps, "best": result.best_test_metric,
               "final": result.test_metric, "seconds": seconds, "ratio": ratio}
        rows.append(row)
        print(_line(row), flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join([header, "| --- " * 9 + "|", *map(_line, rows)]) + "\n")
    if args.plot:
        _plot(rows, args.plot)
    print(json.dumps({"machine": f"{torch.get_num_threads()} threads", "rows": rows}))
    return 0


def _line(r: dict) -> str:
    if "diverged" in r:
        return f"| {r['dataset']} | {r['net']} | {r['depth']} | {r['method']} | {r['steps']} | diverged | | | |"
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
    return (f"| {r['dataset']} | {r['net']} | {r['depth']} | {r['method']} | {r['steps'] or '-'} | "
            f"{100 * r['best']:.2f}% | {100 * r['final']:.2f}% | {r['seconds']:.1f} | {ratio} |")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["dataset"], r["net"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (dataset, net) in zip(axes[0], groups):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["depth"], 100 * r["best"]) for r in rows
                         if (r["dataset"], r["net"], r["method"]) == (dataset, net, method) and "best" in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        depths = sorted({r["depth"] for r in rows if (r["dataset"], r["net"]) == (dataset, net)})
        ax.set(title=f"{dataset}, {net} MLP", xlabel="hidden layers", ylabel="best test accuracy (%)", xscale="log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.minorticks_off()
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
