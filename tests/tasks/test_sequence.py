"""Recurrent PC over time against the reference Kalman filter (itself checked against Gaussian
conditioning in tests/test_kalman.py), and online learning of A, C and the measurement noise."""

import json

import numpy as np
import pytest
import torch

import pcgraph
from pcgraph.cli import main
from pcgraph.errors import SpecError, UsageError
from pcgraph.kalman import LinearGaussian, kalman_filter
from pcgraph.tasks.sequence import linear_system, run_sequence, simulate
from tests.test_kalman import random_system

f64 = torch.float64


def rows(m: torch.Tensor) -> list[list[float]]:
    return m.tolist()


def kalman_spec(s: LinearGaussian, prior_mean: float, learn_r: str = "none", r_init=None):
    """The notes' Fig. 5 graph for the system s: x -> x (delay 1, weight A), x -> y (weight C)."""
    g = pcgraph.Graph("kf")
    n, m = s.A.shape[0], s.C.shape[0]
    g.node("x", n, prior={"mean": prior_mean, "precision": 1.0 / float(s.P0[0, 0])},
           energy={"kind": "gaussian", "covariance": rows(s.Q)})
    r = {"kind": "gaussian", "covariance": rows(s.R) if r_init is None else r_init, "learn": learn_r}
    g.node("y", m, observed=True, energy=r)
    g.edge("x", "x", {"kind": "linear", "bias": False, "weight": rows(s.A)})
    spec = g.spec()
    data = spec.model_dump(mode="json", by_alias=True)
    data["graph"]["edges"][0]["delay"] = 1
    data["graph"]["edges"].append({"from": "x", "to": "y", "fn": [{"kind": "linear", "bias": False, "weight": rows(s.C)}]})
    return pcgraph.spec_from_dict(data)


def converging_solver(s: LinearGaussian, steps=20000) -> pcgraph.Solver:
    """State SGD whose step fits the largest curvature the energy can have (Q^-1 + C^T R^-1 C
    bounds every prior precision used here from above), run to a tight tolerance."""
    h = torch.linalg.inv(s.Q) + s.C.T @ torch.linalg.inv(s.R) @ s.C
    lr = 1.0 / float(torch.linalg.eigvalsh(h).max())
    return pcgraph.Solver(steps=steps, optimizer=pcgraph.StateSGD(lr, 0.9), tol=1e-12, check_every=5)


def system_with_scalar_prior(seed=0) -> LinearGaussian:
    s = random_system(seed=seed)
    s.m0 = torch.full_like(s.m0, 0.5)
    return s


def test_propagated_precision_gives_the_kalman_posterior_mean_at_every_step():
    s = system_with_scalar_prior()
    graph = pcgraph.compile(kalman_spec(s, 0.5)).double()
    _, y = s.simulate(40, torch.Generator().manual_seed(5))
    result = run_sequence(graph, {"y": y[:, None]}, converging_solver(s), "propagated")
    kf = kalman_filter(s, y)
    assert torch.allclose(result.estimates["x"][:, 0], kf.means, atol=1e-6, rtol=0)
    # the one-step-ahead prediction is C A m_{t-1}: the observation minus the innovation
    assert torch.allclose(result.predictions["y"][:, 0], y - kf.innovations, atol=1e-6, rtol=0)


def test_vector_prior_and_float64_spec_values_give_the_kalman_filter_to_1e_9():
    """A non-isotropic initial belief N((1, 0, 0.5, -1), P0) written in the spec, and A, C, Q, R
    read in float64 (compile(dtype=float64)): PC with propagated precision equals the filter to 1e-9."""
    s = random_system()
    s.m0 = torch.tensor([1.0, 0.0, 0.5, -1.0], dtype=f64)
    s.P0 = torch.diag(torch.tensor([0.5, 2.0, 1.0, 0.25], dtype=f64)) + 0.1
    data = kalman_spec(s, 0.0).model_dump(mode="json", by_alias=True)
    data["graph"]["nodes"]["x"]["prior"] = {"mean": s.m0.tolist(), "covariance": rows(s.P0)}
    graph = pcgraph.compile(pcgraph.spec_from_dict(data), dtype=f64)
    system, _, _ = linear_system(graph)
    for a, b in ((system.A, s.A), (system.C, s.C), (system.m0, s.m0)):
        assert torch.equal(a, b)  # not a digit lost
    assert torch.allclose(system.P0, s.P0, atol=1e-14) and torch.allclose(system.Q, s.Q, atol=1e-14)
    _, y = s.simulate(30, torch.Generator().manual_seed(2))
    result = run_sequence(graph, {"y": y[:, None]}, converging_solver(s, steps=40000), "propagated")
    assert torch.allclose(result.estimates["x"][:, 0], kalman_filter(s, y).means, atol=1e-9, rtol=0)


