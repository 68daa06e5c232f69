"""A convolution that a max pooling follows convolves only what the pool reads
(``crop_before_pools``): pooled values equal the uncropped ones exactly, and the local rule's
input, weight and bias gradients equal autograd's through plain F.conv2d and F.max_pool2d."""

import pytest
import torch
import torch.nn.functional as F

import pcgraph
from pcgraph.ops.conv import Conv2dModule, MaxPool2dModule, crop_before_pools
from pcgraph.spec import load_spec

CASES = [  # (conv kernel, stride, dilation), (pool kernel, stride, dilation), input H, W
    ((3, 1, 1), (2, 2, 1), 15, 15),  # the CIFAR-10 CNN's second layer: 13x13, the pool reads 12x12
    ((3, 1, 1), (2, 2, 1), 32, 32),  # 30x30: all read, nothing cropped
    ((3, 2, 1), (3, 2, 1), 20, 17),
    ((2, 1, 2), (2, 3, 1), 14, 19),
    ((3, 1, 1), (2, 2, 2), 12, 13),
]


@pytest.mark.parametrize("conv_w, pool_w, h, w", CASES)
def test_cropped_pipeline_equals_plain_torch(conv_w, pool_w, h, w):
    torch.manual_seed(0)
    (k, s, d), (pk, ps, pd) = conv_w, pool_w
    conv = Conv2dModule(3, 5, k, stride=s, dilation=d).double()
    pool = MaxPool2dModule(pk, ps, dilation=pd)
    crop_before_pools([conv, pool])
    assert conv.pool_window is not None
    x = torch.randn(4, 3, h, w, dtype=torch.float64, requires_grad=True)
    ref = F.max_pool2d(F.conv2d(x, conv.weight, conv.bias, s, 0, d), pk, ps, 0, pd)
    y = conv(x.detach())
    out, idx = pool.taped(y)[0], pool.taped(y)[1]
    assert torch.equal(out, ref.detach())
    g = torch.randn_like(ref)
    dx_ref, dw_ref, db_ref = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    grads = {}
    gy = pool.local_vjp(idx, g, grads, True)
    dx = conv.local_vjp(x.detach(), gy, grads, True)
    assert dx.shape == x.shape
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[conv.weight], dw_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[conv.bias], db_ref, rtol=0, atol=1e-12)


def test_only_a_pool_right_after_a_convolution_without_padding_crops():
    pool = MaxPool2dModule(2)
    padded = Conv2dModule(3, 4, 3, padding=1)
    crop_before_pools([padded, pool])
    apart = Conv2dModule(3, 4, 3)
    crop_before_pools([apart, torch.nn.Identity(), pool])
    ceil = Conv2dModule(3, 4, 3)
    crop_before_pools([ceil, MaxPool2dModule(2, ceil_mode=True)])
    assert padded.pool_window is None and apart.pool_window is None and ceil.pool_window is None


def test_the_cifar_cnn_second_convolution_reads_14x14():
    graph = pcgraph.compile(load_spec("specs/cifar10_cnn.yaml"))
    conv = graph.edges[1].pipeline[0]
    assert isinstance(conv, Conv2dModule) and conv.pool_window is not None
    assert conv(torch.randn(2, 128, 15, 15)).shape == (2, 256, 12, 12)
    assert graph.edges[1](  # the edge's output is the node's shape still
        {"c1": torch.randn(2, 128, 15, 15)}).shape == (2, 256, 6, 6)
