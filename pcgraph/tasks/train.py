"""Training and evaluation of a spec on its data set.

A run is three pieces: :func:`setup_run` builds a :class:`RunSetup` (spec, graph, data, optimizer,
schedule, restored checkpoint state), a method object (:mod:`pcgraph.tasks.methods`: PC or BP) makes
each update, and :func:`run_epoch` loops over the batches. (Longer than ~300 lines: the setup and
the loops share the run's state, and read best in one file.)
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph, compile
from pcgraph.data import Dataset, load_dataset
from pcgraph.data.adapter import samples
from pcgraph.errors import DivergenceError, Interrupted, SpecError, UsageError
from pcgraph.solver import Solver, aot
from pcgraph.spec import GraphSpec, spec_from_yaml
from pcgraph.tasks import checkpoint, distributed, runfolder
from pcgraph.tasks.interrupt import StopOnSignal, progress_bar
from pcgraph.tasks.methods import Method, make_method
from pcgraph.tasks.objective import Objective, labels
from pcgraph.tasks.setup import columns as split_columns
from pcgraph.tasks.setup import lr_schedule as lr_schedule
from pcgraph.tasks.setup import prepare as prepare
from pcgraph.tasks.setup import resolve_device as resolve_device
from pcgraph.tasks.setup import weight_optimizer


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


def evaluate(graph: CompiledGraph, spec: GraphSpec, solver: Solver, x: Tensor | dict, y: Tensor | None = None) -> float:
    """The spec's test metric on (x, y), or on ``x = {reference: values}`` for every data node:
    accuracy (the target's argmax after a feedforward pass or after inference with only the inputs
    clamped, ``train.eval``; several targets: their mean), or reconstruction MSE per pixel (see
    :class:`pcgraph.tasks.objective.Objective`)."""
    return Objective(spec, graph).evaluate(graph, solver, x, y)


def train(spec: GraphSpec | None = None, *, epochs: int | None = None, data_root: str | None = None,
          device: str = "cpu", out: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, method: str = "pc", resume: str | Path | None = None,
          on_divergence: str = "stop", nproc: int | None = None, force: bool = False,
          dataset: Dataset | None = None, on_epoch: Callable[[dict], None] | None = None,
          tensorboard: str | Path | None = None) -> TrainResult:
    """Train ``spec`` on its data set and return the final figures.

    ``method="pc"`` trains with predictive coding; ``"bp"`` trains the spec's backprop baseline
    (:class:`pcgraph.tasks.objective.Backprop`: the same graph, or encoder + decoder for a
    reconstruction spec with ``bp.encoder``). Per epoch it logs the mean energy per sample (PC: at
    the relaxed states; BP: the loss), for classifiers the train accuracy (feedforward predictions
    made before each update), the test metric (accuracy or MSE per pixel) and seconds.

    With ``out`` it writes ``spec.yaml``, ``metrics.jsonl``, ``metrics.csv`` and, after every epoch,
    ``checkpoint.pt`` (see :mod:`pcgraph.tasks.checkpoint`), and the final ``model.pt`` (a state
    dict); ``spec.yaml`` and the checkpoint hold the resolved spec (defaults written out) and the
    pcgraph version. A folder that already holds a run is refused unless ``force=True``, which
    replaces it. ``resume=DIR`` continues the run saved there (its spec, which an edited
    ``spec.yaml`` may not contradict; ``epochs`` may extend it); the result equals an
    uninterrupted run's, bit for bit on the CPU. SIGINT/SIGTERM finish the current
    batch, save a checkpoint (with ``out``) and raise :class:`Interrupted`. ``on_divergence="skip"``
    skips a batch whose energy becomes NaN/inf (counted in the metrics, left out of the epoch's
    means) instead of stopping; an epoch whose every batch is skipped raises DivergenceError.

    Data parallel (:mod:`pcgraph.tasks.distributed`): ``nproc=N > 1`` starts N processes on this
    machine; under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set) it joins torchrun's process
    group. ``data.batch_size`` stays the global batch: each rank relaxes a contiguous shard of it
    and the gradients are averaged over the whole batch, so an update equals the single-process
    one. Rank 0 logs and writes; checkpoints count global batches, so a run resumes on any N.

    ``dataset`` trains on it instead of loading ``spec.data.dataset`` (its test split is what each
    epoch scores: the tuner passes a validation split there). ``on_epoch(row)`` is called with each
    epoch's history row, after it is logged and saved; what it raises ends the run (in one process).
    ``tensorboard=DIR`` writes TensorBoard event files there (:mod:`pcgraph.tasks.tensorboard`:
    the rows, learning rates, node energies, an inference energy curve per epoch); a folder holding
    event files is refused unless ``force`` (or continued by ``resume``).
    """
    if method not in ("pc", "bp"):
        raise ValueError(f"method must be pc or bp, got {method!r}")
    if on_divergence not in ("stop", "skip"):
        raise UsageError(f"on_divergence must be stop or skip, got {on_divergence!r}")
    if nproc is not None and nproc < 1:
        raise UsageError(f"the number of processes must be at least 1, got {nproc}")
    if out is not None and os.environ.get("RANK", "0") == "0":
        runfolder.claim(Path(out), resume, force)
    if tensorboard is not None and os.environ.get("RANK", "0") == "0":
        from pcgraph.tasks import tensorboard as tb

        tb.check(tensorboard, force, resume is not None)
    args = dict(spec=spec, epochs=epochs, data_root=data_root, device=device, out=out, progress=progress,
                log=log, method=method, resume=resume, on_divergence=on_divergence, dataset=dataset,
                tensorboard=tensorboard)
    if nproc is not None and nproc > 1:
        if on_epoch is not None:
            raise UsageError("on_epoch runs in one process; leave out nproc")
        if distributed.under_torchrun():
            raise UsageError("--nproc starts its own processes; under torchrun leave it out "
                             "(torchrun's --nproc-per-node sets the number)")
        dev = resolve_device(device)
        distributed.check_devices(dev, nproc)
        return distributed.launch(train, nproc, dev, args)
    with distributed.joined(resolve_device(device)) as ctx:
        return _train(ctx, on_epoch, **args)


def _train(ctx: distributed.Context, on_epoch: Callable[[dict], None] | None = None,
           tensorboard: str | Path | None = None, **args) -> TrainResult:
    """One process's part of :func:`train`: set up, run the epochs (each row then goes to the
    epoch hooks: the TensorBoard logger, ``on_epoch``), sum up."""
    run = setup_run(ctx, **args)
    with contextlib.ExitStack() as stack:
        hooks = []
        if tensorboard is not None and ctx.main:
            from pcgraph.tasks.tensorboard import TensorBoardLogger

            hooks.append(stack.enter_context(TensorBoardLogger(tensorboard, run)))
        hooks += [on_epoch] if on_epoch is not None else []
        with StopOnSignal() as stop:
            for epoch in range(run.first_epoch, run.n_epochs + 1):
                run_epoch(run, epoch, stop)
                for hook in hooks:
                    hook(run.history[-1])
    return run.finish()


@dataclass
class RunSetup:
    """Everything a training run needs, built by :func:`setup_run`; ``history``, ``position``,
    ``perm`` and ``partial`` are where the epoch loop stands (restored from a checkpoint)."""

    ctx: distributed.Context
    spec: GraphSpec
    method: Method
    dev: torch.device
    log: Callable[[str], None]
    progress: bool
    on_divergence: str
    out: Path | None  # the run folder
    folder: Path | None  # where this rank writes: ``out`` on rank 0, else None
    data: tuple[dict[str, Tensor], dict[str, Tensor]]  # train, test: {data.input/target reference: values}
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stepper: torch.optim.Optimizer  # the optimizer, or its all-reducing wrapper with several ranks
    gen: torch.Generator  # shuffles the training set
    n_epochs: int
    columns: tuple[str, ...]  # of metrics.csv
    history: list[dict] = field(default_factory=list)
    first_epoch: int = 1
    position: int = 0  # the first sample of the current epoch's permutation still to train on
    perm: Tensor | None = None
    partial: dict | None = None  # the current epoch's sums so far

    @property
    def task(self) -> Objective:
        return self.method.task

    def snapshot(self, epoch_done: int, position: int, perm: Tensor | None, partial: dict | None) -> dict:
        """The checkpoint payload (see :mod:`pcgraph.tasks.checkpoint`)."""
        return {"spec": self.spec.to_yaml(resolved=True), "pcgraph_version": runfolder.version(), "method": self.method.name, "model": self.method.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_shuffle": self.gen.get_state(), "epoch": epoch_done,
                "epochs": self.n_epochs, "position": position, "perm": None if perm is None else perm.cpu(),
                "partial": partial, "history": self.history}

    def finish(self) -> TrainResult:
        """Save ``model.pt`` (with a folder) and return the final figures."""
        model = self.method.model
        if self.folder is not None:
            torch.save(model.state_dict(), self.folder / "model.pt")
        last, key = self.history[-1], f"test_{self.task.metric}"
        best = (max if self.task.higher_is_better else min)(h[key] for h in self.history)
        return TrainResult(self.spec.name, self.n_epochs, self.task.metric, last[key], best,
                           last.get("train_accuracy"), last["energy"], [h["seconds"] for h in self.history],
                           sum(p.numel() for p in self.method.parameters()), self.method.states_per_sample(),
                           self.history)


def setup_run(ctx: distributed.Context, spec, epochs, data_root, device, out, progress, log, method, resume,
              on_divergence, dataset=None) -> RunSetup:
    """Check the arguments and build the run: the spec (a resumed run's), graph, method, data,
    optimizer and schedule, restored from the checkpoint when resuming; create the run folder."""
    saved = checkpoint.read(resume) if resume is not None else None
    if saved is not None:
        spec, method = spec_from_yaml(saved["spec"]), saved.get("method", "pc")
        runfolder.check_unedited(Path(resume), spec)
        out = resume if out is None else out
    _check_spec(spec)
    dev = ctx.device(resolve_device(device))
    if epochs is not None and epochs < 1:
        raise UsageError(f"the number of epochs must be at least 1, got {epochs}")
    if ctx.world > 1 and spec.learning.variant.learn_every_step and spec.inference.tol is not None:
        raise UsageError("incremental PC with inference.tol cannot run on several processes: ranks would "
                         "stop inference, and so their parameter steps, at different steps")
    if not ctx.main:  # rank 0 logs and writes; the others only compute
        log, progress = _quiet, False
    torch.manual_seed(spec.train.seed)
    graph = compile(spec).to(dev)
    task = Objective(spec, graph)
    m = make_method(method, spec, graph, task, dev)
    optimizer = weight_optimizer(m.optimizer_spec, m.parameters(), m.optimizer_path)
    d = spec.data
    data = load_dataset(d.dataset, data_root, d.names("input") + d.names("target")) if dataset is None else dataset
    tensors = split_columns(data, d, graph, dev)
    n_train, n_test = (samples(split) for split in tensors)
    if data.source != "embedded":
        note = " (CIFAR-10 from an image folder: if it is this project's JPEG copy, results can differ " \
               "slightly from the original)" if (Path(data.source) / "train").is_dir() else ""
        what = f"{d.dataset}, {n_train:,} train / {n_test:,} test images" if isinstance(d.dataset, str) else \
            f"npz, {n_train:,} train / {n_test:,} test samples"
        log(f"data: {what} from {data.source}{note}")
    n_epochs = (saved["epochs"] if saved else spec.train.epochs) if epochs is None else epochs
    updates = n_epochs * -(-n_train // d.batch_size)
    scheduler = lr_schedule(optimizer, spec.learning, updates)
    if spec.inference.compile == "auto" and method == "pc" and dev.type == "cpu" and m.solver.ahead_of_time() \
            and aot.pays(graph, updates):
        m.solver.compile = True
        log(f"inference: compiled ahead of time ({updates:,} updates), cached in {aot.cache_dir()}; a graph's "
            "first run compiles it once (inference.compile: false: eager)")
    out = Path(out) if out is not None else None
    columns = ("epoch", "energy", *(("train_accuracy",) if m.scored else ()), f"test_{task.metric}",
               "seconds", "skipped_batches")
    run = RunSetup(ctx, spec, m, dev, log, progress, on_divergence, out, out if ctx.main else None, tensors,
                   optimizer, scheduler,
                   distributed.ReducingOptimizer(optimizer) if ctx.world > 1 else optimizer,
                   torch.Generator().manual_seed(spec.train.seed), n_epochs, columns)
    if saved:
        _restore(run, saved)
    ctx.broadcast(m.model)  # every rank starts from rank 0's parameters
    if run.folder is not None and saved is None:
        _create_folder(run)
    return run


def _check_spec(spec: GraphSpec | None) -> None:
    """A spec to train, with a data section."""
    if spec is None:
        raise UsageError("give a spec to train, or a run folder to resume")
    if spec.data is None:
        hint = "; a graph with delayed edges runs along sequences: use pcgraph filter" \
            if any(e.delay for e in spec.graph.edges) else ""
        raise SpecError("training needs a data section naming the input node" + hint, "data")


def _restore(run: RunSetup, saved: dict) -> None:
    """Continue from a checkpoint: parameters, optimizer, schedule, RNGs and the loop's position."""
    checkpoint.load_parameters(run.method.model, saved)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_torch"])
    run.gen.set_state(saved["rng_shuffle"])
    run.history = list(saved["history"])
    run.first_epoch, run.position, run.partial = saved["epoch"] + 1, saved["position"], saved["partial"]
    run.perm = saved["perm"].to(run.dev) if saved["perm"] is not None else None


def _create_folder(run: RunSetup) -> None:
    """A new run folder: ``spec.yaml`` (the resolved spec) and empty metrics files."""
    try:
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / "spec.yaml").write_text(
            f"# the resolved spec of this run (every default written out), pcgraph {runfolder.version()};\n"
            "# pcgraph train --resume continues it and refuses an edited copy\n" + run.spec.to_yaml(resolved=True))
        (run.folder / "metrics.jsonl").write_text("")
        (run.folder / "metrics.csv").write_text(",".join(run.columns) + "\n")
    except OSError as err:
        raise UsageError(f"cannot write the run folder {str(run.out)!r}: {err.strerror or err}") from None


