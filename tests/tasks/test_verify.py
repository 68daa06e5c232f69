"""PC's gradients against backprop's: the exact (fixed-prediction) variant must equal autograd's
backprop on random acyclic graphs; the output-precision approximation must approach it."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pcgraph
from pcgraph.cli import main
from pcgraph.tasks.verify import bp_gradients, compare, verify_bp
from tests.strategies import ALL_ACTIVATIONS, layered_graphs, random_batch, small_net


@settings(max_examples=60, deadline=None)
@given(layered_graphs(ops=ALL_ACTIVATIONS), st.sampled_from([torch.float64, torch.float32]), st.integers(1, 6))
def test_exact_mode_is_backprop_on_random_dags(case, dtype, b):
    spec, _, outputs = case
    torch.manual_seed(3)
    graph = pcgraph.compile(spec).to(dtype)
    batch = random_batch(graph, outputs, b=b, dtype=dtype)
    result = verify_bp(graph, batch)
    assert result.tol == (1e-10 if dtype == torch.float64 else 1e-5)
    if dtype == torch.float32 and not result.ok:
        # Rare: a float32 sum with heavy cancellation (a scalar bias summed over the batch) makes
        # any two summation orders differ by more than 1e-5. Then judge both float32 routes
        # against the float64 truth: PC must be as accurate as autograd's own backprop.
        graph64 = pcgraph.compile(spec).double()
        graph64.load_state_dict(graph.state_dict())
        truth = bp_gradients(graph64, {k: v.double() for k, v in batch.items()})
        _, pc = pcgraph.Solver(variant="exact").gradients(graph, batch)
        for own, ref in zip(compare(pc, truth), compare(bp_gradients(graph, batch), truth)):
            assert own.rel_error <= max(1e-5, 4 * ref.rel_error), (own, ref)
        return
    assert result.ok, [(r.name, r.rel_error) for r in result.rows]


def test_backprop_reference_is_plain_autograd_on_the_feedforward_net():
    """bp_gradients on a 2-layer net equals the same net written directly in torch."""
    graph = pcgraph.compile(small_net()).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    l1, l2 = graph.edges[0].pipeline[0], graph.edges[1].pipeline[0]
    loss = 0.5 * ((y - (torch.tanh(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)) ** 2).sum(1).mean()
    expected = torch.autograd.grad(loss, [l1.weight, l1.bias, l2.weight, l2.bias])
    got = bp_gradients(graph, {"x": x, "y": y})
    for e, g_ in zip(expected, got.values()):
        assert torch.allclose(e, g_, rtol=1e-12)


def test_approx_mode_approaches_backprop_as_the_output_variance_grows():
    torch.manual_seed(0)
    graph = pcgraph.compile(pcgraph.load_spec("specs/mnist_mlp.yaml")).double()
    batch = random_batch_for(graph, 32)
    result = verify_bp(graph, batch, "approx", scales=(1.0, 0.1, 0.01, 0.001), steps=(200,))
    errors = [r["max_rel_error"] for r in result.sweep]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert result.sweep[-1]["min_cosine"] >= 0.999
    assert errors[-1] < 0.02


def random_batch_for(graph, size):
    from pcgraph.tasks.verify import random_batch as make

    return make(graph, ["image", "label"], size, torch.float64)


def test_cyclic_graph_or_no_output_is_refused():
    g = pcgraph.Graph("cyc")
    g.node("a", 2, observed=True)
    g.node("b", 2)
    g.node("c", 2, observed=True)
    g.edge("a", "b", "linear")
    g.edge("b", "c", "linear")
    g.edge("c", "b", "linear")
    g.inference(init="zeros")
    graph = pcgraph.compile(g.spec())
    with pytest.raises(pcgraph.SpecError, match="acyclic"):
        verify_bp(graph, {"a": torch.randn(2, 2), "c": torch.randn(2, 2)})
    dag = pcgraph.compile(pcgraph.load_spec("specs/digits_mlp.yaml"))
    with pytest.raises(pcgraph.SpecError, match="observed output"):
        verify_bp(dag, {"image": torch.randn(2, 64)})


def test_cli_exact_passes_and_reports_json(capsys):
    rc = main(["verify-bp", "specs/digits_mlp.yaml", "--random-batch", "--batch-size", "8", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] and result["worst_rel_error"] <= 1e-10 and len(result["rows"]) == 6


def test_cli_exact_exits_1_when_out_of_tolerance(capsys):
    rc = main(["verify-bp", "specs/digits_mlp.yaml", "--random-batch", "--dtype", "float32", "--tol", "1e-30"])
    assert rc == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_approx_sweep_and_plot(capsys, tmp_path):
    rc = main(["verify-bp", "specs/mnist_mlp.yaml", "--random-batch", "--mode", "approx", "--batch-size", "8",
               "--precision-scales", "1,0.01", "--steps", "8,100", "--plot", str(tmp_path / "sweep.png"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert len(json.loads(out.strip().splitlines()[-1])["sweep"]) == 4
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_approx_with_a_categorical_output_is_one_error_line(capsys):
    rc = main(["verify-bp", "specs/digits_mlp.yaml", "--random-batch", "--mode", "approx"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "categorical" in err


def test_graph_without_parameters_and_zero_gradients():
    g = pcgraph.Graph("nop")
    g.node("x", 2, observed=True)
    g.node("y", 2, observed=True)
    g.edge("x", "y", "tanh")
    with pytest.raises(pcgraph.SpecError, match="no parameters"):
        verify_bp(pcgraph.compile(g.spec()), {"x": torch.randn(2, 2), "y": torch.randn(2, 2)})
    g.node("free", 2)
    g.edge("x", "free", "linear")  # feeds a free leaf: backprop's gradient is exactly zero
    result = verify_bp(pcgraph.compile(g.spec()), {"x": torch.randn(2, 2), "y": torch.randn(2, 2)})
    assert result.ok
    json.loads(result.to_json())  # valid JSON: no NaN
    assert all(r.norm_ratio is None for r in result.rows)


@pytest.mark.parametrize("output", [{"kind": "gaussian", "precision": [[2.0, 0.0], [0.0, 2.0]]},
                                    {"kind": "gaussian", "covariance": [0.5, 0.5]}])
def test_approx_mode_scales_matrix_precisions_like_the_same_scalar(output):
    """A matrix (or diagonal covariance) output precision equal to 2 I must give approx mode the
    same figures as the scalar precision 2: the scaled copy keeps its scaled matrix."""
    from pcgraph.tasks.verify import with_output_precision

    torch.manual_seed(0)
    scalar = pcgraph.compile(small_net(output={"kind": "gaussian", "precision": 2.0}), dtype=torch.float64)
    matrix = pcgraph.compile(small_net(output=output), dtype=torch.float64)
    matrix.load_state_dict({**matrix.state_dict(), **scalar.state_dict()})
    batch = {"x": torch.randn(5, 3, dtype=torch.float64), "y": torch.randn(5, 2, dtype=torch.float64)}
    assert torch.allclose(with_output_precision(matrix, batch, 0.01).terms["y"].matrix(),
                          0.02 * torch.eye(2, dtype=torch.float64))
    a = verify_bp(scalar, batch, "approx", scales=(1.0, 0.01), steps=(50,))
    b = verify_bp(matrix, batch, "approx", scales=(1.0, 0.01), steps=(50,))
    for ra, rb in zip(a.sweep, b.sweep):
        assert ra["max_rel_error"] == pytest.approx(rb["max_rel_error"], rel=1e-9)


def test_cli_figures_repeat_from_run_to_run(capsys):
    """The parameters are drawn from --seed, so the same command prints the same figures."""
    args = ["verify-bp", "specs/mnist_mlp.yaml", "--random-batch", "--mode", "approx", "--batch-size", "4",
            "--steps", "3", "--precision-scales", "1", "--json"]
    outs = []
    for _ in range(2):
        assert main(args) == 0
        outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert main([*args, "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) != outs[0]
