"""The Gaussian energy and the Gaussian prior, with their precisions.

    e = 1/2 (x - mu)^T Pi (x - mu)  [- 1/2 log|Pi| when Pi is learnt]      (eq. 27, Sigma = Pi^-1)

Pi is a number pi (Pi = pi I, any node shape), a diagonal (a list) or a full symmetric positive
definite matrix (a list of rows), given as ``precision`` or as ``covariance``; the last two need
a 1-D node. With Pi fixed the log term is a constant and is dropped; when Pi is learnt it is kept,
and gradient descent on e drives Pi^-1 towards the mean of eps eps^T (the fixed point of Box 2's
update, eq. 42). Learnt parametrisations keep Pi positive definite for any parameter value:
``diagonal``, Pi = diag(exp(s)); ``full``, Pi = L L^T with L lower triangular and an exponentiated
diagonal. A prior is the same energy around a constant mean m: e = 1/2 (x - m)^T Pi (x - m).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BeforeValidator,
    Field,
    SerializationInfo,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from pcgraph.energies import Energy, Term, per_sample, register_energy
from pcgraph.errors import SpecError
from pcgraph.registry import resolved

MAX_MATRIX = 1024  # a matrix precision is for small nodes (Kalman states, outputs)


def _precision_value(v: Any) -> Any:
    """A finite number > 0, a list of them (a diagonal) or a list of rows of finite numbers (a matrix)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if number(v) and v > 0:
        return float(v)
    if isinstance(v, list) and v and all(number(x) and x > 0 for x in v):
        return [float(x) for x in v]
    if isinstance(v, list) and v and all(isinstance(r, list) and r and all(number(x) for x in r) for r in v):
        return [[float(x) for x in r] for r in v]
    raise PydanticCustomError("precision", "expected a finite number greater than 0, a list of them (a diagonal) or a "
                              "list of rows (a matrix), got {got}", {"got": repr(v)})


PrecisionValue = Annotated[
    Any, BeforeValidator(_precision_value),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                              {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
                              {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}]}),
]


def check_spd(rows: list[list[float]], name: str) -> None:
    """Raise ValueError unless ``rows`` is a symmetric positive definite square matrix."""
    n = len(rows)
    if any(len(r) != n for r in rows):
        raise ValueError(f"{name} must be a square matrix, got rows of lengths {[len(r) for r in rows]}")
    m = torch.tensor(rows, dtype=torch.float64)
    if not torch.allclose(m, m.T, rtol=1e-9, atol=1e-12):
        raise ValueError(f"{name} must be symmetric")
    if torch.linalg.cholesky_ex(m).info != 0:
        raise ValueError(f"{name} must be positive definite")


@register_energy
class Gaussian(Energy):
    """e = 1/2 (x - mu)^T Pi (x - mu): squared prediction error weighted by a precision Pi."""

    kind = "gaussian"
    translation_invariant = True
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
                check_spd(value, name)
        return self

    @property
    def scalar(self) -> float | None:
        """The precision as one number when it is a fixed multiple of I, else None."""
        if self.learn != "none":
            return None
        if self.covariance is not None:
            return 1.0 / self.covariance if isinstance(self.covariance, float) else None
        return self.precision if isinstance(self.precision, float) else None

    def matrix(self, size: int) -> Tensor:
        """The declared precision as an (n, n) float64 matrix (from precision or covariance)."""
        value, invert = (self.covariance, True) if self.covariance is not None else (self.precision, False)
        if not isinstance(value, float) and len(value) != size:
            got = f"a {len(value)}x{len(value)} matrix" if isinstance(value[0], list) else f"{len(value)} values"
            raise SpecError(f"expected {size} values (a diagonal) or a {size}x{size} matrix for a node of size "
                            f"{size}, got {got}", "covariance" if invert else "precision")
        if isinstance(value, float):
            m = value * torch.eye(size, dtype=torch.float64)
        elif isinstance(value[0], list):
            m = torch.tensor(value, dtype=torch.float64)
        else:
            m = torch.diag(torch.tensor(value, dtype=torch.float64))
        return torch.linalg.inv(m) if invert else m

    def build(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
              center: Tensor | float | None = None) -> GaussianTerm:
        if self.scalar is not None:
            return GaussianTerm(self, self.scalar, None, center=center)
        if len(shape) != 1 or shape[0] > MAX_MATRIX:
            raise ValueError(f"a matrix or learnt precision needs a 1-D node of at most {MAX_MATRIX:,} values, "
                             f"got shape {list(shape)}")
        return GaussianTerm(self, None, self.matrix(shape[0]).to(dtype), center=center)

    def value(self, x: Tensor, mu: Tensor) -> Tensor:  # the spec alone: a scalar precision
        return self.build(tuple(x.shape[1:]), x.dtype).value(x, mu)

    def scaled(self, factor: float) -> Gaussian | None:
        if self.learn != "none":
            return None
        if self.scalar is not None:
            return self.model_copy(update={"precision": self.scalar * factor, "covariance": None})
        if self.covariance is not None:
            return self.model_copy(update={"covariance": _scale(self.covariance, 1 / factor)})
        return self.model_copy(update={"precision": _scale(self.precision, factor)})


