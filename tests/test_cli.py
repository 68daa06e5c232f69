"""The ``pcgraph`` command line, in-process (``main``) and once as ``python -m pcgraph``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pcgraph
from pcgraph import compile, load_spec
from pcgraph.cli import main
from tests.strategies import SMALL_SPEC

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
DIGITS = str(ROOT / "specs" / "digits_mlp.yaml")
MNIST = str(ROOT / "specs" / "mnist_mlp.yaml")

GOOD = SMALL_SPEC

# (id, spec text, YAML path the one error line must name)
BAD = [
    ("unknown-field", GOOD + "colour: red\n", "colour"),
    ("negative-lr", GOOD + "learning: {optimizer: {lr: -1}}\n", "learning.optimizer.lr"),
    ("bad-op-argument", GOOD.replace("leaky_relu]", "{kind: leaky_relu, negative_slope: x}]"),
     "graph.edges[0].fn[1].negative_slope"),
    ("unknown-to", GOOD.replace("to: label", "to: lable"), "graph.edges[1].to"),
    ("shape-mismatch", GOOD.replace("fn: [linear]}", "fn: [{kind: linear, features: 5}]}"), "graph.edges[1].fn"),
    ("cycle", GOOD + "    - {from: label, to: image, fn: [linear]}\n", "inference.init"),
    # several problems are joined onto the one line
    ("three-problems", GOOD.replace("name: t\n", "") + "colour: red\ninference: {steps: 0}\n", "inference.steps"),
]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pcgraph: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- validate ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_validate_shipped(capsys, path):
    rc, out, err = _run(capsys, "validate", str(path))
    assert rc == 0, err
    assert "valid" in out
    assert f"{compile(load_spec(path)).num_params():,} parameters" in out
    assert err == ""


@pytest.mark.parametrize(("text", "path"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_validate_bad(capsys, tmp_path, text, path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    rc, out, err = _run(capsys, "validate", str(spec))
    assert rc == 2
    assert out == ""
    assert path in _one_error_line(err)


def test_validate_invalid_yaml(capsys, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(GOOD + "inference: {steps: [1, 2}\n")
    rc, _, err = _run(capsys, "validate", str(spec))
    assert rc == 2
    assert "invalid YAML: line 10" in _one_error_line(err)


def test_validate_missing_file(capsys, tmp_path):
    rc, out, err = _run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert rc == 2
    assert out == ""
    assert "missing.yaml" in _one_error_line(err)


def _subprocess(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PCGRAPH_DATA"}
    return subprocess.run([sys.executable, "-m", "pcgraph", *argv], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)


def test_subprocess_validate(tmp_path):
    good = _subprocess("validate", DIGITS)
    assert good.returncode == 0, good.stderr
    assert "valid" in good.stdout
    assert "Traceback" not in good.stderr

    name, text, path = BAD[2]  # an op argument: the deepest path
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    bad = _subprocess("validate", str(spec))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "Traceback" not in bad.stderr
    assert path in _one_error_line(bad.stderr)


# --- schema and show -------------------------------------------------------------------------


def test_schema(capsys):
    rc, out, _ = _run(capsys, "schema")
    assert rc == 0
    schema = json.loads(out)
    assert {"graph", "inference", "learning", "data", "train"} <= set(schema["properties"])


def test_show_json(capsys):
    rc, out, _ = _run(capsys, "show", MNIST, "--json")
    assert rc == 0
    lines = out.splitlines()
    figures = json.loads(lines[-1])
    assert figures["params"] == 134_794
    assert figures["states_per_sample"] == 384
    assert figures["nodes"] == 5 and figures["edges"] == 4
    assert figures["name"] == "mnist-mlp"
    assert any("134,794 parameters" in line for line in lines)


def test_show_without_json(capsys):
    rc, out, _ = _run(capsys, "show", DIGITS)
    assert rc == 0
    assert "8,970 parameters" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[-1])


# --- train -----------------------------------------------------------------------------------


def test_train_digits_json_and_out(capsys, tmp_path):
    run = tmp_path / "run"
    rc, out, err = _run(capsys, "train", DIGITS, "--epochs", "2", "--json", "--no-progress", "--out", str(run))
    assert rc == 0, err
    result = json.loads(out.splitlines()[-1])
    assert isinstance(result, dict)
    assert {"test_accuracy", "epoch_seconds", "energy", "params", "states_per_sample"} <= set(result)
    assert len(result["epoch_seconds"]) == 2
    assert result["params"] == 8970
    assert result["states_per_sample"] == 128
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["test_accuracy"] > 0.3  # well above chance (0.1) after two epochs
    # --json sends the epoch lines to stderr
    assert len([line for line in err.splitlines() if line.startswith("epoch")]) == 2

    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.jsonl", "model.pt", "spec.yaml"]
    assert load_spec(run / "spec.yaml") == load_spec(DIGITS)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["test_accuracy"] == result["test_accuracy"]
    state = torch.load(run / "model.pt", weights_only=True)
    graph = compile(load_spec(DIGITS))
    assert set(state) == set(graph.state_dict())
    graph.load_state_dict(state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_train_cuda_unavailable(capsys):
    rc, out, err = _run(capsys, "train", DIGITS, "--device", "cuda", "--epochs", "1", "--no-progress")
    assert rc == 2
    assert "cuda" in _one_error_line(err).lower()


def test_train_mnist_missing_data_download_fails(capsys, tmp_path, monkeypatch):
    """A failed download (whatever torchvision raises) is one error line naming --data-root."""
    import torchvision

    class NoDownload:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.delenv("PCGRAPH_DATA", raising=False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", NoDownload)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(capsys, "train", MNIST, "--data-root", str(empty), "--epochs", "1", "--no-progress")
    assert rc == 2
    line = _one_error_line(err)
    assert "--data-root" in line
    assert "'mnist'" in line


@pytest.mark.parametrize("args", [["--device", "foo"], ["--epochs", "0"], ["--epochs", "-1"]])
def test_train_bad_arguments(capsys, args):
    rc, _, err = _run(capsys, "train", DIGITS, "--no-progress", *args)
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_validate_unhashable_yaml_key(capsys, tmp_path):
    bad = tmp_path / "u.yaml"
    bad.write_text("name: t\n[a, b]: 1\n")
    rc, _, err = _run(capsys, "validate", str(bad))
    assert rc == 2
    assert "line 2" in _one_error_line(err)


def test_train_divergence_exits_1_with_the_node_and_writes_no_model(capsys, tmp_path):
    spec = load_spec(DIGITS)
    wild = spec.model_copy(update={"inference": spec.inference.model_copy(
        update={"optimizer": spec.inference.optimizer.model_copy(update={"lr": 1e4}), "steps": 30})})
    path = tmp_path / "wild.yaml"
    path.write_text(wild.to_yaml())
    rc, _, err = _run(capsys, "train", str(path), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run"))
    assert rc == 1
    assert err.startswith("pcgraph: diverged:") and "h1" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_more_bad_input_is_one_line(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    cases = [
        ["verify-bp", DIGITS, "--mode", "approx", "--steps", ","],
        ["verify-bp", MNIST, "--random-batch", "--mode", "approx", "--steps", "2", "--precision-scales", "1",
         "--batch-size", "2", "--plot", str(tmp_path / "missing" / "x.png")],
        ["train", DIGITS, "--no-progress", "--out", str(afile)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("kind", ["lbfgs", "muon", "sparseadam"])
def test_unsuitable_weight_optimizers_are_refused_by_validate(tmp_path, capsys, kind):
    path = tmp_path / "o.yaml"
    path.write_text(GOOD + f"learning: {{optimizer: {{kind: {kind}}}}}\n")
    assert main(["validate", str(path)]) == 2
    assert "learning.optimizer.kind" in _one_error_line(capsys.readouterr().err)


def test_weight_decay_on_an_optimizer_without_it_is_a_spec_error():
    from pcgraph.spec import WeightOptimizerSpec
    from pcgraph.tasks.setup import weight_optimizer

    graph = compile(load_spec(DIGITS))
    with pytest.raises(pcgraph.SpecError, match="no weight decay") as err:
        weight_optimizer(WeightOptimizerSpec(kind="rprop", weight_decay=0.1), graph.parameters())
    assert err.value.path == "learning.optimizer.weight_decay"
    weight_optimizer(WeightOptimizerSpec(kind="rprop"), graph.parameters())  # fine without it


# --- filter: true states in the input, --out, errors, progress ------------------------------------

KALMAN = str(ROOT / "specs" / "kalman_tracking.yaml")


def _textbook_kalman(spec_path: str, ys: torch.Tensor) -> torch.Tensor:
    """Posterior means of the classic filter, (A, C, Q, R, m0, P0) read straight from the YAML:
    m^- = A m, P^- = A P A^T + Q, K = P^- C^T (C P^- C^T + R)^-1, m = m^- + K (y - C m^-), P = (I - K C) P^-."""
    import yaml

    raw = yaml.safe_load(Path(spec_path).read_text())["graph"]
    f64 = torch.float64
    A = torch.tensor(raw["edges"][0]["fn"][0]["weight"], dtype=f64)
    C = torch.tensor(raw["edges"][1]["fn"][0]["weight"], dtype=f64)
    Q = torch.tensor(raw["nodes"]["x"]["energy"]["covariance"], dtype=f64)
    R = raw["nodes"]["y"]["energy"]["covariance"] * torch.eye(2, dtype=f64)
    m = torch.full((4,), raw["nodes"]["x"]["prior"]["mean"], dtype=f64)
    P = torch.eye(4, dtype=f64) / raw["nodes"]["x"]["prior"]["precision"]
    means = []
    for y in ys:
        m, P = A @ m, A @ P @ A.T + Q
        K = P @ C.T @ torch.linalg.inv(C @ P @ C.T + R)
        m, P = m + K @ (y - C @ m), (torch.eye(4, dtype=f64) - K @ C) @ P
        means.append(m)
    return torch.stack(means)


def _tracking_sequence(length: int = 6):
    """A short track of the spec's system: (true states (T, 4), observations (T, 2)), float64."""
    from pcgraph.tasks.sequence import simulate

    graph = compile(load_spec(KALMAN), dtype=torch.float64)
    truth, obs = simulate(graph, length, 1, torch.Generator().manual_seed(7), torch.float64)
    return truth["x"][:, 0], obs["y"][:, 0]


