"""Seconds per inference step of a neuron-level PC graph against its number of connections.

    python examples/bench_sparse.py                      # 1e4 ... 1e7 connections, batch 64
    python examples/bench_sparse.py --edges 1e4 1e5 --markdown docs/bench/sparse.md

The graph: one node of N neurons predicting itself through random connections,
mu_i = sum_{j -> i} w_ij tanh(x_j) + b_i, with a tenth of the neurons clamped (the rest
inferred from zeros). N = E / degree (default degree 100), so neurons and connections grow
together and the cost per step should grow linearly with E. One step = one energy and
state-gradient evaluation (two sparse products, A f(x) and A^T g) and one state update; it is
timed as (time of a 2T-step relaxation - time of a T-step one) / T (T = 10, more for small graphs),
after a warm-up, each the fastest of 5 runs.

Each size runs in a fresh process, so "peak RSS" is that size's own peak resident memory (the
Python process with torch and torch-geometric loaded takes ~0.4 GB of it). Run it on an idle
machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import pcgraph


def graph_for(edges: int, degree: int, neurons: int | None = None, seed: int = 0) -> tuple[pcgraph.CompiledGraph, int]:
    n = neurons or max(edges // degree, int(edges ** 0.5) + 2)
    g = pcgraph.Graph("bench-sparse")
    g.node("x", n)
    g.edge("x", "x", "tanh", {"kind": "sparse", "generator": "random", "args": {"edges": edges}, "seed": seed})
    g.inference(init="zeros")
    return pcgraph.compile(g.spec(), max_bytes=2**40), n


def one(edges: int, degree: int, neurons: int | None, batch: int, steps: int, repeats: int) -> dict:
    """Time one size in this process (the fastest of ``repeats`` runs of each length)."""
    graph, n = graph_for(edges, degree, neurons)
    x = torch.randn(batch, n)
    clamp = {"x": pcgraph.Clamp(x, slice(0, max(1, n // 10)))}

    def relax(t: int) -> float:
        solver = pcgraph.Solver(steps=t, optimizer=pcgraph.StateSGD(0.05), init="zeros")
        start = time.perf_counter()
        solver.relax(graph, clamp)
        return time.perf_counter() - start

    relax(2)  # warm-up
    short = min(relax(steps) for _ in range(repeats))
    long = min(relax(2 * steps) for _ in range(repeats))
    per_step = max(long - short, 1e-9) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"edges": edges, "neurons": n, "batch": batch, "s_per_step": per_step,
            "edges_per_s": edges / per_step, "edge_samples_per_s": edges * batch / per_step, "peak_rss_gb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--edges", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    p.add_argument("--degree", type=int, default=100, help="connections per neuron (N = E / degree)")
    p.add_argument("--neurons", type=int, help="a fixed N instead (the degree grows with E)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, help="T of the timed relaxations (default: max(10, 2e6 / E), "
                   "so a small graph's timing is not all noise)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each length; the fastest counts")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one size
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(int(args.edges[0]), args.degree, args.neurons, args.batch, args.steps, args.repeats)))
        return
    rows = []
    header = f"{'connections':>12} {'neurons':>8} {'s/step':>9} {'connections/s':>14} {'x batch /s':>11} {'peak RSS':>9}"
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(header)
    for e in args.edges:
        fixed = ["--neurons", str(args.neurons)] if args.neurons else []
        out = subprocess.run([sys.executable, __file__, "--one", "--edges", str(int(e)), "--degree", str(args.degree), *fixed,
                              "--batch", str(args.batch), "--steps", str(args.steps or max(10, int(2e6 // e))),
                              "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['edges']:>12,} {r['neurons']:>8,} {r['s_per_step']:>9.4f} {r['edges_per_s']:>14.3e} "
              f"{r['edge_samples_per_s']:>11.3e} {r['peak_rss_gb']:>7.2f} GB", flush=True)
    for a, b in zip(rows, rows[1:]):  # the growth exponent between sizes: 1 = linear
        slope = torch.log(torch.tensor(b["s_per_step"] / a["s_per_step"])) / torch.log(torch.tensor(b["edges"] / a["edges"]))
        print(f"{a['edges']:,} -> {b['edges']:,}: time grows as E^{float(slope):.2f}")
    if args.markdown:
        lines = ["| connections | neurons | s / inference step | connections / s | connections x batch / s | peak RSS |",
                 "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['edges']:,} | {r['neurons']:,} | {r['s_per_step']:.4f} | {r['edges_per_s']:.3e} | "
                  f"{r['edge_samples_per_s']:.3e} | {r['peak_rss_gb']:.2f} GB |" for r in rows]
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
