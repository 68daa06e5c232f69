"""Recurrent PC over time against the reference Kalman filter (itself checked against Gaussian
conditioning in tests/test_kalman.py), and online learning of A, C and the measurement noise."""

import json

import pytest
import torch

import pcgraph
from pcgraph.cli import main
from pcgraph.errors import SpecError
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
