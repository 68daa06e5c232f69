"""The GPU path: the captured (compiled) inference loop equals the eager one, a failed compile
falls back with a warning, and (marked gpu, skipped without CUDA) CPU and GPU agree on the
Table-1 graphs."""

import pytest
import torch

import pcgraph
from pcgraph.solver import StateSGD
from pcgraph.tasks.train import train
from pcgraph.tasks.verify import random_batch


def chain():
    g = pcgraph.Graph("chain")
    for i, n in enumerate((6, 5, 4, 3)):
        g.node(f"x{i}", n, observed=i in (0, 3))
    for i in range(3):
        g.edge(f"x{i}", f"x{i + 1}", "linear", "tanh")
    return pcgraph.compile(g.spec()).double()


def two_steps(compiled: bool):
    """Two updates from a zeros init, which a CPU compiles with torch.compile as CUDA does every run
    (a forward init is compiled ahead of time there instead: tests/solver/test_aot.py)."""
    torch.manual_seed(3)
    graph = chain()
    solver = pcgraph.Solver(steps=5, optimizer=StateSGD(0.1, 0.5), init="zeros", compile=compiled)
    opt = torch.optim.Adam(graph.parameters(), lr=0.01)
    batches = [{"x0": torch.randn(8, 6, dtype=torch.float64), "x3": torch.randn(8, 3, dtype=torch.float64)}
               for _ in range(2)]
    return [solver.step(graph, b, opt) for b in batches], graph


def same(a, b):
    ra, ga = a
    rb, gb = b
    for x, y in zip(ra, rb):
        assert torch.equal(x.energy, y.energy)
        assert all(torch.equal(x.states[v], y.states[v]) for v in x.states)
    assert all(torch.equal(p, q) for p, q in zip(ga.parameters(), gb.parameters()))


def test_the_capturable_loop_equals_the_eager_loop(monkeypatch):
    """The loop torch.compile captures (no input changed in place, outputs copied out) gives the
    eager loop's states, energies and updates, bit for bit (run here without compiling)."""
    eager = two_steps(False)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    same(two_steps(True), eager)


def test_a_failed_compile_warns_once_and_runs_eagerly(monkeypatch):
    eager = two_steps(False)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    with pytest.warns(pcgraph.PCGraphWarning, match="no C\\+\\+ compiler.*eagerly") as caught:
        same(two_steps(True), eager)
    assert len(caught) == 1 and len(calls) == 1


# --- on a GPU -------------------------------------------------------------------------------------

GRAPHS = ["specs/mnist_mlp.yaml", "specs/cifar10_cnn.yaml"]


def close(a, b, tol=1e-4):
    """Relative to the reference's norm: float32 on two devices sums in different orders."""
    return float((a.cpu() - b).norm()) <= tol * max(float(b.norm()), 1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("path", GRAPHS)
@pytest.mark.parametrize("compiled", [False, True])
def test_cpu_and_gpu_give_the_same_energies_and_gradients(path, compiled, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions round to 1e-3
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    spec = pcgraph.load_spec(path)
    torch.manual_seed(0)
    cpu = pcgraph.compile(spec)
    gpu = pcgraph.compile(spec).cuda()
    gpu.load_state_dict(cpu.state_dict())
    batch = random_batch(cpu, [spec.data.input, spec.data.target], 32, seed=1)
    ref, ref_grads = pcgraph.Solver.from_spec(spec).gradients(cpu, batch)
    solver = pcgraph.Solver.from_spec(spec, compile=compiled)
    for _ in range(3 if compiled else 1):  # warm-up, capture, replay
        got, grads = solver.gradients(gpu, {v: x.cuda() for v, x in batch.items()})
    assert got.energy.device.type == "cuda"
    assert close(got.energy, ref.energy)
    for name, g in ref_grads.items():
        assert grads[name].device.type == "cuda" and close(grads[name], g), name
    for v, x in ref.states.items():
        assert close(got.states[v], x), v


@pytest.mark.gpu
def test_training_runs_on_cuda(tmp_path):
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    cpu = train(spec, epochs=1, progress=False, log=lambda s: None)
    gpu = train(spec, epochs=1, device="cuda", out=tmp_path, progress=False, log=lambda s: None)
    assert abs(gpu.history[0]["energy"] - cpu.history[0]["energy"]) < 1e-3 * cpu.history[0]["energy"]
    assert gpu.test_accuracy > 0.5
    resumed = train(resume=tmp_path, epochs=2, device="cuda", progress=False, log=lambda s: None)
    assert len(resumed.history) == 2
