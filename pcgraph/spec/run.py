"""How a spec runs: inference, learning, data, training, the backprop baseline and time."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple

import torch
from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pcgraph.spec.graph import EdgeSpec, ScheduleField, UpdateField, VariantField, _Strict, _Tagged, _tagged
from pcgraph.updates import Relaxed
from pcgraph.variants import Standard

SEED_MAX = 2**63 - 1  # the largest seed torch.manual_seed takes as a signed 64-bit integer


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


class PrecisionSpec(_Strict):
    """A precision schedule for some nodes: pi_v(t) multiplies node v's energy at inference step t."""

    nodes: list[str] | None = Field(None, min_length=1, description="The nodes it applies to, by name.")
    distance: NonNegativeInt | tuple[NonNegativeInt, NonNegativeInt] | None = Field(
        None, description="Or: the nodes at this distance (or in this [lo, hi] range) from the clamped output.")
    schedule: ScheduleField = Field(description="A registered schedule: constant, spike or decay, as a name or "
                                    "{kind: ..., args}.")

    @model_validator(mode="after")
    def _one_selector(self) -> PrecisionSpec:
        if self.nodes is not None and self.distance is not None:
            raise ValueError("select nodes by name or by distance, not both")
        if isinstance(self.distance, tuple) and self.distance[1] < self.distance[0]:
            raise ValueError(f"expected distance [lo, hi] with lo <= hi, got {list(self.distance)}")
        return self

    def selects(self, node: str, distance: int | None) -> bool:
        if self.nodes is not None:
            return node in self.nodes
        if self.distance is None:
            return True
        lo, hi = self.distance if isinstance(self.distance, tuple) else (self.distance, self.distance)
        return distance is not None and lo <= distance <= hi


class InferenceSpec(_Strict):
    """State relaxation (eqs. 34-35)."""

    steps: PositiveInt = Field(20, description="Maximum number of inference steps T.")
    init: Literal["forward", "zeros", "prior", "amortised"] = Field(
        "forward", description="State initialisation: feedforward pass, zeros, prior mean, or amortised "
        "(graph.encoders propose the latents, the feedforward pass fills in the rest)."
    )
    optimizer: StateOptimizerSpec = Field(default_factory=SGD, description="State optimizer.")
    tol: PositiveFloat | None = Field(
        None, description="Stop early when every sample's state-gradient norm is below tol."
    )
    check_every: PositiveInt = Field(4, description="Steps between tolerance checks.")
    compile: bool | Literal["auto"] = Field(
        "auto", description="Compile the fixed-step loop (on CPU ahead of time, cached on disk across runs). "
        "auto: training runs of at least 5,000 updates on CPU, of graphs without convolutions; true: always "
        "(on CUDA: torch.compile and CUDA graphs); false: eager."
    )
    trace_nodes: bool = Field(
        False, description="Record every node's energy at every inference step (training: each epoch's "
        "history row gets node_energy, per sample and step, averaged over the epoch; the loop runs eagerly).")
    precisions: list[PrecisionSpec] = Field(
        default_factory=list, description="Precision schedules over the inference steps, per node (the last "
        "entry selecting a node wins); learning uses unit precision.")


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
        weight_optimizer_class(v)  # raises ValueError naming the known ones
        return v

    @model_validator(mode="before")
    @classmethod
    def _arguments_go_in_options(cls, data: Any) -> Any:
        """`momentum: 0.9` beside `kind` (as the state optimizer takes it): say where it belongs."""
        if isinstance(data, dict):
            stray = [k for k in data if isinstance(k, str) and k not in cls.model_fields]
            if stray:
                moved = "{" + ", ".join(f"{k}: {data[k]!r}" for k in stray) + "}"
                raise PydanticCustomError("weight_options", "unknown field(s) {stray}; the torch.optim class's "
                                          "own arguments go under options: {moved}",
                                          {"stray": ", ".join(stray), "moved": moved})
        return data


class LearningSpec(_Strict):
    """Parameter learning (eqs. 38-39)."""

    optimizer: WeightOptimizerSpec = Field(default_factory=WeightOptimizerSpec)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning-rate schedule over the whole run: constant, or cosine decay to 0."
    )
    warmup: float = Field(
        0.0, ge=0, lt=1, description="Fraction of the run's updates with a linear learning-rate warm-up."
    )
    variant: VariantField = Field(
        default_factory=Standard,
        description="A registered PC variant, as a name or {kind: ..., options}: standard (relax T steps "
        "then one parameter step), incremental (iPC: a parameter step after every inference step), exact "
        "(fixed predictions: exactly the backprop gradient on an acyclic graph), epc (relax the errors).",
    )
    update: UpdateField = Field(
        default_factory=Relaxed,
        description="Where the weight gradient is taken: relaxed (at the relaxed states), forward (relaxed "
        "targets, feedforward inputs) or {kind: nudged, beta, sign} (output clamped to u + beta (y - u)).",
    )


# the base class; LBFGS needs a closure, SparseAdam sparse gradients, Muon 2-D parameters only
_UNSUITABLE = {"optimizer", "lbfgs", "sparseadam", "muon"}


