"""Write docs/spec-reference.md: every spec field and every registered class, from the code itself.

    python docs/make_spec_reference.py            # (re)write docs/spec-reference.md
    python docs/make_spec_reference.py --check    # exit 1 if the committed file is out of date

The spec sections come from the JSON Schema that ``pcgraph schema`` prints (field, type, default,
description, in the order a spec nests them); the registries (ops, node energies, PC variants,
weight-update rules, precision schedules, neuron-level topologies) from their classes: each kind
with the first line of its docstring and its arguments. Only pcgraph's own classes are listed, so
classes a script registers at run time (examples/extending.py) never enter the file.
``tests/test_docs.py`` checks the committed file equals :func:`render`.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import get_args

TARGET = Path(__file__).resolve().parent / "spec-reference.md"
COMMAND = "python docs/make_spec_reference.py"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("``", "`").replace("|", "\\|")


def _first_line(doc: str | None) -> str:
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def _default(value) -> str:
    return "`" + json.dumps(value) + "`"


class _Types:
    """Renders a JSON Schema property as a short type: `number > 0`, `list of string`, a link."""

    def __init__(self, links: dict[str, str], registries: dict[str, tuple[str, set[str]]]):
        self.links = links  # $defs name -> anchor
        self.registries = registries  # title -> (anchor, kinds)

    def __call__(self, p: dict) -> str:
        if "$ref" in p:
            name = p["$ref"].rsplit("/", 1)[-1]
            return f"[{name}](#{self.links[name]})" if name in self.links else name
        union = p.get("anyOf") or p.get("oneOf")
        if union:
            registry = self._registry(union)
            if registry:
                return registry
            parts = []
            for q in union:
                text = self(q)
                if text not in parts:
                    parts.append(text)
            return " or ".join(parts)
        if "const" in p:
            return _default(p["const"])
        if "enum" in p:
            return " | ".join(f"`{v}`" for v in p["enum"])
        kind = p.get("type")
        if kind == "array":
            if "prefixItems" in p:
                return "[" + ", ".join(self(q) for q in p["prefixItems"]) + "]"
            return "list of " + self(p.get("items", {})) if p.get("items") else "list"
        if kind == "object":
            extra = p.get("additionalProperties")
            if isinstance(extra, dict):
                return "mapping of name to " + self(extra)
            return "mapping"
        if kind is None:
            return "any"
        low = ("(", p["exclusiveMinimum"]) if "exclusiveMinimum" in p else ("[", p.get("minimum"))
        high = (")", p["exclusiveMaximum"]) if "exclusiveMaximum" in p else ("]", p.get("maximum"))
        if low[1] is not None and high[1] is not None:
            return f"{kind} in {low[0]}{low[1]}, {high[1]}{high[0]}"
        if low[1] is not None:
            return f"{kind} {'>' if low[0] == '(' else '>='} {low[1]}"
        if high[1] is not None:
            return f"{kind} {'<' if high[0] == ')' else '<='} {high[1]}"
        return kind

    def _registry(self, union: list[dict]) -> str | None:
        titles = {q.get("title") for q in union if q.get("type") == "object" and "title" in q}
        if not titles:
            return None
        for title, (anchor, kinds) in self.registries.items():
            if kinds and kinds <= titles:
                return f"a registered [{title}](#{anchor}): its name, or `{{kind: ..., args}}`"
        return None


def _classes(root: type) -> dict[str, type]:
    """{class name: class} of every pydantic model a spec nests (the JSON Schema's $defs names)."""
    from pydantic import BaseModel

    def flat(annotation):
        yield annotation
        for arg in get_args(annotation):
            yield from flat(arg)

    found, stack = {}, [root]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            for t in flat(field.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel) and t.__name__ not in found:
                    stack.append(t)
    return found


def _factory_default(cls: type | None, name: str) -> str:
    """A default the schema leaves out (a default_factory): `[]`, `{}`, or its model's defaults."""
    from pydantic import BaseModel
    from pydantic_core import to_jsonable_python

    from pcgraph.registry import Registered

    fields = {(f.alias or k): f for k, f in (cls.model_fields.items() if cls else ())}
    field = fields.get(name)
    if field is None or field.default_factory is None:
        return "its defaults"
    value = field.default_factory()
    if isinstance(value, Registered):  # written as a spec writes it: its bare name
        return _default(value.model_dump(mode="json"))
    if isinstance(value, BaseModel):
        kind = getattr(value, "kind", None)
        return f"`{kind}` at its defaults" if isinstance(kind, str) else "its defaults"
    return _default(to_jsonable_python(value))


def _fields(props: dict, required: list[str], types: _Types, cls: type | None = None,
            skip_kind: bool = False) -> list[str]:
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, p in props.items():
        if skip_kind and name == "kind":
            continue
        if name in required:
            default = "required"
        elif "default" in p:
            default = _default(p["default"])
        else:
            default = _factory_default(cls, name)
        rows.append(f"| `{name}` | {_cell(types(p))} | {_cell(default)} | {_cell(p.get('description', ''))} |")
    return rows


def _models(schema: dict) -> list[tuple[str, str]]:
    """(definition name, YAML path) of every model, in the order a spec nests them."""
    defs, order, seen = schema["$defs"], [], set()

    def refs(p: dict, path: str):
        if "$ref" in p:
            yield p["$ref"].rsplit("/", 1)[-1], path
        for q in p.get("anyOf", []) + p.get("oneOf", []):
            yield from refs(q, path)
        if isinstance(p.get("items"), dict):
            yield from refs(p["items"], path + "[]")
        if isinstance(p.get("additionalProperties"), dict):
            yield from refs(p["additionalProperties"], path + ".NAME")

    def visit(model: dict, path: str):
        for field, p in model.get("properties", {}).items():
            for name, sub in refs(p, f"{path}.{field}".lstrip(".")):
                if name not in seen:
                    seen.add(name)
                    order.append((name, sub))
                    visit(defs[name], sub)

    visit(schema, "")
    return order


def _registries() -> list[tuple[str, str, str, str, dict]]:
    """(heading, one of them, where a spec names one, its decorator, {kind: class}) for each registry, pcgraph's classes only."""
    from pcgraph.energies import ENERGIES
    from pcgraph.ops import OPS
    from pcgraph.precision import SCHEDULES
    from pcgraph.updates import UPDATES
    from pcgraph.variants import VARIANTS

    def own(registry) -> dict:
        return {k: v for k, v in sorted(registry.items()) if v.__module__.startswith("pcgraph.")}

    return [
        ("Ops", "op", "`graph.edges[].fn[]` (the items of an edge's pipeline)", "register_op", own(OPS)),
        ("Node energies", "node energy", "`graph.nodes.NAME.energy`", "register_energy", own(ENERGIES)),
        ("PC variants", "PC variant", "`learning.variant`", "register_variant", own(VARIANTS)),
        ("Weight-update rules", "weight-update rule", "`learning.update`", "register_update", own(UPDATES)),
        ("Precision schedules", "precision schedule", "`inference.precisions[].schedule`", "register_schedule",
         own(SCHEDULES)),
    ]


def render() -> str:
    """The whole text of docs/spec-reference.md."""
    from pcgraph.spec import GraphSpec, json_schema
    from pcgraph.topology import TOPOLOGIES

    schema = json_schema()
    classes_of = _classes(GraphSpec)
    defs = schema["$defs"]
    models = _models(schema)
    registries = _registries()
    links = {name: slug(f"{path} ({name})") for name, path in models}
    types = _Types(links, {one: (slug(title), set(classes)) for title, one, _, _, classes in registries})

    out = ["# Spec reference", "",
           f"<!-- generated by `{COMMAND}` from the JSON Schema and the registries; do not edit:",
           "     tests/test_docs.py fails when this file and the code disagree -->", "",
           "Every field of a spec and every class a spec can name, generated from the code (the JSON",
           "Schema that `pcgraph schema` prints, and pcgraph's registries). The guide to what they mean",
           "together is [spec.md](spec.md). `NAME` in a path stands for a node's name, `[]` for any",
           "item of a list. A registered class is written as its bare name (every argument at its",
           "default) or as `{kind: NAME, argument: value, ...}`.", "",
           "## Sections", ""]
    out += [f"- [{path}](#{links[name]}) ({name})" for name, path in models]
    out += [f"- [{title}](#{slug(title)})" for title, _, _, _, _ in registries]
    out += ["- [Neuron-level topologies](#neuron-level-topologies)", ""]

    out += [f"## {_cell(schema.get('title', 'GraphSpec'))}: the top level", "",
            _first_line(schema.get("description")), ""]
    out += _fields(schema["properties"], schema.get("required", []), types, GraphSpec) + [""]
    for name, path in models:
        model = defs[name]
        out += [f"## {path} ({name})", ""]
        if model.get("description"):
            out += [" ".join(model["description"].split()), ""]
        out += _fields(model.get("properties", {}), model.get("required", []), types, classes_of.get(name),
                       skip_kind=name in ("SGD", "Adam", "Euler")) + [""]

    for title, _, where, decorator, classes in registries:
        out += [f"## {title}", "", f"Named at {where}; `@pcgraph.{decorator}` adds one (see "
                "[extending.md](extending.md)).", ""]
        out += ["| kind | what it is | arguments |", "| --- | --- | --- |"]
        for kind, cls in classes.items():
            sub = cls.model_json_schema()
            props = {k: v for k, v in sub.get("properties", {}).items() if k != "kind"}
            args = "; ".join(f"`{k}` = " + ("required" if k in sub.get("required", []) else
                                            _default(v["default"]) if "default" in v else _factory_default(cls, k))
                             for k, v in props.items()) or "none"
            out.append(f"| `{kind}` | {_cell(_first_line(cls.__doc__))} | {_cell(args)} |")
        out.append("")
        for kind, cls in classes.items():
            sub = cls.model_json_schema()
            props = {k: v for k, v in sub.get("properties", {}).items() if k != "kind"}
            if props:
                out += [f"### `{kind}` arguments", ""]
                out += _fields(props, sub.get("required", []), types, cls) + [""]

    out += ["## Neuron-level topologies", "",
            "Named by a `sparse` op's `generator` (`graph.edges[].fn[].generator`), next to every networkx",
            "generator function; `pcgraph.register_topology(name)` adds one. Each is called with the",
            "source and target sizes and the op's `seed`; its other arguments come from the op's `args`.", "",
            "| name | what it is | arguments (from `args`) |", "| --- | --- | --- |"]
    for name, fn in sorted(TOPOLOGIES.items()):
        if not fn.__module__.startswith("pcgraph."):
            continue
        # after (n_source, n_target, seed); self_loops is the op's own setting, as in topology._generate
        params = [p for p in list(inspect.signature(fn).parameters.values())[3:] if p.name != "self_loops"]
        args = "; ".join(f"`{p.name}` = " + (_default(p.default) if p.default is not inspect.Parameter.empty
                                              else "required") for p in params) or "none"
        out.append(f"| `{name}` | {_cell(_first_line(fn.__doc__))} | {_cell(args)} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: regenerate it with `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
