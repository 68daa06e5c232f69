"""Stepping a weight optimizer: torch's fused Adam kernel called without torch.optim's Python.

``torch.optim.Adam(fused=True)`` (what the specs' ``adam`` and ``adamw`` build) updates every
parameter in one kernel, theta <- theta - lr m_hat / (sqrt(v_hat) + eps) with the moments
m <- beta1 m + (1 - beta1) g and v <- beta2 v + (1 - beta2) g^2 (eqs. 38-39 with Adam as the
optimizer), but its ``step()`` spends about as long again in Python around that kernel: the
profiler record, the hook loops, per-parameter state checks and the grouping by device and dtype.
On the MNIST MLP (8 tensors, 134,794 parameters) that was 180 us of a 1.8 ms update in the
training loop, 115 us with the kernel called directly.

:func:`weight_step` makes the call that ``step()`` would make (the same kernel, arguments and state
tensors), so values, state and ``state_dict()`` are torch's own. Anything it does not cover goes
through ``opt.step()``: other classes and subclasses, hooks (the optimizer's or global ones),
tensor learning rates or betas, parameters of several devices or dtypes, sparse or complex
parameters, any state not yet created (the optimizer's first step creates it), devices other
than the CPU (the only one this path has been measured on).
"""

from __future__ import annotations

import weakref

import torch
from torch.optim import optimizer as _optimizer

_KERNELS = {False: getattr(torch, "_fused_adam_", None), True: getattr(torch, "_fused_adamw_", None)}
_HOOKS = [getattr(_optimizer, name, None) for name in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")]
_STATE = ("exp_avg", "exp_avg_sq", "step")  # in the kernel's order
# optimizers whose own step() has run: it created their state and told an LR scheduler it ran
_stepped: weakref.WeakSet = weakref.WeakSet()


def weight_step(opt) -> None:
    """``opt.step()``, with a fused ``torch.optim.Adam`` or ``AdamW`` on the CPU stepped by its
    kernel directly after its first step (see the module docstring)."""
    calls = _direct_calls(opt) if opt in _stepped else None
    if calls is None:
        opt.step()
        _stepped.add(opt)
        return
    with torch.no_grad():
        for kernel, tensors, options in calls:
            torch._foreach_add_(tensors[-1], 1)
            kernel(*tensors, **options, grad_scale=None, found_inf=None)


def _direct_calls(opt) -> list | None:
    """The kernel calls of ``opt``'s step, one per parameter group, or None when it is not covered.
    Nothing is changed here, so a None leaves the step whole to ``opt.step()``."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or opt._optimizer_step_pre_hooks \
            or opt._optimizer_step_post_hooks or any(h is None or h for h in _HOOKS):
        return None
    calls = []
    for group in opt.param_groups:
        kernel = _KERNELS[bool(group.get("decoupled_weight_decay"))]
        beta1, beta2 = group["betas"]
        if kernel is None or group.get("fused") is not True or group.get("differentiable", True) \
                or any(isinstance(v, torch.Tensor) for v in (group["lr"], beta1, beta2)):
            return None
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        first, states = params[0], [opt.state.get(p) for p in params]
        names = _STATE + (("max_exp_avg_sq",) if group["amsgrad"] else ())
        for p, state in zip(params, states):
            if not state or any(n not in state for n in names) or p.device.type != "cpu" or p.dtype != first.dtype \
                    or p.grad.dtype != p.dtype or p.grad.layout != torch.strided or p.is_complex() \
                    or p.grad.device != p.device:
                return None
        grads = [p.grad for p in params]
        avgs, squares, steps = ([s[n] for s in states] for n in _STATE)
        most = [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else []
        calls.append((kernel, (params, grads, avgs, squares, most, steps),
                      {"amsgrad": group["amsgrad"], "lr": group["lr"], "beta1": beta1, "beta2": beta2,
                       "weight_decay": group["weight_decay"], "eps": group["eps"], "maximize": group["maximize"]}))
    return calls
