"""TensorBoard logging of a training run (``pcgraph train --tensorboard DIR``).

:class:`TensorBoardLogger` is an epoch hook of :func:`pcgraph.tasks.train.train`: it is called
as ``hook(row)`` with each epoch's history row, as ``on_epoch`` is. After every epoch it writes, with
``torch.utils.tensorboard.SummaryWriter``:

* the epoch's row, as ``metrics.jsonl`` holds it: ``train/energy``, ``train/accuracy``,
  ``test/accuracy`` or ``test/mse``, ``time/epoch_seconds``, ``train/skipped_batches`` and, with
  ``--node-energies``, ``train/node_energy/<node>`` (the epoch's mean at the last inference step);
* ``learning_rate`` (``learning_rate/group_<i>`` with several parameter groups) of the weight
  optimizer, at the end of the epoch;
* for PC runs, one held batch relaxed as in training (the first ``data.batch_size`` test samples,
  inputs and targets clamped) with the solver's node trace (:attr:`Relaxation.node_energy`):
  ``inference/node_energy/<node>`` after inference, ``inference/energy_start`` (t = 0) and
  ``inference/energy_end`` (t = T), all per sample, and the image ``inference/energy_curve``.

The inference curve is a figure, not a scalar series: it has two time axes (the step t = 0..T
within an epoch, and the epoch), and a scalar chart has one. The figure shows this epoch's total
energy over t bold on the curves of the earlier epochs, and this epoch's energy per node; the
image tab's step slider moves through the epochs. Its end points are the two scalars above.

The ``tensorboard`` package is optional (``pip install 'pcgraph[tensorboard]'``); it is imported
when a logger is made, and :func:`check` says in one line when it is missing.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from pcgraph.data.adapter import samples
from pcgraph.errors import UsageError
from pcgraph.tasks.paths import check_folder

EVENTS = "events.out.tfevents.*"
_TAGS = {"energy": "train/energy", "train_accuracy": "train/accuracy", "seconds": "time/epoch_seconds",
         "skipped_batches": "train/skipped_batches", "node_energy": "train/node_energy"}


def summary_writer():
    """``torch.utils.tensorboard.SummaryWriter``; a UsageError saying how to install it when missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install 'pcgraph[tensorboard]' "
                         "(or pip install tensorboard)") from None
    return SummaryWriter


def check(folder: str | Path, force: bool = False, resume: bool = False) -> Path:
    """Check ``folder`` before training: tensorboard installed; a folder this process can write in;
    not already holding event files, unless ``force`` (they are removed) or ``resume`` (the resumed
    run appends to them). Returns the folder as a Path."""
    summary_writer()
    out = check_folder(folder, "--tensorboard")
    held = sorted(out.glob(EVENTS)) if out.is_dir() else []
    if held and not (force or resume):
        raise UsageError(f"--tensorboard {folder}: the folder already holds {len(held)} event file(s) of another "
                         "run; choose another folder, or pass --force (force=True) to replace them")
    if held and force and not resume:
        for path in held:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


class TensorBoardLogger:
    """An epoch hook writing a run's figures to TensorBoard event files in ``folder`` (see the
    module docstring). ``run`` is the :class:`pcgraph.tasks.train.RunSetup` being trained; use the
    logger as a context manager, or call :meth:`close`."""

    def __init__(self, folder: str | Path, run):
        from pcgraph.solver import Solver

        self.writer = summary_writer()(log_dir=str(folder))
        self.run, self.curves = run, []
        self.solver = Solver.from_spec(run.spec, trace_nodes=True, compile=False) if run.method.name == "pc" else None
        test = run.data[1]
        size = min(run.spec.data.batch_size, samples(test))
        self.held = run.task.batch({k: v[:size] for k, v in test.items()})  # clamped as in training

    def __call__(self, row: dict) -> None:
        epoch = row["epoch"]
        for tag, value in _scalars(row):
            self.writer.add_scalar(tag, value, epoch)
        groups = self.run.optimizer.param_groups
        for i, group in enumerate(groups):
            self.writer.add_scalar("learning_rate" if len(groups) == 1 else f"learning_rate/group_{i}", group["lr"], epoch)
        if self.solver is not None:
            self._inference(epoch)
        self.writer.flush()

    def _inference(self, epoch: int) -> None:
        """Relax the held batch; log its energies per sample and the figure of its curve."""
        graph = self.run.method.graph
        with torch.enable_grad():
            r = self.solver.relax(graph, self.held)
        n = samples(self.held)
        total = (r.energy.detach() / n).cpu().tolist()  # (T + 1,)
        nodes = {v: (e.detach() / n).cpu().tolist() for v, e in r.node_energy.items()}
        self.writer.add_scalar("inference/energy_start", total[0], epoch)
        self.writer.add_scalar("inference/energy_end", total[-1], epoch)
        for v, e in nodes.items():
            self.writer.add_scalar(f"inference/node_energy/{v}", e[-1], epoch)
        self.curves.append(total)
        self.writer.add_figure("inference/energy_curve", self._figure(epoch, nodes), epoch)

    def _figure(self, epoch: int, nodes: dict[str, list[float]]):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        colours = plt.cm.viridis([i / max(1, len(self.curves) - 1) for i in range(len(self.curves))])
        for curve, colour in zip(self.curves[:-1], colours):
            left.plot(curve, color=colour, alpha=0.5, lw=1)
        left.plot(self.curves[-1], color="black", lw=2, label=f"epoch {epoch}")
        left.set(xlabel="inference step t", ylabel="energy per sample", title="total (earlier epochs: light)")
        left.legend()
        for v, e in nodes.items():
            right.plot(e, label=v)
        right.set(xlabel="inference step t", title=f"per node, epoch {epoch}")
        right.legend(fontsize="small")
        for ax, values in ((left, [x for c in self.curves for x in c]), (right, [x for e in nodes.values() for x in e])):
            if values and min(values) > 0:
                ax.set_yscale("log")
        fig.tight_layout()
        return fig  # add_figure closes it

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scalars(row: dict, prefix: str = ""):
    """(tag, value) for every number in ``row``; nested dicts add ``/key``, a trace its last value."""
    for key, value in row.items():
        if key == "epoch" and not prefix:
            continue
        tag = f"{prefix}/{key}" if prefix else _TAGS.get(key, "test/" + key[5:] if key.startswith("test_") else key)
        if isinstance(value, dict):
            yield from _scalars(value, tag)
        elif isinstance(value, (list, tuple)) and value:
            yield tag, float(value[-1])
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)
