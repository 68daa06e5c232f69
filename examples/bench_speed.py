"""Speed on this machine, in one run, as one table: pcgraph against pcx and the lecture notes' code.

    python examples/bench_speed.py --data-root ../shared/data \\
        --pcx-python $ANCHORS/pcxvenv/bin/python --seed-repo $ANCHORS/seed     # every row
    python examples/bench_speed.py --smoke                                      # tiny sizes: it runs

Rows (ratios are within this one run; the machines are shared and drift by tens of percent):
- MNIST MLP (``specs/mnist_mlp.yaml``, T = 8, batch 128): ``pcgraph train`` as a user runs it
  (the spec's 25 epochs, which ``inference.compile: auto`` compiles ahead of time), twice on a new
  cache folder (the first run compiles, the second loads the program), and ``--epochs`` epochs
  eagerly (``inference.compile=false``), in a fresh process each: first epoch (start-up excluded,
  compile included) and the steady state (median of the later epochs); pcx's own MNIST MLP setup
  and the notes' code through their harnesses in ``../shared/anchors`` (run in their own
  interpreters). ``matmul share``: the update's FLOPs (torch.utils.flop_counter) per second
  against plain torch running the update's own matrix products (its 50 matmuls, recorded on one
  eager update and replayed back to back with the same shapes and strides), on as many threads.
  Then one compiled update on one batch, in this process: its matrix products alone, its
  relaxation and gradient (the compiled program and its call), and the whole update (plus Adam).
  Then ``--rounds`` paired rounds, so that the machine's drift shows in the spread of the ratios:
  the compiled program (cache warm, ``--epochs`` epochs) right before pcx, the products' rate
  timed before each pair; the row gives the median epoch, the median and every one of the pairs'
  ratios, and the median matmul share.
- MNIST autoencoder (``specs/mnist_ae.yaml``, the notes' protocol: batch 250, ``--ae-epochs``
  epochs): training seconds per epoch and the test MSE after the last epoch, against the notes'
  code on the same epochs (its harness reports its best epoch's MSE).
- CIFAR-10 CNN (``specs/cifar10_cnn.yaml``, T = 8, batch 128): seconds per update of PC and BP on
  ``--cnn-batches`` random batches (an update's cost does not depend on the pixel values), PC and
  BP updates alternating (the ratio is the median of the pairs' ratios, with their range), and the
  GFLOP/s of the convolutions inside each update (their FLOPs over the wall time spent in
  aten's convolution kernels) against torch's own F.conv2d forward at the same shapes.
Freed host memory is kept in the process (:func:`pcgraph.keep_freed_memory`, as the ``pcgraph``
command does; ``PCGRAPH_KEEP_FREED_MEMORY=0`` opts out), and in the anchors' processes, which
inherit its setting. Ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import torch
from bench_mlp import (  # examples/ is on the path when run as a script
    products_gflops,
    products_time,
    update_products,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import pcgraph
from pcgraph.solver import Solver
from pcgraph.tasks.bench import eager_update, flops_per_update, random_batch
from pcgraph.tasks.setup import weight_optimizer

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "anchors"
CONV_OPS = ("aten.convolution", "aten.convolution_backward")


def pcgraph_epochs(spec: str, epochs: int | None, data_root: str, *extra: str, cache: str | None = None) -> dict:
    """``pcgraph train SPEC --json`` in a fresh process (``epochs`` None: the spec's own; ``cache``:
    the compiled programs' folder): its epoch seconds and final figures."""
    cmd = [sys.executable, "-m", "pcgraph", "train", spec, *(["--epochs", str(epochs)] if epochs else []),
           "--data-root", data_root, "--json", "--no-progress", *extra]
    env = {**os.environ, **({"PCGRAPH_CACHE_DIR": cache} if cache else {})}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    seconds = result["epoch_seconds"]
    return {"first_s": seconds[0], "epoch_s": statistics.median(seconds[1:] or seconds),
            **{k: v for k, v in result.items() if k.startswith("test_")}}


def anchor(python: str, script: str, env: dict, *args: str) -> str:
    """The output of one of ../shared/anchors' harnesses, run by ``python``."""
    run = subprocess.run([python, str(ANCHORS / script), *args], capture_output=True, text=True,
                         env={**os.environ, **env}, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"{script} failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    return run.stdout


def pcx_mlp(python: str, data: str, epochs: int) -> dict:
    out = anchor(python, "pcx_mlp_bench.py", {"DATA": f"{data}/mnist", "EPOCHS": str(epochs)})
    seconds = [float(s) for s in re.findall(r"^epoch \d+: train ([\d.]+) s", out, re.M)]
    return {"first_s": seconds[0], "epoch_s": statistics.median(seconds[1:] or seconds)}


def matmul_share(flops_per_epoch: float, epoch_s: float, gflops: float) -> float:
    """The update's FLOPs per second over plain torch's rate on its own matrix products."""
    return flops_per_epoch / epoch_s / 1e9 / gflops


def paired_rounds(spec: str, a, cache: str, products: list, flops_per_epoch: float) -> list[dict]:
    """``a.rounds`` times: plain torch's GFLOP/s on the update's matrix ``products``, then
    ``--epochs`` epochs of the compiled program (from ``cache``), then as many of pcx: each pair
    within a minute or two."""
    pairs = []
    for _ in range(a.rounds):
        gflops = products_gflops(products)
        ours = pcgraph_epochs(spec, a.epochs, a.data_root, "inference.compile=true", cache=cache)["epoch_s"]
        theirs = pcx_mlp(a.pcx_python, a.data_root, a.epochs)["epoch_s"]
        pairs.append({"matmul_gflops": gflops, "pcgraph_s": ours, "pcx_s": theirs,
                      "matmul_share": matmul_share(flops_per_epoch, ours, gflops)})
    return pairs


def update_parts(spec, cache: str, products: list, rounds: int = 5, n: int = 100) -> dict:
    """Where one compiled update's time goes, in this process, on one random batch (the program
    from ``cache``): milliseconds of the update's matrix products run alone by plain torch, of the
    relaxation and gradient (``Solver.gradients``: the compiled program and its call), and of the
    whole update (``Solver.step``: plus the weight optimizer's step); medians over ``rounds``
    interleaved rounds of ``n`` calls each."""
    with mock.patch.dict(os.environ, {"PCGRAPH_CACHE_DIR": cache}):
        torch.manual_seed(0)
        graph = pcgraph.compile(spec)
        batch, solver = random_batch(spec, graph), Solver.from_spec(spec, compile=True)
        opt = weight_optimizer(spec.learning.optimizer, graph.parameters())
        parts = {"gradient_ms": lambda: solver.gradients(graph, batch), "update_ms": lambda: solver.step(graph, batch, opt)}
        times: dict = {"products_ms": [], **{k: [] for k in parts}}
        for f in parts.values():
            f()  # loads the program
        for _ in range(rounds):
            times["products_ms"].append(products_time(products, repeat=n // 10)[1] * 1e3)
            for k, f in parts.items():
                start = time.perf_counter()
                for _ in range(n):
                    f()
                times[k].append((time.perf_counter() - start) / n * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def notes_mlp(seed_repo: str, data: str) -> dict:
    out = anchor(sys.executable, "seed_mnist_bench.py", {"SEED_REPO": seed_repo, "DATA": f"{data}/mnist"}, "1")
    return {"epoch_s": float(re.search(r"^pc: ([\d.]+) s/epoch", out, re.M).group(1))}


def notes_ae(seed_repo: str, data: str, epochs: int) -> dict:
    out = anchor(sys.executable, "seed_mnist_ae_bench.py", {"SEED_REPO": seed_repo, "DATA": f"{data}/mnist"},
                 str(epochs))
    m = re.search(r"^pc: ([\d.]+) s/epoch \(train\), best test MSE ([\d.]+)", out, re.M)
    return {"epoch_s": float(m.group(1)), "test_mse": float(m.group(2))}


class ConvTimer(TorchDispatchMode):
    """Wall seconds spent in aten's convolution kernels, and their count."""

    def __init__(self):
        super().__init__()
        self.seconds, self.calls = 0.0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) not in CONV_OPS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        self.calls[str(func.overloadpacket)] += 1
        return out


def conv_flops(update) -> int:
    """FLOPs of the convolution kernels in one call of ``update``."""
    with FlopCounterMode(display=False) as counter:
        update()
    return sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in CONV_OPS)


def cnn_updates(spec_path: str, batches: int, batch_size: int | None = None) -> dict:
    """Seconds per PC and BP update on random batches, and the GFLOP/s of their convolutions."""
    spec = pcgraph.load_spec(ROOT / spec_path)
    if batch_size is not None:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"batch_size": batch_size})})
    updates = {name: eager_update(spec, name) for name in ("pc", "bp")}  # eager: what graphs with convolutions run
    graph, b = pcgraph.compile(spec), spec.data.batch_size
    row, convs, seconds = {}, [], {name: [] for name in updates}
    for update in updates.values():
        update()  # warm-up
    for _ in range(batches):  # alternating, so that the machine's drift reaches both alike
        for name, update in updates.items():
            start = time.perf_counter()
            update()
            seconds[name].append(time.perf_counter() - start)
    for name, update in updates.items():
        row[f"{name}_s_per_update"] = statistics.fmean(seconds[name])
        with ConvTimer() as timer:
            update()
        row[f"{name}_conv_gflops"] = conv_flops(update) / timer.seconds / 1e9
    pairs = [pc / bp for pc, bp in zip(seconds["pc"], seconds["bp"])]
    row["pc/bp"], row["pc/bp_range"] = statistics.median(pairs), [min(pairs), max(pairs)]
    for e in graph.edges:  # torch's own forward convolution at each of the graph's conv shapes
        for m in e.pipeline:
            if isinstance(m, torch.nn.Conv2d):
                convs.append(m)
    row["torch_conv_gflops"] = torch_conv_gflops(graph, convs, b)
    return row


