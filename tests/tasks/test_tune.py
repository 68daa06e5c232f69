"""``pcgraph tune``: search spaces, the validation split, and real Optuna studies on the digits
(SQLite storage, interrupted and resumed; pruning; divergence; the command line)."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pcgraph.cli import main
from pcgraph.data import Dataset, load_dataset
from pcgraph.errors import SpecError, UsageError
from pcgraph.spec import load_spec
from pcgraph.tasks import tune as tuning
from pcgraph.tasks.search_space import Param, load_space, parse_param

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "specs" / "digits_mlp.yaml")
FAST = ["inference.steps=2"]  # a trial's epoch on the digits in a fraction of a second
LR = "learning.optimizer.lr"


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search spaces -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, param", [
    ("learning.optimizer.lr=log-uniform 1e-4 1e-2", Param(LR, "float", 1e-4, 1e-2, True)),
    ("inference.optimizer.momentum=uniform 0 0.9", Param("inference.optimizer.momentum", "float", 0.0, 0.9)),
    ("inference.steps=int 4 32", Param("inference.steps", "int", 4, 32)),
    ("inference.steps=int 4 32 log", Param("inference.steps", "int", 4, 32, True)),
    ("inference.optimizer=choice sgd adam", Param("inference.optimizer", "choice", choices=("sgd", "adam"))),
    ("train.eval = choice feedforward inference", Param("train.eval", "choice", choices=("feedforward", "inference"))),
    ("learning.optimizer.lr=choice 1e-3 0.01", Param(LR, "choice", choices=(1e-3, 0.01))),
])
def test_parse_param(text, param):
    assert parse_param(text) == param


@pytest.mark.parametrize("text, words", [
    ("inference.steps", "expected PATH=DISTRIBUTION"),
    ("=int 1 2", "expected PATH=DISTRIBUTION"),
    ("inference.steps=int 4", "expected 'uniform LOW HIGH'"),
    ("inference.steps=int 4 8 lin", "expected 'uniform LOW HIGH'"),
    ("inference.steps=normal 0 1", "expected 'uniform LOW HIGH'"),
    ("inference.steps=", "expected 'uniform LOW HIGH'"),
    ("inference.steps=int 4.5 8", "expected integers LOW and HIGH"),
    ("inference.steps=uniform a b", "expected numbers LOW and HIGH"),
    ("inference.steps=int 8 4", "expected finite LOW < HIGH"),
    ("inference.steps=uniform 0 inf", "expected finite LOW < HIGH"),
    ("inference.steps=log-uniform 0 1", "with LOW > 0 (log scale)"),
    ("inference.steps=choice", "distinct choices"),
    ("inference.steps=choice 4 4", "distinct choices"),
    ("inference..steps=int 4 8", "expected names joined by '.'"),
])
def test_bad_params_name_the_parameter_and_what_was_expected(text, words):
    with pytest.raises(UsageError) as err:
        parse_param(text)
    message = str(err.value)
    assert words in message, message
    assert message.startswith("--param "), message
    if "=" in text and text.split("=")[0].strip():
        assert f"--param {text.split('=')[0].strip()}" in message


def test_a_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("learning.optimizer.lr: log-uniform 1e-4 1e-2\ninference.steps: int 4 32\n"
                    "inference.optimizer: [sgd, {kind: adam, lr: 0.01}]\n")
    lr, steps, opt = load_space(path)
    assert lr == Param(LR, "float", 1e-4, 1e-2, True) and steps == Param("inference.steps", "int", 4, 32)
    assert opt.choices == ("sgd", {"kind": "adam", "lr": 0.01})
    assert opt.labels() == ["sgd", "{kind: adam, lr: 0.01}"]  # what Optuna stores, and shows in its plots
    assert [opt.value(label) for label in opt.labels()] == list(opt.choices)


@pytest.mark.parametrize("text, words", [
    ("- inference.steps\n", "expected a mapping of spec paths"),
    ("inference.steps: [4\n", "not valid YAML"),
    ("inference.steps: int 4\n", "inference.steps: expected 'uniform LOW HIGH'"),
    ("inference.steps: 4\n", "inference.steps: expected 'uniform LOW HIGH'"),
    ("inference.steps: []\n", "inference.steps: expected 'choice A B ...'"),
])
def test_bad_space_files(tmp_path, text, words):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=f"--space {path}") as err:
        load_space(path)
    assert words in str(err.value)
    with pytest.raises(UsageError, match="cannot read"):
        load_space(tmp_path / "missing.yaml")


def test_a_spec_value_inside_a_dimension():
    steps, lr = parse_param("inference.steps=int 4 32"), parse_param(f"{LR}=log-uniform 1e-4 1e-2")
    assert (steps.own(8), steps.own(4), steps.own(33), steps.own(8.0), steps.own(True)) == (8, 4, None, None, None)
    assert (lr.own(1e-3), lr.own(1), lr.own(0.5), lr.own("1e-3")) == (1e-3, None, None, None)
    opt = load_space_text("inference.optimizer: [sgd, {kind: adam, lr: 0.01}]")[0]
    assert opt.own({"kind": "adam", "lr": 0.01}) == "{kind: adam, lr: 0.01}" and opt.own("euler") is None


def load_space_text(text: str) -> list[Param]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "space.yaml").write_text(text)
        return load_space(Path(folder) / "space.yaml")


# --- the validation split ----------------------------------------------------------------------


def _numbered(n_train=100, n_test=20) -> Dataset:
    """Images that carry their own index: training 0..n_train-1, test 1000 + 0..n_test-1."""
    x_train, x_test = torch.arange(n_train).float()[:, None], 1000 + torch.arange(n_test).float()[:, None]
    return Dataset("numbered", x_train, torch.arange(n_train) % 10, x_test, torch.arange(n_test) % 10)


def test_the_validation_split_is_carved_from_the_training_set():
    data = _numbered()
    held = tuning.split_validation(data, 0.1, seed=0)
    train, val = set(held.x_train[:, 0].tolist()), set(held.x_test[:, 0].tolist())
    assert len(val) == len(held.y_test) == 10 and len(train) == len(held.y_train) == 90
    assert not train & val and train | val == set(range(100))  # disjoint, and the whole training set
    assert all(v < 1000 for v in train | val)  # no test image anywhere
    assert torch.equal(held.y_test, held.x_test[:, 0].long() % 10)  # labels travel with their images
    again, other = tuning.split_validation(data, 0.1, seed=0), tuning.split_validation(data, 0.1, seed=1)
    assert torch.equal(again.x_test, held.x_test) and not torch.equal(other.x_test, held.x_test)


def test_named_arrays_are_split_alike():
    @dataclass
    class Arrays:
        train: dict
        test: dict

    data = Arrays({"a": torch.arange(50), "b": -torch.arange(50)}, {"a": torch.arange(1000, 1010)})
    held = tuning.split_validation(data, 0.2, seed=3)
    assert len(held.test["a"]) == 10 and torch.equal(held.test["b"], -held.test["a"])
    assert not set(held.train["a"].tolist()) & set(held.test["a"].tolist())
    assert max(held.test["a"].tolist() + held.train["a"].tolist()) < 50


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001, 0.999, -0.5])
def test_a_split_must_hold_something_out_and_keep_something(fraction):
    with pytest.raises(UsageError, match="holds out"):
        tuning.split_validation(_numbered(), fraction, seed=0)


def test_trials_train_on_the_split_and_never_see_the_test_set(monkeypatch):
    seen = []

    def spy(spec, **kwargs):
        seen.append(kwargs["dataset"])
        return real(spec, **kwargs)

    real = tuning.train
    monkeypatch.setattr(tuning, "train", spy)
    spec = load_spec(DIGITS, FAST)
    result = tuning.tune(spec, [parse_param(f"{LR}=log-uniform 1e-3 1e-2")], trials=1, epochs=1, seed=5, log=_quiet)
    expected = tuning.split_validation(load_dataset("digits"), 0.1, seed=5)
    (got,) = seen
    assert len(got.y_test) == 144 and len(got.y_train) == 1437 - 144
    for a, b in ((got.x_train, expected.x_train), (got.x_test, expected.x_test), (got.y_test, expected.y_test)):
        assert torch.equal(a, b)
    assert result.metric == "accuracy" and result.direction == "maximize"
    assert result.best_value == result.study.best_trial.value


# --- real studies ------------------------------------------------------------------------------


def _quiet(line: str) -> None:
    pass


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


class _InterruptTrial(optuna.pruners.BasePruner):
    """Never prunes; in trial 1 it sends SIGINT, as a Ctrl-C would (training stops after a batch)."""

    def __init__(self, **median_pruner_options):
        pass

    def prune(self, study, trial) -> bool:
        if trial.number == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return False


def test_an_interrupted_study_resumes_from_its_sqlite_storage(capsys, monkeypatch, tmp_path):
    folder = tmp_path / "study"

    def tune(trials: int, *more: str, epochs: int = 2) -> tuple[int, str, str]:
        return _run(capsys, "tune", DIGITS, *FAST, "--param", f"{LR}=log-uniform 1e-3 3e-2", "--param",
                    "inference.optimizer.lr=log-uniform 0.02 0.3", "--trials", str(trials), "--epochs", str(epochs),
                    "--study-dir", str(folder), "--json", *more)

    monkeypatch.setattr(optuna.pruners, "MedianPruner", _InterruptTrial)
    rc, out, err = tune(2)
    assert rc == 130 and out == "", err
    assert "interrupted" in err.splitlines()[-1] and "run the same command again" in err.splitlines()[-1]
    storage = f"sqlite:///{folder / 'study.db'}"
    trials = optuna.load_study(study_name="digits-mlp", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"] and not (folder / "best.yaml").exists()
    assert trials[0].params == {LR: 1e-3, "inference.optimizer.lr": 0.1}  # first: the spec as it is

    monkeypatch.undo()
    rc, out, err = tune(2)  # the same command continues the study up to 2 finished trials
    assert rc == 0, err
    assert json.loads(out)["trials"] == {"complete": 2, "fail": 1}
    rc, out, err = tune(4, "--force")  # 2 more (--force: best.yaml and the plots are replaced)
    assert rc == 0, err
    result = json.loads(out)
    study = optuna.load_study(study_name="digits-mlp", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert result["trials"] == {"complete": 4, "fail": 1} and len(complete) == 4
    assert len({t.params[LR] for t in complete}) == 4  # a resumed sampler draws new points
    assert result["best_value"] == max(t.value for t in complete) == study.best_value
    assert result["best_params"] == study.best_params

    best = load_spec(folder / "best.yaml")  # parses and validates
    assert best.learning.optimizer.lr == result["best_params"][LR]
    assert best.inference.optimizer.lr == result["best_params"]["inference.optimizer.lr"]
    assert best.inference.steps == 2 and best.train.epochs == 20  # the overrides; the spec's own epochs
    assert (folder / "history.png").stat().st_size > 0 and (folder / "importances.png").stat().st_size > 0

    rc, _, err = tune(5)  # best.yaml exists: refused
    assert rc == 2 and "the file exists; pass --force" in err
    rc, _, err = tune(5, "--force", epochs=1)  # the same study with other options: refused
    assert rc == 2 and "other settings: epochs" in err, err
    assert len(optuna.load_study(study_name="digits-mlp", storage=storage).trials) == 5


def test_median_pruning_stops_a_bad_trial(tmp_path):
    """Trial 0 (a good learning rate) completes; trial 1 (a learning rate too small to learn) scores
    below trial 0's first epoch, so the median pruner stops it after epoch 1 of 3."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="prune", direction="maximize")
    study.enqueue_trial({LR: 1e-2})
    study.enqueue_trial({LR: 1e-6})
    result = tuning.tune(load_spec(DIGITS, FAST), [parse_param(f"{LR}=log-uniform 1e-6 1e-2")], trials=2, epochs=3,
                         storage=storage, study_name="prune", log=_quiet,
                         pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good, bad = result.study.trials
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert sorted(good.intermediate_values) == [1, 2, 3] and list(bad.intermediate_values) == [1]
    assert bad.intermediate_values[1] < good.intermediate_values[1]
    assert result.trials == {"complete": 1, "pruned": 1} and result.best_params == {LR: 1e-2}


def test_a_diverging_trial_is_pruned_not_fatal():
    spec = load_spec(DIGITS, [*FAST, "learning.optimizer.kind=sgd"])
    space = [parse_param(f"{LR}=choice 1.0e-2 1.0e+8")]  # not the spec's own 1e-3, which a new study tries first
    result = tuning.tune(spec, space, trials=1, epochs=1, log=_quiet,
                         sampler=optuna.samplers.GridSampler({LR: [1.0e8]}))
    (trial,) = result.study.trials
    assert trial.state.name == "PRUNED" and "became" in trial.user_attrs["diverged"]
    assert result.best_spec is None and result.trials == {"pruned": 1}


def test_reconstruction_minimises_the_mse():
    spec = load_spec(ROOT / "specs" / "digits_bernoulli_ae.yaml", ["inference.steps=4"])
    result = tuning.tune(spec, [parse_param(f"{LR}=log-uniform 1e-3 1e-2")], trials=1, epochs=1, log=_quiet)
    assert (result.metric, result.direction, result.study.direction.name) == ("mse", "minimize", "MINIMIZE")
    assert 0 < result.best_value < 1


# --- the command line's bad input --------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--trials", "1"], "give a search space"),
    (["--param", "inference.steps=int 4"], "--param inference.steps: expected 'uniform LOW HIGH'"),
    (["--param", "inference.stepz=int 2 4"], "inference.stepz: the search value 2 makes the spec invalid"),
    (["--param", "inference.steps=int 0 4"], "inference.steps: the search value 0 makes the spec invalid"),
    (["--param", "inference.steps=int 2 4", "--storage", "sqlite:///x.db", "--study-dir", "d"], "not both"),
    (["--param", "inference.steps=int 2 4", "--val-fraction", "1.5"], "expected a fraction between 0 and 1"),
    (["--param", "inference.steps=int 2 4", "inference.stepz=3"], "inference.stepz: unknown field"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, words):
    if "--study-dir" in argv:
        argv = [a if a != "d" else str(tmp_path / "d") for a in argv]
    rc, out, err = _run(capsys, "tune", DIGITS, *argv)
    assert rc == 2 and len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_an_existing_best_file_is_refused_before_any_trial(capsys, tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text("mine\n")
    rc, _, err = _run(capsys, "tune", DIGITS, "--param", "inference.steps=int 2 4", "--best", str(best))
    assert rc == 2 and "--best" in err and "pass --force" in err and best.read_text() == "mine\n"


def test_without_optuna_it_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    rc, _, err = _run(capsys, "tune", DIGITS, "--param", "inference.steps=int 2 4")
    assert rc == 2 and err.strip() == 'pcgraph: error: pcgraph tune needs optuna, an optional dependency: ' \
                                      'pip install -e ".[tune]"'


def test_spec_errors_of_a_space_are_spec_errors():
    with pytest.raises(SpecError) as err:
        tuning.tune(load_spec(DIGITS), [parse_param("graph.nodes.h1.shape=choice [8] [0]")], trials=1)
    assert err.value.path == "graph.nodes.h1.shape" and "[0]" in str(err.value)
