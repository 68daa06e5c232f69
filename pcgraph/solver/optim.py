"""State optimizers: how inference moves the states down dE/dx (eqs. 34-35).

State optimizers update per element, so a sample's trajectory never depends on the rest of the
batch. They are small objects with ``init(xs) -> buffers`` and ``step(xs, grads, buffers)``,
updating the states in place; a fresh set of buffers is made for every batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pcgraph import spec as S


class StateSGD:
    """v <- momentum v + g;  x <- x - lr v  (plain gradient descent when momentum = 0)."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.0):
        _check("lr", lr, "a finite number > 0", lambda v: 0 < v < math.inf)
        _check("momentum", momentum, "a number in [0, 1)", lambda v: 0 <= v < 1)
        self.lr, self.momentum = lr, momentum

    def init(self, xs: list[Tensor]) -> list[Tensor]:
        return [torch.zeros_like(x) for x in xs] if self.momentum else []

    def step(self, xs: list[Tensor], grads: list[Tensor | None], buffers: list[Tensor]) -> None:
        """Update in place; a ``None`` gradient marks a state that has not moved yet (skipped)."""
        on = [k for k, g in enumerate(grads) if g is not None]
        xs, grads = [xs[k] for k in on], [grads[k] for k in on]
        if not xs:
            return
        if self.momentum:
            buffers = [buffers[k] for k in on]
            torch._foreach_mul_(buffers, self.momentum)
            torch._foreach_add_(buffers, grads)
            grads = buffers
        torch._foreach_add_(xs, grads, alpha=-self.lr)


class StateAdam:
    """Adam with bias correction, per element."""

    def __init__(self, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        _check("lr", lr, "a finite number > 0", lambda v: 0 < v < math.inf)
        for k, b in enumerate(betas):
            _check(f"betas[{k}]", b, "a number in [0, 1)", lambda v: 0 <= v < 1)
        _check("eps", eps, "a finite number > 0", lambda v: 0 < v < math.inf)
        self.lr, self.betas, self.eps = lr, betas, eps

    def init(self, xs: list[Tensor]) -> list:
        return [[torch.zeros_like(x) for x in xs], [torch.zeros_like(x) for x in xs], [0]]

    def step(self, xs: list[Tensor], grads: list[Tensor | None], buffers: list) -> None:
        """Update in place; a ``None`` gradient marks a state that has not moved yet (its moments
        are still zero, so skipping it is exact; the step count t is shared)."""
        on = [k for k, g in enumerate(grads) if g is not None]
        m, v, t = buffers
        t[0] += 1
        xs, grads = [xs[k] for k in on], [grads[k] for k in on]
        m, v = [m[k] for k in on], [v[k] for k in on]
        if not xs:
            return
        b1, b2 = self.betas
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, (1 - b2 ** t[0]) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(xs, m, denom, value=-self.lr / (1 - b1 ** t[0]))


def state_optimizer(spec: S.SGD | S.Adam | S.Euler) -> StateSGD | StateAdam:
    """The state optimizer a spec names. Euler (eq. 35) is gradient descent with step alpha dt."""
    if isinstance(spec, S.Adam):
        return StateAdam(spec.lr, spec.betas, spec.eps)
    if isinstance(spec, S.Euler):
        return StateSGD(spec.alpha * spec.dt)
    return StateSGD(spec.lr, spec.momentum)


def _check(name: str, value, expected: str, ok) -> None:
    """ValueError naming the argument unless ``value`` is a real number that passes ``ok``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
