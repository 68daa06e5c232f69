"""The shipped examples run (the benchmark script on a tiny configuration)."""

import importlib.util
from pathlib import Path

import pcgraph
from pcgraph.tasks.bench import eager_update, flops_per_update

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPECS = EXAMPLES.parent / "specs"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns():
    assert load("quickstart").main(epochs=3) > 0.8


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


def test_nonlinear_filter_tracks_the_unobserved_coordinate():
    r = load("nonlinear_filter").main(length=80, plot=None)
    assert r["rmse_x0"] < r["observation_noise_std"]  # better than reading the noisy observation
    assert r["rmse_x1"] < 0.6 * r["std_x1"]  # x[1] is never observed: inferred from the dynamics


def test_gpu_bench_smoke_runs_on_the_cpu(monkeypatch, capsys):
    """The GPU benchmark's plumbing at tiny sizes (torch.compile replaced by the identity: the
    compiled loop itself is tested in tests/test_gpu.py)."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    rows = load("gpu_bench").main(["--smoke", "specs/mnist_mlp.yaml"])
    (row,) = rows
    assert set(row) >= {"pc", "pc-captured", "bp", "pc/bp", "capture_speedup"}
    assert row["pc/bp"] == row["pc"] / row["bp"] > 0
    out = capsys.readouterr().out
    assert "device: CPU" in out and "| mnist-mlp | 8 | 2 |" in out


def test_bench_distributed_reports_samples_per_second(capsys):
    """One process only here (the two-process path is tested in tests/tasks/test_distributed.py)."""
    (row,) = load("bench_distributed").main(["specs/digits_mlp.yaml", "--epochs", "1", "--nprocs", "1"])
    assert row["nproc"] == 1 and row["samples_per_second"] == 1437 / row["median_epoch_seconds"]
    assert "| digits-mlp | 1 |" in capsys.readouterr().out


def test_extending_registers_an_op_an_energy_and_a_variant_usable_from_yaml():
    from pcgraph.energies import ENERGIES
    from pcgraph.ops import OPS
    from pcgraph.variants import VARIANTS

    try:
        r = load("extending").main(epochs=6)
        assert r["steps"] == 4 * r["depth"] == 12  # the variant set T from the graph's depth
        assert r["worst_difference"] < 1e-12  # the op's and the energy's local rules equal autograd
        assert r["after"] < 0.5 * r["before"]
    finally:
        OPS.pop("scale", None), ENERGIES.pop("cauchy", None), VARIANTS.pop("depth_scaled", None)


def test_bench_depth_runs_every_method_and_writes_table_and_plot(tmp_path):
    bench = load("bench_depth")
    md, png = tmp_path / "depth.md", tmp_path / "depth.png"
    assert bench.main(["--datasets", "digits", "--depths", "2", "--plain-depths", "2", "--methods", *bench.METHODS,
                       "--plain-methods", "bp", "epc", "--epochs", "1", "--markdown", str(md), "--plot", str(png)]) == 0
    lines = md.read_text().splitlines()
    assert len(lines) == 2 + len(bench.METHODS) + 2 and "| digits | residual | 2 | epc | 1 |" in md.read_text()
    assert png.stat().st_size > 1000


def test_shipped_deep_specs_are_what_the_generator_writes(tmp_path):
    bench = load("bench_depth")
    bench.write_specs(tmp_path)
    shipped = sorted((EXAMPLES.parent / "specs" / "deep").glob("*.yaml"))
    assert [p.name for p in shipped] == sorted(p.name for p in tmp_path.glob("*.yaml")) and len(shipped) == 8

    for path in shipped:
        assert path.read_text() == (tmp_path / path.name).read_text()
        spec = pcgraph.load_spec(path)
        graph = pcgraph.compile(spec)
        depth = len([v for v in spec.graph.nodes if v.startswith("h")])
        assert graph.depth == depth + 1 and spec.learning.variant.kind == "epc"


def test_torch_dataloader_trains_from_a_plain_dataloader():
    assert load("torch_dataloader").main(epochs=2) > 0.8


def test_digit_halves_feed_two_inputs_and_two_targets(tmp_path):

    load("digit_halves").write(tmp_path)
    spec = pcgraph.load_spec(EXAMPLES / "digit_halves.yaml")
    result = pcgraph.train(spec, epochs=1, data_root=str(tmp_path), progress=False, log=lambda line: None)
    assert set(result.history[0]["test_accuracy_by_target"]) == {"digit", "parity"}
    assert result.test_accuracy > 0.7


def test_bench_speed_pairs_each_round_and_reports_its_ratios(monkeypatch, capsys):
    """The MLP rows' arithmetic, on stand-ins for the timed runs (which need data and pcx): each
    paired round's ratio is its own pcgraph epoch over its own pcx epoch, its matmul share the
    update's FLOPs per epoch over that epoch's seconds and that round's matmul rate; the one-update
    row's shares are the products' time over the relaxation's and over the whole update's."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    bench = load("bench_speed")
    ours = iter([{"first_s": 9.0, "epoch_s": 1.0}, {"first_s": 1.2, "epoch_s": 1.1}, {"first_s": 3.0, "epoch_s": 2.5},
                 {"epoch_s": 1.5}, {"epoch_s": 1.2}])  # cold, warm, eager, then the two rounds
    theirs = iter([{"first_s": 3.0, "epoch_s": 2.0}, {"first_s": 3.0, "epoch_s": 2.5}, {"first_s": 3.0, "epoch_s": 3.0}])
    rates = iter([100.0, 200.0, 50.0])  # the main rows' matmul rate, then one per round
    monkeypatch.setattr(bench, "pcgraph_epochs", lambda *a, **k: next(ours))
    monkeypatch.setattr(bench, "pcx_mlp", lambda *a, **k: next(theirs))
    monkeypatch.setattr(bench, "products_gflops", lambda products: next(rates))
    monkeypatch.setattr(bench, "flops_per_update", lambda spec, method: 1e8)
    monkeypatch.setattr(bench, "update_parts", lambda *a: {"products_ms": 1.0, "gradient_ms": 1.25, "update_ms": 2.0})
    r = bench.main(["--only", "mlp", "--pcx-python", "python", "--rounds", "2"])
    per_epoch = 1e8 * 469  # 60,000 / 128 updates
    assert [p["pcgraph_s"] / p["pcx_s"] for p in r["mlp_rounds"]] == [1.5 / 2.5, 1.2 / 3.0]
    assert r["mlp_rounds"][0]["matmul_share"] == per_epoch / 1.5 / 1e9 / 200.0
    assert r["mlp_rounds"][1]["matmul_share"] == per_epoch / 1.2 / 1e9 / 50.0
    out = capsys.readouterr().out
    assert "| MNIST MLP | pcgraph (default), warm cache | 1.100 | 1.20 | 0.55 | x pcx |" in out
    assert "2 paired rounds: compiled (cache warm), then pcx | 1.350 | - | 0.50 | x pcx | pairs 0.60, 0.40;" in out
    assert "relaxation and gradient 1.25 ms (matmul share 80%); with the weight step 2.00 ms (50%)" in out


def test_bench_mlp_replays_the_updates_own_products():
    """The reference of the matmul share is the update's own products: the MLP's PC update runs 50
    (4 init, 1 + 3 + 5 in the first three steps, 6 in each later step, 3 final forwards, 4 weight
    gradients) whose FLOPs are the update's (it runs no other counted op), and one replayed pass
    of them is timed."""
    bench = load("bench_mlp")
    spec = pcgraph.load_spec(SPECS / "mnist_mlp.yaml")
    products = bench.update_products(eager_update(spec, "pc"))
    assert len(products) == 50
    flops, seconds = bench.products_time(products, repeat=1)
    assert flops == flops_per_update(spec, "pc") and seconds > 0
