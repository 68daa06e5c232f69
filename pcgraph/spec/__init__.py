"""The spec: a strict pydantic description of a PC graph and how to run it.

A :class:`GraphSpec` is what a YAML file (or the :class:`pcgraph.Graph` builder) produces and what
:func:`pcgraph.compile` consumes. Every model forbids unknown fields; unions carry a ``kind`` tag
so an error points at one variant. :func:`load_spec` reads YAML with a safe loader that also
rejects duplicate keys, and turns pydantic's errors into one :class:`SpecError` whose lines are
``yaml.path: what was expected, what came``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from pcgraph.energies import energy_json_schema
from pcgraph.errors import SpecError
from pcgraph.ops import op_json_schema
from pcgraph.precision import schedule_json_schema
from pcgraph.spec import problems
from pcgraph.spec.graph import EdgeSpec, GraphBody, NodeSpec, _Strict  # noqa: F401 - re-exported
from pcgraph.spec.overrides import apply_overrides
from pcgraph.spec.run import (  # noqa: F401 - re-exported
    SGD,
    Adam,
    BaselineSpec,
    DataSpec,
    Euler,
    InferenceSpec,
    LearningSpec,
    NodeRef,
    SequenceSpec,
    Standardize,
    TrainSpec,
    WeightOptimizerSpec,
    weight_optimizer_class,
)
from pcgraph.updates import update_json_schema
from pcgraph.variants import variant_json_schema


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

    def to_yaml(self, resolved: bool = False) -> str:
        """The spec as YAML text; :func:`spec_from_yaml` reads it back to an equal spec.

        By default only what differs from the defaults is written (what a person would type);
        ``resolved=True`` writes every field, defaults included, so the text keeps its meaning
        when a later pcgraph changes a default (run folders and checkpoints record this form)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=not resolved,
                               context={"resolved": resolved})
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


def spec_from_yaml(text: str, overrides: Sequence[str] = ()) -> GraphSpec:
    """Parse YAML text (safe loader, duplicate keys refused) into a :class:`GraphSpec`, after
    setting the ``PATH=VALUE`` ``overrides`` (:mod:`pcgraph.spec.overrides`: ``inference.steps=20``)."""
    try:
        data = yaml.load(text, Loader=problems.UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise SpecError("invalid YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"invalid YAML: {where}{problem}") from None
    return spec_from_dict(apply_overrides(data, overrides) if overrides else data)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> GraphSpec:
    """Read a spec file, with ``overrides`` (``PATH=VALUE``, see :mod:`pcgraph.spec.overrides`) set.
    Raises :class:`SpecError` (with the file name) if it is unreadable or invalid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read spec file {str(path)!r}: {getattr(err, 'strerror', None) or err}") from None
    return spec_from_yaml(text, overrides)


def json_schema() -> dict:
    """The JSON Schema of the spec format (for editors' YAML autocompletion)."""
    schema = GraphSpec.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    # ops registered after import belong in the schema too: fill the pipeline items in now
    defs["EdgeSpec"]["properties"]["fn"]["items"] = op_json_schema()
    defs["NodeSpec"]["properties"]["energy"].update(energy_json_schema())
    defs["LearningSpec"]["properties"]["variant"].update(variant_json_schema())
    defs["LearningSpec"]["properties"]["update"].update(update_json_schema())
    defs["PrecisionSpec"]["properties"]["schedule"].update(schedule_json_schema())
    # the short forms the loader accepts: `shape: 784`, `from: image`, `energy: categorical`, `sgd`
    shorts = [("NodeSpec", "shape", {"type": "integer", "minimum": 1}),
              ("EdgeSpec", "from", {"type": "string"}),
              ("InferenceSpec", "optimizer", {"enum": ["sgd", "adam", "euler"]})]
    for model, field, short in shorts:
        prop = defs[model]["properties"][field]
        keep = {k: prop.pop(k) for k in ("description", "default", "title") if k in prop}
        defs[model]["properties"][field] = {"anyOf": [short, prop], **keep}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