def run_epoch(run: RunSetup, epoch: int, stop: StopOnSignal) -> None:
    """Train one epoch (from ``run.position`` when resuming inside it), score the test set, log
    the epoch's row and, with a folder, append it to the metrics and save a checkpoint."""
    start = time.perf_counter()
    if run.position == 0:
        run.perm = torch.randperm(samples(run.data[0]), generator=run.gen).to(run.dev)
        run.partial = {"energy": 0.0, "correct": 0, "seen": 0, "skipped": 0}
    run.method.epoch = epoch
    energy, correct, seen, skipped = _train_batches(run, epoch, stop)
    run.position = 0
    if run.ctx.sum([seen])[0] == 0:  # over all ranks
        raise DivergenceError(f"epoch {epoch}: every batch ({skipped}) diverged and was skipped, so nothing was "
                              "learnt; lower the learning rates (learning.optimizer.lr, inference.optimizer.lr)")
    _check_parameters(run.method.graph, epoch)
    seconds = time.perf_counter() - start
    ctx, test_data = run.ctx, run.data[1]
    n_test = samples(test_data)
    lo, hi = distributed.shard(n_test, ctx.rank, ctx.world)  # each rank scores a slice
    scores = run.method.scores({k: v[lo:hi] for k, v in test_data.items()}) if hi > lo else \
        dict.fromkeys(run.task.score_keys, 0.0)
    if ctx.world > 1:
        energy, correct, seen, *summed = ctx.sum([float(energy), float(correct), seen, *(v * (hi - lo) for v in scores.values())])
        scores = {k: v / n_test for k, v in zip(scores, summed)}
    test = sum(scores.values()) / len(scores)  # several targets: the mean of their accuracies
    row = {"epoch": epoch, "energy": float(energy) / max(seen, 1)}
    if run.method.scored:
        row["train_accuracy"] = float(correct) / max(seen, 1)
    row |= {f"test_{run.task.metric}": test, "seconds": seconds, "skipped_batches": skipped}
    if len(scores) > 1:
        row[f"test_{run.task.metric}_by_target"] = scores
    if (nodes := run.method.node_energy()) is not None:
        row["node_energy"] = nodes
    run.history.append(row)
    shown = f"train acc {100 * row['train_accuracy']:6.2f}%  " if run.method.scored else ""
    shown += f"test acc {100 * test:6.2f}%" if run.task.classify else f"test mse {test:.4e}"
    run.log(f"epoch {epoch:3d}  energy {row['energy']:.4f}  {shown}  {seconds:6.2f} s"
            + (f"  ({skipped} batches skipped)" if skipped else ""))
    if run.folder is not None:
        with open(run.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(run.folder / "metrics.csv", "a") as f:
            f.write(",".join(str(row[c]) for c in run.columns) + "\n")
        checkpoint.save(run.folder, run.snapshot(epoch, 0, None, None))


def _train_batches(run: RunSetup, epoch: int, stop: StopOnSignal) -> tuple[Tensor, Tensor, int, int]:
    """The epoch's updates from ``run.position`` on; returns this rank's (energy, correct, seen,
    skipped) sums. A stop request saves a checkpoint (with a folder) and raises :class:`Interrupted`."""
    ctx, m, stepper, size = run.ctx, run.method, run.stepper, run.spec.data.batch_size
    train, target = run.data[0], (run.task.targets[0][0] if run.task.targets else None)
    reducing = stepper is not run.optimizer  # several ranks: a ReducingOptimizer
    own = run.partial if ctx.main else {**run.partial, "energy": 0.0, "correct": 0, "seen": 0}  # sums over ranks
    energy = torch.tensor(own["energy"], device=run.dev)
    correct = torch.tensor(own["correct"], device=run.dev)
    seen, skipped = own["seen"], own["skipped"]
    for i in progress_bar(range(run.position, len(run.perm), size), f"epoch {epoch}/{run.n_epochs}", run.progress):
        whole = run.perm[i: i + size]  # the global batch; this rank takes [lo, hi) of it
        lo, hi = distributed.shard(len(whole), ctx.rank, ctx.world)
        idx = whole[lo:hi] if hi > lo else whole[:1]  # an empty shard: a stand-in, weight 0
        if reducing:
            stepper.prepare(hi - lo, len(whole), stop.requested, m.steps)
        rows = {k: v.index_select(0, idx) for k, v in train.items()}  # several times faster than v[idx] here
        batch = run.task.batch(rows, check=False)  # labels checked when read
        try:
            contribution, predicted = m.step(batch, stepper, hi - lo)
            if contribution is not None:
                energy += contribution
            run.scheduler.step()
            seen += hi - lo
            if predicted is not None and hi > lo:
                correct += (predicted.argmax(1) == labels(rows[target])).sum()
        except DivergenceError as err:  # raised before any parameter changed
            if reducing and not isinstance(err, distributed.PeerDivergence):
                stepper.abstain()  # the other ranks wait in this update's all-reduce
            if run.on_divergence == "stop":
                raise type(err)(f"epoch {epoch}, batch {i // size + 1}: {err}") from None
            skipped += 1
        if stepper.stop if reducing else stop.requested:  # the same batch on every rank
            _interrupt(run, epoch, i + size, ctx.sum([float(energy), float(correct), seen]), skipped, stop.signum)
    return energy, correct, seen, skipped


def _interrupt(run: RunSetup, epoch: int, position: int, sums: list[float], skipped: int, signum: int) -> None:
    """Stop mid-epoch: save a checkpoint at ``position`` with the epoch's global ``sums`` so far."""
    e, c, n = sums
    partial = {"energy": e, "correct": int(c), "seen": int(n), "skipped": skipped}
    if run.out is not None:
        if run.folder is not None:
            checkpoint.save(run.folder, run.snapshot(epoch - 1, position, run.perm, partial))
        raise Interrupted(f"interrupted in epoch {epoch}; resume with: pcgraph train --resume {run.out}", signum)
    raise Interrupted(f"interrupted in epoch {epoch}; nothing saved (no --out given)", signum)


def _quiet(line: str) -> None:
    """The log of ranks other than 0."""


def _check_parameters(graph: CompiledGraph, epoch: int) -> None:
    for name, p in graph.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise DivergenceError(f"epoch {epoch}: parameter {name} became NaN/inf; lower the learning rate")
