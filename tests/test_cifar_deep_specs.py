"""The deep CIFAR-10 specs (pcx's VGG-5 and VGG-7, a normalisation-free pre-activation ResNet-18):
parameter and state counts from the architectures in closed form, the compiled feedforward pass
against a hand-written torch.nn.functional one with the same weights, and one solver step of
each on a random batch (no data set needed)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pcgraph

VGG5 = "specs/cifar10_vgg5.yaml"
VGG7 = "specs/cifar10_vgg7.yaml"
RESNET = "specs/cifar10_resnet18.yaml"


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout  # every conv has a bias


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# VGG layers: (out channels, padding, pooled?), all 3x3 convolutions after a 3-channel input
VGG5_LAYERS = [(128, 1, True), (256, 1, True), (512, 1, True), (512, 1, True)]
VGG7_LAYERS = [(128, 1, True), (128, 1, False), (256, 1, True), (256, 0, False), (512, 1, True), (512, 0, False)]
# ResNet-18 basic blocks: (out channels, stride)
BLOCKS = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]


def vgg_counts(layers) -> tuple[int, int]:
    """(parameters, inferred states per sample) of a VGG of ``layers`` on 3x32x32 images."""
    params, states, c, size = 0, 0, 3, 32
    for cout, pad, pooled in layers:
        params += conv(3, c, cout)
        size = (size + 2 * pad - 3) + 1
        size = size // 2 if pooled else size
        states += cout * size * size
        c = cout
    return params + linear(c * size * size, 10), states


def resnet_counts() -> tuple[int, int]:
    params, c, size = conv(3, 3, 64), 64, 32
    states = 64 * size * size  # h0
    for cout, stride in BLOCKS:
        params += conv(3, c, cout) + conv(3, cout, cout) + (conv(1, c, cout) if stride > 1 else 0)
        size //= stride
        states += 2 * cout * size * size  # a_k and h_{k+1}
        c = cout
    return params + linear(512, 10), states


@pytest.mark.parametrize(("path", "counts", "expected"), [
    (VGG5, vgg_counts(VGG5_LAYERS), (3_859_210, 59_392)),
    (VGG7, vgg_counts(VGG7_LAYERS), (4_581_514, 96_256)),
    (RESNET, resnet_counts(), (11_169_162, 557_056)),
], ids=["vgg5", "vgg7", "resnet18"])
def test_counts(path, counts, expected):
    graph = pcgraph.compile(pcgraph.load_spec(path))
    assert counts == expected  # the closed form agrees with the figures in the spec's header
    assert (graph.num_params(), graph.states_per_sample()) == expected


# --- the feedforward pass against torch.nn.functional --------------------------------------------


def weights(graph, source: str, target: str) -> nn.Module | None:
    """The one parametrised module on the edge source -> target (None for a parameter-free edge)."""
    (edge,) = [e for e in graph.edges if e.sources == [source] and e.target == target]
    mods = [m for m in edge.pipeline if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(mods) <= 1
    return mods[0] if mods else None


def vgg_reference(graph, layers, act, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out, prev = {}, "image"
    for i, (_, pad, pooled) in enumerate(layers, 1):
        w = weights(graph, prev, f"c{i}")
        x = act(F.conv2d(x, w.weight, w.bias, stride=1, padding=pad))
        x = F.max_pool2d(x, 2) if pooled else x
        out[prev := f"c{i}"] = x
    w = weights(graph, prev, "label")
    out["label"] = F.linear(x.flatten(1), w.weight, w.bias)
    return out


def resnet_reference(graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = weights(graph, "image", "h0")
    h = F.conv2d(x, stem.weight, stem.bias, padding=1)
    out = {"h0": h}
    for k, (_, stride) in enumerate(BLOCKS):
        w1, w2 = weights(graph, f"h{k}", f"a{k}"), weights(graph, f"a{k}", f"h{k + 1}")
        a = F.conv2d(F.relu(h), w1.weight, w1.bias, stride=stride, padding=1)
        branch = F.conv2d(F.relu(a), w2.weight, w2.bias, padding=1)
        sc = weights(graph, f"h{k}", f"h{k + 1}")
        shortcut = h if stride == 1 else F.conv2d(h, sc.weight, sc.bias, stride=stride)
        assert (sc is None) == (stride == 1)
        h = branch + shortcut
        out[f"a{k}"], out[f"h{k + 1}"] = a, h
    fc = weights(graph, "h8", "label")
    out["label"] = F.linear(F.avg_pool2d(F.relu(h), 4).flatten(1), fc.weight, fc.bias)
    return out


def _compare(graph, reference):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = graph({"image": x})
        want = reference(x)
    assert set(want) == set(got) - {"image"}
    for v, value in want.items():
        torch.testing.assert_close(got[v], value, rtol=1e-4, atol=1e-5, msg=v)


@pytest.mark.parametrize(("path", "layers", "act"), [
    (VGG5, VGG5_LAYERS, F.gelu),
    (VGG7, VGG7_LAYERS, F.leaky_relu),
], ids=["vgg5", "vgg7"])
def test_vgg_feedforward_matches_functional(path, layers, act):
    torch.manual_seed(0)
    graph = pcgraph.compile(pcgraph.load_spec(path))
    _compare(graph, lambda x: vgg_reference(graph, layers, act, x))


def test_resnet_starts_as_its_shortcuts():
    """The branch's last conv starts at zero (Fixup's trick): each block outputs its shortcut."""
    torch.manual_seed(0)
    graph = pcgraph.compile(pcgraph.load_spec(RESNET))
    for k in range(len(BLOCKS)):
        w = weights(graph, f"a{k}", f"h{k + 1}")
        assert not w.weight.any() and not w.bias.any()
    with torch.no_grad():
        states = graph({"image": torch.randn(2, 3, 32, 32)})
    for k, (_, stride) in enumerate(BLOCKS):
        if stride == 1:
            assert torch.equal(states[f"h{k + 1}"], states[f"h{k}"])


def test_resnet_feedforward_matches_functional():
    torch.manual_seed(0)
    graph = pcgraph.compile(pcgraph.load_spec(RESNET))
    with torch.no_grad():  # give the zero-initialised convs weights, so that every branch counts
        for k in range(len(BLOCKS)):
            w = weights(graph, f"a{k}", f"h{k + 1}")
            bound = 0.5 / w.weight[0].numel() ** 0.5
            w.weight.uniform_(-bound, bound)
            w.bias.uniform_(-bound, bound)
    _compare(graph, lambda x: resnet_reference(graph, x))


# --- one solver step -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [VGG5, VGG7, RESNET], ids=["vgg5", "vgg7", "resnet18"])
def test_one_solver_step(path):
    torch.manual_seed(0)
    spec = pcgraph.load_spec(path)
    graph = pcgraph.compile(spec)
    solver = pcgraph.Solver.from_spec(spec)
    assert solver.variant.kind == ("epc" if path == RESNET else "standard")
    before = [p.detach().clone() for p in graph.parameters()]
    batch = {"image": torch.randn(2, 3, 32, 32), "label": F.one_hot(torch.tensor([3, 7]), 10).float()}
    opt = spec.learning.optimizer
    assert opt.kind == "adamw"
    optimizer = torch.optim.AdamW(graph.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    relaxation = solver.step(graph, batch, optimizer)
    energy = relaxation.energy
    assert energy.shape == (spec.inference.steps + 1,)
    assert torch.isfinite(energy).all()
    assert energy[-1] < energy[0]
    changed = [not torch.equal(p, q) for p, q in zip(graph.parameters(), before)]
    assert all(changed)  # AdamW moves every parameter, the zero-initialised convs too
