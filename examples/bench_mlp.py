"""Benchmark PC against backprop on one graph (default: the notes' MNIST MLP), same machine, same run.

    python examples/bench_mlp.py specs/mnist_mlp.yaml --data-root ../shared/data --epochs 25

Prints, per method: seconds per epoch (first epoch, which holds any one-time compile cost, and
the median of the rest), best and final test accuracy; FLOPs per parameter update (counted by
torch.utils.flop_counter on one update, inference steps included for PC); the achieved GFLOP/s
of each run's updates, and its matmul share: that rate over plain torch's on the update's own
matrix products (recorded on one eager update of the method, replayed back to back on new
operands of the same shapes and strides). Ends with one JSON line. Run it on an otherwise idle
machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import pcgraph
from pcgraph.tasks.bench import eager_update, flops_per_update
from pcgraph.tasks.train import train

PRODUCTS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")


class Products(TorchDispatchMode):
    """Records the matrix products run inside it, in order: (op, args), each tensor argument as its
    (shape, stride)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in PRODUCTS:
            self.calls.append((func, [(a.shape, a.stride()) if isinstance(a, torch.Tensor) else a for a in args]))
        return func(*args, **(kwargs or {}))


def update_products(update) -> list:
    """The matrix products one call of ``update`` runs (aten's mm, addmm, bmm, baddbmm), in order."""
    with Products() as record:
        update()
    return record.calls


def products_time(products: list, repeat: int = 20) -> tuple[int, float]:
    """(FLOPs, seconds) of one pass of plain torch over ``products`` (:func:`update_products`), run
    back to back on new random operands of the same shapes and strides (the median of ``repeat``
    passes): an update's own matrix work at this machine's matmul rate."""
    def operand(shape, stride):
        return torch.randn(1 + sum(s * (n - 1) for s, n in zip(stride, shape))).as_strided(shape, stride)

    calls = [(op, [operand(*a) if isinstance(a, tuple) else a for a in args]) for op, args in products]
    seconds = []
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            for op, args in calls:
                op(*args)
        for _ in range(repeat):
            start = time.perf_counter()
            for op, args in calls:
                op(*args)
            seconds.append(time.perf_counter() - start)
    return counter.get_total_flops(), statistics.median(seconds)


def products_gflops(products: list, repeat: int = 20) -> float:
    """GFLOP/s of :func:`products_time`: the reference of an update's matmul share."""
    flops, seconds = products_time(products, repeat)
    return flops / seconds / 1e9


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
    rates = {m: products_gflops(update_products(eager_update(spec, m))) for m in {"pc", "bp"}}
    bp = runs["bp"]
    print()
    print(f"{'run':<12} {'s/epoch':>8} {'1st epoch':>9} {'best acc':>9} {'MFLOP/update':>13} {'GFLOP/s':>8} "
          f"{'matmul':>7} {'/BP time':>8}")
    for name, r in runs.items():
        r["gflops"] = r["flops_per_update"] * updates / r["epoch_s"] / 1e9
        r["matmul_share"] = r["gflops"] / rates[name.split("-")[0]]  # pc-compiled: pc's products
        r["time_ratio_vs_bp"] = r["epoch_s"] / bp["epoch_s"]
        print(f"{name:<12} {r['epoch_s']:8.2f} {r['first_epoch_s']:9.2f} {100 * r['best_test_accuracy']:8.2f}% "
              f"{r['flops_per_update'] / 1e6:13.1f} {r['gflops']:8.1f} {r['matmul_share']:7.0%} {r['time_ratio_vs_bp']:8.2f}")
    print(f"plain torch at each update's own matrix products: PC {rates['pc']:.1f} GFLOP/s, BP {rates['bp']:.1f} GFLOP/s "
          "(matmul: the run's GFLOP/s over its method's)")
    print(json.dumps({"spec": args.spec, "epochs": args.epochs, "runs": runs, "matmul_gflops": rates}))


if __name__ == "__main__":
    main()