def _read_csv_table(path: Path) -> dict[str, torch.Tensor]:
    lines = path.read_text().splitlines()
    values = torch.tensor([[float(c) for c in line.split(",")] for line in lines[1:]], dtype=torch.float64)
    return {name: values[:, i] for i, name in enumerate(lines[0].split(","))}


def _columns(table: dict[str, torch.Tensor], prefix: str, n: int) -> torch.Tensor:
    return torch.stack([table[f"{prefix}{i}"] for i in range(n)], 1)


def test_filter_input_with_true_states_writes_the_estimates_of_the_api_and_of_a_textbook_kalman(tmp_path, capsys):
    from pcgraph.tasks.sequence import run_sequence

    x, y = _tracking_sequence()
    csv = tmp_path / "track.csv"
    csv.write_text("y0,y1,x0,x1,x2,x3\n" + "\n".join(",".join(map(repr, r)) for r in torch.cat([y, x], 1).tolist()))
    out = tmp_path / "estimates.csv"
    rc, stdout, err = _run(capsys, "filter", KALMAN, "--input", str(csv), "--out", str(out), "--json")
    assert rc == 0, err
    rows = {r["method"]: r for r in json.loads(stdout.strip().splitlines()[-1])["rows"]}
    table = _read_csv_table(out)
    assert torch.equal(_columns(table, "y", 2), y) and torch.equal(_columns(table, "x", 4), x)
    kalman = _columns(table, "kalman_x", 4)
    assert torch.allclose(kalman, _textbook_kalman(KALMAN, y), atol=1e-10, rtol=0)
    for mode in ("fixed", "steady_state", "propagated"):
        api = run_sequence(compile(load_spec(KALMAN), dtype=torch.float64), {"y": y[:, None]}, prior_precision=mode)
        written = _columns(table, f"pc_{mode}_x", 4)
        assert torch.allclose(written, api.estimates["x"][:, 0], atol=1e-12, rtol=0), mode
        assert rows[f"pc ({mode})"]["state_rmse"] == pytest.approx(float(((written - x) ** 2).mean().sqrt()), rel=1e-12)
    assert rows["kalman"]["state_rmse"] == pytest.approx(float(((kalman - x) ** 2).mean().sqrt()), rel=1e-12)