def _scale(value: Any, factor: float) -> Any:
    if isinstance(value, float):
        return value * factor
    return [_scale(v, factor) for v in value]


class GaussianTerm(Term):
    """The Gaussian energy of one node: a Python number for a fixed pi I (the fast formula), a
    buffer for a fixed matrix, parameters for a learnt one. ``center``: a prior's mean."""

    closed_form = True  # local() below, whatever the precision

    def __init__(self, energy: Gaussian, scalar: float | None, matrix: Tensor | None,
                 center: Tensor | float | None = None):
        super().__init__(energy, center)
        self.scalar, self.learn = scalar, energy.learn
        if self.learn == "diagonal":
            self.log_diag = nn.Parameter(torch.log(torch.diagonal(matrix)).clone())
        elif self.learn == "full":
            chol = torch.linalg.cholesky(matrix)
            self.tril = nn.Parameter(torch.tril(chol, -1) + torch.diag(torch.log(torch.diagonal(chol))))
        elif matrix is not None:
            self.register_buffer("fixed", matrix.clone())

    def matrix(self) -> Tensor:
        """Pi as an (n, n) matrix (matrix and learnt precisions)."""
        if self.learn == "diagonal":
            return torch.diag(torch.exp(self.log_diag))
        if self.learn == "full":
            chol = torch.tril(self.tril, -1) + torch.diag(torch.exp(torch.diagonal(self.tril)))
            return chol @ chol.T
        if self.scalar is not None:
            raise ValueError("this precision is a number; it has no matrix to read")
        return self.fixed

    def set_(self, matrix: Tensor) -> None:
        """Replace a fixed matrix precision (e.g. the sequence runner's propagated prior precision)."""
        if self.learn != "none" or self.scalar is not None:
            raise ValueError("only a fixed matrix precision can be set from outside")
        self.fixed = matrix.to(self.fixed)

    def value(self, x: Tensor, mu: Tensor) -> Tensor:
        diff = x - mu
        if self.scalar is not None:
            return 0.5 * self.scalar * per_sample(diff.square())
        pi = self.matrix().to(diff.dtype)
        e = 0.5 * ((diff @ pi) * diff).sum(1)
        return e - 0.5 * torch.logdet(pi) if self.learn != "none" else e

    def local(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """eps = Pi (x - mu) (eq. 31): dE/dx = eps, dE/dmu = -eps, E = 1/2 sum eps . (x - mu)."""
        diff = x - mu
        if self.scalar is not None:
            eps = diff * self.scalar if self.scalar != 1.0 else diff
            return 0.5 * torch.dot(eps.reshape(-1), diff.reshape(-1)), eps, -eps
        pi = self.matrix().to(diff.dtype)
        eps = diff @ pi  # Pi is symmetric: (B, n) @ (n, n)
        e = 0.5 * torch.dot(eps.reshape(-1), diff.reshape(-1))
        if self.learn != "none":
            e = e - 0.5 * diff.shape[0] * torch.logdet(pi)
        return e, eps, -eps

    def sample(self, mu: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """mu + noise with the declared covariance Pi^-1 (flattened per sample)."""
        cov = torch.linalg.inv(self.energy.matrix(mu[0].numel())).to(mu.dtype)
        noise = torch.randn(len(mu), len(cov), generator=generator, dtype=mu.dtype) @ torch.linalg.cholesky(cov).T
        return mu + noise.reshape(mu.shape)


class Prior(Gaussian):
    """A Gaussian prior N(mean, Pi^-1) on a node without incoming edges: the Gaussian energy
    around a constant mean (a number for every element, or one value per element)."""

    mean: float | list[float] = Field(0.0, description="Prior mean: a number, or one value per element.")
    learn: Literal["none"] = Field("none", description="A prior's precision is fixed.")

    def center(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor | float:
        """The mean as a number, or as a (1, *shape) tensor."""
        if isinstance(self.mean, float):
            return self.mean
        size = int(torch.Size(shape).numel())
        if len(self.mean) != size:
            raise SpecError(f"expected {size} mean values for a node of shape {list(shape)}, got {len(self.mean)}",
                            "mean")
        return torch.tensor(self.mean, dtype=torch.float64).to(dtype).reshape(1, *shape)

    def build(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
              center: Tensor | float | None = None) -> GaussianTerm:
        return super().build(shape, dtype, self.center(shape, dtype) if center is None else center)

    @model_serializer(mode="wrap")
    def _short_form(self, handler: Any, info: SerializationInfo) -> Any:
        if resolved(info):
            return handler(self)
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}