def weight_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch.optim class called ``name`` (case-insensitive); ValueError naming the known ones."""
    known = {
        k.lower(): v
        for k, v in vars(torch.optim).items()
        if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and k.lower() not in _UNSUITABLE
    }
    if name.lower() not in known:
        raise ValueError(f"unknown torch.optim optimizer {name!r} (known: {', '.join(sorted(known))})")
    return known[name.lower()]


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


class NpzData(_Strict):
    """Your own data: two ``.npz`` files (``numpy.savez``), the train and the test split, holding one
    array per data node, under the node's name as written in ``data.input`` / ``data.target`` (a
    node, or ``node[start:stop]``). Arrays have the samples first; a 1-D integer array for a node of
    shape [C] holds class labels (clamped one-hot)."""

    kind: Literal["npz"] = "npz"
    train: str = Field(min_length=1, description="The training split's .npz file; a relative path is looked up "
                       "in --data-root (or $PCGRAPH_DATA), then in the current folder.")
    test: str = Field(min_length=1, description="The test split's .npz file, found as train is.")


IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")


def _dataset_kind(value: Any) -> str:
    return "npz" if isinstance(value, (dict, NpzData)) else "images"


DatasetField = Annotated[
    Annotated[Literal[IMAGE_DATASETS], Tag("images")] | Annotated[NpzData, Tag("npz")],
    Discriminator(_dataset_kind),
]


class DataSpec(_Strict):
    """The data set and which nodes (or neuron ranges, ``x[0:64]``) it is clamped to. With a
    ``target`` the task is classification (one-hot labels clamped to the target, metric: test
    accuracy); without one (``target: null``) it is reconstruction of the input (metric: test mean
    squared error per pixel). With ``complete`` it is completion: at test time those input neurons
    are hidden, inferred, and scored by their mean squared error (an associative memory).

    An ``npz`` dataset can feed several nodes: ``input: [left, right]``, ``target: [digit, parity]``
    (each target is scored; the test accuracy is their mean). The image data sets feed one input
    and one target."""

    dataset: DatasetField = Field(
        description="digits: scikit-learn's embedded 8x8 digits; mnist, fashion_mnist: 28x28; "
        "cifar10: 3x32x32 colour images; or {kind: npz, train: FILE, test: FILE}: your own arrays, one per node."
    )
    input: str | list[str] = Field("image", description="Node (or node[start:stop]) the images are clamped to: a "
                                   "whole node is `role: observed`, a node with a clamped range is latent; a list of "
                                   "them with an npz dataset.")
    target: str | list[str] | None = Field(
        "label", description="Node (or node[start:stop]) the one-hot labels are clamped to, observed or latent as "
        "for input (a list with an npz dataset); null: reconstruction.")
    complete: str | None = Field(
        None, description="Input neurons hidden at test time, inferred and scored by MSE, e.g. x[32:64].")
    batch_size: PositiveInt = Field(128, description="Training batch size.")
    test_batch_size: PositiveInt = Field(1000, description="Evaluation batch size.")
    normalize: Literal["unit", "center"] | Standardize = Field(
        "center", description="unit: pixels in [0, 1] (npz: the arrays as stored, its default); center: "
        "(x - 0.5) / 0.5 in [-1, 1]; or {mean: [...], std: [...]} per channel."
    )

    @model_validator(mode="before")
    @classmethod
    def _npz_as_stored(cls, data: Any) -> Any:
        """An npz dataset's arrays are clamped as stored unless ``normalize`` says otherwise."""
        if isinstance(data, dict) and _dataset_kind(data.get("dataset")) == "npz" and "normalize" not in data:
            return {**data, "normalize": "unit"}
        return data

    @field_validator("input", "target")
    @classmethod
    def _references(cls, v: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        if not isinstance(v, list):
            return cls._reference(v)
        if not v:
            raise ValueError("expected a node name or a list of them, got an empty list")
        for i, text in enumerate(v):
            try:
                NodeRef.parse(text)
            except ValueError as err:
                raise ValueError(f"item {i}: {err}") from None
        twice = sorted({t for t in v if v.count(t) > 1})
        if twice:
            raise ValueError(f"each node is fed once, but the list names {', '.join(twice)} twice")
        if len(v) == 1:
            return v[0]
        if isinstance(info.data.get("dataset"), str):
            raise ValueError(f"{info.data['dataset']} supplies one {'image' if info.field_name == 'input' else 'label'} "
                             f"per sample, not {len(v)}; several {info.field_name} nodes need an npz dataset "
                             "(dataset: {kind: npz, train: FILE, test: FILE}, one array per node)")
        return v

    @field_validator("complete")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None:
            NodeRef.parse(v)
        return v

    def names(self, field: str) -> list[str]:
        """The references of ``input``, ``target`` or ``complete`` as written (none: [])."""
        value = getattr(self, field)
        return [] if value is None else [value] if isinstance(value, str) else list(value)

    def refs(self, field: str) -> list[NodeRef]:
        """``input``, ``target`` or ``complete`` as :class:`NodeRef` s."""
        return [NodeRef.parse(text) for text in self.names(field)]

    def ref(self, field: str) -> NodeRef | None:
        """The one reference of ``input``, ``target`` or ``complete`` (None when not set); a
        ValueError when the field lists several (read them with :meth:`refs`)."""
        refs = self.refs(field)
        if len(refs) > 1:
            raise ValueError(f"data.{field} names {len(refs)} nodes; read them with refs({field!r})")
        return refs[0] if refs else None


class TrainSpec(_Strict):
    epochs: PositiveInt = Field(10, description="Passes over the training set.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for parameters and shuffling (CPU runs repeat bit "
                      "for bit); 0 to 2**63 - 1.")
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
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the simulation; 0 to 2**63 - 1.")


