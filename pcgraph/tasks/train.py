"""Training and evaluation of a spec on its data set."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pcgraph._impl import distributed
from pcgraph._impl.interrupt import StopOnSignal, progress_bar
from pcgraph.compile import CompiledGraph, compile
from pcgraph.data import load_dataset
from pcgraph.errors import DivergenceError, Interrupted, SpecError, UsageError
from pcgraph.optim import weight_optimizer
from pcgraph.solve import Solver
from pcgraph.spec import GraphSpec, spec_from_yaml
from pcgraph.tasks import checkpoint
from pcgraph.tasks.objective import Backprop, Objective
from pcgraph.tasks.setup import lr_schedule as lr_schedule
from pcgraph.tasks.setup import prepare as prepare
from pcgraph.tasks.setup import resolve_device as resolve_device


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


def evaluate(graph: CompiledGraph, spec: GraphSpec, solver: Solver, x: Tensor, y: Tensor) -> float:
    """The spec's test metric on (x, y): accuracy (the target's argmax after a feedforward pass or
    after inference with only the input clamped, ``train.eval``), or reconstruction MSE per pixel
    (see :class:`pcgraph.tasks.objective.Objective`)."""
    return Objective(spec, graph).evaluate(graph, solver, x, y)


def train(spec: GraphSpec | None = None, *, epochs: int | None = None, data_root: str | None = None,
          device: str = "cpu", out: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, method: str = "pc", resume: str | Path | None = None,
          on_divergence: str = "stop", nproc: int | None = None) -> TrainResult:
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

    Data parallel (:mod:`pcgraph._impl.distributed`): ``nproc=N > 1`` starts N processes on this
    machine; under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set) it joins torchrun's process
    group. ``data.batch_size`` stays the global batch: each rank relaxes a contiguous shard of it
    and the gradients are averaged over the whole batch, so an update equals the single-process
    one. Rank 0 logs and writes; checkpoints count global batches, so a run resumes on any N.
    """
    if method not in ("pc", "bp"):
        raise ValueError(f"method must be pc or bp, got {method!r}")
    if on_divergence not in ("stop", "skip"):
        raise UsageError(f"on_divergence must be stop or skip, got {on_divergence!r}")
    if nproc is not None and nproc < 1:
        raise UsageError(f"the number of processes must be at least 1, got {nproc}")
    args = dict(spec=spec, epochs=epochs, data_root=data_root, device=device, out=out, progress=progress,
                log=log, method=method, resume=resume, on_divergence=on_divergence)
    if nproc is not None and nproc > 1:
        if distributed.under_torchrun():
            raise UsageError("--nproc starts its own processes; under torchrun leave it out "
                             "(torchrun's --nproc-per-node sets the number)")
        dev = resolve_device(device)
        distributed.check_devices(dev, nproc)
        return distributed.launch(train, nproc, dev, args)
    with distributed.joined(resolve_device(device)) as ctx:
        return _train(ctx, **args)


