"""Train a pcgraph spec from a plain PyTorch DataLoader: (x, y) tuples in, node dicts out.

    python examples/torch_dataloader.py

scikit-learn's 8x8 digits go into a ``TensorDataset`` as 8x8 images and integer labels;
``pcgraph.NodeBatches`` turns each ``(x, y)`` batch into ``{"image": (B, 64), "label": (B, 10)}``:
the images flattened to the node's shape, the labels one-hot, both in the graph's dtype.
"""

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import pcgraph

SPEC = """
name: digits-dataloader
graph:
  nodes:
    image: {shape: [64], role: observed}
    hidden: {shape: [64]}
    label: {shape: [10], role: observed, energy: categorical}
  edges:
    - {from: image, to: hidden, fn: [{kind: linear, init: xavier_uniform}, tanh]}
    - {from: hidden, to: label, fn: [{kind: linear, init: xavier_uniform}]}
inference: {steps: 10, optimizer: {kind: sgd, lr: 0.1, momentum: 0.5}}
"""


def loaders(batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    """Train and test DataLoaders of (image (8, 8) in [-1, 1], label int64) pairs."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0  # (1797, 8, 8)
    y = torch.tensor(digits.target)  # (1797,) int64
    train, test = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(test, batch_size=500))


def main(epochs: int = 5) -> float:
    torch.manual_seed(0)
    spec = pcgraph.spec_from_yaml(SPEC)
    graph = pcgraph.compile(spec)
    solver = pcgraph.Solver.from_spec(spec)
    optimizer = torch.optim.Adam(graph.parameters(), lr=2e-3)
    train, test = loaders()
    for epoch in range(epochs):
        for batch in pcgraph.NodeBatches(train, graph, inputs="image", targets="label"):
            solver.step(graph, batch, optimizer)  # relax with image and label clamped, then one Adam step
        correct = 0
        with torch.no_grad():
            for x, y in test:
                predicted = graph(pcgraph.to_nodes((x,), graph, inputs="image"))["label"]  # feedforward
                correct += int((predicted.argmax(1) == y).sum())
        accuracy = correct / len(test.dataset)
        print(f"epoch {epoch + 1}: test accuracy {100 * accuracy:.1f}%")
    return accuracy


if __name__ == "__main__":
    main()
