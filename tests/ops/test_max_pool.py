"""Max pooling through channels-last copies (pcgraph.ops.conv.MaxPool2dModule, batches of 16 or more
channels on the CPU): the values and arg max of torch's own kernel, ties and chunk boundaries
included, and the same gradients from the local rule and from autograd as plain F.max_pool2d."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pcgraph.ops.conv import MaxPool2dModule


@st.composite
def pools(draw):
    k = draw(st.integers(1, 3))
    return {"kernel_size": k, "stride": draw(st.integers(1, 3)), "padding": draw(st.integers(0, k // 2)),
            "dilation": draw(st.integers(1, 2)), "ceil_mode": draw(st.booleans())}


def images(b: int, c: int, h: int, w: int, dtype=torch.float64, ties: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if ties:  # a few distinct values: most windows hold their largest value more than once
        return torch.randint(-2, 3, (b, c, h, w), generator=gen).to(dtype)
    return torch.randn(b, c, h, w, generator=gen, dtype=dtype)


def module(args: dict, chunk: int = 4 * 2**20) -> MaxPool2dModule:
    m = MaxPool2dModule(args["kernel_size"], args["stride"], args["padding"], args["dilation"],
                        ceil_mode=args["ceil_mode"])
    m.CHUNK = chunk
    return m


@settings(max_examples=40, deadline=None)
@given(args=pools(), b=st.integers(1, 7), h=st.integers(4, 9), w=st.integers(4, 9), ties=st.booleans(),
       chunk=st.sampled_from([1, 3000, 2**22]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_values_and_arg_max_are_torch_kernels(args, b, h, w, ties, chunk, dtype):
    if (h + 2 * args["padding"] - args["dilation"] * (args["kernel_size"] - 1) - 1) < 0 or \
            (w + 2 * args["padding"] - args["dilation"] * (args["kernel_size"] - 1) - 1) < 0:
        return  # no window fits
    x = images(b, 16, h, w, dtype, ties)
    m = module(args, chunk)
    assert m._by_channels(x)  # the path under test
    y, (x_saved, idx) = m.taped(x)
    want_y, want_idx = F.max_pool2d(x, return_indices=True, **args)
    assert x_saved is x
    assert torch.equal(y, want_y) and torch.equal(idx, want_idx)
    assert y.is_contiguous() and idx.is_contiguous()
    assert torch.equal(m(x), want_y)


@pytest.mark.parametrize("ties", [False, True])
def test_local_rule_and_autograd_give_plain_max_pooling_gradients(ties):
    args = {"kernel_size": 2, "stride": 2, "padding": 0, "dilation": 1, "ceil_mode": False}
    x = images(5, 24, 9, 8, ties=ties, seed=1)
    g = torch.randn(5, 24, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = module(args, chunk=24 * 9 * 8 * 8 * 2)  # two samples per chunk: three chunks
    ref = x.clone().requires_grad_()
    (F.max_pool2d(ref, **args) * g).sum().backward()
    _, saved = m.taped(x)
    assert torch.equal(m.local_vjp(saved, g, None, True), ref.grad)
    through = x.clone().requires_grad_()
    (m(through) * g).sum().backward()
    assert torch.equal(through.grad, ref.grad)
    taped = x.clone().requires_grad_()  # the backprop baseline's feedforward pass takes the taped route
    (m.taped(taped)[0] * g).sum().backward()
    assert torch.equal(taped.grad, ref.grad)
    assert torch.equal(torch.func.grad(lambda v: (m(v) * g).sum())(x), ref.grad)


def test_nan_comes_through_and_few_channels_take_the_plain_kernel():
    m = module({"kernel_size": 2, "stride": 2, "padding": 0, "dilation": 1, "ceil_mode": False})
    x = images(2, 16, 4, 4)
    x[1, 3, 0, 1] = float("nan")
    y = m(x)
    assert torch.isnan(y[1, 3, 0, 0]) and torch.isnan(y).sum() == 1
    assert torch.equal(y.nan_to_num(), F.max_pool2d(x, 2).nan_to_num())
    assert not m._by_channels(images(2, 15, 4, 4)) and not m._by_channels(images(2, 16, 4, 4)[0])
