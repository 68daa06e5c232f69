"""Table 1 of the notes: PC against its backprop baseline, spec by spec, over several seeds.

For each spec and method (PC, and the spec's :class:`~pcgraph.tasks.objective.Backprop`
baseline) :func:`bench` trains with seeds ``train.seed + k``, ``k < seeds``, and reports the test
metric as mean +- std over seeds (best test accuracy over the epochs for classifiers, lowest test
MSE per pixel for reconstruction), seconds per training epoch (the median over all epochs and
seeds, so a one-time ``torch.compile`` in the first epoch does not count), parameters, inferred
states per sample, and FLOPs per parameter update counted by ``torch.utils.flop_counter`` on one
update (PC: the T inference steps included), also divided by the batch size as in the notes'
Table 1 (FLOPs per sample).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pcgraph.compiler import compile
from pcgraph.errors import SpecError, UsageError
from pcgraph.solver import Solver
from pcgraph.spec import GraphSpec
from pcgraph.spec.run import SEED_MAX
from pcgraph.tasks import checkpoint
from pcgraph.tasks.methods import check_buildable
from pcgraph.tasks.objective import Backprop, Objective
from pcgraph.tasks.paths import check_folder, safe_name
from pcgraph.tasks.setup import weight_optimizer
from pcgraph.tasks.train import train


@dataclass
class BenchRow:
    """One line of the table: a spec trained by one method over several seeds."""

    spec: str
    method: str  # "PC" or "BP"
    metric: str  # "accuracy" or "mse"
    values: list[float]  # the metric of each seed (best over epochs)
    epoch_seconds: float
    params: int
    states_per_sample: int
    flops_per_update: int
    batch_size: int = 1
    curves: list[list[float]] = field(default_factory=list)  # test metric per epoch, per seed
    time_ratio: float | None = None  # PC seconds / BP seconds (on PC rows)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std}


def random_batch(spec: GraphSpec, graph) -> dict:
    """A training batch of the spec's batch size for ``graph``: random inputs, random labels one-hot."""
    b, task = spec.data.batch_size, Objective(spec, graph)
    data = {text: torch.rand(b, *task.shape(graph, ref)) for text, ref in task.inputs}
    data |= {text: torch.randint(0, math.prod(task.shape(graph, ref)), (b,)) for text, ref in task.targets}
    return task.batch(data)


def eager_update(spec: GraphSpec, method: str) -> Callable[[], object]:
    """One parameter update by ``method`` (``pc``: eager, its T inference steps included; ``bp``:
    the backprop baseline) on a :func:`random_batch`, as a function to call; each call is one more
    update."""
    torch.manual_seed(0)
    graph = compile(spec)
    batch = random_batch(spec, graph)
    if method == "pc":
        opt, solver = weight_optimizer(spec.learning.optimizer, graph.parameters()), Solver.from_spec(spec, compile=False)
        return lambda: solver.step(graph, batch, opt)
    model = Backprop(spec, graph)
    opt = weight_optimizer(spec.bp.optimizer or spec.learning.optimizer, model.trained_parameters())
    return lambda: model.step(batch, opt)


def flops_per_update(spec: GraphSpec, method: str) -> int:
    """FLOPs of one parameter update (:func:`eager_update`), counted by torch.utils.flop_counter."""
    update = eager_update(spec, method)
    with FlopCounterMode(display=False) as counter:
        update()
    return counter.get_total_flops()


def bench(specs: list[GraphSpec], seeds: int = 3, epochs: int | None = None, data_root: str | None = None,
          device: str = "cpu", out: str | Path | None = None, methods: tuple[str, ...] = ("pc", "bp"),
          log: Callable[[str], None] = print, progress: bool = False, force: bool = False) -> list[BenchRow]:
    """Train every spec with every method and seed; one :class:`BenchRow` per (spec, method).
    Run folders (checkpoints, metrics) go to ``out/<folder>/<method>-seed<k>``, ``<folder>`` the
    spec's name made safe by :func:`~pcgraph.tasks.paths.safe_name` (default: a temporary folder,
    removed at the end); a folder holding a run is refused unless ``force``. See :func:`run_bench`
    for the checks made before any training and for keeping the rows that finished."""
    return list(run_bench(specs, seeds, epochs, data_root, device, out, methods, log, progress, force))


