"""The spec: a strict pydantic description of a PC graph and how to run it.

A :class:`GraphSpec` is what a YAML file (or the :class:`pcgraph.Graph` builder) produces and what
:func:`pcgraph.compile` consumes. Every model forbids unknown fields; unions carry a ``kind`` tag
so an error points at one variant. :func:`load_spec` reads YAML with a safe loader that also
rejects duplicate keys, and turns pydantic's errors into one :class:`SpecError` whose lines are
``yaml.path: what was expected, what came``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pcgraph._impl import problems
from pcgraph.errors import SpecError, format_path
from pcgraph.ops import Op, op_json_schema, parse_op


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _tagged(value: Any) -> Any:
    """Let a bare string stand for a variant with default arguments: ``sgd`` -> ``{kind: sgd}``."""
    return {"kind": value} if isinstance(value, str) else value


class _Tagged(_Strict):
    """A union variant: always written with its ``kind``, as a bare name when nothing else is set."""

    @model_serializer(mode="wrap")
    def _with_kind(self, handler: Any) -> Any:
        args = {k: v for k, v in handler(self).items() if k != "kind"}
        return {"kind": self.kind, **args} if args else self.kind


# --- node energies -------------------------------------------------------------------------


def _precision_value(v: Any) -> Any:
    """A number > 0, a list of them (a diagonal) or a list of rows of numbers (a matrix)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if v is None:
        return v
    if number(v) and v > 0:
        return float(v)
    if isinstance(v, list) and v and all(number(x) and x > 0 for x in v):
        return [float(x) for x in v]
    if isinstance(v, list) and v and all(isinstance(r, list) and r and all(number(x) for x in r) for r in v):
        return [[float(x) for x in r] for r in v]
    raise PydanticCustomError("precision", "expected a number greater than 0, a list of them (a diagonal) or a "
                              "list of rows (a matrix), got {got}", {"got": repr(v)})


PrecisionValue = Annotated[
    Any, BeforeValidator(_precision_value),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                              {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
                              {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}]}),
]


class Gaussian(_Tagged):
    """e = 1/2 (x - mu)^T Pi (x - mu) (eq. 27 with Sigma = Pi^-1), plus -1/2 log|Pi| when Pi is
    learnt. Pi is a scalar pi (Pi = pi I), a diagonal (a list) or a full symmetric positive definite
    matrix (a list of rows; 1-D nodes only), given as ``precision`` or as ``covariance``."""

    kind: Literal["gaussian"] = "gaussian"
    precision: PrecisionValue = Field(
        1.0, description="Precision Pi = Sigma^-1: a number, a diagonal [..] or a matrix [[..], ..].")
    covariance: PrecisionValue | None = Field(
        None, description="Covariance Sigma instead of precision (give one of the two).")
    learn: Literal["none", "diagonal", "full"] = Field(
        "none", description="Learn Pi (kept positive definite by construction), starting from the given value.")

    @model_validator(mode="after")
    def _one_of(self) -> Gaussian:
        if self.covariance is not None and self.precision != 1.0:  # 1.0: the default, as a dump writes it
            raise ValueError("give precision or covariance, not both")
        for name in ("precision", "covariance"):
            value = getattr(self, name)
            if isinstance(value, list) and value and isinstance(value[0], list):
                problems.check_spd(value, name)
        return self

    @property
    def scalar(self) -> float | None:
        """The precision as one number when it is a fixed multiple of I, else None."""
        if self.learn != "none":
            return None
        if self.covariance is not None:
            return 1.0 / self.covariance if isinstance(self.covariance, float) else None
        return self.precision if isinstance(self.precision, float) else None


class Categorical(_Tagged):
    """e = KL(x || softmax(mu)): softmax cross-entropy for one-hot x; mu are logits."""

    kind: Literal["categorical"] = "categorical"


EnergySpec = Annotated[
    Gaussian | Categorical, Field(discriminator="kind"), BeforeValidator(_tagged)
]


