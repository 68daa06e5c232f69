"""Closed-form local rules: the VJPs of the built-in ops, written out by hand.

For an edge mu = f(W x + b) and a Gaussian target, the state and weight gradients are the
notes' Box 2 rules: dE/dx_src = -W^T (f'(a) * eps) (eq. 34), dE/dW = -(f'(a) * eps) x^T (eq. 38),
with eps = pi (x_t - mu) (eq. 31). Here they are composed op by op, so any pipeline of the
supported modules gets them. This avoids autograd's bookkeeping in the inner loop (most of its
cost at these sizes) and lets learning reuse the last inference step's errors instead of
running a second backward pass. Graphs with an op this file does not know fall back to autograd;
the test suite checks both routes agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcgraph.spec import Categorical

_aten = torch.ops.aten
ELEMENTWISE = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Flatten, nn.Unflatten)
_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def supported(graph) -> bool:
    """True when every module of every edge has a closed-form VJP here or its own ``local_vjp``
    (and no node has a matrix or learnt precision: those go through autograd)."""
    return not len(graph.precisions) and all(
        (isinstance(m, (*_WEIGHTED, *_POOLS, *ELEMENTWISE)) or _has_own(m))
        and not (isinstance(m, nn.GELU) and m.approximate != "none")
        and not (isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.padding_mode != "zeros")
        for e in graph.edges for m in e.pipeline
    )


def combine(mode: str, xs: list[Tensor]) -> Tensor:
    """Join an edge's sources: concat along dim 1, elementwise add, or elementwise product."""
    if len(xs) == 1:
        return xs[0]
    if mode == "concat":
        return torch.cat(xs, dim=1)
    out = xs[0]
    for x in xs[1:]:
        out = out + x if mode == "add" else out * x
    return out


def edge_forward(edge, states: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
    """y = f_e(x_src) and its tape: the sources, then the input of each module."""
    xs = [states[s] for s in edge.sources]
    x = combine(edge.combine, xs)
    tape = [*xs]
    for m in edge.pipeline:
        tape.append(x)
        x = m(x)
    return x, tape


def refresh(graph) -> None:
    """Let modules with cached derived weights (the sparse op's A^T) rebuild them: called at the
    start of every relaxation, so edits made between relaxations, even through ``.data``, count."""
    for e in graph.edges:
        for m in e.pipeline:
            if callable(getattr(m, "refresh", None)):
                m.refresh()


def _has_own(m: nn.Module) -> bool:
    """A module may bring its own rule: ``local_vjp(x, g, grads, need_input)`` (e.g. the sparse op)."""
    return callable(getattr(m, "local_vjp", None))


def _vjp(m: nn.Module, x: Tensor, g: Tensor, grads: dict | None, need_input: bool = True) -> Tensor | None:
    """g * dm(x)/dx for one module; with ``grads`` also accumulates its parameter gradients."""
    if _has_own(m):
        return m.local_vjp(x, g, grads, need_input)
    if isinstance(m, nn.Linear):
        if grads is not None:  # (out, B) @ (B, in) -> (out, in)
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
            _accumulate(grads, m.weight, g2.T @ x2)
            if m.bias is not None:
                _accumulate(grads, m.bias, g2.sum(0))
        return g @ m.weight if need_input else None  # (B, out) @ (out, in) -> (B, in)
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # dx = W^T * g (the adjoint conv), dW = g * x
        transposed = isinstance(m, nn.ConvTranspose2d)
        mask = [need_input, grads is not None, grads is not None and m.bias is not None]
        dx, dw, db = _aten.convolution_backward(
            g, x, m.weight, [m.weight.shape[1] if transposed else m.weight.shape[0]], m.stride, m.padding,
            m.dilation, transposed, m.output_padding, m.groups, mask)
        if grads is not None:
            _accumulate(grads, m.weight, dw)
            if m.bias is not None:
                _accumulate(grads, m.bias, db)
        return dx
    if isinstance(m, nn.MaxPool2d):  # g goes to each window's arg max
        _, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        return _aten.max_pool2d_with_indices_backward(g, x, _pair(m.kernel_size), _pair(m.stride),
                                                      _pair(m.padding), _pair(m.dilation), m.ceil_mode, idx)
    if isinstance(m, nn.AvgPool2d):  # g / k^2 spread over each window
        return _aten.avg_pool2d_backward(g, x, _pair(m.kernel_size), _pair(m.stride), _pair(m.padding),
                                         m.ceil_mode, m.count_include_pad, m.divisor_override)
    # aten's fused backward kernels: one pass each instead of 3-5 elementwise ops
    if isinstance(m, nn.LeakyReLU):  # f' = 1 if x > 0 else slope
        return _aten.leaky_relu_backward(g, x, m.negative_slope, False)
    if isinstance(m, nn.ReLU):  # f' = 1 if x > 0 else 0
        return _aten.threshold_backward(g, x, 0)
    if isinstance(m, nn.Tanh):  # f' = 1 - tanh(x)^2
        return _aten.tanh_backward(g, torch.tanh(x))
    if isinstance(m, nn.Sigmoid):  # f' = s (1 - s)
        return _aten.sigmoid_backward(g, torch.sigmoid(x))
    if isinstance(m, nn.GELU):  # f' = Phi(x) + x phi(x)
        return _aten.gelu_backward(g, x)
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return g.reshape(x.shape)
    return g  # identity


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _accumulate(grads: dict, p: Tensor, g: Tensor) -> None:
    grads[p] = grads[p] + g if p in grads else g


def edge_backward(edge, tape: list[Tensor], g: Tensor, grads: dict | None = None,
                  need_inputs: bool = True) -> list[Tensor] | None:
    """Pull dE/dy back through the edge: returns dE/dx for each source, in order. With
    ``grads`` it also accumulates parameter gradients; ``need_inputs=False`` skips the source
    gradients (for edges whose sources are all clamped) and returns None."""
    n_src = len(edge.sources)
    mods = list(zip(edge.pipeline, tape[n_src:]))
    for k in range(len(mods) - 1, -1, -1):
        if not need_inputs and not any(isinstance(m, _WEIGHTED) or _has_own(m) for m, _ in mods[:k + 1]):
            return None  # nothing left that holds parameters
        g = _vjp(mods[k][0], mods[k][1], g, grads, need_inputs or k > 0)
    if not need_inputs:
        return None
    if n_src == 1:
        return [g]
    xs = tape[:n_src]
    if edge.combine == "concat":
        return list(torch.split(g, [x.shape[1] for x in xs], dim=1))
    if edge.combine == "add":
        return [g] * n_src
    out = []
    for k in range(n_src):  # product rule
        prod = g
        for j, x in enumerate(xs):
            if j != k:
                prod = prod * x
        out.append(prod)
    return out


def node_terms(spec, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(energy summed over the batch, dE/dx, dE/dmu) for one node's energy term."""
    if isinstance(spec, Categorical):
        x2, mu2 = x.reshape(x.shape[0], -1), mu.reshape(mu.shape[0], -1)
        logp = F.log_softmax(mu2, dim=1)
        e = (torch.xlogy(x2, x2) - x2 * logp).sum()
        d_mu = torch.exp(logp) * x2.sum(1, keepdim=True) - x2
        d_x = torch.where(x2 > 0, torch.log(x2.clamp_min(1e-30)) + 1 - logp, 0.0)
        return e, d_x.reshape(x.shape), d_mu.reshape(mu.shape)
    diff = x - mu
    eps = diff * spec.scalar if spec.scalar != 1.0 else diff
    return 0.5 * torch.dot(eps.reshape(-1), diff.reshape(-1)), eps, -eps