def test_linear_system_reads_the_graph():
    s = system_with_scalar_prior()
    system, x, y = linear_system(pcgraph.compile(kalman_spec(s, 0.5)).double())
    assert (x, y) == ("x", "y")
    for a, b in ((system.A, s.A), (system.C, s.C), (system.Q, s.Q), (system.R, s.R), (system.m0, s.m0), (system.P0, s.P0)):
        assert torch.allclose(a, b, atol=1e-6)


def fixed_filter_mse(s: LinearGaussian, length: int) -> float:
    """Expected state MSE of the fixed-precision filter, derived: with prior precision Q^-1 the
    relaxed state is m_t = A m_{t-1} + K (y_t - C A m_{t-1}), K = (Q^-1 + C^T R^-1 C)^-1 C^T R^-1,
    so its error e_t = x_t - m_t obeys e_t = (I - K C)(A e_{t-1} + w_t) - K v_t, whose covariance
    S_t = F S_{t-1} F^T + (I - KC) Q (I - KC)^T + K R K^T (F = (I - KC) A, S_0 = P0) gives the MSE."""
    Ri = torch.linalg.inv(s.R)
    K = torch.linalg.inv(torch.linalg.inv(s.Q) + s.C.T @ Ri @ s.C) @ s.C.T @ Ri
    I_KC = torch.eye(len(s.A), dtype=f64) - K @ s.C
    F, S, total = I_KC @ s.A, s.P0, 0.0
    for _ in range(length):
        S = F @ S @ F.T + I_KC @ s.Q @ I_KC.T + K @ s.R @ K.T
        total += float(torch.trace(S)) / len(s.A)
    return total / length


def test_fixed_precision_rmse_is_the_derived_multiple_of_the_kalman_rmse():
    s = system_with_scalar_prior(seed=1)
    s.m0 = torch.zeros_like(s.m0)
    graph = pcgraph.compile(kalman_spec(s, 0.0)).double()
    length, batch = 30, 200
    truth, obs = simulate(graph, length, batch, torch.Generator().manual_seed(3), f64)
    pc = run_sequence(graph, obs, converging_solver(s, 4000), "fixed")
    pc_rmse = float(((pc.estimates["x"] - truth["x"]) ** 2).mean().sqrt())
    kf_rmse = float(kalman_filter(s, obs["y"][:, 0]).covariances.diagonal(dim1=1, dim2=2).mean().sqrt())
    factor = (fixed_filter_mse(s, length) ** 0.5) / kf_rmse  # derived, not fitted
    assert torch.isfinite(torch.tensor(pc_rmse)) and factor >= 1.0
    # 200 x 30 x 4 squared errors: the empirical RMSE is within a few percent of its expectation
    assert pc_rmse / kf_rmse == pytest.approx(factor, rel=0.1)


def test_learning_a_and_c_closes_most_of_the_prediction_gap():
    """From observations only: A and C start 20% off; online learning (eqs. 62-63) must lower the
    one-step-ahead prediction MSE on fresh sequences by at least half of the gap to the true model."""
    s = system_with_scalar_prior(seed=2)
    g = torch.Generator().manual_seed(0)
    true_graph = pcgraph.compile(kalman_spec(s, 0.5)).double()
    _, train_obs = simulate(true_graph, 60, 16, g, f64)
    _, test_obs = simulate(true_graph, 60, 16, g, f64)
    solver = converging_solver(s, 100)

    def prediction_mse(graph):
        r = run_sequence(graph, test_obs, solver, "propagated")
        return float(((r.predictions["y"] - test_obs["y"]) ** 2).mean())

    wrong = LinearGaussian(s.A * (1 + 0.2 * torch.randn(s.A.shape, generator=g, dtype=f64).sign()),
                           s.C * (1 + 0.2 * torch.randn(s.C.shape, generator=g, dtype=f64).sign()), s.Q, s.R, s.m0, s.P0)
    graph = pcgraph.compile(kalman_spec(wrong, 0.5)).double()
    before, best = prediction_mse(graph), prediction_mse(true_graph)
    opt = torch.optim.Adam(graph.parameters(), lr=3e-3)
    for _ in range(3):
        run_sequence(graph, train_obs, solver, "propagated", optimizer=opt)
    after = prediction_mse(graph)
    assert after <= best + 0.5 * (before - best), (before, after, best)