def run_bench(specs: list[GraphSpec], seeds: int = 3, epochs: int | None = None, data_root: str | None = None,
              device: str = "cpu", out: str | Path | None = None, methods: tuple[str, ...] = ("pc", "bp"),
              log: Callable[[str], None] = print, progress: bool = False, force: bool = False):
    """:func:`bench` one row at a time, each yielded when its seeds are done (a PC row gets its
    ``time_ratio`` when the spec's BP row follows). Before any training it checks what every spec
    and method will need (:func:`check`), so a spec that cannot run fails at once, not after hours
    of the others; a failure later still leaves the rows already yielded to the caller."""
    folders, flops = check(specs, seeds, methods, out, force)  # flops[i][method]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        for spec, folder, counted in zip(specs, folders, flops):
            by_method = {}
            for method in methods:
                values, seconds, curves, result = [], [], [], None
                for k in range(seeds):
                    seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": spec.train.seed + k})})
                    log(f"{spec.name}: {method.upper()} seed {seeded.train.seed}")
                    result = train(seeded, epochs=epochs, data_root=data_root, device=device, method=method,
                                   out=root / folder / f"{method}-seed{seeded.train.seed}", progress=progress, log=log,
                                   force=force)
                    values.append(result.best_test_metric)
                    seconds += result.epoch_seconds
                    curves.append([h[f"test_{result.metric}"] for h in result.history])
                row = BenchRow(spec.name, method.upper(), result.metric, values, statistics.median(seconds),
                               result.params, result.states_per_sample, counted[method],
                               spec.data.batch_size, curves)
                by_method[method] = row
                if method == "bp" and "pc" in by_method:
                    by_method["pc"].time_ratio = by_method["pc"].epoch_seconds / row.epoch_seconds
                yield row


def folder_names(specs: list[GraphSpec]) -> list[str]:
    """Each spec's run folder under ``out``: its name made safe, distinct (``name-2``, ...)."""
    folders: list[str] = []
    for spec in specs:
        name, k = safe_name(spec.name), 1
        while name in folders:
            k += 1
            name = f"{safe_name(spec.name)}-{k}"
        folders.append(name)
    return folders


def check(specs: list[GraphSpec], seeds: int, methods: tuple[str, ...], out: str | Path | None,
          force: bool) -> tuple[list[str], list[dict[str, int]]]:
    """Everything :func:`run_bench` can check before training: each spec has data and builds for
    each method (one update on a random batch, which is also counted: the FLOPs of each row), its
    seeds are in range, and no run folder under ``out`` holds a run (unless ``force``). Returns the
    specs' folder names (distinct) and, per spec, the FLOPs of an update by each method."""
    flops = []
    for spec in specs:
        try:
            if spec.data is None:
                raise SpecError("a spec needs a data section to be benchmarked", "data")
            if spec.train.seed + seeds - 1 > SEED_MAX:
                raise SpecError(f"seeds {spec.train.seed} to {spec.train.seed + seeds - 1} pass the largest seed "
                                "(2**63 - 1)", "train.seed")
            check_buildable(spec, methods)
            flops.append({method: flops_per_update(spec, method) for method in methods})
        except SpecError as err:  # which spec, then the paths within it
            raise SpecError([(f"{spec.name}: {p}", m) for p, m in err.problems]) from None
    folders = folder_names(specs)
    if out is not None:
        check_folder(out, "--out")
        for spec, folder in zip(specs, folders):
            for method in methods:
                for k in range(seeds):
                    run = Path(out) / folder / f"{method}-seed{spec.train.seed + k}"
                    if not force and (run / checkpoint.FILE).is_file():
                        raise UsageError(f"{str(run)!r} already holds a run; choose another --out folder, or pass "
                                         "--force to replace it")
    return folders, flops


