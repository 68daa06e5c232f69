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
    # PC with T = 8 and forward init. image -> h1 is constant (its source is clamped). After the
    # init pass only the label has an error, and it reaches one layer deeper per step:
    # step 0: the label's VJP into h2; step 1: h2 moved, so the h2 -> label prediction and both
    # VJPs; steps 2-7: both non-constant predictions and both VJPs; after relaxing: those two
    # predictions once more, then every layer's weight gradient, nothing else.
    def mm(*sizes):
        return sum(2 * 32 * n for n in sizes)

    l1, l2, l3 = 64 * 64, 64 * 64, 64 * 10
    expected = (mm(l1, l2, l3) + mm(l3) + mm(l2, l3, l3) + 6 * mm(l2, l3, l2, l3)
                + mm(l2, l3) + mm(l1, l2, l3))
    assert pc == expected
    assert bench.matmul_gflops([(8, 8, 8)], repeat=2) > 0


def test_bp_toy_pc_directions_approach_backprop_as_variance_grows(tmp_path):
    toy = load("bp_toy")
    result = toy.landscape(ks=(1.0, 50.0), grid=4)  # -3, -1, 1, 3: no degenerate theta = 0
    # the BP loss on the grid is the closed form 1/2 mean (y - th1 tanh(th0 tanh(x)))^2
    import torch

    d = toy.data()
    th = result["theta"]
    expected = 0.5 * ((d["y"] - th[3] * torch.tanh(th[0] * torch.tanh(d["x"]))) ** 2).mean()
    assert abs(result["bp"][0][3, 0].item() - expected.item()) < 1e-10
    assert result["cosine"][50.0] > result["cosine"][1.0]
    assert result["cosine"][50.0] > 0.99
    toy.plot(result, tmp_path / "toy.png")
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"
