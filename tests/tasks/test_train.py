"""Training on the embedded digits: it learns, it repeats bit for bit, it reports."""

import json

import pytest
import torch

import pcgraph
from pcgraph.tasks.train import train
from tests.strategies import DIGITS_AE


def quick_spec(**inference):
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    return spec.model_copy(update={"inference": spec.inference.model_copy(update=inference)})


def test_digits_trains_above_chance(tmp_path):
    r = train(quick_spec(), epochs=2, progress=False, log=lambda s: None, out=tmp_path)
    assert r.test_accuracy > 0.5  # chance is 0.1
    assert r.history[1]["energy"] < r.history[0]["energy"]
    assert len(r.epoch_seconds) == 2 and r.params == 8970 and r.states_per_sample == 128
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(pcgraph.compile(quick_spec()).state_dict())


def test_a_seeded_cpu_run_repeats_bit_for_bit(tmp_path):
    a = train(quick_spec(), epochs=1, progress=False, log=lambda s: None, out=tmp_path / "a")
    b = train(quick_spec(), epochs=1, progress=False, log=lambda s: None, out=tmp_path / "b")
    sa, sb = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in "ab")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history[0]["energy"] == b.history[0]["energy"]


def test_inference_evaluation_matches_feedforward_on_an_mlp():
    """With the label free, an MLP's inferred label is its feedforward prediction (errors are 0)."""
    spec = quick_spec()
    ff = train(spec, epochs=1, progress=False, log=lambda s: None)
    spec_inf = spec.model_copy(update={"train": spec.train.model_copy(update={"eval": "inference"})})
    inf = train(spec_inf, epochs=1, progress=False, log=lambda s: None)
    assert inf.test_accuracy == ff.test_accuracy


def test_incremental_variant_trains():
    spec = quick_spec()
    spec = spec.model_copy(update={"learning": spec.learning.model_copy(update={"variant": "incremental"})})
    assert train(spec, epochs=2, progress=False, log=lambda s: None).test_accuracy > 0.5


def test_exact_variant_trains_like_backprop(tmp_path):
    """The exact variant's update is backprop's, so one epoch of each ends at the same parameters
    (up to float32 rounding accumulated over 45 Adam steps)."""
    spec = quick_spec()
    exact = spec.model_copy(update={"learning": spec.learning.model_copy(update={"variant": "exact"})})
    pc = train(exact, epochs=1, progress=False, log=lambda s: None, out=tmp_path / "pc")
    train(spec, epochs=1, progress=False, log=lambda s: None, method="bp", out=tmp_path / "bp")
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("pc", "bp"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    assert pc.test_accuracy > 0.5


def test_evaluations_that_cannot_work_are_refused_up_front():
    import pytest

    # a generative graph whose target is a root: a feedforward pass cannot predict it
    g = pcgraph.Graph("gen")
    g.node("label", 10, observed=True)
    g.node("image", 64, observed=True)
    g.edge("label", "image", "linear")
    g.data(dataset="digits")
    with pytest.raises(pcgraph.SpecError, match="train.eval: inference"):
        train(g.spec(), epochs=1, progress=False, log=lambda s: None)
    # a cyclic graph with the default feedforward evaluation
    g.node("h", 5)
    g.edge("image", "h", "linear")
    g.edge("h", "label", "linear")
    g.inference(init="zeros")
    with pytest.raises(pcgraph.SpecError) as err:
        pcgraph.compile(g.spec())
    assert err.value.path == "train.eval"


def test_train_accuracy_is_reported_with_zero_init():
    spec = quick_spec(init="zeros")
    assert train(spec, epochs=1, progress=False, log=lambda s: None).train_accuracy > 0  # was 0: unmeasured


def test_autoencoders_train_by_pc_and_by_backprop(tmp_path):
    spec = pcgraph.spec_from_yaml(DIGITS_AE)
    for method in ("pc", "bp"):
        r = train(spec, progress=False, log=lambda s: None, method=method, out=tmp_path / method)
        mse = [h["test_mse"] for h in r.history]
        assert r.metric == "mse" and mse[-1] < mse[0] < 0.2 and r.best_test_metric == min(mse)
        assert r.train_accuracy is None
        assert json.loads(r.to_json())["best_test_mse"] == r.best_test_metric
        with pytest.raises(AttributeError, match="test mse"):
            r.test_accuracy  # noqa: B018
        header = (tmp_path / method / "metrics.csv").read_text().splitlines()[0]
        assert header == "epoch,energy,test_mse,seconds,skipped_batches"
    assert r.params == 2 * 64 * 32 + 32 * 8 + 8 * 32 + 32 + 64 + 32 + 8  # encoder + decoder


def test_eval_of_a_reconstruction_run(tmp_path, capsys):
    from pcgraph.cli import main

    spec = pcgraph.spec_from_yaml(DIGITS_AE)
    r = train(spec, epochs=1, progress=False, log=lambda s: None, out=tmp_path / "pc")
    assert main(["eval", str(tmp_path / "pc"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_mse"] == r.test_metric
    train(spec, epochs=1, progress=False, log=lambda s: None, out=tmp_path / "bp", method="bp")
    assert main(["eval", str(tmp_path / "bp")]) == 2
    assert "backprop autoencoder" in capsys.readouterr().err


def test_resume_keeps_the_method(tmp_path):
    spec = pcgraph.spec_from_yaml(DIGITS_AE)
    full = train(spec, epochs=2, progress=False, log=lambda s: None, method="bp", out=tmp_path / "a")
    train(spec, epochs=1, progress=False, log=lambda s: None, method="bp", out=tmp_path / "b")
    resumed = train(resume=tmp_path / "b", epochs=2, progress=False, log=lambda s: None)
    assert resumed.history[-1]["test_mse"] == full.history[-1]["test_mse"]