def _metric(row: BenchRow) -> str:
    """mean ± std over the seeds; one seed has no spread to show."""
    one = len(row.values) == 1
    if row.metric == "accuracy":
        return f"{100 * row.mean:.2f}%" + ("" if one else f" ± {100 * row.std:.2f}")
    return f"{row.mean * 1e3:.2f}e-3" if one else f"({row.mean * 1e3:.2f} ± {row.std * 1e3:.2f})e-3"


def table(rows: list[BenchRow]) -> list[tuple[str, ...]]:
    """The rows as strings, in Table 1's columns."""
    return [(r.spec, r.method, ("acc " if r.metric == "accuracy" else "MSE ") + _metric(r), str(len(r.values)),
             f"{r.epoch_seconds:.2f}", f"{r.params:,}", f"{r.states_per_sample:,}" if r.method == "PC" else "-",
             f"{_flops(r.flops_per_update)} ({_flops(r.flops_per_update // r.batch_size)})",
             "-" if r.time_ratio is None else f"{r.time_ratio:.2f}") for r in rows]


HEADER = ("spec", "method", "test metric (mean ± std)", "seeds", "s/epoch", "params", "states/sample",
          "FLOPs/update (per sample)", "PC/BP time")


def to_markdown(rows: list[BenchRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table(rows)]
    return "\n".join(lines) + "\n"


def to_json(rows: list[BenchRow]) -> str:
    return json.dumps([r.to_dict() for r in rows])


def _flops(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def plot(rows: list[BenchRow], path: str | Path) -> None:
    """Test metric against epoch (mean over seeds), PC and BP, one panel per spec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.spec for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in (r for r in rows if r.spec == name):
            curve = torch.tensor(r.curves, dtype=torch.float64).mean(0)
            scale = 100 if r.metric == "accuracy" else 1
            ax.plot(range(1, len(curve) + 1), scale * curve, marker="o", ms=3, label=r.method)
            ax.set_ylabel("test accuracy (%)" if r.metric == "accuracy" else "test MSE per pixel")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def reconstruction_grid(spec: GraphSpec, run_root: str | Path, path: str | Path, data_root: str | None = None,
                        count: int = 10, folder: str | None = None) -> None:
    """A PNG: ``count`` test images (top row), PC's reconstruction from the inferred code
    (middle), the backprop autoencoder's (bottom), from the seed-``train.seed`` runs under
    ``run_root/<folder>/`` as written by :func:`bench` (default folder: ``safe_name(spec.name)``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pcgraph.data import load_dataset
    from pcgraph.tasks.train import prepare

    graph = compile(spec)
    task = Objective(spec, graph)
    _, _, x, y = prepare(load_dataset(spec.data.dataset, data_root), spec.data, graph, "cpu")
    x = x[:count]
    rows = [x]
    folder = Path(run_root) / (folder or safe_name(spec.name))
    for method in ("pc", "bp"):
        run = folder / f"{method}-seed{spec.train.seed}" / "model.pt"
        if not run.is_file():
            continue
        model = graph if method == "pc" else Backprop(spec, compile(spec))  # the PC run fills `graph`
        model.load_state_dict(torch.load(run, map_location="cpu", weights_only=True))
        if method == "pc":
            with torch.enable_grad():
                states = Solver.from_spec(spec, compile=False).relax(model, {spec.data.input: x}).states
            rows.append(task.decode(model, states))
        else:
            rows.append(model.predict(x))
    labels = ["test image", "PC (inferred code)", "BP autoencoder"][: len(rows)]
    fig, axes = plt.subplots(len(rows), count, figsize=(1.1 * count, 1.2 * len(rows)), squeeze=False)
    for i, (imgs, label) in enumerate(zip(rows, labels)):
        for j in range(count):
            img = _as_image(imgs[j])
            ax = axes[i][j]
            ax.imshow(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _as_image(t: torch.Tensor) -> torch.Tensor:
    """(C, H, W) in [0, 1] from a per-sample tensor: flat square images are reshaped."""
    if t.dim() == 1:
        side = int(round(t.numel() ** 0.5))
        t = t.reshape(1, side, side)
    elif t.dim() == 2:
        t = t[None]
    return t.clamp(0, 1)
