"""Checkpoints: an interrupted and resumed run equals an uninterrupted one, bit for bit; a crash
during a checkpoint write loses nothing; trained runs load back; bad checkpoints are refused."""

import json
import signal

import pytest
import torch

import pcgraph
from pcgraph.cli import main
from pcgraph.errors import DivergenceError, Interrupted, UsageError
from pcgraph.solver import Solver
from pcgraph.tasks import checkpoint
from pcgraph.tasks.train import train

QUIET = {"progress": False, "log": lambda s: None}


def spec():
    return pcgraph.load_spec("specs/digits_mlp.yaml")


def params(folder):
    return torch.load(folder / "model.pt", weights_only=True)


def same_run(a, b, ra, rb):
    pa, pb = params(a), params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ra.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in rb.history]


def test_resume_after_epoch_1_of_3_equals_an_uninterrupted_run(tmp_path):
    full = train(spec(), epochs=3, out=tmp_path / "full", **QUIET)
    train(spec(), epochs=1, out=tmp_path / "part", **QUIET)
    resumed = train(resume=tmp_path / "part", epochs=3, **QUIET)
    same_run(tmp_path / "full", tmp_path / "part", full, resumed)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert len((tmp_path / "part" / "metrics.csv").read_text().splitlines()) == 4  # header + 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_saves_and_resume_is_exact(tmp_path, monkeypatch, signum):
    full = train(spec(), epochs=2, out=tmp_path / "full", **QUIET)
    calls = {"n": 0}
    original = Solver.step

    def step_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 60:  # epoch 2 (45 batches per epoch), batch 15
            signal.raise_signal(signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Solver, "step", step_then_signal)
    with pytest.raises(Interrupted, match="--resume"):
        train(spec(), epochs=2, out=tmp_path / "cut", **QUIET)
    monkeypatch.setattr(Solver, "step", original)
    saved = checkpoint.read(tmp_path / "cut")
    assert saved["epoch"] == 1 and saved["position"] == 15 * 32
    resumed = train(resume=tmp_path / "cut", **QUIET)
    same_run(tmp_path / "full", tmp_path / "cut", full, resumed)


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train(spec(), epochs=1, out=tmp_path, **QUIET)
    before = checkpoint.read(tmp_path)

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, {"spec": "garbage"})
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt.tmp").exists()
    after = checkpoint.read(tmp_path)
    assert after["epoch"] == before["epoch"] and after["spec"] == before["spec"]
    graph, _ = pcgraph.load(tmp_path)
    assert isinstance(graph, pcgraph.CompiledGraph)


