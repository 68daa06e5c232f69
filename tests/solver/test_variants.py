"""PC variants as registered classes: parsed from specs, read by the solver through what they
declare (never their names), checked before any work; and the autograd fallback's warning."""

import pytest
import torch
from torch import nn

import pcgraph
from pcgraph.energies import ENERGIES, Energy, per_sample, register_energy
from pcgraph.ops import OPS, Op, register_op
from pcgraph.variants import VARIANTS, Exact, Incremental, Standard, Variant, parse_variant, register_variant
from tests.strategies import small_net

f64 = torch.float64


def chain(energy="gaussian"):
    return small_net(hidden=energy)


def test_names_and_mappings_parse_to_objects():
    assert isinstance(parse_variant("standard"), Standard)
    assert isinstance(parse_variant({"kind": "incremental"}), Incremental)
    assert parse_variant(Exact()) == Exact()
    with pytest.raises(ValueError, match=r"unknown variant 'ipc' \(known: epc, exact, incremental, standard"):
        parse_variant("ipc")
    assert isinstance(pcgraph.Solver(variant="exact").variant, Exact)


def test_spec_variant_is_an_object_and_round_trips():
    data = chain().model_dump(mode="json", by_alias=True)
    data["learning"] = {"variant": {"kind": "incremental"}}
    spec = pcgraph.spec_from_dict(data)
    assert isinstance(spec.learning.variant, Incremental)
    assert pcgraph.spec_from_yaml(spec.to_yaml()) == spec
    assert "variant: incremental" in spec.to_yaml()  # a variant without options is written as its name
    data["learning"] = {"variant": "fixed"}
    with pytest.raises(pcgraph.SpecError, match="learning.variant: unknown variant 'fixed'"):
        pcgraph.spec_from_dict(data)


def test_the_solver_reads_declarations_not_names():
    """A new class declaring learn_every_step trains exactly as the built-in incremental variant."""
    @register_variant
    class EveryStep(Variant):
        """Learn after every inference step."""

        kind = "test-every-step"
        learn_every_step = True

    try:
        batch = {"x": torch.randn(5, 3, dtype=f64), "y": torch.randn(5, 2, dtype=f64)}
        params = []
        for variant in ("incremental", "test-every-step", {"kind": "test-every-step"}):
            torch.manual_seed(0)
            graph = pcgraph.compile(chain(), dtype=f64)
            opt = torch.optim.SGD(graph.parameters(), lr=0.1)
            pcgraph.Solver(steps=4, variant=variant).step(graph, batch, opt)
            params.append(torch.cat([p.flatten() for p in graph.parameters()]))
        assert torch.equal(params[0], params[1]) and torch.equal(params[0], params[2])
        torch.manual_seed(0)
        graph = pcgraph.compile(chain(), dtype=f64)
        pcgraph.Solver(steps=4).step(graph, batch, torch.optim.SGD(graph.parameters(), lr=0.1))
        standard = torch.cat([p.flatten() for p in graph.parameters()])
        assert not torch.equal(params[0], standard)  # and learning every step is not standard PC
    finally:
        VARIANTS.pop("test-every-step")


def test_a_variant_may_set_the_number_of_steps():
    @register_variant
    class PerEdge(Variant):
        kind = "test-per-edge"

        def inference(self, graph, steps):
            return 2 * graph.depth, None

    try:
        graph = pcgraph.compile(chain())
        r = pcgraph.Solver(steps=50, variant="test-per-edge").relax(graph, {"x": torch.randn(2, 3),
                                                                             "y": torch.randn(2, 2)})
        assert r.steps == 4 and len(r.energy) == 5
    finally:
        VARIANTS.pop("test-per-edge")


def test_exact_refuses_inferred_nodes_whose_energy_is_not_a_function_of_the_error():
    @register_energy
    class Skewed(Energy):
        """e = sum (x - mu)^2 / 2 + x (not a function of x - mu alone)."""

        kind = "test-skewed"

        def value(self, x, mu):
            return per_sample(0.5 * (x - mu) ** 2 + x)

    try:
        graph = pcgraph.compile(chain("test-skewed"))
        with pytest.raises(pcgraph.SpecError, match=r"learning.variant: .*\['h'\]"):
            pcgraph.Solver(variant="exact").relax(graph, {"x": torch.randn(2, 3), "y": torch.randn(2, 2)})
        pcgraph.Solver(variant="standard").relax(graph, {"x": torch.randn(2, 3), "y": torch.randn(2, 2)})
    finally:
        ENERGIES.pop("test-skewed")