def test_filter_out_npz_of_a_simulated_track_reads_back_as_input(tmp_path, capsys):
    out = tmp_path / "run.npz"
    rc, stdout, err = _run(capsys, "filter", KALMAN, "--length", "5", "--out", str(out), "--json")
    assert rc == 0, err
    simulated = json.loads(stdout.strip().splitlines()[-1])["rows"]
    with np.load(out) as f:
        assert {k: f[k].shape for k in f.files} == {"y": (5, 2), "x": (5, 4), "kalman_x": (5, 4), "pc_fixed_x": (5, 4),
                                                    "pc_steady_state_x": (5, 4), "pc_propagated_x": (5, 4)}
    rc, stdout, err = _run(capsys, "filter", KALMAN, "--input", str(out), "--json")  # observations and truth back in
    assert rc == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["rows"] == simulated


def test_filter_out_refuses_a_taken_or_unwritable_file_before_running(tmp_path, capsys, monkeypatch):
    from pcgraph.tasks import sequence

    def must_not_run(*args, **kwargs):
        raise AssertionError("the filter ran before the output path was checked")

    monkeypatch.setattr(sequence, "filter_report", must_not_run)
    taken = tmp_path / "taken.csv"
    taken.write_text("the user's results\n")
    for out, message in ((taken, "exists; pass --force"), (tmp_path / "missing" / "e.csv", "does not exist"),
                         (tmp_path / "e.txt", "must end in .csv or .npz"), (tmp_path, "is a folder")):
        rc, _, err = _run(capsys, "filter", KALMAN, "--length", "3", "--out", str(out))
        assert rc == 2 and message in _one_error_line(err), (out, err)
    assert taken.read_text() == "the user's results\n"
    monkeypatch.undo()
    rc, _, err = _run(capsys, "filter", KALMAN, "--length", "3", "--out", str(taken), "--force", "--no-progress")
    assert rc == 0, err
    assert taken.read_text().startswith("y0,y1,x0,x1,x2,x3,kalman_x0,")


def test_filter_input_with_a_header_only_is_one_error_line_naming_the_file(tmp_path, capsys):
    csv = tmp_path / "header_only.csv"
    csv.write_text("y0,y1\n")
    rc, _, err = _run(capsys, "filter", KALMAN, "--input", str(csv))
    assert rc == 2
    line = _one_error_line(err)
    assert str(csv) in line and "no data rows" in line


def test_filter_shows_progress_on_a_terminal_unless_told_not_to(tmp_path, capsys, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for extra, shown in (([], True), (["--no-progress"], False)):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(["filter", KALMAN, "--length", "3", *extra]) == 0
        bar = terminal.getvalue()
        assert ("pc (propagated)" in bar and "/3" in bar and "step" in bar) == shown, bar  # tqdm may skip 3/3
    monkeypatch.undo()
    assert main(["filter", KALMAN, "--length", "3"]) == 0  # stderr not a terminal (pytest's): no bar
    assert capsys.readouterr().err == ""
