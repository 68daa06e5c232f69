"""pcgraph train --tensorboard DIR: the event files, read back with TensorBoard's own reader, hold
the run's per-epoch figures, its learning rates, node energies and an inference energy curve per
epoch; the folder rule (refused unless --force) and the optional dependency."""

import json
import math
import sys

import pytest
import torch.nn.functional as F

import pcgraph
from pcgraph.cli import main
from pcgraph.errors import UsageError

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def events(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def values(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_the_event_files_hold_the_runs_figures(tmp_path, capsys):
    tb, out = tmp_path / "tb", tmp_path / "run"
    code = main(["train", "specs/digits_mlp.yaml", "--epochs", "2", "--tensorboard", str(tb), "--out", str(out),
                 "--no-progress", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    acc = events(tb)
    for tag, key in (("test/accuracy", "test_accuracy"), ("train/accuracy", "train_accuracy"),
                     ("train/energy", "energy"), ("time/epoch_seconds", "seconds")):
        assert [s for s, _ in values(acc, tag)] == [1, 2]
        assert [v for _, v in values(acc, tag)] == pytest.approx([row[key] for row in result["history"]], rel=1e-6)
    assert values(acc, "test/accuracy")[-1][1] == pytest.approx(result["test_accuracy"], rel=1e-6)
    images = acc.Images("inference/energy_curve")
    assert [i.step for i in images] == [1, 2] and images[0].encoded_image_string[:4] == b"\x89PNG"

    # the held batch, relaxed by hand with the trained model: the first batch_size test samples clamped
    graph, spec = pcgraph.load(out)
    data = pcgraph.load_dataset("digits")
    n = spec.data.batch_size
    batch = {"image": (data.x_test[:n] - 0.5) / 0.5, "label": F.one_hot(data.y_test[:n], 10).float()}
    r = pcgraph.Solver.from_spec(spec, trace_nodes=True).relax(graph, batch)
    assert values(acc, "inference/energy_start")[-1][1] == pytest.approx(float(r.energy[0]) / n, rel=1e-5)
    assert values(acc, "inference/energy_end")[-1][1] == pytest.approx(float(r.energy[-1]) / n, rel=1e-5)
    predicted = {v for v in spec.graph.nodes if any(e.to == v for e in spec.graph.edges)}
    nodes = {t.rsplit("/", 1)[1]: values(acc, t)[-1][1] for t in acc.Tags()["scalars"]
             if t.startswith("inference/node_energy/")}
    assert set(nodes) == predicted
    assert sum(nodes.values()) == pytest.approx(values(acc, "inference/energy_end")[-1][1], rel=1e-5)


def test_learning_rates_follow_the_schedule(tmp_path):
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    spec = spec.model_copy(update={"learning": spec.learning.model_copy(update={"schedule": "cosine"})})
    pcgraph.train(spec, epochs=2, progress=False, log=lambda line: None, tensorboard=tmp_path)
    # cosine over 2 epochs of 45 updates: lr * (1 + cos(pi * k / 90)) / 2 after k = 45, 90 updates
    lr = spec.learning.optimizer.lr
    assert values(events(tmp_path), "learning_rate") == [(1, pytest.approx(lr / 2)), (2, pytest.approx(0.0, abs=1e-12))]


def test_node_energies_and_a_bp_run(tmp_path, capsys):
    assert main(["train", "specs/digits_mlp.yaml", "--epochs", "1", "--node-energies", "--tensorboard",
                 str(tmp_path / "pc"), "--no-progress", "--json"]) == 0
    trace = json.loads(capsys.readouterr().out)["history"][0]["node_energy"]
    acc = events(tmp_path / "pc")
    assert {v: values(acc, f"train/node_energy/{v}")[0][1] for v in trace} == pytest.approx(
        {v: e[-1] for v, e in trace.items()}, rel=1e-6)
    result = pcgraph.train(pcgraph.load_spec("specs/digits_mlp.yaml"), epochs=1, method="bp", progress=False,
                           log=lambda line: None, tensorboard=tmp_path / "bp")
    acc = events(tmp_path / "bp")
    assert values(acc, "test/accuracy") == [(1, pytest.approx(result.test_accuracy, rel=1e-6))]
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("inference/")]  # backprop does not relax


def test_a_folder_with_event_files_is_refused_unless_force(tmp_path, capsys):
    args = ["train", "specs/digits_mlp.yaml", "--epochs", "1", "--tensorboard", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    first = sorted(tmp_path.glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds 1 event file" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.glob("events.out.tfevents.*")) == first  # untouched
    assert main([*args, "--force"]) == 0
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1 and not first[0].exists()
    assert [s for s, _ in values(events(tmp_path), "test/accuracy")] == [1]
    (tmp_path / "file").write_text("x")
    assert main([*args[:-2], str(tmp_path / "file"), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_without_tensorboard_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(UsageError, match=r"pip install 'pcgraph\[tensorboard\]'"):
        pcgraph.train(pcgraph.load_spec("specs/digits_mlp.yaml"), epochs=1, tensorboard=tmp_path / "tb",
                      out=tmp_path / "run")
    assert not (tmp_path / "tb").exists() and not (tmp_path / "run").exists()


def test_scalars_of_a_row():
    from pcgraph.tasks.tensorboard import _scalars

    row = {"epoch": 3, "energy": 0.5, "test_accuracy": 0.9, "test_accuracy_by_target": {"a": 1.0, "b": 0.8},
           "node_energy": {"h": [2.0, 1.0]}, "seconds": math.nan}
    assert dict(_scalars(row)) == {"train/energy": 0.5, "test/accuracy": 0.9, "test/accuracy_by_target/a": 1.0,
                                   "test/accuracy_by_target/b": 0.8, "train/node_energy/h": 1.0}  # NaN left out
