"""The shipped examples run (the benchmark script on a tiny configuration)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns():
    assert load("quickstart").main(epochs=3) > 0.8


def test_bench_helpers_count_flops_and_time_matmul():
    bench = load("bench_mlp")
    import pcgraph

    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    pc, bp = bench.flops_per_update(spec, "pc"), bench.flops_per_update(spec, "bp")
    # BP: forward + backward of a 64-64-64-10 net at batch 32 is 3 x 2 x 32 x 8,832 MACs, minus the
    # input gradient of the first layer (2 x 32 x 64 x 64): 3,129,344 FLOPs from matmuls
    assert bp == 3 * 2 * 32 * (64 * 64 + 64 * 64 + 64 * 10) - 2 * 32 * 64 * 64
    # PC with T = 8 and forward init; the image -> h1 prediction is constant (its source is clamped):
    # init: one forward pass; each step: the two non-constant predictions and their two state VJPs;
    # after relaxing: those predictions once more, then every layer's weight gradient, nothing else
    forward = 2 * 32 * (64 * 64 + 64 * 64 + 64 * 10)
    loop_layers = 2 * 32 * (64 * 64 + 64 * 10)
    assert pc == forward + 8 * 2 * loop_layers + loop_layers + forward
    assert bench.matmul_gflops([(8, 8, 8)], repeat=2) > 0