def torch_conv_gflops(graph, convs: list, b: int) -> float:
    """GFLOP/s of F.conv2d forward, back to back, at the graph's convolution shapes."""
    inputs = {}
    def record(m, args, out):
        inputs[m] = args[0].shape

    hooks = [m.register_forward_hook(record) for m in convs]
    with torch.no_grad():
        graph({v: torch.randn(b, *graph.nodes[v].shape) for v in graph.order if not graph.nodes[v].incoming})
    for h in hooks:
        h.remove()
    calls = [(torch.randn(inputs[m]), m) for m in convs]
    with torch.no_grad():
        flops = conv_flops(lambda: [m(x) for x, m in calls])
        start = time.perf_counter()
        for x, m in calls:
            m(x)
        return flops / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--pcx-python", help="the interpreter of a virtual environment holding jax and pcx")
    p.add_argument("--seed-repo", help="a checkout of the notes' public code")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the eager MLP run and of pcx (default 4)")
    p.add_argument("--rounds", type=int, default=3,
                   help="paired rounds of the compiled MLP and pcx after the MLP rows (default 3; 0: none)")
    p.add_argument("--ae-epochs", type=int, default=5, help="autoencoder epochs (default 5, the notes' protocol)")
    p.add_argument("--cnn-batches", type=int, default=20, help="timed CNN updates per method (default 20)")
    p.add_argument("--only", default="mlp,ae,cnn", help="which benchmarks (comma-separated)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no data, no anchors: checks that it runs")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    # as the pcgraph command does (its runs here would anyway); the anchors' processes inherit it
    kept = pcgraph.keep_freed_memory()
    r: dict = {"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
                          f"{', freed memory kept' if kept else ''}"}
    rows = []
    if a.smoke:
        only, a.cnn_batches = {"cnn"}, 1
    if "mlp" in only:
        S = "specs/mnist_mlp.yaml"
        spec = pcgraph.load_spec(ROOT / S)
        cache = tempfile.mkdtemp(prefix="pcgraph-aot-")  # empty: the first run compiles, the second loads
        r["mlp"] = {"pcgraph (default), cold cache": pcgraph_epochs(S, None, a.data_root, cache=cache),
                    "pcgraph (default), warm cache": pcgraph_epochs(S, None, a.data_root, cache=cache),
                    "pcgraph, eager": pcgraph_epochs(S, a.epochs, a.data_root, "inference.compile=false")}
        if a.pcx_python:
            r["mlp"]["pcx"] = pcx_mlp(a.pcx_python, a.data_root, a.epochs)
        if a.seed_repo:
            r["mlp"]["notes' code"] = notes_mlp(a.seed_repo, a.data_root)
        products = update_products(eager_update(spec, "pc"))  # the update's own matrix products
        r["mlp_matmul_gflops"] = products_gflops(products)
        flops, updates = flops_per_update(spec, "pc"), -(-60_000 // spec.data.batch_size)
        pcx = r["mlp"].get("pcx", {}).get("epoch_s")
        for name, m in r["mlp"].items():
            share = matmul_share(flops * updates, m["epoch_s"], r["mlp_matmul_gflops"]) if name.startswith("pcgraph") else None
            rows.append(("MNIST MLP", name, m["epoch_s"], m.get("first_s"), pcx and m["epoch_s"] / pcx, "x pcx",
                         f"matmul share {share:.0%}" if share else ""))
        parts = r["mlp_update"] = update_parts(spec, cache, products)
        rows.append(("MNIST MLP", "one compiled update, one batch", parts["update_ms"] / 1e3, None, None, "",
                     f"its matrix products alone {parts['products_ms']:.2f} ms; relaxation and gradient "
                     f"{parts['gradient_ms']:.2f} ms (matmul share {parts['products_ms'] / parts['gradient_ms']:.0%}); "
                     f"with the weight step {parts['update_ms']:.2f} ms "
                     f"({parts['products_ms'] / parts['update_ms']:.0%})"))
        if a.pcx_python and a.rounds:
            pairs = r["mlp_rounds"] = paired_rounds(S, a, cache, products, flops * updates)
            ratios = [p["pcgraph_s"] / p["pcx_s"] for p in pairs]
            rows.append(("MNIST MLP", f"{len(pairs)} paired rounds: compiled (cache warm), then pcx",
                         statistics.median(p["pcgraph_s"] for p in pairs), None, statistics.median(ratios), "x pcx",
                         f"pairs {', '.join(f'{x:.2f}' for x in ratios)}; matmul share "
                         f"{statistics.median(p['matmul_share'] for p in pairs):.0%}"))
        shutil.rmtree(cache, ignore_errors=True)
    if "ae" in only:
        ae = pcgraph_epochs("specs/mnist_ae.yaml", a.ae_epochs, a.data_root)
        notes = notes_ae(a.seed_repo, a.data_root, a.ae_epochs) if a.seed_repo else None
        r["ae"] = {"pcgraph": ae, **({"notes' code": notes} if notes else {})}
        for name, m in r["ae"].items():
            rows.append(("MNIST AE", name, m["epoch_s"], m.get("first_s"), notes and m["epoch_s"] / notes["epoch_s"],
                         "x notes", f"test MSE {m['test_mse']:.2e}"))
    if "cnn" in only:
        c = cnn_updates("specs/cifar10_cnn.yaml", a.cnn_batches, batch_size=4 if a.smoke else None)
        r["cnn"] = c
        rows.append(("CIFAR-10 CNN", "PC update", c["pc_s_per_update"], None, c["pc/bp"], "x BP",
                     f"conv {c['pc_conv_gflops']:.0f} GFLOP/s (torch F.conv2d {c['torch_conv_gflops']:.0f}); "
                     f"ratio: median of {a.cnn_batches} PC/BP pairs, {c['pc/bp_range'][0]:.2f}-"
                     f"{c['pc/bp_range'][1]:.2f}"))
        rows.append(("CIFAR-10 CNN", "BP update", c["bp_s_per_update"], None, 1.0, "x BP",
                     f"conv {c['bp_conv_gflops']:.0f} GFLOP/s"))
    print(f"machine: {r['machine']}")
    print("| benchmark | run | s (epoch or update) | first epoch s | ratio | | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for bench, name, s, first, ratio, unit, note in rows:
        print(f"| {bench} | {name} | {s:.3f} | {'-' if first is None else f'{first:.2f}'} | "
              f"{'-' if ratio is None else f'{ratio:.2f}'} | {unit} | {note} |")
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
