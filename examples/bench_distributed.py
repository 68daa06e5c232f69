"""Data-parallel scaling on one machine: training samples per second with 1, 2, ... processes.

    python examples/bench_distributed.py specs/mnist_mlp.yaml --data-root ../shared/data --epochs 2
    python examples/bench_distributed.py specs/digits_mlp.yaml --epochs 3 --nprocs 1,2

Each configuration is a real ``pcgraph.train(spec, nproc=N)`` run (N = 1: one process with every
core; N > 1: N processes with cores / N torch threads each, gloo all-reduce once per update). The
figure is training samples / median seconds per epoch, an epoch's seconds covering its updates on
rank 0 (the all-reduce waits for the slowest rank) and not the test evaluation or process start.
The global batch is the spec's, so every N computes the same updates. Run it on an otherwise idle
machine: the figures are wall-clock times. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics

import pcgraph
from pcgraph.tasks import distributed
from pcgraph.tasks.train import train


def quiet(line: str) -> None:
    """No per-epoch lines (module level: it travels to the worker processes)."""


def run(path: str, nprocs: list[int], epochs: int, data_root: str | None = None, device: str = "cpu",
        log=print) -> list[dict]:
    spec = pcgraph.load_spec(path)
    rows = []
    for n in nprocs:
        result = train(spec, epochs=epochs, data_root=data_root, device=device, progress=False, log=quiet,
                       nproc=n)
        seconds = statistics.median(result.epoch_seconds[1:] or result.epoch_seconds)
        row = {"spec": spec.name, "nproc": n, "batch_size": spec.data.batch_size, "epochs": epochs,
               "epoch_seconds": result.epoch_seconds, "median_epoch_seconds": seconds,
               "test_metric": result.test_metric}
        rows.append(row)
        log(f"{spec.name}: {n} process(es): {seconds:.2f} s/epoch (median of {len(result.epoch_seconds)}), "
            f"test {result.metric} {result.test_metric:.4f}")
    return rows


def table(rows: list[dict], train_samples: int, cores: int) -> str:
    base = rows[0]["median_epoch_seconds"]
    lines = ["| spec | processes | torch threads each | s/epoch | samples/s | speedup |", "|" + " --- |" * 6]
    for r in rows:
        s = r["median_epoch_seconds"]
        lines.append(f"| {r['spec']} | {r['nproc']} | {max(1, cores // r['nproc'])} | {s:.2f} | "
                     f"{train_samples / s:,.0f} | {base / s:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec", nargs="?", default="specs/digits_mlp.yaml")
    p.add_argument("--nprocs", default="1,2", help="process counts to compare (default 1,2)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from pcgraph.data import load_dataset

    spec = pcgraph.load_spec(a.spec)
    n_train = len(load_dataset(spec.data.dataset, a.data_root).y_train)
    rows = run(a.spec, [int(n) for n in a.nprocs.split(",")], a.epochs, a.data_root, a.device)
    for r in rows:
        r["samples_per_second"] = n_train / r["median_epoch_seconds"]
    cores = distributed.cores()
    print(f"\n{cores} cores; {n_train:,} training samples, global batch {spec.data.batch_size}")
    print(table(rows, n_train, cores))
    print(json.dumps({"cores": cores, "train_samples": n_train, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
