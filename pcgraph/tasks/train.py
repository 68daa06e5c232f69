"""Training and evaluation of a spec on its data set."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pcgraph._impl.interrupt import StopOnSignal, progress_bar
from pcgraph.compile import CompiledGraph, compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.errors import DivergenceError, Interrupted, SpecError, UsageError
from pcgraph.optim import weight_optimizer
from pcgraph.solve import Solver
from pcgraph.spec import DataSpec, GraphSpec, LearningSpec, Standardize, spec_from_yaml
from pcgraph.tasks import checkpoint
from pcgraph.tasks.objective import Backprop, Objective


@dataclass
class TrainResult:
    """Final figures of a training run; ``history`` holds one dict per epoch. ``metric`` is
    ``accuracy`` (classification; higher is better) or ``mse`` (reconstruction; lower is better),
    ``best_test_metric`` the best over the epochs."""

    name: str
    epochs: int
    metric: str
    test_metric: float
    best_test_metric: float
    train_accuracy: float | None
    energy: float
    epoch_seconds: list[float]
    params: int
    states_per_sample: int
    history: list[dict] = field(default_factory=list)

    @property
    def test_accuracy(self) -> float:
        return self._only("accuracy", self.test_metric)

    @property
    def best_test_accuracy(self) -> float:
        return self._only("accuracy", self.best_test_metric)

    def _only(self, metric: str, value: float) -> float:
        if self.metric != metric:
            raise AttributeError(f"this run's metric is test {self.metric}, not test {metric}")
        return value

    def to_json(self) -> str:
        """One JSON object: every field, plus ``test_<metric>`` and ``best_test_<metric>``."""
        return json.dumps({**asdict(self), f"test_{self.metric}": self.test_metric,
                           f"best_test_{self.metric}": self.best_test_metric})


def prepare(data: Dataset, spec: DataSpec, graph: CompiledGraph, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalise the images and shape them to the input node: (N, *input_shape) on ``device``."""
    ref, target = spec.ref("input"), spec.ref("target")
    shape = graph.nodes[ref.node].shape if ref.neurons is None else (ref.neurons.stop - ref.neurons.start,)
    norm = spec.normalize
    if isinstance(norm, Standardize):
        channels = data.x_train.shape[1] if data.x_train.dim() == 4 else 1
        if len(norm.mean) != channels or len(norm.std) != channels:
            raise SpecError(f"expected {channels} per-channel values for {data.name}, got {len(norm.mean)} "
                            f"means and {len(norm.std)} stds", "data.normalize")
    out = []
    for x in (data.x_train, data.x_test):
        if x[0].numel() != math.prod(shape):
            raise SpecError(f"{spec.input!r} has shape {list(shape)} ({math.prod(shape)} values) but "
                            f"{data.name} images have {list(x.shape[1:])}", "data.input")
        if isinstance(norm, Standardize):  # (N, C, pixels) per channel
            c = len(norm.mean)
            x = x.reshape(len(x), c, -1)
            x = (x - torch.tensor(norm.mean).reshape(1, c, 1)) / torch.tensor(norm.std).reshape(1, c, 1)
        x = x.reshape(len(x), *shape)
        out.append((x - 0.5) / 0.5 if norm == "center" else x)
    if target is not None:
        got = graph.nodes[target.node].shape if target.neurons is None else (target.neurons.stop - target.neurons.start,)
        if got != (data.num_classes,):
            raise SpecError(f"{spec.target!r} must have {data.num_classes} neurons ([{data.num_classes}]) for "
                            f"one-hot labels, got shape {list(got)}", "data.target")
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



def evaluate(graph: CompiledGraph, spec: GraphSpec, solver: Solver, x: Tensor, y: Tensor) -> float:
    """The spec's test metric on (x, y): accuracy (the target's argmax after a feedforward pass or
    after inference with only the input clamped, ``train.eval``), or reconstruction MSE per pixel
    (see :class:`pcgraph.tasks.objective.Objective`)."""
    return Objective(spec, graph).evaluate(graph, solver, x, y)