def _train(ctx: distributed.Context, spec, epochs, data_root, device, out, progress, log, method, resume,
           on_divergence) -> TrainResult:
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
    dev = ctx.device(resolve_device(device))
    if epochs is not None and epochs < 1:
        raise UsageError(f"the number of epochs must be at least 1, got {epochs}")
    if ctx.world > 1 and spec.learning.variant == "incremental" and spec.inference.tol is not None:
        raise UsageError("incremental PC with inference.tol cannot run on several processes: ranks would "
                         "stop inference, and so their parameter steps, at different steps")
    if not ctx.main:  # rank 0 logs and writes; the others only compute
        log, progress = _quiet, False
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
    ctx.broadcast(model)  # every rank starts from rank 0's parameters
    stepper = distributed.ReducingOptimizer(optimizer) if ctx.world > 1 else optimizer
    out = Path(out) if out is not None else None
    folder = out if ctx.main else None  # where this rank writes
    columns = ("epoch", "energy", *(("train_accuracy",) if scored else ()), f"test_{task.metric}",
               "seconds", "skipped_batches")
    if folder is not None and saved is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "spec.yaml").write_text(spec.to_yaml())
            (folder / "metrics.jsonl").write_text("")
            (folder / "metrics.csv").write_text(",".join(columns) + "\n")
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
            own = partial if ctx.main else {**partial, "energy": 0.0, "correct": 0, "seen": 0}  # sums over ranks
            energy = torch.tensor(own["energy"], device=dev)
            correct = torch.tensor(own["correct"], device=dev)
            seen, skipped = own["seen"], own["skipped"]
            for i in progress_bar(range(position, len(perm), d.batch_size), f"epoch {epoch}/{n_epochs}", progress):
                whole = perm[i: i + d.batch_size]  # the global batch; this rank takes [lo, hi) of it
                lo, hi = distributed.shard(len(whole), ctx.rank, ctx.world)
                idx = whole[lo:hi] if hi > lo else whole[:1]  # an empty shard: a stand-in, weight 0
                if stepper is not optimizer:
                    iterative = method == "pc" and solver.variant == "incremental"
                    stepper.prepare(hi - lo, len(whole), stop.requested, solver.steps if iterative else 1)
                batch = task.batch(x_train[idx], y_train[idx], classes)
                try:
                    if method == "pc":
                        predicted = None
                        if extra_pass:
                            with torch.no_grad():
                                predicted = graph({d.input: batch[d.input]})[d.target]
                        r = solver.step(graph, batch, stepper)
                        if hi > lo:
                            energy += r.energy[-1]
                        predicted = r.predicted.get(d.target, predicted) if scored else None
                    else:
                        predicted = None
                        if scored:
                            with torch.no_grad():
                                predicted = graph({d.input: batch[d.input]})[d.target]
                        energy += baseline.step(batch, stepper) * (hi - lo)
                    scheduler.step()
                    seen += hi - lo
                    if predicted is not None and hi > lo:
                        correct += (predicted.argmax(1) == y_train[idx]).sum()
                except DivergenceError as err:  # raised before any parameter changed
                    if stepper is not optimizer and not isinstance(err, distributed.PeerDivergence):
                        stepper.abstain()  # the other ranks wait in this update's all-reduce
                    if on_divergence == "stop":
                        raise type(err)(f"epoch {epoch}, batch {i // d.batch_size + 1}: {err}") from None
                    skipped += 1
                if stepper.stop if stepper is not optimizer else stop.requested:  # the same batch on every rank
                    e, c, n = ctx.sum([float(energy), float(correct), seen])
                    partial = {"energy": e, "correct": int(c), "seen": int(n), "skipped": skipped}
                    if out is not None:
                        if folder is not None:
                            checkpoint.save(folder, snapshot(epoch - 1, i + d.batch_size, perm, partial))
                        raise Interrupted(f"interrupted in epoch {epoch}; resume with: pcgraph train --resume {out}")
                    raise Interrupted(f"interrupted in epoch {epoch}; nothing saved (no --out given)")
            position = 0
            _check_parameters(graph, epoch)
            seconds = time.perf_counter() - start
            lo, hi = distributed.shard(len(x_test), ctx.rank, ctx.world)  # each rank scores a slice
            test = task.evaluate(graph, solver, x_test[lo:hi], y_test[lo:hi], baseline) if hi > lo else 0.0
            if ctx.world > 1:
                energy, correct, seen, test = ctx.sum([float(energy), float(correct), seen, test * (hi - lo)])
                test /= len(x_test)
            row = {"epoch": epoch, "energy": float(energy) / max(seen, 1)}
            if scored:
                row["train_accuracy"] = float(correct) / max(seen, 1)
            row |= {f"test_{task.metric}": test, "seconds": seconds, "skipped_batches": skipped}
            history.append(row)
            shown = f"train acc {100 * row['train_accuracy']:6.2f}%  " if scored else ""
            shown += f"test acc {100 * test:6.2f}%" if task.classify else f"test mse {test:.4e}"
            log(f"epoch {epoch:3d}  energy {row['energy']:.4f}  {shown}  {seconds:6.2f} s"
                + (f"  ({skipped} batches skipped)" if skipped else ""))
            if folder is not None:
                with open(folder / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                with open(folder / "metrics.csv", "a") as f:
                    f.write(",".join(str(row[c]) for c in columns) + "\n")
                checkpoint.save(folder, snapshot(epoch, 0, None, None))
    if folder is not None:
        torch.save(model.state_dict(), folder / "model.pt")
    last, key = history[-1], f"test_{task.metric}"
    best = (max if task.higher_is_better else min)(h[key] for h in history)
    return TrainResult(spec.name, n_epochs, task.metric, last[key], best, last.get("train_accuracy"),
                       last["energy"], [h["seconds"] for h in history], sum(p.numel() for p in model.parameters()),
                       task.states_per_sample(graph) if baseline is None else 0, history)


def _quiet(line: str) -> None:
    """The log of ranks other than 0."""


def _check_parameters(graph: CompiledGraph, epoch: int) -> None:
    for name, p in graph.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise DivergenceError(f"epoch {epoch}: parameter {name} became NaN/inf; lower the learning rate")
