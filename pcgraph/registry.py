"""Registries: the classes a spec may name by ``kind`` (ops, node energies, PC variants).

Each registry maps a kind to a subclass of :class:`Registered`, a strict frozen pydantic model of
the class's YAML arguments. A spec writes a registered class as its bare name (every argument at
its default) or as ``{kind: ..., args}``; only registered classes can appear in a spec, so a
spec never names arbitrary code.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializationInfo, model_serializer


class Registered(BaseModel):
    """Base of registered classes: subclasses set ``kind`` and declare their arguments as fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf, .nan refused
    kind: ClassVar[str] = ""

    @model_serializer(mode="wrap")
    def _short_form(self, handler: Any, info: SerializationInfo) -> Any:
        # written as its bare name when every argument is at its default: ``linear``; with
        # context={"resolved": True} every argument is written (GraphSpec.to_yaml(resolved=True))
        if resolved(info):
            return {"kind": self.kind, **handler(self)}
        args = {k: v for k, v in handler(self).items() if k in self.model_fields_set}
        return {"kind": self.kind, **args} if args else self.kind


def resolved(info: SerializationInfo) -> bool:
    """Whether a dump asked for every field, defaults included (``context={"resolved": True}``)."""
    return bool((info.context or {}).get("resolved"))


class Registry(dict):
    """{kind: class} for one concern (``what``: "op", "energy", "variant"; subclasses of ``base``)."""

    def __init__(self, what: str, base: type[Registered]):
        super().__init__()
        self.what, self.base = what, base

    def register(self, cls: type) -> type:
        """Class decorator adding ``cls`` under ``cls.kind``."""
        if not cls.kind:
            raise ValueError(f"{cls.__name__} must set a class attribute `kind`")
        self[cls.kind] = cls
        return cls

    def parse(self, value: Any) -> Registered:
        """``"name"`` or ``{"kind": "name", **args}`` (or an instance) -> an instance.

        Raises ``ValueError`` for an unknown kind and pydantic's ``ValidationError`` for bad arguments.
        """
        if isinstance(value, self.base):
            return value
        if isinstance(value, str):
            kind, args = value, {}
        elif isinstance(value, dict) and "kind" in value:
            args = dict(value)
            kind = args.pop("kind")
        else:
            raise ValueError(f"expected {_article(self.what)} {self.what} name or a mapping with a `kind`, got {value!r}")
        if not isinstance(kind, str) or kind not in self:
            raise ValueError(f"unknown {self.what} {kind!r} (known: {', '.join(sorted(self))})")
        return self[kind].model_validate(args)

    def json_schema(self) -> dict:
        """JSON Schema of one entry: a registered name or its mapping form."""
        variants: list[dict] = [{"type": "string", "enum": sorted(self)}]
        for kind in sorted(self):
            schema = self[kind].model_json_schema()
            variants.append({
                "type": "object", "title": kind,
                "description": (self[kind].__doc__ or "").strip().split("\n")[0],
                "properties": {"kind": {"const": kind}, **schema.get("properties", {})},
                "required": ["kind"], "additionalProperties": False,
                **({"$defs": schema["$defs"]} if "$defs" in schema else {}),
            })
        return {"anyOf": variants}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