def train(spec: GraphSpec | None = None, *, epochs: int | None = None, data_root: str | None = None,
          device: str = "cpu", out: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, method: str = "pc", resume: str | Path | None = None,
          on_divergence: str = "stop") -> TrainResult:
    """Train ``spec`` on its data set and return the final figures.

    ``method="pc"`` trains with predictive coding; ``"bp"`` trains the spec's backprop baseline
    (:class:`pcgraph.tasks.objective.Backprop`: the same graph, or encoder + decoder for a
    reconstruction spec with ``bp.encoder``). Per epoch it logs the mean energy per sample (PC: at
    the relaxed states; BP: the loss), for classifiers the train accuracy (feedforward predictions
    made before each update), the test metric (accuracy or MSE per pixel) and seconds.

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
        method = saved.get("method", "pc")
        out = resume if out is None else out
    if spec is None:
        raise UsageError("give a spec to train, or a run folder to resume")
    if spec.data is None:
        hint = "; a graph with delayed edges runs along sequences: use pcgraph filter" \
            if any(e.delay for e in spec.graph.edges) else ""
        raise SpecError("training needs a data section naming the input node" + hint, "data")
    dev = resolve_device(device)
    if epochs is not None and epochs < 1:
        raise UsageError(f"the number of epochs must be at least 1, got {epochs}")
    torch.manual_seed(spec.train.seed)
    graph = compile(spec).to(dev)
    task = Objective(spec, graph)
    d = spec.data
    extra_pass = False
    # train accuracy scores feedforward predictions: for acyclic graphs with whole input and target nodes
    scored = task.classify and graph.acyclic and task.input_ref.neurons is None and task.target_ref.neurons is None
    if task.classify:
        target = graph.nodes[task.target]
        if spec.train.eval == "feedforward" and not target.incoming:
            raise SpecError(f"the target {d.target!r} has no incoming edges, so a feedforward pass cannot "
                            "predict it; use train.eval: inference", "train.eval")
        # train accuracy scores feedforward predictions; forward init makes them for a leaf target for free
        forward_init = spec.inference.init == "forward" or spec.learning.variant == "exact"
        extra_pass = scored and not (forward_init and not target.outgoing)
    solver = Solver.from_spec(spec)
    baseline = Backprop(spec, graph).to(dev) if method == "bp" else None
    model = baseline if baseline is not None and baseline.encoder is not None else graph  # trained, saved
    optimizer = weight_optimizer(spec.learning.optimizer if baseline is None else
                                 spec.bp.optimizer or spec.learning.optimizer, model.parameters())
    data = load_dataset(d.dataset, data_root)
    if data.source != "embedded":
        note = " (CIFAR-10 from an image folder: if it is this project's JPEG copy, results can differ " \
               "slightly from the original)" if (Path(data.source) / "train").is_dir() else ""
        log(f"data: {d.dataset}, {len(data.y_train):,} train / {len(data.y_test):,} test images from {data.source}{note}")
    x_train, y_train, x_test, y_test = prepare(data, d, graph, dev)
    classes = data.num_classes if task.target is not None else 0
    gen = torch.Generator().manual_seed(spec.train.seed)
    n_epochs = (saved["epochs"] if saved else spec.train.epochs) if epochs is None else epochs
    per_epoch = -(-len(x_train) // d.batch_size)
    scheduler = lr_schedule(optimizer, spec.learning, n_epochs * per_epoch)
    history: list[dict] = []
    first_epoch, position, partial, perm = 1, 0, None, None
    if saved:
        checkpoint.load_parameters(model, saved)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_torch"])
        gen.set_state(saved["rng_shuffle"])
        history = list(saved["history"])
        first_epoch, position, partial = saved["epoch"] + 1, saved["position"], saved["partial"]
        perm = saved["perm"].to(dev) if saved["perm"] is not None else None
    out = Path(out) if out is not None else None
    columns = ("epoch", "energy", *(("train_accuracy",) if scored else ()), f"test_{task.metric}",
               "seconds", "skipped_batches")
    if out is not None and saved is None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "spec.yaml").write_text(spec.to_yaml())
            (out / "metrics.jsonl").write_text("")
            (out / "metrics.csv").write_text(",".join(columns) + "\n")
        except OSError as err:
            raise UsageError(f"cannot write the run folder {str(out)!r}: {err.strerror or err}") from None

    def snapshot(epoch_done: int, position: int, perm, partial) -> dict:
        return {"spec": spec.to_yaml(), "method": method, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_torch": torch.get_rng_state(),
                "rng_shuffle": gen.get_state(), "epoch": epoch_done, "epochs": n_epochs, "position": position,
                "perm": None if perm is None else perm.cpu(), "partial": partial, "history": history}

    with StopOnSignal() as stop:
        for epoch in range(first_epoch, n_epochs + 1):
            start = time.perf_counter()
            if position == 0:
                perm = torch.randperm(len(x_train), generator=gen).to(dev)
                partial = {"energy": 0.0, "correct": 0, "seen": 0, "skipped": 0}
            energy = torch.tensor(partial["energy"], device=dev)
            correct = torch.tensor(partial["correct"], device=dev)
            seen, skipped = partial["seen"], partial["skipped"]
            for i in progress_bar(range(position, len(perm), d.batch_size), f"epoch {epoch}/{n_epochs}", progress):
                idx = perm[i: i + d.batch_size]
                batch = task.batch(x_train[idx], y_train[idx], classes)
                try:
                    if method == "pc":
                        predicted = None
                        if extra_pass:
                            with torch.no_grad():
                                predicted = graph({d.input: batch[d.input]})[d.target]
                        r = solver.step(graph, batch, optimizer)
                        energy += r.energy[-1]
                        predicted = r.predicted.get(d.target, predicted) if scored else None
                    else:
                        predicted = None
                        if scored:
                            with torch.no_grad():
                                predicted = graph({d.input: batch[d.input]})[d.target]
                        energy += baseline.step(batch, optimizer) * len(idx)
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
            test = task.evaluate(graph, solver, x_test, y_test, baseline)
            row = {"epoch": epoch, "energy": float(energy) / max(seen, 1)}
            if scored:
                row["train_accuracy"] = float(correct) / max(seen, 1)
            row |= {f"test_{task.metric}": test, "seconds": seconds, "skipped_batches": skipped}
            history.append(row)
            shown = f"train acc {100 * row['train_accuracy']:6.2f}%  " if scored else ""
            shown += f"test acc {100 * test:6.2f}%" if task.classify else f"test mse {test:.4e}"
            log(f"epoch {epoch:3d}  energy {row['energy']:.4f}  {shown}  {seconds:6.2f} s"
                + (f"  ({skipped} batches skipped)" if skipped else ""))
            if out is not None:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                with open(out / "metrics.csv", "a") as f:
                    f.write(",".join(str(row[c]) for c in columns) + "\n")
                checkpoint.save(out, snapshot(epoch, 0, None, None))
    if out is not None:
        torch.save(model.state_dict(), out / "model.pt")
    last, key = history[-1], f"test_{task.metric}"
    best = (max if task.higher_is_better else min)(h[key] for h in history)
    return TrainResult(spec.name, n_epochs, task.metric, last[key], best, last.get("train_accuracy"),
                       last["energy"], [h["seconds"] for h in history], sum(p.numel() for p in model.parameters()),
                       graph.states_per_sample() if baseline is None else 0, history)


def _check_parameters(graph: CompiledGraph, epoch: int) -> None:
    for name, p in graph.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise DivergenceError(f"epoch {epoch}: parameter {name} became NaN/inf; lower the learning rate")
