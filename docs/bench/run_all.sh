#!/bin/sh
# The benchmark runs behind Table 1 in docs/benchmarks.md, one after another (run from the repo root on an
# otherwise idle machine; about an hour on 2 CPU cores). DATA holds mnist/, fashion-mnist/ and an
# unpacked cifar10/ (tar xzf cifar10-jpeg.tar.gz -C DATA); RUNS keeps every run folder.
set -e
DATA=${DATA:-../shared/data}
CIFAR=${CIFAR:-$DATA}
RUNS=${RUNS:-runs}
pcgraph bench specs/mnist_mlp.yaml specs/fmnist_mlp.yaml --seeds 3 --compile --data-root "$DATA" \
  --out "$RUNS" --markdown docs/bench/mlp.md --plot docs/bench/mlp.png --no-progress --json > docs/bench/mlp.json
pcgraph bench specs/mnist_ae.yaml specs/fmnist_ae.yaml --seeds 3 --data-root "$DATA" --out "$RUNS" \
  --markdown docs/bench/ae.md --plot docs/bench/ae.png --images docs/bench --no-progress --json > docs/bench/ae.json
pcgraph bench specs/cifar10_cnn.yaml specs/cifar10_ae.yaml --seeds 1 --epochs 1 --data-root "$CIFAR" --out "$RUNS" \
  --markdown docs/bench/cifar10.md --images docs/bench --no-progress --json > docs/bench/cifar10.json
# Neuron-level graphs (docs/neuron-level.md, "Cost per inference step against the number of connections"):
python examples/bench_sparse.py --markdown docs/bench/sparse.md
python examples/bench_sparse.py --neurons 10000 --markdown docs/bench/sparse_fixed_n.md
