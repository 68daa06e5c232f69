"""Hyperparameter search over a spec with Optuna (``pcgraph tune``).

A search space maps spec paths (as overrides name them: ``learning.optimizer.lr``, see
:mod:`pcgraph.spec.overrides`) to distributions: ``uniform LOW HIGH``, ``log-uniform LOW HIGH``,
``int LOW HIGH [log]``, or choices (``choice A B ...``; a list in a space file). Each trial sets its
sampled values on the spec and trains it. The objective is the spec's metric (accuracy, maximised;
MSE, minimised) on a **validation split held out of the training set**, never the test set: the
test images do not reach the study at all. Every epoch's validation score goes to the pruner, so a
median pruner stops unpromising trials early; TPE samples the space; a storage (SQLite) keeps the
study, so an interrupted study continues where it stopped when the same command runs again.

optuna is an optional dependency (``pip install -e ".[tune]"``), imported when a study starts.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pcgraph.compiler import compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.data.adapter import samples
from pcgraph.errors import DivergenceError, Interrupted, SpecError, UsageError
from pcgraph.spec import GraphSpec, spec_from_dict
from pcgraph.spec.overrides import parse_path, set_values
from pcgraph.tasks import runfolder
from pcgraph.tasks.objective import Objective
from pcgraph.tasks.search_space import Param
from pcgraph.tasks.train import train


def split_validation(data, fraction: float, seed: int):
    """``data`` for tuning: a seeded random ``fraction`` of its training split becomes the test
    split (the validation set every epoch scores), the rest stays the training split. The real
    test split is not in the result. ``data``: a :class:`Dataset` of images, or named arrays
    (``train`` and ``test`` dicts of tensors)."""
    images = isinstance(data, Dataset)
    train = {"x": data.x_train, "y": data.y_train} if images else data.train
    n = samples(train)
    k = round(fraction * n)
    if not 0 < fraction < 1 or not 0 < k < n:
        raise UsageError(f"a validation fraction of {fraction:g} holds out {k} of {n} training samples; expected "
                         f"a fraction between 0 and 1 that holds out at least 1 and fewer than {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    rest, val = ({key: v[idx] for key, v in train.items()} for idx in (perm[k:], perm[:k]))
    if images:
        return dataclasses.replace(data, x_train=rest["x"], y_train=rest["y"], x_test=val["x"], y_test=val["y"])
    return dataclasses.replace(data, train=rest, test=val)


@dataclass
class TuneResult:
    """A study's outcome: the best trial's validation ``best_value`` and ``best_params`` (spec path
    -> value), the spec with them set (``best_spec``; None while no trial completed) and the
    number of trials per state (complete, pruned, fail, ...). ``study`` is the Optuna study."""

    study_name: str
    storage: str | None
    metric: str
    direction: str
    best_value: float | None
    best_trial: int | None
    best_params: dict
    trials: dict
    best_spec: GraphSpec | None = None
    study: Any = field(default=None, repr=False)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k not in ("best_spec", "study")})

    def best_yaml(self, val_fraction: float, epochs: int | None) -> str:
        """The best spec as YAML (resolved), headed by where it comes from."""
        params = " ".join(f"{p}={v}" for p, v in self.best_params.items())
        return (f"# best trial ({self.best_trial}) of study {self.study_name!r}: validation {self.metric} "
                f"{self.best_value:.6g} ({val_fraction:g} of the training set held out"
                f"{f', {epochs} epochs per trial' if epochs else ''})\n# {params}\n"
                + self.best_spec.to_yaml(resolved=True))


def tune(spec: GraphSpec, params: list[Param], *, trials: int | None = 20, timeout: float | None = None,
         epochs: int | None = None, val_fraction: float = 0.1, seed: int = 0, storage: str | None = None,
         study_name: str | None = None, data_root: str | None = None, device: str = "cpu", sampler=None,
         pruner=None, log: Callable[[str], None] = print) -> TuneResult:
    """Search ``params`` for the best validation metric of ``spec``; see the module docstring.

    ``trials`` is the study's total of finished (complete or pruned) trials: a study already in
    ``storage`` under ``study_name`` (default: the spec's name) continues up to it, with the same
    spec and options (else :class:`UsageError`). ``timeout`` stops starting trials after that many
    seconds. ``epochs`` overrides ``train.epochs`` per trial. A new study's first trial is the
    spec's own values (those inside the space): the point to beat. ``sampler`` defaults to TPE seeded
    with ``seed`` (plus the trials already run, so a resumed study draws new points), ``pruner`` to
    a median pruner from the second epoch on (after 5 finished trials; never in the last epoch). A
    diverging trial (:class:`DivergenceError`) is pruned, not fatal."""
    optuna = import_optuna()
    if len({p.path for p in params}) != len(params) or not params:
        raise UsageError(f"expected a search space of distinct spec paths, got {[p.path for p in params]}")
    base = yaml.safe_load(spec.to_yaml())
    for p in params:  # every bound of the space is a valid spec (typos in a path show here)
        for value in p.extremes():
            try:
                spec_from_dict(set_values(base, {p.path: value}))
            except SpecError as err:
                raise SpecError(f"the search value {value!r} makes the spec invalid: "
                                f"{'; '.join(str(err).splitlines())}", p.path) from None
    task = Objective(spec, compile(spec))
    direction = "maximize" if task.higher_is_better else "minimize"
    data = split_validation(load_dataset(spec.data.dataset, data_root), val_fraction, seed)
    held_out = len(data.y_test) if isinstance(data, Dataset) else samples(data.test)
    name = study_name or spec.name
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                pruner=pruner or optuna.pruners.MedianPruner(n_warmup_steps=2))  # from epoch 2
    if study.direction.name.lower() != direction:
        raise UsageError(f"study {name!r} in {storage} is to {study.direction.name.lower()}, but validation "
                         f"{task.metric} is to {direction}; give another --study-name")
    _claim(study, storage, {"spec": spec.to_yaml(resolved=True), "space": [p.describe() for p in params],
                            "epochs": epochs, "val_fraction": val_fraction, "seed": seed, "direction": direction})
    if not study.trials and (own := _own_values(spec, params)):
        study.enqueue_trial(own)  # a new study starts from the spec as it is: the point to beat
    study.sampler = sampler or optuna.samplers.TPESampler(seed=seed + len(study.trials))
    states = optuna.trial.TrialState
    done = sum(t.state in (states.COMPLETE, states.PRUNED) for t in study.trials)
    per_trial = epochs or spec.train.epochs
    key = f"test_{task.metric}"  # the validation split stands in the test split's place

    def objective(trial) -> float:
        trial_spec = spec_from_dict(set_values(base, {p.path: p.suggest(trial) for p in params}))

        def report(row: dict) -> None:
            trial.report(row[key], row["epoch"])
            if row["epoch"] < per_trial and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: validation {task.metric} {row[key]:.4g}")

        try:
            result = train(trial_spec, epochs=epochs, data_root=data_root, device=device, progress=False,
                           log=_quiet, dataset=data, on_epoch=report)
        except DivergenceError as err:
            trial.set_user_attr("diverged", str(err))
            raise optuna.TrialPruned(f"diverged: {err}") from None
        return result.test_metric

    def logged(study, t) -> None:
        values = "  ".join(f"{p.path}={_short(p.value(t.params[p.path]))}" for p in params if p.path in t.params)
        if t.state == states.COMPLETE:
            what = f"validation {_score(task.metric, t.value)}"
        elif "diverged" in t.user_attrs:
            what = "(diverged)"
        elif t.intermediate_values:
            epoch = max(t.intermediate_values)
            what = f"at epoch {epoch}: validation {_score(task.metric, t.intermediate_values[epoch])}"
        else:
            what = ""
        log(f"trial {t.number:3d} {t.state.name.lower():8s} {what}  {values}  {t.duration.total_seconds():.1f} s")

    remaining = None if trials is None else trials - done
    if remaining is None or remaining > 0:
        log(f"study {name!r} ({storage or 'in memory'}): {done} trial(s) done, running "
            f"{'until the timeout' if remaining is None else remaining} more; {direction} validation "
            f"{task.metric} on {held_out:,} held-out training samples, {per_trial} epoch(s) per trial")
        try:
            study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[logged])
        except Interrupted as err:
            kept = (f"the finished trials are kept in {storage}: run the same command again to continue"
                    if storage else "nothing kept (the study was in memory; give --study-dir DIR)")
            raise Interrupted(f"study {name!r} interrupted; {kept}", err.signum) from None
    return _result(study, name, storage, task.metric, direction, params, base)


def _claim(study, storage: str | None, settings: dict) -> None:
    """Record what the study searches; refuse to continue a stored study with other settings."""
    saved = study.user_attrs
    if not saved:
        for k, v in settings.items():
            study.set_user_attr(k, v)
        return
    changed = [k for k in settings if saved.get(k) != settings[k]]
    if "spec" in changed:
        changed[changed.index("spec")] = "spec (at " + ", ".join(runfolder.differences(
            yaml.safe_load(saved.get("spec") or "{}"), yaml.safe_load(settings["spec"]))[:4]) + ")"
    if changed:
        raise UsageError(f"study {study.study_name!r} in {storage} was run with other settings: {'; '.join(changed)}; "
                         "continue it with the same spec, search space and options, or give another --study-name")


def _own_values(spec: GraphSpec, params: list[Param]) -> dict:
    """The spec's own values at the searched paths, those that lie in their dimension."""
    resolved, out = yaml.safe_load(spec.to_yaml(resolved=True)), {}
    for p in params:
        node = resolved
        for step in parse_path(p.path):
            if isinstance(node, dict):
                node = node.get(str(step))
            else:
                node = node[step] if isinstance(node, list) and isinstance(step, int) and step < len(node) else None
        if (value := p.own(node)) is not None:
            out[p.path] = value
    return out


def _result(study, name, storage, metric, direction, params, base) -> TuneResult:
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return TuneResult(name, storage, metric, direction, None, None, {}, counts, study=study)
    best = study.best_trial
    values = {p.path: p.value(best.params[p.path]) for p in params if p.path in best.params}
    return TuneResult(name, storage, metric, direction, best.value, best.number, values, counts,
                      spec_from_dict(set_values(base, values)), study)


def save_plots(study, history: str | Path | None, importances: str | Path | None, log: Callable[[str], None]) -> None:
    """Optuna's optimization history and parameter importances as PNG files (each where given);
    the importances need two completed trials and two parameters, else a one-line note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optuna = import_optuna()
    from optuna.visualization import matplotlib as plot

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    n_params = len(study.trials[0].distributions) if study.trials else 0
    jobs = [(history, plot.plot_optimization_history, "the optimization history", len(complete) >= 1,
             "no trial completed"),
            (importances, plot.plot_param_importances, "the parameter importances", len(complete) >= 2 and n_params >= 2,
             f"they need 2 completed trials and 2 parameters, the study has {len(complete)} and {n_params}")]
    for path, draw, what, can, why in jobs:
        if path is None:
            continue
        if not can:
            log(f"not drawn: {what} ({why})")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = draw(study)
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
        log(f"drew {what} to {path}")


def import_optuna():
    """The optuna module, or a :class:`UsageError` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UsageError('pcgraph tune needs optuna, an optional dependency: pip install -e ".[tune]"') from None
    return optuna


def _score(metric: str, value: float) -> str:
    return f"accuracy {100 * value:.2f}%" if metric == "accuracy" else f"mse {value:.4e}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _quiet(line: str) -> None:
    """The trials' own epoch lines: the study logs one line per trial instead."""
