"""Training and evaluation of a spec on its data set."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pcgraph.compile import CompiledGraph, compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.errors import SpecError, UsageError
from pcgraph.optim import weight_optimizer
from pcgraph.solve import Solver
from pcgraph.spec import DataSpec, GraphSpec, LearningSpec


@dataclass
class TrainResult:
    """Final figures of a training run; ``history`` holds one dict per epoch."""

    name: str
    epochs: int
    test_accuracy: float
    best_test_accuracy: float
    train_accuracy: float
    energy: float
    epoch_seconds: list[float]
    params: int
    states_per_sample: int
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def prepare(data: Dataset, spec: DataSpec, graph: CompiledGraph, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalise the images and shape them to the input node: (N, *input_shape) on ``device``."""
    shape = graph.nodes[spec.input].shape
    out = []
    for x in (data.x_train, data.x_test):
        if x[0].numel() != _numel(shape):
            raise SpecError(f"node {spec.input!r} has shape {list(shape)} ({_numel(shape)} values) but "
                            f"{data.name} images have {list(x.shape[1:])}", "data.input")
        x = x.reshape(len(x), *shape)
        out.append((x - 0.5) / 0.5 if spec.normalize == "center" else x)
    if spec.target is not None and graph.nodes[spec.target].shape != (data.num_classes,):
        raise SpecError(f"node {spec.target!r} must have shape [{data.num_classes}] for one-hot "
                        f"labels, got {list(graph.nodes[spec.target].shape)}", "data.target")
    return out[0].to(device), data.y_train.to(device), out[1].to(device), data.y_test.to(device)


def lr_schedule(optimizer: torch.optim.Optimizer, learning: LearningSpec, updates: int):
    """Per-update learning-rate factor: linear warm-up over ``warmup * updates``, then constant or
    cosine decay to 0 at the last update."""
    warm = int(learning.warmup * updates)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if learning.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, updates - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)``, refusing unknown names and devices this machine lacks."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but no CUDA device is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; expected cpu or cuda")
    return dev


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@torch.no_grad()
def evaluate(graph: CompiledGraph, spec: GraphSpec, solver: Solver, x: Tensor, y: Tensor) -> float:
    """Test accuracy: the target node's argmax after a feedforward pass or after inference with
    only the input clamped (``train.eval``)."""
    d = spec.data
    correct = 0
    for i in range(0, len(x), d.test_batch_size):
        batch = {d.input: x[i: i + d.test_batch_size]}
        if spec.train.eval == "inference":
            with torch.enable_grad():
                states = solver.relax(graph, batch).states
        else:
            states = graph(batch)
        correct += int((states[d.target].argmax(1) == y[i: i + d.test_batch_size]).sum())
    return correct / len(x)


def bp_step(graph: CompiledGraph, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer) -> Tensor:
    """One backprop update on the same graph: the clamped outputs' energies at the feedforward
    pass, batch-averaged (:meth:`CompiledGraph.bp_loss`), differentiated by autograd."""
    optimizer.zero_grad(set_to_none=True)
    loss = graph.bp_loss(batch)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train(spec: GraphSpec, *, epochs: int | None = None, data_root: str | None = None, device: str = "cpu",
          out: str | Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
          method: str = "pc") -> TrainResult:
    """Train ``spec`` on its data set and return the final figures.

    ``method="pc"`` trains with predictive coding; ``"bp"`` trains the same graph by backprop
    (:func:`bp_step`), the baseline for benchmarks. Per epoch it logs the mean energy per sample
    (PC: at the relaxed states; BP: the loss), train accuracy (feedforward predictions made before
    each update), test accuracy and seconds. With ``out`` it writes ``spec.yaml``,
    ``metrics.jsonl`` and the final ``model.pt`` (a state dict) there.
    """
    if method not in ("pc", "bp"):
        raise ValueError(f"method must be pc or bp, got {method!r}")
    if spec.data is None or spec.data.target is None:
        raise SpecError("training a classifier needs a data section with an input and a target node", "data")
    dev = resolve_device(device)
    if epochs is not None and epochs < 1:
        raise UsageError(f"the number of epochs must be at least 1, got {epochs}")
    torch.manual_seed(spec.train.seed)
    graph = compile(spec).to(dev)
    solver = Solver.from_spec(spec)
    optimizer = weight_optimizer(spec.learning.optimizer, graph.parameters())
    d = spec.data
    x_train, y_train, x_test, y_test = prepare(load_dataset(d.dataset, data_root), d, graph, dev)
    classes = graph.nodes[d.target].shape[0]
    gen = torch.Generator().manual_seed(spec.train.seed)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.yaml").write_text(spec.to_yaml())
        (out / "metrics.jsonl").write_text("")
    history: list[dict] = []
    n_epochs = spec.train.epochs if epochs is None else epochs
    scheduler = lr_schedule(optimizer, spec.learning, n_epochs * -(-len(x_train) // d.batch_size))
    for epoch in range(1, n_epochs + 1):
        start = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=gen).to(dev)
        energy, correct, seen = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
        batches = range(0, len(perm), d.batch_size)
        for i in _progress(batches, f"epoch {epoch}/{n_epochs}", progress):
            idx = perm[i: i + d.batch_size]
            batch = {d.input: x_train[idx], d.target: F.one_hot(y_train[idx], classes).to(x_train.dtype)}
            if method == "pc":
                r = solver.step(graph, batch, optimizer)
                energy += r.energy[-1]
                predicted = r.predicted.get(d.target)
            else:
                with torch.no_grad():
                    predicted = graph({d.input: batch[d.input]})[d.target]
                energy += bp_step(graph, batch, optimizer) * len(idx)
            scheduler.step()
            if predicted is not None:
                correct += (predicted.argmax(1) == y_train[idx]).sum()
            seen += len(idx)
        seconds = time.perf_counter() - start
        test_acc = evaluate(graph, spec, solver, x_test, y_test)
        row = {"epoch": epoch, "energy": float(energy) / seen, "train_accuracy": float(correct) / seen,
               "test_accuracy": test_acc, "seconds": seconds}
        history.append(row)
        log(f"epoch {epoch:3d}  energy {row['energy']:.4f}  train acc {100 * row['train_accuracy']:6.2f}%  "
            f"test acc {100 * test_acc:6.2f}%  {seconds:6.2f} s")
        if out is not None:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    if out is not None:
        torch.save(graph.state_dict(), out / "model.pt")
    last = history[-1]
    return TrainResult(spec.name, n_epochs, last["test_accuracy"], max(h["test_accuracy"] for h in history),
                       last["train_accuracy"], last["energy"], [h["seconds"] for h in history],
                       graph.num_params(), graph.states_per_sample(), history)


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, file=sys.stderr, disable=None, unit="batch")
