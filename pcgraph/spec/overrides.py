"""Overrides of a spec from the command line: ``inference.steps=20``, ``graph.edges[0].fn=[linear]``.

An override is ``PATH=VALUE``. PATH is a dotted path into the spec's plain-dict form (the mapping
its YAML loads to, before validation); a list item is named by its index, as ``graph.edges.0.fn``
or ``graph.edges[0].fn`` (the form :class:`SpecError` prints), and an odd key as
``graph.nodes['my node']``. VALUE is YAML: ``20``, ``1e-3``, ``[256]``, ``{kind: adam, lr: 0.01}``,
``null``. A key missing on the way is created as a mapping, and a bare name on the way stands for
``{kind: name}`` (the spec's short form: ``optimizer: sgd``), so the spec model, not this module,
decides what belongs where: a misspelt key comes back as the model's own error at its path.

Pure: plain dicts in, plain dicts out (no torch), so the command line can parse overrides early.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from pcgraph.errors import SpecError, format_path

# one step of a path: [3], ['odd key'] / ["odd key"], or a bare name
_STEP = re.compile(r"""\[(?:(\d+)|'([^']*)'|"([^"]*)")\]|([^.\[\]]+)""")
_EXAMPLE = "e.g. inference.steps=20 or graph.edges[0].fn=[linear]"


class _ValueLoader(yaml.SafeLoader):
    """YAML 1.1's safe loader, reading ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``)."""


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def parse_path(path: str) -> tuple[str | int, ...]:
    """``'graph.edges[0].fn'`` (or ``'graph.edges.0.fn'``) -> ``('graph', 'edges', 0, 'fn')``.
    A bare all-digit step is an int: an index into a list, or the key ``'0'`` of a mapping."""
    text, steps, pos = path.strip(), [], 0
    while True:
        m = _STEP.match(text, pos)
        if m is None:
            got = f"nothing after {text[:pos]!r}" if pos == len(text) else f"{text[pos:]!r} at character {pos + 1}"
            raise SpecError(f"override path {path!r}: expected names joined by '.' and [index] steps ({_EXAMPLE}), "
                            f"got {got}")
        index, single, double, name = m.groups()
        steps.append(int(index) if index is not None else single if single is not None else double
                     if double is not None else int(name) if name.isdigit() else name.strip())
        pos = m.end()
        if pos == len(text):
            return tuple(steps)
        if text[pos] == ".":
            pos += 1
        elif text[pos] != "[":
            raise SpecError(f"override path {path!r}: expected '.' or '[' after {text[:pos]!r}, got {text[pos]!r}")


def parse_override(item: str) -> tuple[tuple[str | int, ...], Any]:
    """``'PATH=VALUE'`` -> (the path's steps, the value read as YAML); :class:`SpecError` on bad syntax."""
    path, eq, value = item.partition("=")
    if not eq:
        raise SpecError(f"override {item!r}: expected PATH=VALUE ({_EXAMPLE})")
    if not path.strip():
        raise SpecError(f"override {item!r}: the path before '=' is empty ({_EXAMPLE})")
    steps = parse_path(path)
    if not value.strip():
        raise SpecError(f"nothing after '=' in {item!r}: expected a YAML value (null for none)", format_path(steps))
    return steps, parse_value(value, format_path(steps))


def parse_value(text: str, path: str = "") -> Any:
    """``text`` read as one YAML value (``1e-3`` is a number); :class:`SpecError` at ``path`` if it is not YAML."""
    try:
        return yaml.load(text, Loader=_ValueLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"the value {text!r} is not valid YAML ({problem}); in a shell, quote an override "
                        "holding brackets or spaces: 'graph.nodes.h1.shape=[256]'", path) from None


def apply_overrides(data: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of the spec mapping ``data`` with each ``PATH=VALUE`` override set, in order (a later
    override of the same path wins). Raises one :class:`SpecError` listing every bad override."""
    return _apply(data, overrides, parse_override)


def set_values(data: Mapping, values: Mapping[str, Any]) -> dict:
    """A copy of the spec mapping ``data`` with ``values`` (dotted path -> plain value) set."""
    return _apply(data, values.items(), lambda item: (parse_path(item[0]), item[1]))


def _apply(data: Mapping, items: Iterable, parse) -> dict:
    if not isinstance(data, Mapping):
        raise SpecError(f"expected a mapping at the top of the spec, got {type(data).__name__}")
    out, problems = copy.deepcopy(dict(data)), []
    for item in items:
        try:
            steps, value = parse(item)
            _set(out, steps, value)
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(problems)
    return out


def _set(data: dict, steps: tuple[str | int, ...], value: Any) -> None:
    """Set ``value`` at ``steps`` inside ``data``, creating missing mappings on the way."""
    node = data
    for depth, step in enumerate(steps[:-1]):
        key = _key(node, step, steps[: depth + 1])
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None:  # missing or null: a new mapping, for the model to judge
            child = {}
        elif isinstance(child, str):  # the short form of a tagged variant: sgd -> {kind: sgd}
            child = {"kind": child}
        elif not isinstance(child, (dict, list)):
            where = format_path(steps[: depth + 1])
            raise SpecError(f"is {child!r}, which has no field {steps[depth + 1]!r}; set it whole "
                            f"({where}=VALUE)", where)
        node[key] = child
        node = child
    node[_key(node, steps[-1], steps)] = value


def _key(node: dict | list, step: str | int, steps: tuple[str | int, ...]) -> str | int:
    """``step`` as a key of ``node``: a list takes an index in range, a mapping a string."""
    if isinstance(node, dict):
        return str(step)
    if not isinstance(step, int) or not 0 <= step < len(node):
        at = format_path(steps[:-1])
        which = f"an index from 0 to {len(node) - 1}" if node else "no index (the list is empty; set it whole)"
        raise SpecError(f"{at} is a list of {len(node)} item(s): expected {which}, got {step!r}",
                        format_path(steps) if isinstance(step, int) else at)
    return step
