"""Training and evaluation of a spec on its data set."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pcgraph.compile import CompiledGraph, compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.errors import DivergenceError, Interrupted, SpecError, UsageError
from pcgraph.optim import weight_optimizer
from pcgraph.solve import Solver
from pcgraph.spec import DataSpec, GraphSpec, LearningSpec, spec_from_yaml
from pcgraph.tasks import checkpoint


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
        if x[0].numel() != math.prod(shape):
            raise SpecError(f"node {spec.input!r} has shape {list(shape)} ({math.prod(shape)} values) but "
                            f"{data.name} images have {list(x.shape[1:])}", "data.input")
        x = x.reshape(len(x), *shape)
        out.append((x - 0.5) / 0.5 if spec.normalize == "center" else x)
    if spec.target is not None and graph.nodes[spec.target].shape != (data.num_classes,):
        raise SpecError(f"node {spec.target!r} must have shape [{data.num_classes}] for one-hot "
                        f"labels, got {list(graph.nodes[spec.target].shape)}", "data.target")
    return out[0].to(device), data.y_train.to(device), out[1].to(device), data.y_test.to(device)


def lr_schedule(optimizer: torch.optim.Optimizer, learning: LearningSpec, updates: int):
    """Per-update learning-rate factor: linear warm-up over ``warmup * updates``, then constant or
    a cosine decay that would reach 0 one update after the last."""
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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; expected cpu or cuda")
    return dev



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


def train(spec: GraphSpec | None = None, *, epochs: int | None = None, data_root: str | None = None,
          device: str = "cpu", out: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, method: str = "pc", resume: str | Path | None = None,
          on_divergence: str = "stop") -> TrainResult:
    """Train ``spec`` on its data set and return the final figures.

    ``method="pc"`` trains with predictive coding; ``"bp"`` trains the same graph by backprop
    (:func:`bp_step`), the baseline for benchmarks. Per epoch it logs the mean energy per sample
    (PC: at the relaxed states; BP: the loss), train accuracy (feedforward predictions made before
    each update), test accuracy and seconds.

    With ``out`` it writes ``spec.yaml``, ``metrics.jsonl``, ``metrics.csv`` and, after every epoch,
    ``checkpoint.pt`` (see :mod:`pcgraph.tasks.checkpoint`), and the final ``model.pt`` (a state
    dict). ``resume=DIR`` continues the run saved there (its spec; ``epochs`` may extend it); the
    result equals an uninterrupted run's, bit for bit on the CPU. SIGINT/SIGTERM finish the current
    batch, save a checkpoint (with ``out``) and raise :class:`Interrupted`. ``on_divergence="skip"``
    skips a batch whose energy becomes NaN/inf (counted in the metrics) instead of stopping.
    """
    if method not in ("pc", "bp"):
        raise ValueError(f"method must be pc or bp, got {method!r}")
    if on_divergence not in ("stop", "skip"):
        raise UsageError(f"on_divergence must be stop or skip, got {on_divergence!r}")
    saved = None
    if resume is not None:
        saved = checkpoint.read(resume)
        spec = spec_from_yaml(saved["spec"])
        out = resume if out is None else out
    if spec is None:
        raise UsageError("give a spec to train, or a run folder to resume")
    if spec.data is None or spec.data.target is None:
        raise SpecError("training a classifier needs a data section with an input and a target node", "data")
    dev = resolve_device(device)
    if epochs is not None and epochs < 1:
        raise UsageError(f"the number of epochs must be at least 1, got {epochs}")
    torch.manual_seed(spec.train.seed)
    graph = compile(spec).to(dev)
    target = graph.nodes[spec.data.target]
    if spec.train.eval == "feedforward" and not target.incoming:
        raise SpecError(f"the target {spec.data.target!r} has no incoming edges, so a feedforward pass cannot "
                        "predict it; use train.eval: inference", "train.eval")
    # train accuracy scores feedforward predictions; forward init makes them for a leaf target for free
    forward_init = spec.inference.init == "forward" or spec.learning.variant == "exact"
    extra_pass = graph.acyclic and not (forward_init and not target.outgoing)
    solver = Solver.from_spec(spec)
    optimizer = weight_optimizer(spec.learning.optimizer, graph.parameters())
    d = spec.data
    x_train, y_train, x_test, y_test = prepare(load_dataset(d.dataset, data_root), d, graph, dev)
    classes = graph.nodes[d.target].shape[0]
    gen = torch.Generator().manual_seed(spec.train.seed)
    n_epochs = (saved["epochs"] if saved else spec.train.epochs) if epochs is None else epochs
    per_epoch = -(-len(x_train) // d.batch_size)
    scheduler = lr_schedule(optimizer, spec.learning, n_epochs * per_epoch)
    history: list[dict] = []
    first_epoch, position, partial, perm = 1, 0, None, None
    if saved:
        checkpoint.load_parameters(graph, saved)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_torch"])
        gen.set_state(saved["rng_shuffle"])
        history = list(saved["history"])
        first_epoch, position, partial = saved["epoch"] + 1, saved["position"], saved["partial"]
        perm = saved["perm"].to(dev) if saved["perm"] is not None else None
    out = Path(out) if out is not None else None
    if out is not None and saved is None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "spec.yaml").write_text(spec.to_yaml())
            (out / "metrics.jsonl").write_text("")
            (out / "metrics.csv").write_text(",".join(_COLUMNS) + "\n")
        except OSError as err:
            raise UsageError(f"cannot write the run folder {str(out)!r}: {err.strerror or err}") from None

    def snapshot(epoch_done: int, position: int, perm, partial) -> dict:
        return {"spec": spec.to_yaml(), "model": graph.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_torch": torch.get_rng_state(),
                "rng_shuffle": gen.get_state(), "epoch": epoch_done, "epochs": n_epochs, "position": position,
                "perm": None if perm is None else perm.cpu(), "partial": partial, "history": history}

    with _StopOnSignal() as stop:
        for epoch in range(first_epoch, n_epochs + 1):
            start = time.perf_counter()
            if position == 0:
                perm = torch.randperm(len(x_train), generator=gen).to(dev)
                partial = {"energy": 0.0, "correct": 0, "seen": 0, "skipped": 0}
            energy = torch.tensor(partial["energy"], device=dev)
            correct = torch.tensor(partial["correct"], device=dev)
            seen, skipped = partial["seen"], partial["skipped"]
            for i in _progress(range(position, len(perm), d.batch_size), f"epoch {epoch}/{n_epochs}", progress):
                idx = perm[i: i + d.batch_size]
                batch = {d.input: x_train[idx], d.target: F.one_hot(y_train[idx], classes).to(x_train.dtype)}
                try:
                    if method == "pc":
                        predicted = None
                        if extra_pass:
                            with torch.no_grad():
                                predicted = graph({d.input: batch[d.input]})[d.target]
                        r = solver.step(graph, batch, optimizer)
                        energy += r.energy[-1]
                        predicted = r.predicted.get(d.target, predicted)
                    else:
                        with torch.no_grad():
                            predicted = graph({d.input: batch[d.input]})[d.target]
                        energy += bp_step(graph, batch, optimizer) * len(idx)
                    scheduler.step()
                    seen += len(idx)
                    if predicted is not None:
                        correct += (predicted.argmax(1) == y_train[idx]).sum()
                except DivergenceError as err:  # raised before any parameter changed
                    if on_divergence == "stop":
                        raise DivergenceError(f"epoch {epoch}, batch {i // d.batch_size + 1}: {err}") from None
                    skipped += 1
                if stop.requested:
                    partial = {"energy": float(energy), "correct": int(correct), "seen": seen, "skipped": skipped}
                    if out is not None:
                        checkpoint.save(out, snapshot(epoch - 1, i + d.batch_size, perm, partial))
                        raise Interrupted(f"interrupted in epoch {epoch}; resume with: pcgraph train --resume {out}")
                    raise Interrupted(f"interrupted in epoch {epoch}; nothing saved (no --out given)")
            position = 0
            _check_parameters(graph, epoch)
            seconds = time.perf_counter() - start
            test_acc = evaluate(graph, spec, solver, x_test, y_test)
            row = {"epoch": epoch, "energy": float(energy) / max(seen, 1),
                   "train_accuracy": float(correct) / max(seen, 1), "test_accuracy": test_acc,
                   "seconds": seconds, "skipped_batches": skipped}
            history.append(row)
            log(f"epoch {epoch:3d}  energy {row['energy']:.4f}  train acc {100 * row['train_accuracy']:6.2f}%  "
                f"test acc {100 * test_acc:6.2f}%  {seconds:6.2f} s" + (f"  ({skipped} batches skipped)" if skipped else ""))
            if out is not None:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                with open(out / "metrics.csv", "a") as f:
                    f.write(",".join(str(row[c]) for c in _COLUMNS) + "\n")
                checkpoint.save(out, snapshot(epoch, 0, None, None))
    if out is not None:
        torch.save(graph.state_dict(), out / "model.pt")
    last = history[-1]
    return TrainResult(spec.name, n_epochs, last["test_accuracy"], max(h["test_accuracy"] for h in history),
                       last["train_accuracy"], last["energy"], [h["seconds"] for h in history],
                       graph.num_params(), graph.states_per_sample(), history)


_COLUMNS = ("epoch", "energy", "train_accuracy", "test_accuracy", "seconds", "skipped_batches")


def _check_parameters(graph: CompiledGraph, epoch: int) -> None:
    for name, p in graph.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise DivergenceError(f"epoch {epoch}: parameter {name} became NaN/inf; lower the learning rate")


class _StopOnSignal:
    """Within the block, SIGINT/SIGTERM only set ``requested``: the loop stops at a batch boundary."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, file=sys.stderr, disable=None, unit="batch")