class Prior(_Strict):
    """Gaussian prior N(mean, 1 / precision) on a node without incoming edges."""

    mean: float = Field(0.0, description="Prior mean (every element).")
    precision: PositiveFloat = Field(1.0, description="Prior precision.")


class NodeSpec(_Strict):
    """A value node x_v: a tensor of per-sample shape ``shape``."""

    shape: tuple[PositiveInt, ...] = Field(min_length=1, description="Per-sample shape, e.g. [784] or [3, 32, 32].")
    role: Literal["observed", "latent"] = Field(
        "latent", description="observed: data is fed to it; latent: always inferred."
    )
    energy: EnergySpec = Field(
        default_factory=Gaussian, description="Energy of this node's prediction error."
    )
    prior: Prior | None = Field(None, description="Prior for a node with no incoming edge.")

    @field_validator("shape", mode="before")
    @classmethod
    def _int_shape(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v


def _op_list(value: Any) -> list[Op]:
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list):
        raise PydanticCustomError("op_list", "expected a list of ops, got {got}", {"got": repr(value)})
    ops = []
    for i, item in enumerate(items):
        try:
            ops.append(parse_op(item))
        except ValidationError as err:  # bad arguments of a known op: keep the sub-path
            e = err.errors()[0]
            sub = format_path((i, *e["loc"]))
            raise PydanticCustomError("op_args", "{sub}: {msg}", {"sub": sub, "msg": problems.message(e)}) from None
        except ValueError as err:
            raise PydanticCustomError("op_args", "{sub}: {msg}", {"sub": f"[{i}]", "msg": str(err)}) from None
    return ops


OpList = Annotated[
    list[Any],
    BeforeValidator(_op_list),
    WithJsonSchema({"type": "array", "items": {}}),  # items filled in by json_schema()
]


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


# --- inference -------------------------------------------------------------------------------


class SGD(_Tagged):
    """x <- x - lr * v, v <- momentum * v + dE/dx."""

    kind: Literal["sgd"] = "sgd"
    lr: PositiveFloat = Field(0.1, description="State step size.")
    momentum: float = Field(0.0, ge=0, lt=1, description="Heavy-ball momentum.")


class Adam(_Tagged):
    """Adam on the states (per element, so per sample)."""

    kind: Literal["adam"] = "adam"
    lr: PositiveFloat = Field(0.01, description="State step size.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Moment decay rates.")
    eps: PositiveFloat = Field(1e-8, description="Denominator offset.")


class Euler(_Tagged):
    """Explicit Euler on dx/dt = -alpha dE/dx (eq. 35): x <- x - alpha * dt * dE/dx."""

    kind: Literal["euler"] = "euler"
    alpha: PositiveFloat = Field(0.1, description="Rate alpha.")
    dt: PositiveFloat = Field(1.0, description="Time step.")


StateOptimizerSpec = Annotated[
    SGD | Adam | Euler, Field(discriminator="kind"), BeforeValidator(_tagged)
]


class InferenceSpec(_Strict):
    """State relaxation (eqs. 34-35)."""

    steps: PositiveInt = Field(20, description="Maximum number of inference steps T.")
    init: Literal["forward", "zeros", "prior"] = Field(
        "forward", description="State initialisation: feedforward pass, zeros, or prior mean."
    )
    optimizer: StateOptimizerSpec = Field(default_factory=SGD, description="State optimizer.")
    tol: PositiveFloat | None = Field(
        None, description="Stop early when every sample's state-gradient norm is below tol."
    )
    check_every: PositiveInt = Field(4, description="Steps between tolerance checks.")
    compile: bool = Field(
        False, description="torch.compile the fixed-step loop: a one-time compile, then faster steps."
    )


# --- learning ----------------------------------------------------------------------------------


class WeightOptimizerSpec(_Strict):
    """A torch.optim optimizer for the parameters."""

    kind: str = Field("adam", description="torch.optim class name, case-insensitive (adam, sgd, adamw...).")
    lr: PositiveFloat = Field(1e-3, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments (momentum, betas, ...)."
    )

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        from pcgraph.optim import weight_optimizer_class

        weight_optimizer_class(v)  # raises ValueError naming the known ones
        return v


