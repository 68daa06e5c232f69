"""The op registry: the building blocks of an edge's pipeline.

An edge's ``fn`` is a list of ops applied in order, ``mu = op_n(...op_1(x))``. Each op is a
small strict pydantic model (its YAML arguments) with one method, :meth:`Op.build`, that turns
it into a ``torch.nn.Module`` once the input shape is known. New ops are one file each: subclass
:class:`Op`, set ``kind``, decorate with :func:`register_op`. Only registered ops can appear in a
spec, so a spec never names arbitrary code.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from pcgraph.registry import Registered, Registry

Shape = tuple[int, ...]

class OpModule:
    """The optional hooks of a module an op builds, declared once; an op implements the ones it has
    in its own file (a module without this interface runs on autograd, which is slower).

    - :meth:`local_vjp`: the closed-form vector-Jacobian product, used by the solver's fast path
      when ``has_local_rule`` is true;
    - :meth:`taped`: the forward pass and what :meth:`local_vjp` will read (the input, by default);
    - :meth:`refresh`: rebuild cached derived tensors (called at the start of every relaxation);
    - :meth:`connections`: the (source, target) neuron index pairs of a sparse op, else None;
    - ``elementwise``: the module acts on each value on its own (it mixes no neurons);
    - ``monotone``: elementwise and non-decreasing in floating point too (relu, leaky_relu with a
      slope >= 0), and ``picks_max``: each output is the largest of some inputs (max pooling).
      Since max(f(a), f(b)) = f(max(a, b)) for such an f, the compiler runs a ``picks_max`` op
      before a ``monotone`` op that precedes it (:func:`pool_first`; read once, when the graph
      is compiled): the same output on fewer values;
    - ``compile_pays``: compiling a loop through this op ahead of time speeds it up (False for
      ops whose cost is a few large kernels that compiling cannot improve: convolutions; a spec's
      ``inference.compile: auto`` leaves graphs holding one eager).
    """

    has_local_rule: ClassVar[bool] = False
    elementwise: ClassVar[bool] = False
    monotone: ClassVar[bool] = False
    picks_max: ClassVar[bool] = False
    compile_pays: ClassVar[bool] = True

    def local_vjp(self, x: Tensor, g: Tensor, grads: dict | None, need_input: bool) -> Tensor | None:
        """g^T df(x)/dx for the module's input ``x`` and output gradient ``g``; with ``grads`` it
        also adds the batch-summed dE/dtheta of its parameters to ``grads`` ({parameter: tensor}).
        ``need_input=False``: only the parameter gradients are wanted (may return None)."""
        raise NotImplementedError(f"{type(self).__name__} has no local rule")

    def taped(self, x: Tensor) -> tuple[Tensor, object]:
        """(f(x), what :meth:`local_vjp` receives as ``x``): the input itself by default. An op whose
        rule would otherwise redo part of the forward pass saves that part here (max pooling: the
        arg max of each window)."""
        return self(x), x

    def refresh(self) -> None:
        """Rebuild cached tensors derived from the parameters (nothing by default)."""

    def connections(self) -> tuple[Tensor, Tensor] | None:
        """(source neuron, target neuron) index pairs of a sparse op; None for dense ops."""
        return None


def pool_first(modules: list[nn.Module], kinds: list[str]) -> tuple[list[nn.Module], list[str]]:
    """An edge's pipeline with each max pooling moved before the monotone elementwise ops just
    ahead of it (:class:`OpModule`'s ``monotone`` and ``picks_max``), and the ops' kinds to match:
    max_w f(x) = f(max_w x) for a non-decreasing f, so the output is the same while f and its
    local rule see a pool's output, a fraction of the values (a quarter for 2x2 windows). At an
    exact tie f(a) = f(b) with a != b the gradient may go to the other arg max, as valid a
    subgradient. Only modules without parameters or buffers move, so parameter names (and the
    ``fn[k]`` of messages about them) keep the spec's positions."""
    modules, kinds = list(modules), list(kinds)

    def movable(m: nn.Module, flag: str) -> bool:
        return bool(getattr(m, flag, False)) and next(m.parameters(), None) is None and next(m.buffers(), None) is None

    for k in range(1, len(modules)):
        j = k
        while j > 0 and movable(modules[j], "picks_max") and movable(modules[j - 1], "monotone"):
            modules[j - 1], modules[j] = modules[j], modules[j - 1]
            kinds[j - 1], kinds[j] = kinds[j], kinds[j - 1]
            j -= 1
    return modules, kinds


def accumulate(grads: dict, p: Tensor, g: Tensor) -> None:
    """grads[p] += g (for :meth:`OpModule.local_vjp`)."""
    grads[p] = grads[p] + g if p in grads else g


_aten = torch.ops.aten
STOCK: dict[type[nn.Module], type[nn.Module]] = {}  # torch module -> its subclass with the local rule


def adopt(module: nn.Module) -> nn.Module:
    """A plain torch module an op built (``nn.Linear``, ``nn.Tanh``, ...) as the built-in op's
    module with the same state and its local rule; any other module unchanged."""
    rule = STOCK.get(type(module))
    if rule is not None:
        module.__class__ = rule  # a subclass adding only methods: the state is the same
    return module


class Op(Registered):
    """Base class of every op. Subclasses declare their arguments as pydantic fields."""

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


OPS = Registry("op", Op)
register_op = OPS.register  # class decorator: adds a class under its ``kind``
parse_op = OPS.parse  # "name" or {"kind": "name", **args} -> an instance (ValueError if unknown)
op_json_schema = OPS.json_schema  # a registered name or its mapping form


__all__ = ["OPS", "Op", "OpModule", "STOCK", "Shape", "accumulate", "adopt", "ValidationError", "op_json_schema", "parse_op", "pool_first",
           "register_op"]

# Built-in ops register themselves on import.
from pcgraph.ops import activation, conv, linear, shape, sparse  # noqa: E402,F401
