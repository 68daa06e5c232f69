"""Image ops on per-sample shapes (C, H, W): convolutions and pooling.

Output sizes follow ``out = (in + 2 p - k) // s + 1`` (convolution, pooling) and
``out = (in - 1) s - 2 p + k + output_padding`` (transposed convolution). Each op checks its input
before building, so a bad pipeline fails at compile time with the edge's YAML path, the shape that
came and what was expected (see :func:`pcgraph.compile`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from pcgraph.ops import STOCK, Op, OpModule, Shape, _aten, accumulate, register_op
from pcgraph.ops.linear import Init, initialise


class _ConvRule(OpModule):
    """dE/dx = W^T * g (the adjoint convolution), dE/dW = g * x: aten's convolution backward."""

    compile_pays = False  # oneDNN's kernels already: the CIFAR-10 CNN's compiled PC update was 9% slower

    @property
    def has_local_rule(self) -> bool:
        return self.padding_mode == "zeros"

    def local_vjp(self, x, g, grads, need_input):
        transposed = isinstance(self, nn.ConvTranspose2d)
        w = self.weight
        mask = [need_input, grads is not None, grads is not None and self.bias is not None]
        dx, dw, db = _aten.convolution_backward(
            g, x, w, [w.shape[1] if transposed else w.shape[0]], self.stride, self.padding, self.dilation,
            transposed, self.output_padding, self.groups, mask)
        if grads is not None:
            accumulate(grads, w, dw)
            if self.bias is not None:
                accumulate(grads, self.bias, db)
        return dx


class Conv2dModule(nn.Conv2d, _ConvRule):
    """With ``pool_window`` set (:func:`crop_before_pools`: the kernel, stride and dilation of a max
    pooling without padding that comes right after it), only the input rows and columns that the
    pooled outputs depend on are convolved: a 2x2 pool of a 13x13 map reads 12x12 of it, so the
    CIFAR-10 CNN's second convolution reads 14x14 of its 15x15 input (15% fewer FLOPs; PC and
    backprop updates 3% faster), with bit for bit the same pooled values. The unread rows' input
    gradient is zero."""

    pool_window: tuple | None = None

    def forward(self, x):
        return super().forward(self._read(x))

    def local_vjp(self, x, g, grads, need_input):
        part = self._read(x)
        dx = super().local_vjp(part, g, grads, need_input)
        if dx is None or part.shape == x.shape:
            return dx
        return F.pad(dx, (0, x.shape[-1] - part.shape[-1], 0, x.shape[-2] - part.shape[-2]))

    def _read(self, x):
        if self.pool_window is None:
            return x
        conv = _geometry(self)
        h, w = (_reads(_reads(_outputs(_outputs(n, conv, i), self.pool_window, i), self.pool_window, i), conv, i)
                for i, n in enumerate(x.shape[-2:]))
        return x if (h, w) == tuple(x.shape[-2:]) else x[..., :h, :w]


def _geometry(m: nn.Module) -> tuple[list[int], list[int], list[int]]:
    """(kernel, stride, dilation) of a window op, per axis."""
    return _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)


def _outputs(n: int, window: tuple, i: int) -> int:
    """Outputs along axis i of a window op without padding on n inputs: (n - (k-1) d - 1) // s + 1."""
    k, s, d = (v[i] for v in window)
    return (n - (k - 1) * d - 1) // s + 1


def _reads(n: int, window: tuple, i: int) -> int:
    """Inputs along axis i that n outputs of a window op without padding read: (n-1) s + (k-1) d + 1."""
    k, s, d = (v[i] for v in window)
    return (n - 1) * s + (k - 1) * d + 1


def crop_before_pools(modules: list[nn.Module]) -> None:
    """Mark each convolution without padding that a max pooling without padding (floor mode)
    follows directly (as :func:`pcgraph.ops.pool_first` leaves ``[conv2d, leaky_relu,
    max_pool2d]``): it then convolves only what the pool reads (:class:`Conv2dModule`)."""
    for conv, pool in zip(modules, modules[1:]):
        if isinstance(conv, Conv2dModule) and isinstance(pool, MaxPool2dModule) and not pool.ceil_mode \
                and _pair(pool.padding) == [0, 0] and conv.padding in ((0, 0), "valid"):
            conv.pool_window = _geometry(pool)


class ConvTranspose2dModule(nn.ConvTranspose2d, _ConvRule):
    pass


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