def test_load_and_eval_a_trained_run(tmp_path, capsys):
    result = train(spec(), epochs=1, out=tmp_path, **QUIET)
    graph, loaded = pcgraph.load(tmp_path)
    assert loaded == spec()
    assert main(["eval", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_accuracy"] == result.test_accuracy


def test_checkpoint_whose_tensors_do_not_fit_its_spec_is_refused(tmp_path, capsys):
    train(spec(), epochs=1, out=tmp_path, **QUIET)
    payload = checkpoint.read(tmp_path)
    payload["model"]["edges.0.pipeline.0.weight"] = torch.zeros(3, 3)
    payload["model"]["edges.9.extra"] = torch.zeros(1)
    del payload["model"]["edges.1.pipeline.0.bias"]
    checkpoint.save(tmp_path, payload)
    with pytest.raises(UsageError, match="do not match its spec") as err:
        pcgraph.load(tmp_path)
    message = str(err.value)  # every offending key named, with the shapes that disagree
    assert "missing: edges.1.pipeline.0.bias" in message and "unexpected: edges.9.extra" in message
    assert "mis-shaped: edges.0.pipeline.0.weight (saved [3, 3], the spec's [64, 64])" in message
    assert main(["eval", str(tmp_path)]) == 2
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("do not match its spec" in line for line in err)


def test_missing_or_foreign_checkpoints_are_one_line_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert main(["train"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("pcgraph: error:") for line in err)


def test_skipped_batches_are_counted_and_left_out_of_the_means(monkeypatch):
    from pcgraph.tasks.methods import PCMethod

    real, calls, kept = PCMethod.step, [0], []

    def every_third_diverges(self, batch, stepper, n):
        calls[0] += 1
        if calls[0] % 3 == 0:
            raise DivergenceError("energy became inf")
        contribution, predicted = real(self, batch, stepper, n)
        kept.append((float(contribution), n))
        return contribution, predicted

    monkeypatch.setattr(PCMethod, "step", every_third_diverges)
    row = train(spec(), epochs=1, on_divergence="skip", **QUIET).history[0]
    assert row["skipped_batches"] == calls[0] // 3 > 0
    # the epoch's energy is the mean over the samples that trained, not diluted by zeros
    assert row["energy"] == pytest.approx(sum(e for e, _ in kept) / sum(n for _, n in kept), rel=1e-6)


def test_an_epoch_whose_every_batch_diverges_is_an_error(tmp_path, capsys):
    wild = spec()
    wild = wild.model_copy(update={"inference": wild.inference.model_copy(
        update={"optimizer": wild.inference.optimizer.model_copy(update={"lr": 1e4}), "steps": 30})})
    with pytest.raises(DivergenceError, match="every batch .* was skipped"):
        train(wild, epochs=1, on_divergence="skip", **QUIET)
    path = tmp_path / "wild.yaml"
    path.write_text(wild.to_yaml())
    assert main(["train", str(path), "--on-divergence", "skip", "--no-progress", "--epochs", "1"]) == 1
    assert "nothing was learnt" in capsys.readouterr().err


def test_a_state_dict_from_before_energy_terms_loads():
    """Models saved when matrix precisions lived under ``precisions.<node>`` still load."""
    import pcgraph

    g = pcgraph.Graph("c")
    g.node("x", 2, observed=True)
    g.node("y", 2, observed=True, energy={"kind": "gaussian", "precision": [[2.0, 0.5], [0.5, 1.0]]})
    g.edge("x", "y", "linear")
    graph = pcgraph.compile(g.spec())
    old = {k.replace("energies.", "precisions."): v for k, v in graph.state_dict().items()}
    assert "precisions.y.fixed" in old
    old["precisions.y.fixed"] = old["precisions.y.fixed"] * 3
    graph.load_state_dict(old)
    assert torch.equal(graph.terms["y"].matrix(), torch.tensor([[6.0, 1.5], [1.5, 3.0]]))


def test_train_refuses_a_folder_holding_another_run_unless_forced(tmp_path, capsys):
    train(spec(), epochs=1, out=tmp_path, **QUIET)
    before = {name: (tmp_path / name).read_bytes() for name in ("checkpoint.pt", "model.pt", "metrics.jsonl")}
    with pytest.raises(UsageError, match=r"already holds a run .*--resume .*--force"):
        train(spec(), epochs=1, out=tmp_path, **QUIET)
    assert main(["train", "specs/digits_mlp.yaml", "--epochs", "1", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert before == {name: (tmp_path / name).read_bytes() for name in before}  # nothing of it touched
    other = spec().model_copy(update={"train": spec().train.model_copy(update={"seed": 7})})
    train(other, epochs=1, out=tmp_path, force=True, **QUIET)
    assert pcgraph.load(tmp_path)[1] == other and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_run_folder_records_the_resolved_spec_and_refuses_an_edited_one_on_resume(tmp_path):
    train(spec(), epochs=1, out=tmp_path, **QUIET)
    text = (tmp_path / "spec.yaml").read_text()
    assert f"pcgraph {pcgraph.__version__}" in text
    for default in ("check_every:", "variant:", "update:", "trace_nodes:", "tol:"):  # defaults written out
        assert default in text and default not in spec().to_yaml()
    assert pcgraph.spec_from_yaml(text) == spec()
    assert checkpoint.read(tmp_path)["pcgraph_version"] == pcgraph.__version__
    (tmp_path / "spec.yaml").write_text(text.replace("steps: 8", "steps: 3"))
    with pytest.raises(UsageError, match=r"differs from the spec this run was trained with \(at inference.steps\)"):
        train(resume=tmp_path, epochs=2, **QUIET)
