"""The graph part of a spec: nodes (shape, role, energy, prior) and edges (sources, target, op
pipeline), and the parsing of registered kinds (ops, energies, variants) with YAML paths kept."""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from pcgraph.energies import parse_energy
from pcgraph.energies.gaussian import Gaussian, Prior
from pcgraph.ops import Op, parse_op
from pcgraph.precision import parse_schedule
from pcgraph.spec import problems
from pcgraph.updates import parse_update
from pcgraph.variants import parse_variant


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)  # .inf, .nan refused


def _tagged(value: Any) -> Any:
    """Let a bare string stand for a variant with default arguments: ``sgd`` -> ``{kind: sgd}``."""
    return {"kind": value} if isinstance(value, str) else value


class _Tagged(_Strict):
    """A union variant: always written with its ``kind``, as a bare name when nothing else is set."""

    @model_serializer(mode="wrap")
    def _with_kind(self, handler: Any) -> Any:
        args = {k: v for k, v in handler(self).items() if k != "kind"}
        return {"kind": self.kind, **args} if args else self.kind


# --- node energies and ops: registries, parsed by kind ---------------------------------------


def _parse_kept(parse, value: Any, at: tuple = ()) -> Any:
    """``parse(value)`` for a registry (ops, energies, variants), with pydantic's errors for the
    arguments of a known kind kept under the field's path (``at`` leads, e.g. the list index)."""
    try:
        return parse(value)
    except ValidationError as err:
        e = err.errors()[0]
        sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*at, *e["loc"]))
        raise PydanticCustomError("op_args", "{sub}: {msg}", {"sub": sub, "msg": problems.message(e)}) from None
    except ValueError as err:
        sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at)
        raise PydanticCustomError("op_args", "{sub}: {msg}", {"sub": sub, "msg": str(err)}) from None


def _registered(parse):
    return BeforeValidator(lambda value: _parse_kept(parse, value))


EnergyField = Annotated[Any, _registered(parse_energy), WithJsonSchema({})]  # filled in by json_schema()
VariantField = Annotated[Any, _registered(parse_variant), WithJsonSchema({})]
UpdateField = Annotated[Any, _registered(parse_update), WithJsonSchema({})]
ScheduleField = Annotated[Any, _registered(parse_schedule), WithJsonSchema({})]


class NodeSpec(_Strict):
    """A value node x_v: a tensor of per-sample shape ``shape``."""

    shape: tuple[PositiveInt, ...] = Field(min_length=1, description="Per-sample shape, e.g. [784] or [3, 32, 32].")
    role: Literal["observed", "latent"] = Field(
        "latent", description="observed: the data section clamps the whole node (data.input or data.target; a "
        "call may still leave it out, e.g. to predict a label); latent: inferred, except neuron ranges the data "
        "clamps (x[0:64]). Enforced when the spec has a data section: data on a whole latent node, a range of an "
        "observed node, or an observed node given no data is a SpecError."
    )
    energy: EnergyField = Field(
        default_factory=Gaussian, description="Energy of this node's prediction error: a registered energy "
        "(gaussian, categorical, bernoulli, laplace, ...) as a name or {kind: ..., args}.")
    prior: Prior | None = Field(
        None, description="Gaussian prior {mean, precision or covariance} for a node with no incoming edge.")

    @field_validator("shape", mode="before")
    @classmethod
    def _int_shape(cls, v: Any) -> Any:
        return _positive_shape(v)


def _positive_shape(v: Any) -> list[int]:
    """``784`` or ``[3, 32, 32]`` as a list of positive integers; one problem (at the first bad
    dimension) naming what came, instead of pydantic's per-item and length errors."""
    def integer(d: Any) -> bool:
        return isinstance(d, numbers.Integral) and not isinstance(d, bool)

    def positive(d: Any) -> bool:
        return integer(d) and d > 0

    dims = [v] if integer(v) else v
    # the "op_args" form carries its own sub-path (problems.path appends ctx["sub"]: shape[1])
    if not isinstance(dims, (list, tuple)) or not dims:
        raise PydanticCustomError("op_args", "{sub}: {msg}", {"sub": "", "msg": "expected a positive integer or a "
                                  f"non-empty list of them, got {v!r}"})
    bad = [i for i, d in enumerate(dims) if not positive(d)]
    if bad:
        sub = f"[{bad[0]}]" if isinstance(v, (list, tuple)) else ""
        got = ", ".join(repr(dims[i]) for i in bad)
        raise PydanticCustomError("op_args", "{sub}: {msg}", {"sub": sub, "msg": f"expected positive integers, got {got}"})
    return [int(d) for d in dims]


def _op_list(value: Any) -> list[Op]:
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list):
        raise PydanticCustomError("op_list", "expected a list of ops, got {got}", {"got": repr(value)})
    return [_parse_kept(parse_op, item, (i,)) for i, item in enumerate(items)]


OpList = Annotated[
    list[Any],
    BeforeValidator(_op_list),
    WithJsonSchema({"type": "array", "items": {}}),  # items filled in by json_schema()
]


SCALE_FORMS = ("1/sqrt(fan_in)", "1/sqrt(fan_in*depth)", "1/fan_in")


def _parse_scale(v: Any) -> float | str:
    """An edge's scale: a finite nonzero number, or one of the muPC forms."""
    if isinstance(v, str) and v.replace(" ", "") in SCALE_FORMS:
        return v.replace(" ", "")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v != 0:
        return float(v)
    if v == 0:
        raise ValueError("a scale of 0 cuts the edge; remove the edge instead")
    raise ValueError(f"expected a finite number or one of {', '.join(SCALE_FORMS)}, got {v!r}")



class EdgeSpec(_Strict):
    """mu_to += fn(combine(x_from...)): one parametrised prediction into ``to``."""

    source: list[str] = Field(alias="from", min_length=1, description="Source node(s); several are combined.")
    to: str = Field(description="Target node: the node this edge predicts.")
    fn: OpList = Field(
        default_factory=lambda: [parse_op("identity")],
        description="Pipeline of ops, e.g. [linear, leaky_relu]; items are names or {kind: ...}.",
    )
    combine: Literal["concat", "add", "mul"] = Field(
        "concat", description="How several sources join: concat (dim 1), add or mul."
    )
    delay: Literal[0, 1] = Field(
        0, description="1: read the sources' relaxed values from the previous time step (a recurrent edge).")
    scale: Annotated[float | str, BeforeValidator(_parse_scale), WithJsonSchema(
        {"anyOf": [{"type": "number"}, {"enum": list(SCALE_FORMS)}]})] = Field(
        1.0, description="Multiply the edge's output by a number or by a form of its first weighted op's "
        "fan-in and the graph's depth (muPC): 1/sqrt(fan_in), 1/sqrt(fan_in*depth), 1/fan_in.")

    @field_validator("source", mode="before")
    @classmethod
    def _one_source(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_serializer("source")
    def _short_source(self, v: list[str]) -> str | list[str]:
        return v[0] if len(v) == 1 else v


class GraphBody(_Strict):
    nodes: dict[str, NodeSpec] = Field(description="Value nodes by name.")
    edges: list[EdgeSpec] = Field(default_factory=list, description="Prediction edges.")
    encoders: list[EdgeSpec] = Field(
        default_factory=list, description="Amortised inference (inference.init: amortised): edges from "
        "observed nodes that propose a latent's initial state; outside the energy, they learn to propose the "
        "relaxed states.")


