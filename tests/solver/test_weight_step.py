"""weight_step: a fused Adam/AdamW stepped by its kernel directly gives torch.optim's own step()
bit for bit (parameters and state), and whatever it does not cover goes through step()."""

import copy
from unittest import mock

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pcgraph.solver import weight_step as module
from pcgraph.solver.weight_step import weight_step

SHAPES = [(6, 5), (6,), (3, 6), (3,)]


@pytest.fixture(autouse=True)
def no_global_hooks():
    """Global step hooks registered by other imports (the sparse op counts steps) are set aside
    here: with any, every step goes through step() (test_hooks_are_called)."""
    saved = [list(h.items()) for h in module._HOOKS]
    for h in module._HOOKS:
        h.clear()
    yield
    for h, items in zip(module._HOOKS, saved):
        h.update(items)


def _params(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def _grads(step: int, dtype, skip: int | None = None):
    g = torch.Generator().manual_seed(100 + step)
    return [None if i == skip else torch.randn(s, generator=g, dtype=dtype) for i, s in enumerate(SHAPES)]


def _run(make, stepper, steps=12, dtype=torch.float32, skip_at=None, schedule=False):
    params = _params(dtype)
    opt = make(params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k)) if schedule else None
    for t in range(steps):
        for p, gr in zip(params, _grads(t, dtype, skip=1 if t == skip_at else None)):
            p.grad = gr
        stepper(opt)
        if sched is not None:
            sched.step()
    return params, opt


CASES = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.03, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, fused=True),
    "maximize": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, maximize=True, fused=True),
    "groups": lambda ps: torch.optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3}], lr=1e-2, fused=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torch_step(case, dtype):
    """Same parameters and state as opt.step() after 12 steps with a learning-rate schedule and one
    step where a parameter has no gradient (torch skips it; so must the direct call)."""
    want, ref = _run(CASES[case], lambda o: o.step(), dtype=dtype, skip_at=5, schedule=True)
    kernels = {k: mock.Mock(wraps=v) for k, v in module._KERNELS.items()}
    with mock.patch.dict(module._KERNELS, kernels):
        got, opt = _run(CASES[case], weight_step, dtype=dtype, skip_at=5, schedule=True)
    assert sum(k.call_count for k in kernels.values()) == 11 * len(opt.param_groups)  # all but the first step
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for pa, pb in zip(got, want):
        sa, sb = opt.state[pa], ref.state[pb]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert float(opt.state[got[1]]["step"]) == 11  # skipped once


def test_kernel_called_directly_after_the_first_step():
    params = _params()
    opt = CASES["adam"](params)
    kernel = mock.Mock(wraps=torch._fused_adam_)
    with mock.patch.object(opt, "step", wraps=opt.step) as step, mock.patch.dict(module._KERNELS, {False: kernel}):
        for t in range(4):
            for p, gr in zip(params, _grads(t, torch.float32)):
                p.grad = gr
            weight_step(opt)
    assert step.call_count == 1  # the first step creates the state
    assert kernel.call_count == 3


UNCOVERED = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam, not fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=False),
    "adam, tensor lr": lambda ps: torch.optim.Adam(ps, lr=torch.tensor(1e-2), fused=True),
    "a subclass": lambda ps: type("MyAdam", (torch.optim.Adam,), {})(ps, lr=1e-2, fused=True),
}


@pytest.mark.parametrize("case", sorted(UNCOVERED))
def test_other_optimizers_take_their_own_step(case):
    params = _params()
    opt = UNCOVERED[case](params)
    with mock.patch.object(opt, "step", wraps=opt.step) as step:
        for t in range(3):
            for p, gr in zip(params, _grads(t, torch.float32)):
                p.grad = gr
            weight_step(opt)
    assert step.call_count == 3


def test_hooks_are_called():
    """With a step hook, every step goes through step(), so the hook sees every one."""
    params = _params()
    opt = CASES["adam"](params)
    seen = []
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(1))
    for t in range(3):
        for p, gr in zip(params, _grads(t, torch.float32)):
            p.grad = gr
        weight_step(opt)
    assert len(seen) == 3
    handle = register_optimizer_step_pre_hook(lambda o, args, kwargs: seen.append(2))
    try:
        weight_step(opt)
    finally:
        handle.remove()
    assert seen[-2:] == [2, 1]


def test_loaded_state_continues_like_torch():
    """A state loaded mid-run (a resumed checkpoint) is what the direct call steps on."""
    first, ref = _run(CASES["adam"], lambda o: o.step(), steps=5)
    saved = ref.state_dict()

    def resume(stepper):
        params = [torch.nn.Parameter(p.detach().clone()) for p in first]
        opt = CASES["adam"](params)
        opt.load_state_dict(copy.deepcopy(saved))  # as from a file: torch's load keeps the step tensors given
        for t in range(5, 9):
            for p, gr in zip(params, _grads(t, torch.float32)):
                p.grad = gr
            stepper(opt)
        return params, opt

    (want, ref), (got, opt) = resume(lambda o: o.step()), resume(weight_step)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert all(torch.equal(opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"]) for a, b in zip(got, want))