@pytest.mark.parametrize(("hidden", "path", "words"), [
    ({"kind": "gaussian", "precision": 2.0}, "graph.nodes.h.energy.precision", "precision: 2.0"),
    ({"kind": "gaussian", "precision": [1.0, 2.0, 1.0, 1.0]}, "graph.nodes.h.energy.precision", "a diagonal precision"),
    ({"kind": "gaussian", "covariance": [[2.0, 0.5, 0, 0], [0.5, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]},
     "graph.nodes.h.energy.covariance", "a matrix covariance"),
    ({"kind": "gaussian", "learn": "diagonal"}, "graph.nodes.h.energy.learn", "learn: diagonal"),
])
def test_exact_names_an_inferred_nodes_precision_as_the_cause(hidden, path, words):
    """Unit steps reach backprop's errors only through unit-precision inferred nodes: a weighted one
    used to give a wrong gradient silently (verify-bp FAILED, or a message blaming the ops)."""
    graph = pcgraph.compile(small_net(hidden=hidden), dtype=f64)
    batch = {"x": torch.randn(5, 3, dtype=f64), "y": torch.randn(5, 2, dtype=f64)}
    with pytest.raises(pcgraph.SpecError) as info:
        pcgraph.Solver(variant="exact").gradients(graph, batch)
    assert info.value.path == path and words in str(info.value) and "local rule" not in str(info.value)


def test_exact_accepts_unit_precision_written_out_and_any_output_precision():
    """precision [1, 1, 1, 1] on the inferred node is Pi = I, and the output's precision is the
    loss's: both still give backprop's gradient exactly."""
    spec = small_net(hidden={"kind": "gaussian", "precision": [1.0] * 4},
                     output={"kind": "gaussian", "precision": [[2.0, 0.5], [0.5, 1.0]]})
    graph = pcgraph.compile(spec, dtype=f64)
    batch = {"x": torch.randn(5, 3, dtype=f64), "y": torch.randn(5, 2, dtype=f64)}
    assert pcgraph.verify_bp(graph, batch, "exact").worst_rel_error < 1e-12


def test_exact_without_local_rules_says_so():
    graph = pcgraph.compile(small_net(), dtype=f64)
    batch = {"x": torch.randn(5, 3, dtype=f64), "y": torch.randn(5, 2, dtype=f64)}
    with pytest.raises(pcgraph.SpecError, match="learning.variant: .*closed-form local rules.*local_rules=False"):
        pcgraph.Solver(variant="exact", local_rules=False).gradients(graph, batch)


def test_a_graph_without_local_rules_warns_once_naming_the_module_and_matches_autograd():
    class Plain(nn.Module):  # no pcgraph.OpModule hooks: autograd only
        def forward(self, x):
            return torch.sin(x)

    @register_op
    class Sine(Op):
        """f(x) = sin(x)."""

        kind = "test-sine"

        def build(self, in_shape, target_shape):
            return Plain()

    try:
        graph = pcgraph.compile(small_net((3, 3, 3), (("linear", "test-sine"), ("linear",))), dtype=f64)
        batch = {"x": torch.randn(4, 3, dtype=f64), "y": torch.randn(4, 3, dtype=f64)}
        solver = pcgraph.Solver(steps=6)
        with pytest.warns(pcgraph.PCGraphWarning, match=r"graph.edges\[0\].fn\[1\] \(op 'test-sine', module Plain\)") as record:
            r, grads = solver.gradients(graph, batch)
            solver.relax(graph, batch)  # the same graph again, by this solver or another: no second warning
            pcgraph.Solver(steps=2).relax(graph, batch)
        assert len(record) == 1
        r_ref, grads_ref = pcgraph.Solver(steps=6, local_rules=False).gradients(graph, batch)
        assert torch.allclose(r.energy, r_ref.energy)
        assert all(torch.allclose(grads[k], grads_ref[k]) for k in grads)
    finally:
        OPS.pop("test-sine")


def test_an_op_building_a_stock_torch_module_gets_the_built_in_local_rule():
    """An op that returns plain nn.Linear / nn.Tanh runs on the fast path (no warning), with the
    same gradients as autograd."""
    @register_op
    class TorchLinear(Op):
        kind = "test-torch-linear"

        def build(self, in_shape, target_shape):
            return nn.Sequential(nn.Linear(in_shape[-1], target_shape[-1]), nn.Tanh())[0]

    try:
        fns = (("test-torch-linear", "tanh"), ("test-torch-linear",))
        graph = pcgraph.compile(small_net(fns=fns), dtype=f64)
        assert all(isinstance(m, pcgraph.OpModule) for e in graph.edges for m in e.pipeline)
        batch = {"x": torch.randn(4, 3, dtype=f64), "y": torch.randn(4, 2, dtype=f64)}
        _, fast = pcgraph.Solver(steps=5).gradients(graph, batch)  # warnings are errors in the tests
        _, ref = pcgraph.Solver(steps=5, local_rules=False).gradients(graph, batch)
        assert all(torch.allclose(fast[k], ref[k]) for k in fast)
    finally:
        OPS.pop("test-torch-linear")


def test_compile_follows_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(f64)
    try:
        assert next(pcgraph.compile(chain()).parameters()).dtype == f64
    finally:
        torch.set_default_dtype(previous)
    assert next(pcgraph.compile(chain()).parameters()).dtype == torch.float32
