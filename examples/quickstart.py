"""Build a PC classifier in Python, train it on the embedded digits, and look inside.

    python examples/quickstart.py
"""

import torch
import torch.nn.functional as F

import pcgraph


def build() -> pcgraph.GraphSpec:
    g = pcgraph.Graph("digits-python")
    x = g.node("image", 64, observed=True)
    h = g.node("hidden", 64)
    y = g.node("label", 10, observed=True, energy="categorical")
    g.edge(x, h, {"kind": "linear", "init": "xavier_uniform"}, "tanh")
    g.edge(h, y, {"kind": "linear", "init": "xavier_uniform"})
    g.inference(steps=10, optimizer={"kind": "sgd", "lr": 0.1, "momentum": 0.5})
    return g.spec()


def main(epochs: int = 10) -> float:
    torch.manual_seed(0)
    spec = build()
    print(spec.to_yaml())  # the YAML this graph would be written as
    graph = pcgraph.compile(spec)
    solver = pcgraph.Solver.from_spec(spec)
    optimizer = torch.optim.Adam(graph.parameters(), lr=2e-3)
    data = pcgraph.load_dataset("digits")
    x_train, x_test = (data.x_train - 0.5) / 0.5, (data.x_test - 0.5) / 0.5
    for epoch in range(epochs):
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm), 32):
            idx = perm[i: i + 32]
            batch = {"image": x_train[idx], "label": F.one_hot(data.y_train[idx], 10).float()}
            relaxation = solver.step(graph, batch, optimizer)  # relax, then one Adam step
        with torch.no_grad():
            accuracy = (graph({"image": x_test})["label"].argmax(1) == data.y_test).float().mean().item()
        print(f"epoch {epoch + 1}: energy {relaxation.energy[0]:.3f} -> {relaxation.energy[-1]:.3f} "
              f"over {relaxation.steps} steps, test accuracy {100 * accuracy:.1f}%")
    return accuracy


if __name__ == "__main__":
    main()
