"""The op registry: the building blocks of an edge's pipeline.

An edge's ``fn`` is a list of ops applied in order, ``mu = op_n(...op_1(x))``. Each op is a
small strict pydantic model (its YAML arguments) with one method, :meth:`Op.build`, that turns
it into a ``torch.nn.Module`` once the input shape is known. New ops are one file each: subclass
:class:`Op`, set ``kind``, decorate with :func:`register_op`. Only registered ops can appear in a
spec, so a spec never names arbitrary code.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer
from torch import nn

Shape = tuple[int, ...]

OPS: dict[str, type[Op]] = {}


class Op(BaseModel):
    """Base class of every op. Subclasses declare their arguments as pydantic fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = ""

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        """Return the module computing this op on inputs of per-sample shape ``in_shape``.

        ``target_shape`` is the shape of the edge's target node: ops with an output size they
        can infer (a linear layer's ``features``) take it from there when it is not given.
        """
        raise NotImplementedError

    def for_edge(self, same_node: bool) -> Op:
        """This op as used on one edge; ``same_node``: the edge maps a node to itself (a neuron-level
        op numbers neurons differently then). Most ops ignore it and return ``self``."""
        return self

    @property
    def has_params(self) -> bool:
        return False

    def param_count(self, in_shape: Shape, target_shape: Shape) -> int:
        """Parameters :meth:`build` will allocate (checked against the memory limit first)."""
        return 0

    @model_serializer(mode="wrap")
    def _short_form(self, handler: Any) -> Any:
        # An op with every argument at its default is written as its bare name: ``linear``.
        args = {k: v for k, v in handler(self).items() if k in self.model_fields_set}
        return {"kind": self.kind, **args} if args else self.kind


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator adding an op to the registry under ``cls.kind``."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} must set a class attribute `kind`")
    OPS[cls.kind] = cls
    return cls


def parse_op(value: Any) -> Op:
    """Turn ``"linear"`` or ``{"kind": "linear", "bias": false}`` into an :class:`Op`.

    Raises ``ValueError`` for an unknown kind and pydantic's ``ValidationError`` for bad arguments.
    """
    if isinstance(value, Op):
        return value
    if isinstance(value, str):
        kind, args = value, {}
    elif isinstance(value, dict) and "kind" in value:
        args = dict(value)
        kind = args.pop("kind")
    else:
        raise ValueError(
            f"expected an op name or a mapping with a `kind`, got {value!r}"
        )
    if not isinstance(kind, str) or kind not in OPS:
        raise ValueError(f"unknown op {kind!r} (known: {', '.join(sorted(OPS))})")
    return OPS[kind].model_validate(args)


def op_json_schema() -> dict:
    """JSON Schema of one pipeline item: a registered op's name or its mapping form."""
    variants: list[dict] = [{"type": "string", "enum": sorted(OPS)}]
    for kind in sorted(OPS):
        schema = OPS[kind].model_json_schema()
        props = {"kind": {"const": kind}, **schema.get("properties", {})}
        variants.append(
            {
                "type": "object",
                "title": kind,
                "description": (OPS[kind].__doc__ or "").strip().split("\n")[0],
                "properties": props,
                "required": ["kind"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": variants}


__all__ = ["OPS", "Op", "Shape", "ValidationError", "op_json_schema", "parse_op", "register_op"]

# Built-in ops register themselves on import.
from pcgraph.ops import activation, conv, linear, shape, sparse  # noqa: E402,F401
