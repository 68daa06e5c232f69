"""PC variants: the learning rules one :class:`~pcgraph.Solver` runs, as registered classes.

A variant does not run anything: it states what the solver does, and the solver reads these
statements (it never compares variant names):

- ``relaxes``: the variables inference moves (``states``: the node values x_v; ``errors``: the
  e_v of x_v = f_v(parents) + e_v, as ePC does; the solver refuses anything else);
- ``fixed_predictions``: predictions and their Jacobians stay at the feedforward pass during
  inference (inference then starts from that pass, whatever ``init`` says);
- ``learn_every_step``: parameters take a step after every inference step (else once, after
  relaxation);
- :meth:`Variant.inference` may fix the number of steps and the state step size;
- :meth:`Variant.check` refuses graphs the rule is not defined on, before any work.

In a spec ``learning.variant`` is a name (``incremental``) or ``{kind: ..., options}``; it is turned
into an object once. A new variant is one class in one file, decorated with :func:`register_variant`.
Where the weight gradient is taken is a separate setting, ``learning.update`` (:mod:`pcgraph.updates`),
so any variant combines with any update rule it is defined for.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from pcgraph.errors import SpecError
from pcgraph.registry import Registered, Registry


class Variant(Registered):
    """Base class of PC variants; subclasses set ``kind`` and the statements they change."""

    relaxes: ClassVar[Literal["states", "errors"]] = "states"
    fixed_predictions: ClassVar[bool] = False
    learn_every_step: ClassVar[bool] = False

    def inference(self, graph, steps: int) -> tuple[int, float | None]:
        """(inference steps T, a fixed state step size replacing the state optimizer, or None)."""
        return steps, None

    def check(self, graph, relaxed: list[str], local_rules: bool, partly_clamped: bool) -> None:
        """Raise :class:`SpecError` (at ``learning.variant``) if the rule is not defined on this run."""


VARIANTS = Registry("variant", Variant)
register_variant = VARIANTS.register  # class decorator: adds a class under its ``kind``
parse_variant = VARIANTS.parse  # "name" or {"kind": "name", **args} -> an instance (ValueError if unknown)
variant_json_schema = VARIANTS.json_schema  # a registered name or its mapping form


@register_variant
class Standard(Variant):
    """Standard PC: relax the states for T steps, then one parameter step at the relaxed states."""

    kind = "standard"


@register_variant
class Incremental(Variant):
    """Incremental PC (iPC): a parameter step after every inference step."""

    kind = "incremental"
    learn_every_step = True


@register_variant
class Exact(Variant):
    """Fixed prediction: predictions held at the feedforward pass; exactly backprop's gradient on a DAG.

    During inference every prediction and its Jacobian stay at the feedforward values; T is the
    graph's depth with unit Euler steps, so each step carries the errors one edge further (as in
    Z-IL, notes eqs. 48-49), and the parameter gradient equals backprop's on any acyclic graph.
    """

    kind = "exact"
    fixed_predictions = True

    def inference(self, graph, steps: int) -> tuple[int, float | None]:
        return graph.depth, 1.0

    def check(self, graph, relaxed: list[str], local_rules: bool, partly_clamped: bool) -> None:
        if not graph.acyclic:
            raise SpecError("the exact variant needs an acyclic graph (errors travel one edge a step from the "
                            "outputs), and this graph has a cycle; use variant standard", "learning.variant")
        if partly_clamped:
            raise SpecError("the exact variant clamps whole nodes; this batch clamps part of one", "learning.variant")
        if not local_rules:
            raise SpecError("the exact variant runs on the ops' closed-form local rules, and this run has none "
                            "(an op without a local rule, or Solver(local_rules=False))", "learning.variant")
        # one unit step sets an inferred node's error to the error arriving from above only when Pi_v = I
        weighted = [v for v in relaxed if v in graph.terms and _precision_field(graph.terms[v])]
        if weighted:
            v = weighted[0]
            field = _precision_field(graph.terms[v])
            value = getattr(graph.terms[v].energy, field)
            what = (f"{field}: {value}" if isinstance(value, (str, float)) else
                    f"a {'matrix' if isinstance(value[0], list) else 'diagonal'} {field}")
            raise SpecError(f"the exact variant takes unit steps, which carry backprop's errors only through inferred "
                            f"nodes of unit precision; inferred node {v!r} has {what} (all such: {weighted}). Give "
                            "the inferred nodes precision 1 (the outputs' precision may be anything), or use "
                            "variant standard", f"graph.nodes.{v}.energy.{field}")
        shifted = [v for v in relaxed if v in graph.terms and not graph.terms[v].energy.translation_invariant]
        if shifted:
            raise SpecError(f"the exact variant relaxes deviations from the feedforward pass, so the inferred "
                            f"nodes need an energy of x - mu alone (gaussian, laplace); {shifted} have not",
                            "learning.variant")


def _precision_field(term) -> str | None:
    """The field that gives a node's energy term a precision other than I (``learn``,
    ``covariance`` or ``precision``), or None at unit precision or for an energy without one."""
    energy = term.energy
    if getattr(energy, "learn", "none") != "none":
        return "learn"
    scalar = getattr(energy, "scalar", 1.0)
    if scalar == 1.0 or (scalar is None and torch.equal(term.matrix(), torch.eye(len(term.matrix())).to(term.matrix()))):
        return None
    return "covariance" if getattr(energy, "covariance", None) is not None else "precision"


@register_variant
class ErrorParametrised(Variant):
    """ePC: inference relaxes the errors e_v of x_v = f_v(parents) + e_v, from e = 0 (the feedforward pass).

    The state gradient flows through the whole graph at every step, so an output error reaches
    every layer at once; the equilibria are standard PC's (e -> x is a bijection on a DAG) and the
    weights learn by the local rule at the relaxed states (Goemaere et al. 2025, arXiv 2505.20137).
    """

    kind = "epc"
    relaxes = "errors"

    def check(self, graph, relaxed: list[str], local_rules: bool, partly_clamped: bool) -> None:
        if not graph.acyclic:
            raise SpecError("ePC writes every state as its prediction plus an error, which needs a feedforward "
                            "pass, and this graph has a cycle; use variant standard", "learning.variant")
        if partly_clamped:
            raise SpecError("ePC clamps whole nodes; this batch clamps part of one", "learning.variant")
        shifted = [v for v in relaxed if v in graph.terms and not graph.terms[v].energy.translation_invariant]
        if shifted:
            raise SpecError(f"ePC offsets each inferred state from its prediction, so those nodes need an energy of "
                            f"x - mu alone (gaussian, laplace); {shifted} have not", "learning.variant")