class MaxPool2dModule(nn.MaxPool2d, OpModule):
    """dE/dx: g goes to each window's arg max (saved by the forward pass, :meth:`taped`).

    torch's CPU kernel for (B, C, H, W) data visits one window at a time; its kernel for
    channels-last data takes a vector of channels at once, 2-3.5x faster counting the copy, once
    the copy stays in cache. So eager batches of at least ``MIN_CHANNELS`` channels on the CPU are
    pooled through channels-last copies of about ``CHUNK`` bytes at a time
    (:func:`_max_pool_by_channels`): the same values and arg max as the plain kernel (the first
    largest value of each window, in row order), in the usual layout. The plain kernel took 12% of
    the CIFAR-10 CNN's PC update and 16% of its backprop update."""

    has_local_rule = True
    picks_max = True
    MIN_CHANNELS = 16  # one AVX-512 vector of float32: with fewer, the plain kernel is faster
    CHUNK = 4 * 2**20

    def forward(self, x):
        return _MaxPool.apply(x, self)[0] if self._by_channels(x) else super().forward(x)

    def taped(self, x):
        y, idx = self._pool(x)
        return y, (x, idx)

    def local_vjp(self, x, g, grads, need_input):
        x, idx = x if isinstance(x, tuple) else (x, self._pool(x)[1])
        return _aten.max_pool2d_with_indices_backward(g, x, _pair(self.kernel_size), _pair(self.stride),
                                                      _pair(self.padding), _pair(self.dilation), self.ceil_mode, idx)

    def _pool(self, x):
        if self._by_channels(x):
            return _MaxPool.apply(x, self)
        return F.max_pool2d(x, *self._args(), return_indices=True)

    def _args(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def _by_channels(self, x) -> bool:
        """CPU batches with enough channels, run eagerly (a compiler writes its own kernel)."""
        return (x.dim() == 4 and x.shape[1] >= self.MIN_CHANNELS and x.device.type == "cpu" and x.numel() > 0
                and not torch.compiler.is_compiling())


def _max_pool_by_channels(x, args, chunk: int):
    """F.max_pool2d(x, *args, return_indices=True) for (B, C, H, W) ``x``, through channels-last
    copies of about ``chunk`` bytes (whole samples) at a time."""
    n = max(1, chunk // (x[0].numel() * x.element_size()))
    y = idx = None
    for lo in range(0, len(x), n):
        part, at = F.max_pool2d(x[lo:lo + n].contiguous(memory_format=torch.channels_last), *args, return_indices=True)
        if y is None:
            y = x.new_empty(len(x), *part.shape[1:])
            idx = at.new_empty(y.shape)
        y[lo:lo + n] = part
        idx[lo:lo + n] = at
    return y, idx


class _MaxPool(torch.autograd.Function):
    """(values, arg max) of :class:`MaxPool2dModule` on the channels-last path, as one step for
    autograd (the chunks' copies stay off its tape): backward by the module's local rule."""

    @staticmethod
    def forward(x, pool):
        return _max_pool_by_channels(x, pool._args(), pool.CHUNK)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x, pool), (_, idx) = inputs, output
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(x, idx)
        ctx.pool = pool

    @staticmethod
    def backward(ctx, g, _):
        x, idx = ctx.saved_tensors
        return ctx.pool.local_vjp((x, idx), g, None, True), None


class AvgPool2dModule(nn.AvgPool2d, OpModule):
    """dE/dx: g / k^2 spread over each window."""

    has_local_rule = True

    def local_vjp(self, x, g, grads, need_input):
        return _aten.avg_pool2d_backward(g, x, _pair(self.kernel_size), _pair(self.stride), _pair(self.padding),
                                         self.ceil_mode, self.count_include_pad, self.divisor_override)


STOCK.update({nn.Conv2d: Conv2dModule, nn.ConvTranspose2d: ConvTranspose2dModule, nn.MaxPool2d: MaxPool2dModule,
              nn.AvgPool2d: AvgPool2dModule})


def _image(kind: str, in_shape: Shape, in_channels: int | None) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"{kind} expects a per-sample image shape [channels, height, width], "
                         f"got {list(in_shape)}; unflatten it first")
    if in_channels is not None and in_shape[0] != in_channels:
        raise ValueError(f"{kind} expects {in_channels} input channels, got {in_shape[0]}")
    return in_shape  # type: ignore[return-value]


