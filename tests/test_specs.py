"""The shipped specs: parameter and state counts against the notes' Table 1 (ANCHORS.md), and
every node's shape against a feedforward pass of the compiled graph."""

import json

import pytest
import torch

import pcgraph
from pcgraph.cli import main
from pcgraph.tasks.objective import Backprop

# spec: (PC parameters, inferred states per sample, backprop baseline parameters); the MNIST and
# Fashion-MNIST PC decoders' 326,800 (Table 1) plus their amortised encoder's 784 * 64 + 64 = 50,240
TABLE_1 = {
    "specs/mnist_mlp.yaml": (134_794, 384, 134_794),
    "specs/fmnist_mlp.yaml": (134_794, 384, 134_794),
    "specs/cifar10_cnn.yaml": (4_761_866, 42_624, 4_761_866),
    "specs/mnist_ae.yaml": (377_040, 448, 652_880),
    "specs/fmnist_ae.yaml": (377_040, 448, 652_880),
    "specs/cifar10_ae.yaml": (1_088_643, 12_608, 2_173_315),
}


@pytest.mark.parametrize("path", sorted(TABLE_1))
def test_counts_match_table_1(path, capsys):
    params, states, bp = TABLE_1[path]
    spec = pcgraph.load_spec(path)
    graph = pcgraph.compile(spec)
    assert graph.num_params() == params
    assert graph.states_per_sample() == states
    assert sum(p.numel() for p in Backprop(spec, graph).trained_parameters()) == bp
    assert main(["show", path, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (shown["params"], shown["states_per_sample"], shown["bp_params"]) == (params, states, bp)


@pytest.mark.parametrize("path", sorted(TABLE_1))
def test_feedforward_shapes(path):
    spec = pcgraph.load_spec(path)
    graph = pcgraph.compile(spec)
    d = spec.data
    roots = [v for v, n in graph.nodes.items() if not n.incoming]
    with torch.no_grad():
        states = graph({v: torch.rand(2, *graph.nodes[v].shape) for v in roots})
        for v, n in graph.nodes.items():
            assert states[v].shape == (2, *n.shape), v
        if d.target is None:  # the baseline reconstructs the input with its own shape
            x = torch.rand(2, *graph.nodes[d.input].shape)
            assert Backprop(spec, graph).predict(x).shape == x.shape


def test_cifar_cnn_shapes_follow_the_notes():
    graph = pcgraph.compile(pcgraph.load_spec("specs/cifar10_cnn.yaml"))
    shapes = {v: n.shape for v, n in graph.nodes.items()}
    assert shapes == {"image": (3, 32, 32), "c1": (128, 15, 15), "c2": (256, 6, 6), "c3": (4096,),
                      "fc": (512,), "label": (10,)}