def test_learnt_measurement_precision_recovers_the_noise_variance():
    """With little process noise, the residual y - C x at the relaxed state has nearly the
    measurement covariance R (the posterior correction C P C^T is small against R), so the fixed
    point of the learnt precision (Pi^-1 = mean of eps eps^T, eq. 42) is R to within a few percent."""
    s = system_with_scalar_prior(seed=4)
    s.Q = 1e-3 * torch.eye(4, dtype=f64)
    s.R = torch.diag(torch.tensor([0.5, 2.0], dtype=f64))
    truth_graph = pcgraph.compile(kalman_spec(s, 0.5)).double()
    _, obs = simulate(truth_graph, 150, 64, torch.Generator().manual_seed(1), f64)
    graph = pcgraph.compile(kalman_spec(s, 0.5, learn_r="diagonal", r_init=[1.0, 1.0])).double()
    opt = torch.optim.Adam([graph.terms["y"].log_diag], lr=0.02)
    for _ in range(2):
        run_sequence(graph, obs, converging_solver(s, 50), "fixed", optimizer=opt)
    variance = torch.exp(-graph.terms["y"].log_diag.detach())
    assert torch.allclose(variance, torch.tensor([0.5, 2.0], dtype=f64), rtol=0.1), variance


def test_a_delayed_edge_without_a_sequence_is_a_clear_error():
    spec = pcgraph.load_spec("specs/kalman_tracking.yaml")
    graph = pcgraph.compile(spec)
    with pytest.raises(SpecError, match=r"graph.edges\[0\].delay.*previous time step"):
        pcgraph.Solver().relax(graph, {"y": torch.zeros(2, 2)})
    with pytest.raises(SpecError, match="delay"):
        graph({"y": torch.zeros(2, 2)})


