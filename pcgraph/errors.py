"""Errors pcgraph raises on bad input or bad numerics.

Every error names what was expected, what came, and (where there is one) how to fix it.
"""

from __future__ import annotations

import re


class PCGraphError(Exception):
    """Base class of every error pcgraph raises on purpose."""


class SpecError(PCGraphError, ValueError):
    """A spec is invalid.

    ``path`` is the YAML path of the offending field (``graph.edges[2].to``); ``problems`` holds
    one ``(path, message)`` pair per problem found, so a spec with three mistakes reports three.
    ``str(err)`` is one line per problem, ``path: message``.
    """

    def __init__(self, problems: list[tuple[str, str]] | str, path: str = ""):
        if isinstance(problems, str):
            problems = [(path, problems)]
        self.problems = problems
        self.path = problems[0][0] if problems else ""
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in problems))


class UsageError(PCGraphError, ValueError):
    """A bad argument to a task or command (an unknown device, a non-positive epoch count)."""


class DataError(PCGraphError):
    """A data set is missing or malformed; the message says how to get it."""


class DivergenceError(PCGraphError, FloatingPointError):
    """The energy became NaN or infinite; the message names the node and suggests a fix."""


def format_path(loc: tuple) -> str:
    """``('graph', 'edges', 2, 'to')`` -> ``'graph.edges[2].to'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN.fullmatch(str(part)):
            out += f".{part}" if out else str(part)
        else:  # an empty, spaced or odd key stays visible: graph.nodes['my node']
            out += f"[{str(part)!r}]"
    return out


_PLAIN = re.compile(r"[^\W\d][\w-]*")


class Interrupted(PCGraphError):
    """Training stopped on SIGINT/SIGTERM after finishing a batch; the message says how to resume.
    ``signum`` is the signal; the command line exits with 128 + signum (130, 143), as a shell does."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = int(signum)


class PCGraphWarning(UserWarning):
    """Warnings pcgraph itself issues (the test suite turns them into errors)."""


class WorkerError(PCGraphError):
    """A training process of a distributed run failed for a reason other than a pcgraph error."""
