"""Seconds per epoch of PC and of backprop on the same graph, eager and with the inference loop
captured, on a GPU: the MNIST MLP and the CIFAR-10 CNN at T = 8.

    python examples/gpu_bench.py --device cuda                    # the figures (one GPU)
    python examples/gpu_bench.py --smoke                          # tiny sizes on the CPU: it runs

For each spec (inference steps set to T = 8) it times parameter updates on synthetic data of the
data set's size and shape (60,000 MNIST images, 50,000 CIFAR-10 images; random pixels and labels:
an update's cost does not depend on their values, and no data files are needed): PC eager, PC with
``Solver(compile=True)`` (on CUDA the T-step loop is captured once as a CUDA graph and replayed),
and BP (the spec's backprop baseline). ``--warmup`` updates (compiling, capturing, cuDNN autotuning)
are not timed; then ``--batches`` updates are (default: one whole epoch, shuffled as in training),
between device syncs. Seconds per epoch = mean seconds per update x updates per epoch; train
accuracy and test evaluation are not included. Prints the device (GPU model), a table with the
PC/BP ratio and the capture speedup, and one JSON line. Reference: pcx reports PC/BP epoch-time
ratios of about 1.0 (MNIST MLP, T = 5) and 4.7 (VGG-5 CIFAR-10, T = 7) on a GPU (ANCHORS.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import pcgraph
from pcgraph.solver import Solver
from pcgraph.tasks.objective import Backprop, Objective
from pcgraph.tasks.setup import weight_optimizer

SPECS = {"specs/mnist_mlp.yaml": 60_000, "specs/cifar10_cnn.yaml": 50_000}
METHODS = ("pc", "pc-captured", "bp")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(spec, method: str, n: int, device: torch.device, warmup: int, batches: int | None) -> dict:
    """Seconds per epoch of ``method`` on ``n`` synthetic samples (see the module docstring)."""
    torch.manual_seed(spec.train.seed)
    graph = pcgraph.compile(spec).to(device)
    task = Objective(spec, graph)
    d = spec.data
    classes = graph.nodes[d.target].shape[0]
    x = torch.randn(n, *graph.nodes[d.input].shape, device=device)
    y = torch.randint(0, classes, (n,), device=device)
    if method == "bp":
        model = Backprop(spec, graph).to(device)
        opt = weight_optimizer(spec.bp.optimizer or spec.learning.optimizer, model.trained_parameters())

        def update(batch):
            model.step(batch, opt)
    else:
        solver = Solver.from_spec(spec, compile=method == "pc-captured")
        opt = weight_optimizer(spec.learning.optimizer, graph.parameters())

        def update(batch):
            solver.step(graph, batch, opt)
    b = d.batch_size
    per_epoch = n // b  # full batches only: one batch size, so one capture
    timed = per_epoch if batches is None else min(batches, per_epoch)
    perm = torch.randperm(n, device=device)
    for k in range(warmup):
        idx = perm[(k % per_epoch) * b: (k % per_epoch + 1) * b]
        update(task.batch(x[idx], y[idx]))
    sync(device)
    start = time.perf_counter()
    for k in range(timed):
        idx = perm[k * b: (k + 1) * b]
        update(task.batch(x[idx], y[idx]))
    sync(device)
    seconds = time.perf_counter() - start
    return {"method": method, "updates_timed": timed, "updates_per_epoch": per_epoch,
            "seconds_per_update": seconds / timed, "seconds_per_epoch": seconds / timed * per_epoch}


def run(paths: list[str], device: torch.device, steps: int = 8, warmup: int = 20, batches: int | None = None,
        samples: int | None = None, batch_size: int | None = None, methods=METHODS, log=print) -> list[dict]:
    """One row per spec: seconds per epoch per method, PC/BP ratios and the capture speedup."""
    rows = []
    for path in paths:
        spec = pcgraph.load_spec(path)
        spec = spec.model_copy(update={"inference": spec.inference.model_copy(update={"steps": steps})})
        if batch_size is not None:
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"batch_size": batch_size})})
        n = samples or SPECS.get(path, 10_000)
        row = {"spec": spec.name, "steps": steps, "batch_size": spec.data.batch_size, "samples": n}
        for method in methods:
            r = time_method(spec, method, n, device, warmup, batches)
            row[method] = r["seconds_per_epoch"]
            log(f"{spec.name}: {method:12s} {r['seconds_per_epoch']:9.3f} s/epoch "
                f"({r['updates_timed']} of {r['updates_per_epoch']} updates timed)")
        if "bp" in row:
            row |= {f"{m}/bp": row[m] / row["bp"] for m in ("pc", "pc-captured") if m in row}
        if "pc" in row and "pc-captured" in row:
            row["capture_speedup"] = row["pc"] / row["pc-captured"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = "| spec | T | batch | PC s/epoch | PC captured s/epoch | BP s/epoch | PC/BP | PC captured/BP | capture speedup |"
    lines = [head, "|" + " --- |" * 9]
    fmt = lambda r, k, f: format(r[k], f) if k in r else "-"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['spec']} | {r['steps']} | {r['batch_size']} | {fmt(r, 'pc', '.3f')} | "
                     f"{fmt(r, 'pc-captured', '.3f')} | {fmt(r, 'bp', '.3f')} | {fmt(r, 'pc/bp', '.2f')} | "
                     f"{fmt(r, 'pc-captured/bp', '.2f')} | {fmt(r, 'capture_speedup', '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("specs", nargs="*", default=list(SPECS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=8, help="inference steps T (default 8)")
    p.add_argument("--warmup", type=int, default=20, help="untimed updates first (default 20)")
    p.add_argument("--batches", type=int, help="updates to time (default: one whole epoch)")
    p.add_argument("--methods", default=",".join(METHODS), help="pc, pc-captured, bp (comma-separated)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that it runs")
    a = p.parse_args(argv)
    methods = tuple(m for m in a.methods.split(",") if m)
    if a.smoke:
        device = torch.device("cpu")
        rows = run(a.specs, device, a.steps, warmup=1, batches=2, samples=8, batch_size=2, methods=methods)
    else:
        device = torch.device(a.device)
        rows = run(a.specs, device, a.steps, a.warmup, a.batches, methods=methods)
    print(f"\ndevice: {device_name(device)}")
    print(table(rows))
    print(json.dumps({"device": device_name(device), "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
