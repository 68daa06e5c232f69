"""Precision matrices of Gaussian nodes: fixed or learnt, positive definite by construction.

A node's energy with precision Pi is e = 1/2 (x - mu)^T Pi (x - mu) - 1/2 log|Pi| (eq. 27 up to a
constant). With Pi fixed the log term is a constant and is dropped; when Pi is learnt it is kept,
and gradient descent on e drives Pi^-1 towards the mean of eps eps^T (the fixed point of Box 2's
update, eq. 42). Parametrisations: ``diagonal``, Pi = diag(exp(s)); ``full``, Pi = L L^T with L
lower triangular and a positive (exponentiated) diagonal, so every value of the parameters is a
valid precision.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pcgraph.errors import SpecError
from pcgraph.spec import Categorical, Gaussian, NodeSpec


def declared_matrix(spec: Gaussian, size: int) -> Tensor:
    """The node's declared precision as an (n, n) float64 matrix (from precision or covariance)."""
    value, invert = (spec.covariance, True) if spec.covariance is not None else (spec.precision, False)
    if isinstance(value, float):
        m = value * torch.eye(size, dtype=torch.float64)
    elif value and isinstance(value[0], list):
        m = torch.tensor(value, dtype=torch.float64)
    else:
        m = torch.diag(torch.tensor(value, dtype=torch.float64))
    if m.shape != (size, size):
        raise ValueError(f"expected {size} values per side for a node of size {size}, got {list(m.shape)}")
    return torch.linalg.inv(m) if invert else m


class Precision(nn.Module):
    """Pi of one 1-D node of size n (see the module docstring). ``learn``: none, diagonal, full."""

    def __init__(self, matrix: Tensor, learn: str = "none"):
        super().__init__()
        self.learn = learn
        matrix = matrix.float()
        if learn == "diagonal":
            self.log_diag = nn.Parameter(torch.log(torch.diagonal(matrix)).clone())
        elif learn == "full":
            chol = torch.linalg.cholesky(matrix)
            self.tril = nn.Parameter(torch.tril(chol, -1) + torch.diag(torch.log(torch.diagonal(chol))))
        else:
            self.register_buffer("fixed", matrix.clone())

    def matrix(self) -> Tensor:
        if self.learn == "diagonal":
            return torch.diag(torch.exp(self.log_diag))
        if self.learn == "full":
            chol = torch.tril(self.tril, -1) + torch.diag(torch.exp(torch.diagonal(self.tril)))
            return chol @ chol.T
        return self.fixed

    def set_(self, matrix: Tensor) -> None:
        """Replace a fixed precision (e.g. the runner's propagated prior precision)."""
        if self.learn != "none":
            raise ValueError("a learnt precision cannot be set from outside")
        self.fixed = matrix.to(self.fixed)

    def energy(self, diff: Tensor) -> Tensor:
        """Per-sample 1/2 diff^T Pi diff (- 1/2 log|Pi| when learnt); ``diff`` is (B, n)."""
        pi = self.matrix().to(diff.dtype)
        e = 0.5 * ((diff @ pi) * diff).sum(1)
        if self.learn != "none":
            e = e - 0.5 * torch.logdet(pi)
        return e


def node_precisions(nodes: dict[str, NodeSpec]) -> dict[str, Precision]:
    """A :class:`Precision` for every Gaussian node whose precision is not a fixed scalar."""
    out = {}
    for v, n in nodes.items():
        if isinstance(n.energy, Categorical) or n.energy.scalar is not None:
            continue
        path = f"graph.nodes.{v}.energy"
        if len(n.shape) != 1 or n.shape[0] > 1024:
            raise SpecError(f"a matrix or learnt precision needs a 1-D node of at most 1,024 values, got shape "
                            f"{list(n.shape)}", path)
        try:
            out[v] = Precision(declared_matrix(n.energy, n.shape[0]), n.energy.learn)
        except ValueError as err:
            raise SpecError(str(err), f"{path}.{'covariance' if n.energy.covariance is not None else 'precision'}") from None
    return out
