"""The relaxation compiled ahead of time (pcgraph.solver.aot): it computes what the eager loop
does, parameters stay inputs, the on-disk cache is reused and keyed on what the program bakes in,
failures fall back to the eager loop, and ``inference.compile: auto`` compiles only runs long
enough to win the compile back. (tests/solver/test_compiled.py checks the zero errors of a deep
float32 graph's forward init and float64 agreement on the same path.)"""

import copy
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

import pcgraph
from pcgraph.errors import PCGraphWarning
from pcgraph.solver import aot
from pcgraph.tasks.setup import weight_optimizer


def small_spec(lr: float = 0.1, width: int = 12):
    g = pcgraph.Graph("small")
    x = g.node("x", 6, observed=True)
    h1, h2 = g.node("h1", width), g.node("h2", width)
    g.edge(x, h1, "linear", "tanh")
    g.edge(h1, h2, "linear", "gelu")
    g.edge(h2, g.node("y", 3, observed=True), "linear")
    g.inference(steps=5, optimizer={"kind": "sgd", "lr": lr, "momentum": 0.5})
    return g.spec()


def data(dtype=torch.float64, b: int = 8):
    gen = torch.Generator().manual_seed(1)
    return {"x": torch.randn(b, 6, generator=gen, dtype=dtype), "y": torch.randn(b, 3, generator=gen, dtype=dtype)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "aot"
    monkeypatch.setenv("PCGRAPH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cache folder for the tests that do not count its files: each program compiles once."""
    return tmp_path_factory.mktemp("aot-shared")


def train_steps(spec, graph, compiled: bool, n: int = 3):
    """n learning steps on copies of ``graph``; returns (the relaxations, the trained graph)."""
    graph = copy.deepcopy(graph)
    solver = pcgraph.Solver.from_spec(spec, compile=compiled)
    opt = weight_optimizer(spec.learning.optimizer, graph.parameters())
    return [solver.step(graph, data(), opt) for _ in range(n)], graph


def test_compiled_training_steps_equal_the_eager_ones_in_float64(cache):
    spec = small_spec()
    graph = pcgraph.compile(spec, dtype=torch.float64)
    (eager, g_eager), (compiled, g_compiled) = (train_steps(spec, graph, c) for c in (False, True))
    assert list(cache.glob("*.pt2")), "the compiled program is in the cache"
    for a, b in zip(eager, compiled):  # the parameters change between steps: they are inputs, not constants
        torch.testing.assert_close(b.energy, a.energy, rtol=1e-9, atol=1e-12)
        for v in a.states:
            torch.testing.assert_close(b.states[v], a.states[v], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b.predicted["y"], a.predicted["y"], rtol=1e-9, atol=1e-12)
    for (name, p), q in zip(g_eager.named_parameters(), g_compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12, msg=name)


def test_a_later_run_loads_the_program_from_the_cache_without_tracing(cache, monkeypatch):
    spec = small_spec()
    graph = pcgraph.compile(spec, dtype=torch.float64)
    first = pcgraph.Solver.from_spec(spec, compile=True).gradients(graph, data())[1]
    built = sorted(cache.glob("*.pt2"))

    def no_export(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(torch.export, "export", no_export)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PCGraphWarning)  # a failure would warn and run eagerly
        again = pcgraph.Solver.from_spec(spec, compile=True).gradients(graph, data())[1]
    assert sorted(cache.glob("*.pt2")) == built
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_the_cache_key_follows_what_the_program_bakes_in(cache):
    """The state optimizer's step is a constant of the traced program: another lr is another program."""
    graph = pcgraph.compile(small_spec(), dtype=torch.float64)
    for lr in (0.1, 0.05):
        spec = small_spec(lr)
        compiled = pcgraph.Solver.from_spec(spec, compile=True).relax(graph, data())
        eager = pcgraph.Solver.from_spec(spec).relax(graph, data())
        torch.testing.assert_close(compiled.energy, eager.energy, rtol=1e-9, atol=1e-12)
    assert len(list(cache.glob("*.pt2"))) == 2


def test_a_failed_compile_warns_once_and_runs_eagerly(cache, monkeypatch):
    calls = []

    def broken(program, path):
        calls.append(path)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(aot, "build", broken)
    spec = small_spec()
    graph = pcgraph.compile(spec, dtype=torch.float64)
    solver = pcgraph.Solver.from_spec(spec, compile=True)
    with pytest.warns(PCGraphWarning, match="ahead of time failed .*no compiler here.*eagerly"):
        got = solver.relax(graph, data())
    again = solver.relax(graph, data())
    want = pcgraph.Solver.from_spec(spec).relax(graph, data())
    assert len(calls) == 1  # not retried on every batch
    assert torch.equal(got.energy, want.energy) and torch.equal(again.energy, want.energy)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_cache_folder_others_can_write_to_is_refused(cache):
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    spec = small_spec()
    graph = pcgraph.compile(spec, dtype=torch.float64)
    with pytest.warns(PCGraphWarning, match="writable by other users"):
        pcgraph.Solver.from_spec(spec, compile=True).relax(graph, data())
    assert not list(cache.glob("*.pt2"))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o777  # the user's folder is left as it was


def test_auto_compiles_only_runs_long_enough_to_pay(cache, monkeypatch):
    spec = pcgraph.load_spec(Path(__file__).parents[2] / "specs" / "digits_mlp.yaml")
    assert spec.inference.compile == "auto"
    lines = []
    pcgraph.train(spec, epochs=1, progress=False, log=lines.append)  # 45 updates: eager
    assert not cache.exists() and not any("compiled ahead of time" in line for line in lines)
    monkeypatch.setattr(aot, "PAYS", 40)
    lines.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PCGraphWarning)
        pcgraph.train(spec, epochs=1, progress=False, log=lines.append)
    assert any("compiled ahead of time (45 updates)" in line for line in lines), lines
    assert len(list(cache.glob("*.pt2"))) == 1


def test_auto_leaves_graphs_whose_ops_compiling_does_not_speed_up_eager():
    mlp = pcgraph.compile(small_spec())
    cnn = pcgraph.compile(pcgraph.load_spec(Path(__file__).parents[2] / "specs" / "cifar10_cnn.yaml"))
    assert aot.pays(mlp, aot.PAYS) and not aot.pays(mlp, aot.PAYS - 1)
    assert not aot.pays(cnn, 10**9)  # convolutions: oneDNN's kernels either way


def test_inputs_with_other_strides_give_the_same_relaxation(shared, monkeypatch):
    """The program reads its inputs with the strides it was traced with: others are made contiguous."""
    monkeypatch.setenv("PCGRAPH_CACHE_DIR", str(shared))
    spec = small_spec()
    graph = pcgraph.compile(spec, dtype=torch.float64)
    solver = pcgraph.Solver.from_spec(spec, compile=True)
    batch = data()
    strided = {"x": batch["x"].t().contiguous().t(), "y": torch.stack([batch["y"], batch["y"]], 2)[..., 0]}
    assert not strided["x"].is_contiguous() and not strided["y"].is_contiguous()
    a, b = solver.relax(graph, batch), solver.relax(graph, strided)
    assert torch.equal(a.energy, b.energy) and all(torch.equal(a.states[v], b.states[v]) for v in a.states)


def test_a_layer_frozen_between_steps_gets_the_eager_gradients(shared, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE_DIR", str(shared))
    spec = small_spec()
    graph = pcgraph.compile(spec, dtype=torch.float64)
    solver = pcgraph.Solver.from_spec(spec, compile=True)
    solver.gradients(graph, data())
    graph.edges[1].pipeline[0].weight.requires_grad_(False)  # h1 -> h2: the same shape as nothing else
    got = solver.gradients(graph, data())[1]
    want = pcgraph.Solver.from_spec(spec).gradients(graph, data())[1]
    for k in want:  # the frozen weight's too (a weight optimizer leaves it alone)
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=k)
    assert got["edges.1.pipeline.0.weight"].any()


def test_a_program_rebuilds_its_outputs_from_the_layout_read_at_load():
    """Program calls the loader on a flat list and puts its outputs back in the traced layout
    (frozen parameters' missing gradients stay None); a package without a loader is called as is."""
    assert aot._place((0, (1, None, 2), [3]), ["e", "g0", "g2", "x"]) == ("e", ("g0", None, "g2"), ["x"])
    calls = []

    def package(*tensors):
        calls.append(tensors)
        return "out"
    assert aot.Program(package)([1, 2]) == "out" and calls == [(1, 2)]
