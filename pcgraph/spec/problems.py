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
    loc = [p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "optimizer" and p in ("sgd", "adam", "euler"))
           and not (i > 0 and loc[i - 1] == "dataset" and p in ("images", "npz"))]  # data.dataset's two kinds
    out = format_path(tuple(loc))
    if e["type"] == "op_args":
        out += e["ctx"]["sub"]
    return out


# --- problems across sections (the compiler calls these with what networkx found) -------------


def role_problems(data, nodes: dict) -> list[tuple[str, str]]:
    """The data section against the nodes' roles. ``role: observed`` means the data section clamps
    the whole node; a latent node is inferred, except the neuron ranges the data clamps
    (``x[0:64]``: a partly clamped node is latent, its other neurons are inferred). So data on a
    whole latent node, a range of an observed node, and an observed node given no data are each a
    problem, named at the field to change. Unknown nodes are the caller's to report."""
    out, fed = [], set()
    for field, i, ref, text in data_refs(data, ("input", "target")):
        if ref.node not in nodes:
            continue
        fed.add(ref.node)
        role, at = nodes[ref.node].role, ref_path(data, field, i)
        if ref.neurons is None and role == "latent":
            out.append((at, f"{text!r} is a latent node, which is inferred, not clamped: declare it "
                        f"`role: observed` (graph.nodes.{ref.node}.role) or clamp the data to an observed node"))
        elif ref.neurons is not None and role == "observed":
            out.append((at, f"{text} clamps part of {ref.node!r} and leaves the rest to inference, "
                        f"so {ref.node!r} is latent: remove `role: observed` from graph.nodes.{ref.node} (an observed "
                        "node is clamped whole)"))
    for v, n in nodes.items():
        if n.role == "observed" and v not in fed:
            out.append((f"graph.nodes.{v}.role", f"{v!r} is observed, but the data section clamps nothing to it "
                        f"(data.input: {listed(data, 'input')}, data.target: {listed(data, 'target')}); point data.input or data.target "
                        "at it, or make it latent (remove `role: observed`)"))
    return out


def data_refs(data, fields: tuple[str, ...]):
    """(field, index, NodeRef, text) for every node reference of ``data`` in ``fields``."""
    for field in fields:
        for i, (ref, text) in enumerate(zip(data.refs(field), data.names(field))):
            yield field, i, ref, text


def ref_path(data, field: str, i: int) -> str:
    """The YAML path of a data reference: ``data.input``, or ``data.input[1]`` in a list."""
    return f"data.{field}[{i}]" if isinstance(getattr(data, field), list) else f"data.{field}"


def listed(data, field: str) -> str:
    """A data field's references as text: ``image``, ``left, right``."""
    value = getattr(data, field)
    return ", ".join(value) if isinstance(value, list) else str(value)


def cycle_problems(spec, cycle: list[str] | None) -> list[tuple[str, str]]:
    """Every setting of ``spec`` that needs an acyclic graph, when the graph has ``cycle`` (its
    nodes in order; None: acyclic), reported together: forward init, a feedforward evaluation,
    variants that start from the feedforward pass (exact, ePC) and a scale that reads the depth."""
    if not cycle:
        return []
    loop = " -> ".join([*cycle, cycle[0]])
    out = []
    if spec.inference.init == "forward":
        out.append(("inference.init", f"forward init needs an acyclic graph, but it has the cycle {loop}; "
                    "use init: zeros or prior"))
    if spec.data is not None and spec.train.eval == "feedforward":
        out.append(("train.eval", f"a feedforward evaluation needs an acyclic graph, but it has the cycle {loop}; "
                    "use train.eval: inference"))
    variant = spec.learning.variant
    if variant.fixed_predictions or variant.relaxes == "errors":
        out.append(("learning.variant", f"variant {variant.kind} starts from the feedforward pass, which needs an "
                    f"acyclic graph, but it has the cycle {loop}; use variant standard or incremental"))
    out += [(f"graph.edges[{i}].scale", f"scale {e.scale!r} needs the graph's depth, and a graph with the cycle "
             f"{loop} has none; give a number") for i, e in enumerate(spec.graph.edges)
            if isinstance(e.scale, str) and "depth" in e.scale]
    return out