class LearningSpec(_Strict):
    """Parameter learning (eqs. 38-39)."""

    optimizer: WeightOptimizerSpec = Field(default_factory=WeightOptimizerSpec)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning-rate schedule over the whole run: constant, or cosine decay to 0."
    )
    warmup: float = Field(
        0.0, ge=0, lt=1, description="Fraction of the run's updates with a linear learning-rate warm-up."
    )
    variant: Literal["standard", "incremental", "exact"] = Field(
        "standard",
        description="standard: relax T steps then one parameter step; incremental (iPC): a "
        "parameter step after every inference step; exact: fixed predictions (feedforward values) "
        "during inference, which gives exactly the backprop gradient on an acyclic graph.",
    )


# --- data and training ----------------------------------------------------------------------


class Standardize(_Strict):
    """x <- (x - mean_c) / std_c per channel c, on pixels in [0, 1]."""

    mean: list[float] = Field(min_length=1, description="Per-channel means (one value per channel).")
    std: list[PositiveFloat] = Field(min_length=1, description="Per-channel standard deviations.")


class NodeRef(NamedTuple):
    """``node`` or ``node[start:stop]``: a node, or a range of its (flattened) neurons."""

    node: str
    neurons: slice | None

    @classmethod
    def parse(cls, text: str) -> NodeRef:
        m = _REF.fullmatch(text)
        if m is None:
            raise ValueError(f"expected a node name or node[start:stop], got {text!r}")
        if m["start"] is None:
            return cls(m["node"], None)
        start, stop = int(m["start"]), int(m["stop"])
        if stop <= start:
            raise ValueError(f"expected start < stop in {text!r}")
        return cls(m["node"], slice(start, stop))


_REF = re.compile(r"(?P<node>[^\[\]]+?)(\[\s*(?P<start>\d+)\s*:\s*(?P<stop>\d+)\s*\])?")


class DataSpec(_Strict):
    """The data set and which nodes (or neuron ranges, ``x[0:64]``) it is clamped to. With a
    ``target`` the task is classification (one-hot labels clamped to the target, metric: test
    accuracy); without one (``target: null``) it is reconstruction of the input (metric: test mean
    squared error per pixel). With ``complete`` it is completion: at test time those input neurons
    are hidden, inferred, and scored by their mean squared error (an associative memory)."""

    dataset: Literal["digits", "mnist", "fashion_mnist", "cifar10"] = Field(
        description="digits: scikit-learn's embedded 8x8 digits; mnist, fashion_mnist: 28x28; "
        "cifar10: 3x32x32 colour images."
    )
    input: str = Field("image", description="Node (or node[start:stop]) the images are clamped to.")
    target: str | None = Field(
        "label", description="Node (or node[start:stop]) the one-hot labels are clamped to; null: reconstruction.")
    complete: str | None = Field(
        None, description="Input neurons hidden at test time, inferred and scored by MSE, e.g. x[32:64].")
    batch_size: PositiveInt = Field(128, description="Training batch size.")
    test_batch_size: PositiveInt = Field(1000, description="Evaluation batch size.")
    normalize: Literal["unit", "center"] | Standardize = Field(
        "center", description="unit: pixels in [0, 1]; center: (x - 0.5) / 0.5 in [-1, 1]; or "
        "{mean: [...], std: [...]} per channel."
    )


    @field_validator("input", "target", "complete")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None:
            NodeRef.parse(v)
        return v

    def ref(self, field: str) -> NodeRef | None:
        """``input``, ``target`` or ``complete`` as a :class:`NodeRef` (None when not set)."""
        value = getattr(self, field)
        return None if value is None else NodeRef.parse(value)


class TrainSpec(_Strict):
    epochs: PositiveInt = Field(10, description="Passes over the training set.")
    seed: int = Field(0, description="Seed for parameters and shuffling (CPU runs repeat bit for bit).")
    eval: Literal["feedforward", "inference"] = Field(
        "feedforward",
        description="Test prediction: a feedforward pass, or inference with only the input clamped "
        "(reconstruction always infers the latents).",
    )


