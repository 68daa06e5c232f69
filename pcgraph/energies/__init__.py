"""Node energies: the term e_v(x_v, mu_v) each node adds to the total energy.

    E = sum_v sum_batch e_v(x_v, mu_v)        (eq. 27, sign flipped, constants dropped)

An energy is registered by its ``kind``, the tag a spec writes (``energy: laplace`` or
``energy: {kind: laplace, scale: 0.5}``). It is a small strict pydantic model (its YAML
arguments) with the maths as methods, each written once:

- :meth:`Energy.value`: e(x, mu) per sample, shape (B,);
- :meth:`Energy.optimum`: the state that minimises e given mu (where a free leaf sits);
- :meth:`Energy.local`: optional closed form (sum of e, dE/dx, dE/dmu) for the fast path;
  the default differentiates :meth:`value` by autograd, so every energy runs on it.

:meth:`Energy.build` turns the arguments into the runtime :class:`Term` a compiled graph holds
(an ``nn.Module``, so energies with tensors, e.g. a learnt precision, move with ``.to()`` and are
saved in checkpoints). The default term calls the energy's own methods; an energy with tensors
builds its own :class:`Term` subclass. New energies are one class in one file::

    @pcgraph.register_energy
    class Cauchy(pcgraph.Energy):
        "e = sum_i log(1 + (x_i - mu_i)^2)"
        kind = "cauchy"
        def value(self, x, mu):
            return per_sample(torch.log1p((x - mu) ** 2))
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from pcgraph.registry import Registered, Registry


def per_sample(t: Tensor) -> Tensor:
    """Sum over everything but the batch dimension: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).sum(1)


class Energy(Registered):
    """Base class of node energies; subclasses set ``kind`` and implement :meth:`value`.

    Class attributes a subclass may set:
        leaf_only: its states live on a constrained set (probabilities) that gradient steps
            would leave, so the node must be a leaf (clamped, or set to its optimum).
        translation_invariant: e depends on x - mu only (lets the exact variant relax
            deviations from the feedforward pass without cancellation).
    """

    leaf_only: ClassVar[bool] = False
    translation_invariant: ClassVar[bool] = False

    def value(self, x: Tensor, mu: Tensor) -> Tensor:
        """e(x, mu) per sample, shape (B,)."""
        raise NotImplementedError(f"energy {self.kind!r} must implement value(x, mu)")

    def optimum(self, mu: Tensor) -> Tensor:
        """argmin_x e(x, mu); mu itself unless overridden."""
        return mu

    def local(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(sum over the batch of e, dE/dx, dE/dmu). Override with the closed form where there is one."""
        return autograd_local(self.value, x, mu)

    def build(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Term:
        """The runtime term of a node of per-sample ``shape``; ``ValueError`` if it does not fit."""
        return Term(self)

    def scaled(self, factor: float) -> Energy | None:
        """This energy with its precision multiplied by ``factor`` (its variance divided by it), or
        None when it has none to scale (verify-bp's approx mode needs one)."""
        return None

    def random_data(self, size: int, shape: tuple[int, ...], generator: torch.Generator,
                    dtype: torch.dtype) -> Tensor:
        """Random values of the kind this energy scores (for gradient checks): standard normal."""
        return torch.randn(size, *shape, generator=generator, dtype=dtype)


ENERGIES = Registry("energy", Energy)
class Term(nn.Module):
    """A node's energy at run time: ``value``, ``optimum`` and ``local`` as in :class:`Energy`.

    ``center`` is the constant a prior term is measured from (None for a prediction term).
    """

    def __init__(self, energy: Energy, center: Tensor | float | None = None):
        super().__init__()
        self.energy = energy
        if isinstance(center, Tensor):
            self.register_buffer("center", center)
        else:
            self.center = center

    @property
    def closed_form(self) -> bool:
        """True when :meth:`local` is a closed form (not autograd on :meth:`value`)."""
        return type(self.energy).local is not Energy.local

    @property
    def stateful(self) -> bool:
        """True when the term holds tensors (parameters or buffers) the graph must register."""
        return any(True for _ in self.parameters()) or any(True for _ in self.buffers())

    def value(self, x: Tensor, mu: Tensor) -> Tensor:
        return self.energy.value(x, mu)

    def optimum(self, mu: Tensor) -> Tensor:
        return self.energy.optimum(mu)

    def local(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.energy.local(x, mu)

    def extra_repr(self) -> str:
        return self.energy.kind


def autograd_local(value, x: Tensor, mu: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """(sum of ``value(x, mu)``, its gradients in x and mu) by autograd on this one term."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        mu_t = torch.as_tensor(mu, dtype=x.dtype, device=x.device).detach().expand_as(x).requires_grad_()
        e = value(x, mu_t).sum()
        d_x, d_mu = torch.autograd.grad(e, (x, mu_t))
    return e.detach(), d_x, d_mu


register_energy = ENERGIES.register  # class decorator: adds a class under its ``kind``
parse_energy = ENERGIES.parse  # "name" or {"kind": "name", **args} -> an instance (ValueError if unknown)
energy_json_schema = ENERGIES.json_schema  # a registered name or its mapping form


__all__ = ["ENERGIES", "Energy", "Term", "autograd_local", "energy_json_schema", "parse_energy", "per_sample",
           "register_energy"]

# Built-in energies register themselves on import.
from pcgraph.energies import bernoulli, categorical, gaussian, laplace  # noqa: E402,F401