def test_filter_cli(tmp_path, capsys):
    png = tmp_path / "track.png"
    assert main(["filter", "specs/kalman_tracking.yaml", "--length", "30", "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by = {r["method"]: r for r in out["rows"]}
    assert set(by) == {"kalman", "pc (fixed)", "pc (steady_state)", "pc (propagated)"}
    assert by["pc (propagated)"]["state_rmse"] == pytest.approx(by["kalman"]["state_rmse"], rel=0.02)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_filter_cli_reads_csv_and_refuses_graphs_without_time(tmp_path, capsys):
    csv = tmp_path / "y.csv"
    csv.write_text("y0,y1\n" + "\n".join(f"{0.1 * t},{-0.2 * t}" for t in range(12)))
    assert main(["filter", "specs/kalman_tracking.yaml", "--input", str(csv), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 12 and all("state_rmse" not in r for r in out["rows"])
    assert main(["filter", "specs/digits_mlp.yaml"]) == 2
    assert "no delayed edge" in capsys.readouterr().err


# --- the filter's files: the input sequence (observations, true states) and the estimates written out


def tracking_graph():
    return pcgraph.compile(pcgraph.load_spec("specs/kalman_tracking.yaml"), dtype=f64)


def test_read_sequence_places_named_columns_in_any_order_positional_ones_and_npz_arrays(tmp_path):
    from pcgraph.tasks.sequence_io import read_sequence

    graph = tracking_graph()
    g = torch.Generator().manual_seed(0)
    y, x = torch.randn(7, 2, generator=g, dtype=f64), torch.randn(7, 4, generator=g, dtype=f64)

    def cells(row):
        return ",".join(map(repr, row))

    named = tmp_path / "named.csv"  # states first, 1-based indices, y written y[0], y[1]
    named.write_text("x1,x2,x3,x4,y[0],y[1]\n" + "\n".join(cells(r) for r in torch.cat([x, y], 1).tolist()))
    positional = tmp_path / "positional.csv"  # no header: observations, then the states
    positional.write_text("\n".join(cells(r) for r in torch.cat([y, x], 1).tolist()) + "\n\n")
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, y=y.numpy(), x=x.numpy())
    for path in (named, positional, arrays):
        obs, truth = read_sequence(str(path), graph)
        assert torch.equal(obs["y"], y[:, None]) and torch.equal(truth["x"], x[:, None]), path
    only_y = tmp_path / "y.csv"
    only_y.write_text("a,b\n" + "\n".join(cells(r) for r in y.tolist()))  # names that are no node's: by position
    obs, truth = read_sequence(str(only_y), graph)
    assert torch.equal(obs["y"], y[:, None]) and truth is None


@pytest.mark.parametrize("name,text,message", [
    ("header.csv", "y0,y1\n", "has a header but no data rows"),
    ("empty.csv", "\n", "is empty"),
    ("ragged.csv", "1,2\n3\n", "line 2: 1 values, the first row has 2"),
    ("words.csv", "1,2\n3,four\n", "line 2"),
    ("width.csv", "1,2,3\n", "rows of 3 values; expected 2 .* or 6"),
    ("partial.csv", "y0,y1,x0,x1\n1,2,3,4\n", "node 'x' has 4 values per step"),
    ("plain.csv", "y0,y1,x\n1,2,3\n", "name its columns x0 ... x3"),
    ("garbage.npz", "not a zip", "not an .npz archive"),
])
def test_read_sequence_errors_name_the_file(tmp_path, name, text, message):
    from pcgraph.tasks.sequence_io import read_sequence

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as err:
        read_sequence(str(path), tracking_graph())
    assert name in str(err.value) and len(str(err.value).splitlines()) == 1


def test_read_sequence_refuses_true_states_of_another_length(tmp_path):
    from pcgraph.tasks.sequence_io import read_sequence

    path = tmp_path / "s.npz"
    np.savez(path, y=np.zeros((5, 2)), x=np.zeros((4, 4)))
    with pytest.raises(SpecError, match="number of time steps"):
        read_sequence(str(path), tracking_graph())


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_written_estimates_read_back_exactly(tmp_path, suffix):
    from pcgraph.tasks.sequence_io import estimate_table, write_estimates

    g = torch.Generator().manual_seed(1)
    y, x = torch.randn(6, 1, 2, generator=g, dtype=f64), torch.randn(6, 1, 4, generator=g, dtype=f64)
    tracks = {"kalman": torch.randn(6, 4, generator=g, dtype=f64), "pc-steady_state": torch.randn(6, 4, generator=g, dtype=f64)}
    path = tmp_path / f"est{suffix}"
    write_estimates(str(path), estimate_table("x", tracks, {"y": y}, {"x": x}), force=False)
    if suffix == ".npz":
        with np.load(path) as f:
            back = {k: torch.as_tensor(f[k]) for k in f.files}
    else:
        lines = path.read_text().splitlines()
        values = torch.tensor([[float(c) for c in line.split(",")] for line in lines[1:]], dtype=f64)
        header = lines[0].split(",")
        assert header == ["y0", "y1"] + [f"{n}{i}" for n in ("x", "kalman_x", "pc_steady_state_x") for i in range(4)]
        back = {"y": values[:, :2], "x": values[:, 2:6], "kalman_x": values[:, 6:10], "pc_steady_state_x": values[:, 10:]}
    expected = {"y": y[:, 0], "x": x[:, 0], "kalman_x": tracks["kalman"], "pc_steady_state_x": tracks["pc-steady_state"]}
    assert set(back) == set(expected)
    for k, v in expected.items():
        assert torch.equal(back[k], v), k  # full precision: not a digit lost
    with pytest.raises(UsageError, match="exists; pass --force"):
        write_estimates(str(path), {"y": y[:, 0].numpy()}, force=False)
    write_estimates(str(path), {"y": y[:, 0].numpy()}, force=True)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_check_output_tries_a_real_write_in_the_folder(tmp_path, monkeypatch):
    """Permission bits do not tell (root writes anywhere; read-only mounts): the check writes a probe."""
    import tempfile

    from pcgraph.tasks.sequence_io import check_output

    check_output(str(tmp_path / "fine.csv"), force=False)
    assert list(tmp_path.iterdir()) == []  # the probe is gone

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UsageError, match="cannot write in .*Permission denied"):
        check_output(str(tmp_path / "e.npz"), force=False)