class BaselineSpec(_Strict):
    """The backprop model PC is compared with (``pcgraph bench``, ``train(method="bp")``).

    Without an encoder it is the same graph trained by backprop: the feedforward pass, loss = the
    clamped outputs' energies. With one (for generative graphs, whose top latent PC infers) it is
    an autoencoder: ``encoder`` maps the data node to the latent, the graph's edges decode it.
    """

    encoder: EdgeSpec | None = Field(
        None, description="Encoder edge from the data input node to a root latent node (autoencoders)."
    )
    optimizer: WeightOptimizerSpec | None = Field(
        None, description="Weight optimizer for backprop; default: learning.optimizer."
    )


class SequenceSpec(_Strict):
    """Running a graph with delayed edges over time (``pcgraph filter``)."""

    prior_precision: Literal["fixed", "steady_state", "propagated"] = Field(
        "fixed", description="Precision of the recurrent state's prediction: fixed (as declared, e.g. the "
        "process noise), steady_state (the steady-state Kalman prior) or propagated (Riccati, every step).")
    length: PositiveInt = Field(200, description="Length of a simulated sequence.")
    seed: int = Field(0, description="Seed of the simulation.")


class GraphSpec(_Strict):
    """A whole pcgraph spec: the graph and how to infer, learn, load data and train."""

    name: str = Field(description="Name of the model.")
    description: str = Field("", description="Free text.")
    graph: GraphBody
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    learning: LearningSpec = Field(default_factory=LearningSpec)
    data: DataSpec | None = Field(None, description="Data set; needed by `pcgraph train`.")
    bp: BaselineSpec = Field(default_factory=BaselineSpec, description="The backprop baseline.")
    sequence: SequenceSpec = Field(default_factory=SequenceSpec, description="Time: graphs with delayed edges.")
    train: TrainSpec = Field(default_factory=TrainSpec)

    def to_yaml(self) -> str:
        """The spec as YAML text; :func:`spec_from_yaml` reads it back to an equal spec."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


# --- loading ------------------------------------------------------------------------------


def spec_from_dict(data: Any) -> GraphSpec:
    """Validate a plain mapping into a :class:`GraphSpec`; raises :class:`SpecError`."""
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top of the spec, got {type(data).__name__}")
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError([(problems.path(e), problems.message(e)) for e in err.errors()]) from None


def spec_from_yaml(text: str) -> GraphSpec:
    """Parse YAML text (safe loader, duplicate keys refused) into a :class:`GraphSpec`."""
    try:
        data = yaml.load(text, Loader=problems.UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise SpecError("invalid YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"invalid YAML: {where}{problem}") from None
    return spec_from_dict(data)


def load_spec(path: str | Path) -> GraphSpec:
    """Read a spec file. Raises :class:`SpecError` (with the file name) if it is unreadable or invalid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read spec file {str(path)!r}: {getattr(err, 'strerror', None) or err}") from None
    return spec_from_yaml(text)


def json_schema() -> dict:
    """The JSON Schema of the spec format (for editors' YAML autocompletion)."""
    schema = GraphSpec.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    # ops registered after import belong in the schema too: fill the pipeline items in now
    defs["EdgeSpec"]["properties"]["fn"]["items"] = op_json_schema()
    # the short forms the loader accepts: `shape: 784`, `from: image`, `energy: categorical`, `sgd`
    shorts = [("NodeSpec", "shape", {"type": "integer", "minimum": 1}),
              ("EdgeSpec", "from", {"type": "string"}),
              ("NodeSpec", "energy", {"enum": ["gaussian", "categorical"]}),
              ("InferenceSpec", "optimizer", {"enum": ["sgd", "adam", "euler"]})]
    for model, field, short in shorts:
        prop = defs[model]["properties"][field]
        keep = {k: prop.pop(k) for k in ("description", "default", "title") if k in prop}
        defs[model]["properties"][field] = {"anyOf": [short, prop], **keep}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
