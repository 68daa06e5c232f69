"""Search spaces for :mod:`pcgraph.tasks.tune`: spec paths and their distributions.

A dimension is a spec path, as overrides name it (``learning.optimizer.lr``, see
:mod:`pcgraph.spec.overrides`), and one of ``uniform LOW HIGH``, ``log-uniform LOW HIGH``,
``int LOW HIGH [log]`` or ``choice A B ...`` (each choice read as YAML). On the command line it is
``--param 'PATH=DISTRIBUTION'``; in a space file (``--space FILE``) a YAML mapping from paths to
those strings, or to lists of choices::

    learning.optimizer.lr: log-uniform 1e-4 1e-2
    inference.steps: int 4 32
    inference.optimizer: [sgd, {kind: adam, lr: 0.01}]

Pure (no torch, no optuna): the command line parses a space before any work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pcgraph.errors import SpecError, UsageError
from pcgraph.spec.overrides import parse_path, parse_value

FORMS = "'uniform LOW HIGH', 'log-uniform LOW HIGH', 'int LOW HIGH [log]' or 'choice A B ...'"
_SCALARS = (str, int, float, bool, type(None))  # what Optuna stores as a categorical choice


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: a spec ``path`` and its distribution: ``kind`` float or
    int between ``low`` and ``high`` (``log``: uniform in log space), or one of ``choices``."""

    path: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def labels(self) -> list:
        """The choices as Optuna stores them: plain scalars as they are, anything else as flow YAML."""
        return [c if isinstance(c, _SCALARS) else yaml.safe_dump(c, default_flow_style=True).strip()
                for c in self.choices]

    def value(self, label: Any) -> Any:
        """The spec value of an Optuna parameter value (a choice's label back to the choice)."""
        return self.choices[self.labels().index(label)] if self.kind == "choice" else label

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.kind == "choice":
            return self.value(trial.suggest_categorical(self.path, self.labels()))
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        return suggest(self.path, self.low, self.high, log=self.log)

    def own(self, value: Any) -> Any:
        """``value`` (a spec's own) as this dimension's Optuna value, or None if it lies outside."""
        if self.kind == "choice":
            return self.labels()[self.choices.index(value)] if value in self.choices else None
        number = isinstance(value, int if self.kind == "int" else (int, float)) and not isinstance(value, bool)
        return value if number and self.low <= value <= self.high else None

    def extremes(self) -> tuple:
        """The values that bound the space: both ends of a range, every choice."""
        return self.choices if self.kind == "choice" else (self.low, self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.path}=choice {' '.join(map(str, self.labels()))}"
        words = ("log-uniform" if self.log else "uniform") if self.kind == "float" else "int"
        return f"{self.path}={words} {self.low:g} {self.high:g}{' log' if self.log and self.kind == 'int' else ''}"


def parse_param(text: str) -> Param:
    """``'PATH=DISTRIBUTION'`` (``--param``), e.g. ``'inference.steps=int 4 32'``, as a :class:`Param`."""
    path, eq, distribution = text.partition("=")
    if not eq or not path.strip():
        raise UsageError(f"--param {text!r}: expected PATH=DISTRIBUTION with DISTRIBUTION one of {FORMS}, "
                         "e.g. --param 'inference.steps=int 4 32'")
    return make_param(path.strip(), distribution, f"--param {path.strip()}")


def load_space(path: str | Path) -> list[Param]:
    """A search-space file: a YAML mapping of spec paths to distributions (strings) or lists of choices."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--space {path}: cannot read it: {getattr(err, 'strerror', None) or err}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"--space {path}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"--space {path}: expected a mapping of spec paths to distributions, e.g. "
                         f"'inference.steps: int 4 32', got {type(data).__name__}")
    return [make_param(str(key), value, f"--space {path}: {key}") for key, value in data.items()]


def make_param(path: str, distribution: Any, where: str) -> Param:
    """A :class:`Param` from a distribution's text (or a list of choices); ``where`` names it in errors."""
    try:
        parse_path(path)
    except SpecError as err:
        raise UsageError(f"{where}: {err}") from None
    if isinstance(distribution, list):
        words = ["choice", *distribution]
    elif isinstance(distribution, str):
        words = distribution.split()
    else:
        words = []
    kind, args = (words[0].lower(), words[1:]) if words and isinstance(words[0], str) else ("", [])
    if kind == "choice":
        choices = [parse_value(a) if isinstance(a, str) and not isinstance(distribution, list) else a for a in args]
        if choices and len({json.dumps(c, sort_keys=True, default=str) for c in choices}) == len(choices):
            return Param(path, "choice", choices=tuple(choices))
        raise UsageError(f"{where}: expected 'choice A B ...' with distinct choices, got {distribution!r}")
    log = kind == "log-uniform" or (kind == "int" and args[2:] == ["log"])
    n_args = 3 if kind == "int" and log else 2
    if kind not in ("uniform", "log-uniform", "int") or len(args) != n_args:
        raise UsageError(f"{where}: expected {FORMS}, got {distribution!r}")
    try:
        low, high = (int(a) if kind == "int" else float(a) for a in args[:2])
    except ValueError:
        raise UsageError(f"{where}: expected {'integers' if kind == 'int' else 'numbers'} LOW and HIGH in "
                         f"'{kind} LOW HIGH', got {distribution!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high and (low > 0 or not log)):
        raise UsageError(f"{where}: expected finite LOW < HIGH{' with LOW > 0 (log scale)' if log else ''}, "
                         f"got {distribution!r}")
    return Param(path, "int" if kind == "int" else "float", low, high, log)
