"""Turning bad input into problems with YAML paths: a strict YAML loader and pydantic's errors
rewritten as ``(path, what was expected, what came)``."""

from __future__ import annotations

import yaml

from pcgraph.errors import format_path

MAX_NODES = 100_000  # YAML nodes after expanding aliases: a real spec has a few hundred
MAX_DEPTH = 64


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of keeping the last one, and
    documents whose aliases expand past ``MAX_NODES`` nodes ("billion laughs") or that nest
    deeper than ``MAX_DEPTH``: both are refused before anything is built from them."""

    def compose_document(self):
        node = super().compose_document()
        _check_size(node)
        return node

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


def _check_size(root) -> None:
    """Count the nodes of the tree that ``root``'s aliases expand to, without expanding it."""
    sizes: dict[int, int] = {}
    stack = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              node.start_mark)
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"the document expands to more than {MAX_NODES:,} nodes (aliases?)", node.start_mark)
        elif id(node) not in sizes:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


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
    loc = [p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "optimizer" and p in ("sgd", "adam", "euler"))]
    out = format_path(tuple(loc))
    if e["type"] == "op_args":
        out += e["ctx"]["sub"]
    return out
