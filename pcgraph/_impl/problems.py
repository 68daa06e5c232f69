"""Turning bad input into problems with YAML paths: a strict YAML loader and pydantic's errors
rewritten as ``(path, what was expected, what came)``."""

from __future__ import annotations

import yaml

from pcgraph.errors import format_path


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a plain value, got {type(key).__name__}", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def message(e: dict) -> str:
    """One pydantic error as 'what was expected, got what came'."""
    if e["type"] == "op_args":
        return e["ctx"]["msg"]
    if e["type"] == "extra_forbidden":
        return "unknown field (not part of the spec format; see `pcgraph schema`)"
    if e["type"] == "missing":
        return "required field is missing"
    if e["type"] == "value_error":
        return e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    text = e["msg"][0].lower() + e["msg"][1:]
    if isinstance(got, (dict, list)) or got is None or "got " in text:
        return text
    return f"{text}, got {got!r}"


def path(e: dict) -> str:
    loc = ["from" if part == "source" else part for part in e["loc"]]
    # drop pydantic's union-member tags: ('inference', 'optimizer', 'sgd', 'lr') -> inference.optimizer.lr
    loc = [p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] in ("optimizer", "energy") and p in ("sgd", "adam", "euler", "gaussian", "categorical"))]
    out = format_path(tuple(loc))
    if e["type"] == "op_args":
        out += e["ctx"]["sub"]
    return out