def _window(kind: str, size: int, k: int, s: int, p: int, dim: str) -> int:
    if size + 2 * p < k:
        raise ValueError(f"{kind} kernel {k} is larger than the padded input {dim} {size} + 2*{p}")
    return (size + 2 * p - k) // s + 1


class _Conv(Op):
    out_channels: PositiveInt | None = Field(
        None, description="Output channels; default: the target node's first dimension.")
    in_channels: PositiveInt | None = Field(
        None, description="Input channels, checked against the input if given (default: inferred).")
    kernel_size: PositiveInt = Field(3, le=4096, description="Square kernel size k.")
    stride: PositiveInt = Field(1, le=4096, description="Stride s.")
    padding: NonNegativeInt = Field(0, le=4096, description="Zero padding p on each side.")
    bias: bool = Field(True, description="Add a learnt bias per output channel.")
    init: Init = Field("torch", description="Weight initialisation (normal: N(0, 1); biases start at zero unless "
                       "torch).")

    @property
    def has_params(self) -> bool:
        return True

    def _channels(self, in_shape: Shape, target_shape: Shape) -> tuple[int, int]:
        c_in = _image(self.kind, in_shape, self.in_channels)[0]
        return c_in, self.out_channels or target_shape[0]

    def param_count(self, in_shape: Shape, target_shape: Shape) -> int:
        c_in, c_out = self._channels(in_shape, target_shape)
        return c_in * c_out * self.kernel_size ** 2 + (c_out if self.bias else 0)


@register_op
class Conv2d(_Conv):
    """Cross-correlation y = W * x + b over (C, H, W) inputs, square kernel, zero padding."""

    kind = "conv2d"

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        c_in, c_out = self._channels(in_shape, target_shape)
        for size, dim in ((in_shape[1], "height"), (in_shape[2], "width")):
            _window(self.kind, size, self.kernel_size, self.stride, self.padding, dim)
        layer = Conv2dModule(c_in, c_out, self.kernel_size, self.stride, self.padding, bias=self.bias)
        return initialise(layer, self.init)


@register_op
class ConvTranspose2d(_Conv):
    """Transposed convolution (the adjoint of conv2d), e.g. k3 s2 p1 output_padding 1 doubles H, W."""

    kind = "conv_transpose2d"
    output_padding: NonNegativeInt = Field(0, le=4096, description="Extra rows/columns on one side of the output.")

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        c_in, c_out = self._channels(in_shape, target_shape)
        if self.output_padding >= self.stride:
            raise ValueError(f"output_padding ({self.output_padding}) must be smaller than stride ({self.stride})")
        for size, dim in ((in_shape[1], "height"), (in_shape[2], "width")):
            if (size - 1) * self.stride - 2 * self.padding + self.kernel_size + self.output_padding < 1:
                raise ValueError(f"padding {self.padding} leaves no output {dim} for input {dim} {size}")
        layer = ConvTranspose2dModule(c_in, c_out, self.kernel_size, self.stride, self.padding,
                                      self.output_padding, bias=self.bias)
        return initialise(layer, self.init)


class _Pool(Op):
    kernel_size: PositiveInt = Field(2, le=4096, description="Square window size k.")
    stride: PositiveInt | None = Field(None, le=4096, description="Stride s; default: the kernel size.")
    padding: NonNegativeInt = Field(0, le=4096, description="Padding p on each side (at most k / 2).")

    def _check(self, in_shape: Shape) -> int:
        _image(self.kind, in_shape, None)
        if 2 * self.padding > self.kernel_size:
            raise ValueError(f"padding ({self.padding}) must be at most half the kernel size ({self.kernel_size})")
        s = self.stride or self.kernel_size
        for size, dim in ((in_shape[1], "height"), (in_shape[2], "width")):
            _window(self.kind, size, self.kernel_size, s, self.padding, dim)
        return s


@register_op
class MaxPool2d(_Pool):
    """y = max over each k x k window (per channel)."""

    kind = "max_pool2d"

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return MaxPool2dModule(self.kernel_size, self._check(in_shape), self.padding)


@register_op
class AvgPool2d(_Pool):
    """y = mean over each k x k window (per channel; zero padding counts)."""

    kind = "avg_pool2d"

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        return AvgPool2dModule(self.kernel_size, self._check(in_shape), self.padding)
