"""Benchmark PC against backprop on one graph (default: the notes' MNIST MLP), same machine, same run.

    python examples/bench_mlp.py specs/mnist_mlp.yaml --data-root ../shared/data --epochs 25

Prints, per method: seconds per epoch (first epoch, which holds any one-time compile cost, and
the median of the rest), best and final test accuracy; FLOPs per parameter update (counted by
torch.utils.flop_counter on one update, inference steps included for PC); the achieved GFLOP/s
of the PC update; and plain torch.matmul GFLOP/s at the update's matrix shapes. Ends with one
JSON line. Run it on an otherwise idle machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import pcgraph
from pcgraph.tasks.bench import flops_per_update
from pcgraph.tasks.train import train


def matmul_gflops(shapes: list[tuple[int, int, int]], repeat: int = 200) -> float:
    """GFLOP/s of plain torch.matmul over the given (m, k, n) products, timed back to back."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    for a, w in mats:
        a @ w
    start = time.perf_counter()
    for _ in range(repeat):
        for a, w in mats:
            torch.matmul(a, w)
    seconds = time.perf_counter() - start
    return repeat * sum(2 * m * k * n for m, k, n in shapes) / seconds / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec", nargs="?", default="specs/mnist_mlp.yaml")
    p.add_argument("--data-root")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="PC eagerly only (no compiled loop)")
    p.add_argument("--skip-eager", action="store_true", help="do not also time PC without compile")
    args = p.parse_args()
    spec = pcgraph.load_spec(args.spec)
    runs = {}
    variants = [("pc", not args.no_compile)] + ([("pc", False)] if not (args.no_compile or args.skip_eager) else [])
    for method, compiled in variants + [("bp", False)]:
        s = spec.model_copy(update={"inference": spec.inference.model_copy(update={"compile": compiled})})
        name = f"{method}{'-compiled' if compiled else ''}"
        r = train(s, epochs=args.epochs, data_root=args.data_root, progress=False, method=method,
                  log=lambda line, n=name: print(f"[{n}] {line}", flush=True))
        rest = r.epoch_seconds[1:] or r.epoch_seconds
        runs[name] = {"first_epoch_s": r.epoch_seconds[0], "epoch_s": statistics.median(rest),
                      "best_test_accuracy": r.best_test_accuracy, "test_accuracy": r.test_accuracy,
                      "flops_per_update": flops_per_update(spec, method)}
    updates = -(-60000 // spec.data.batch_size)  # MNIST-family training set
    b = spec.data.batch_size
    graph = pcgraph.compile(spec)
    shapes = [(b, m.in_features, m.out_features) for e in graph.edges for m in e.pipeline
              if isinstance(m, torch.nn.Linear)]
    matmul = matmul_gflops(shapes)
    bp = runs["bp"]
    print()
    print(f"{'run':<12} {'s/epoch':>8} {'1st epoch':>9} {'best acc':>9} {'MFLOP/update':>13} {'GFLOP/s':>8} {'/BP time':>8}")
    for name, r in runs.items():
        r["gflops"] = r["flops_per_update"] * updates / r["epoch_s"] / 1e9
        r["time_ratio_vs_bp"] = r["epoch_s"] / bp["epoch_s"]
        print(f"{name:<12} {r['epoch_s']:8.2f} {r['first_epoch_s']:9.2f} {100 * r['best_test_accuracy']:8.2f}% "
              f"{r['flops_per_update'] / 1e6:13.1f} {r['gflops']:8.1f} {r['time_ratio_vs_bp']:8.2f}")
    print(f"plain torch.matmul at the update's shapes {shapes}: {matmul:.1f} GFLOP/s")
    print(json.dumps({"spec": args.spec, "epochs": args.epochs, "runs": runs, "matmul_gflops": matmul}))


if __name__ == "__main__":
    main()
