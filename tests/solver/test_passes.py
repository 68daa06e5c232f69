"""Graph rewrites of the compiled relaxation (pcgraph.solver.passes): the split addmm computes what
aten's addmm does and leaves what it must not touch alone; the programs that pcgraph builds ahead
of time run their products as plain mm, the torch.compile route with the pass equals the eager
loop, and inductor is imported only to compile."""

import subprocess
import sys
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import pcgraph
from pcgraph.errors import PCGraphWarning
from pcgraph.solver.loop import Captured
from pcgraph.solver.passes import SplitAddmm

aten = torch.ops.aten


def targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def layer(x, w, b, r):
    """A linear layer with a bias (addmm on a broadcast vector), then a residual product (addmm on a
    full matrix) and a scaled one (beta = 2, which stays as it is)."""
    h = torch.tanh(F.linear(x, w, b))
    return torch.addmm(r, h, w.T) * 2 + torch.addmm(r, h, w.T, beta=2)


def test_split_addmm_keeps_the_values_and_leaves_no_unit_addmm():
    gen = torch.Generator().manual_seed(0)
    x, w, b, r = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((5, 4), (4, 4), (4,), (5, 4)))
    gm = make_fx(layer, tracing_mode="fake")(x, w, b, r)
    before = [n.kwargs.get("beta", 1) for n in gm.graph.nodes if n.target is aten.addmm.default]
    assert len(before) == 3  # the test's premise: the trace holds the three addmm
    SplitAddmm()(gm.graph)
    gm.graph.lint()
    gm.recompile()
    left = [n for n in gm.graph.nodes if n.target is aten.addmm.default]
    assert [n.kwargs.get("beta", 1) for n in left] == [2]  # only the scaled one stays
    assert targets(gm).count(aten.mm.default) == 2
    torch.testing.assert_close(gm(x, w, b, r), layer(x, w, b, r), rtol=1e-14, atol=1e-14)


def test_split_addmm_leaves_other_devices_alone():
    x, w, b = torch.randn(3, 2, device="meta"), torch.randn(2, 2, device="meta"), torch.randn(2, device="meta")
    gm = make_fx(lambda x, w, b: F.linear(x, w, b), tracing_mode="fake")(x, w, b)
    SplitAddmm()(gm.graph)
    assert aten.addmm.default in targets(gm)


def test_the_uuid_names_the_pass_source():
    assert SplitAddmm().uuid() == SplitAddmm().uuid() and len(SplitAddmm().uuid()) == 64


def test_a_program_built_ahead_of_time_runs_its_products_as_mm(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE_DIR", str(tmp_path))
    g = pcgraph.Graph("mlp")
    x, h = g.node("x", 6, observed=True), g.node("h", 8)
    g.edge(x, h, "linear", "gelu")
    g.edge(h, g.node("y", 3, observed=True), "linear")
    g.inference(steps=3)
    spec = g.spec()
    graph = pcgraph.compile(spec)
    batch = {"x": torch.randn(4, 6), "y": torch.randn(4, 3)}
    pcgraph.Solver.from_spec(spec, compile=True).gradients(graph, batch)
    (package,) = tmp_path.glob("*.pt2")
    with zipfile.ZipFile(package) as z:
        wrapper = "".join(z.read(n).decode() for n in z.namelist() if n.endswith("wrapper.cpp"))
    assert "aoti_torch_cpu_mm_out" in wrapper
    assert "aoti_torch_cpu_addmm_out" not in wrapper


def test_importing_the_solver_and_the_cli_leaves_inductor_unloaded():
    """torch._inductor takes most of a second to import: only a compile pays it."""
    code = "import sys, pcgraph.solver, pcgraph.cli; print('torch._inductor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_loop_compiled_by_torch_compile_on_cpu_equals_the_eager_one():
    """Runs that do not start from the forward init (here: zeros) go to torch.compile with the
    same pass; in float64 its relaxation and gradients are the eager loop's."""
    g = pcgraph.Graph("mlp")
    x, h = g.node("x", 6, observed=True), g.node("h", 8)
    g.edge(x, h, "linear", "tanh")
    g.edge(h, g.node("y", 3, observed=True), "linear")
    g.inference(steps=4, init="zeros")
    spec = g.spec()
    graph = pcgraph.compile(spec).double()
    gen = torch.Generator().manual_seed(3)
    batch = {"x": torch.randn(4, 6, generator=gen, dtype=torch.float64),
             "y": torch.randn(4, 3, generator=gen, dtype=torch.float64)}
    eager = pcgraph.Solver.from_spec(spec, compile=False).gradients(graph, batch)
    solver = pcgraph.Solver.from_spec(spec, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PCGraphWarning)  # a failed compile warns and runs eagerly
        compiled = solver.gradients(graph, batch)
    (loop,) = [fn for _, fn in solver._cache.values()]
    assert isinstance(loop, Captured) and not loop.failed
    torch.testing.assert_close(compiled[0].energy, eager[0].energy, rtol=1e-12, atol=1e-12)
    for p in eager[1]:
        torch.testing.assert_close(compiled[1][p], eager[1][p], rtol=1e-12, atol=1e-12)
