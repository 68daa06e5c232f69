"""Data parallelism over torch.distributed: sharding, one gradient all-reduce per update, and
starting the processes.

N ranks train one model on the same global batch B of every update. Rank r relaxes its contiguous
shard B_r (sizes n_r differ by at most one), on its own: inference is per sample and needs no
communication. Its solver leaves the shard mean g_r = (1/n_r) sum_{i in B_r} dE_i/dtheta in every
parameter's gradient; one all-reduce of the flat buffer [n_r g_r / |B| for every parameter, flags]
gives every rank sum_r n_r g_r / |B| = (1/|B|) sum_{i in B} dE_i/dtheta, the single-process batch
mean, and every rank then takes the same optimizer step. Two flags ride in the same buffer: a rank
whose relaxation diverged (every rank then skips or stops on that batch) and a stop request
(SIGINT/SIGTERM: every rank stops after the same batch). A rank whose shard of a small last batch
is empty relaxes a stand-in sample with weight 0, so every rank joins the same collectives.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue as queue_module
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pcgraph import errors
from pcgraph.errors import DivergenceError, UsageError
from pcgraph.solver.weight_step import weight_step

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class PeerDivergence(DivergenceError):
    """Another rank's relaxation diverged on this batch (this rank's was fine)."""


@dataclass
class Context:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm: torch.device = torch.device("cpu")  # where collective buffers live (gloo: cpu, nccl: cuda)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, dev: torch.device) -> torch.device:
        """The device this rank trains on: with several ranks, ``cuda`` means ``cuda:LOCAL_RANK``."""
        if self.world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(dev)
        return dev

    def sum(self, values: list[float]) -> list[float]:
        """The elementwise sum of ``values`` over the ranks (float64; unchanged with one rank)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (one identical start)."""
        if self.world > 1:
            for t in module.state_dict().values():
                dist.broadcast(t, 0)


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice [lo, hi) of n samples; sizes differ by at most one, the
    first n mod world ranks taking one more (hi == lo when n < world and rank >= n)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class ReducingOptimizer:
    """A torch.optim optimizer whose ``step()`` first replaces each rank's shard-mean gradients by
    the global-batch mean (one all-reduce, see the module docstring). The solver and the backprop
    baseline use it as they use any optimizer; the learning-rate schedule stays on the inner one.
    Call :meth:`prepare` before each update with this rank's and the global batch's sizes."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.local, self.total, self.stop_request, self.stop = 1, 1, False, False
        self.updates, self.reduced = 1, 0  # all-reduces this batch makes (iPC: one per step), made so far

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def prepare(self, local: int, total: int, stop_request: bool, updates: int = 1) -> None:
        """Before each batch: this rank's and the global batch's sizes, the stop request, and how
        many updates (all-reduces) the batch makes when nothing diverges."""
        self.local, self.total, self.stop_request = local, total, stop_request
        self.updates, self.reduced = updates, 0

    def step(self) -> None:
        self._reduce(diverged=False)
        weight_step(self.optimizer)

    def abstain(self) -> None:
        """Join this update's all-reduce with no gradient and the divergence flag set: this rank's
        relaxation diverged, so every rank skips (or stops on) the batch. If the batch's updates
        are all done (iPC whose energy diverged only after its last step), the peers expect no
        more all-reduces for it: nothing is sent, and the divergence stays this rank's."""
        if self.reduced < self.updates:
            self._reduce(diverged=True)

    def _reduce(self, diverged: bool) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        dtype, device = params[0].dtype, params[0].device
        scale = 0.0 if diverged else self.local / self.total
        parts = [p.grad.reshape(-1).to(dtype) if p.grad is not None and not diverged
                 else torch.zeros(p.numel(), dtype=dtype, device=device) for p in params]
        flags = torch.tensor([float(diverged), float(self.stop_request)], dtype=dtype, device=device)
        flat = torch.cat([torch.cat(parts) * scale, flags])  # (sum of numels + 2,)
        dist.all_reduce(flat)
        self.reduced += 1
        bad, stop = flat[-2:].tolist()  # the one host sync of an update
        self.stop = stop > 0
        if diverged:
            return
        if bad > 0:
            raise PeerDivergence("another rank's relaxation diverged on this batch; no rank stepped")
        offset = 0
        for p in params:
            if p.grad is not None:
                p.grad = flat[offset: offset + p.numel()].view_as(p).to(p.grad.dtype)
            offset += p.numel()


# --- joining or starting a process group ---------------------------------------------------------


def under_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARS)


def _backend(dev: torch.device) -> str:
    return "nccl" if dev.type == "cuda" else "gloo"


def _context() -> Context:
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    comm = torch.device("cuda", local) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Context(rank, world, local, comm)


@contextlib.contextmanager
def joined(dev: torch.device):
    """The process group this process is in: one already initialised (a spawned worker), the
    one torchrun's environment describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT:
    ``init_method="env://"``, destroyed on exit), or none (one rank)."""
    if dist.is_available() and dist.is_initialized():
        yield _context()
        return
    if not (under_torchrun() and dist.is_available()):
        yield Context()
        return
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(_backend(dev), init_method="env://")
    _in_group[0] = True
    try:
        yield _context()
    finally:
        dist.destroy_process_group()


_in_group = [False]  # this process joined a process group: the CLI ends it through end_process


def joined_a_group() -> bool:
    return _in_group[0]


def end_process(code: int) -> NoReturn:
    """Exit with ``code`` after the exit handlers (``atexit``: multiprocessing's clean-up, compile
    workers) but without the interpreter's finalization, stdout and stderr flushed. Gloo's worker
    threads can outlive ``destroy_process_group`` while they drop the last finished collective,
    whose tensors need the GIL to be freed; a finalizing interpreter stops any thread that asks for
    the GIL, which inside that C++ destructor is std::terminate (SIGABRT). Seen at the exit of one
    two-rank test run in about seven (torch 2.14); a rank killed that way turns a finished run into
    a failed one for torchrun and for :func:`launch`."""
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def check_devices(dev: torch.device, nproc: int) -> None:
    """Refuse a launch this machine cannot host: one GPU per rank with nccl."""
    if dev.type != "cuda":
        return
    if dev.index is not None:
        raise UsageError(f"--nproc {nproc} puts rank r on cuda:r; give --device cuda, not {dev}")
    if torch.cuda.device_count() < nproc:
        raise UsageError(f"--nproc {nproc} with --device cuda needs {nproc} GPUs, found {torch.cuda.device_count()}")


def cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, backend: str, threads: int, fn, kwargs: dict, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    code = 1
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        result = fn(**kwargs)
        out.put((rank, "ok", result if rank == 0 else None, False))
        code = 0
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the launcher as one line
        name = type(err).__name__
        out.put((rank, name, str(err).strip() or name, isinstance(err, PeerDivergence)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        out.close()
        out.join_thread()  # the report is written before the process ends
        end_process(code)


def launch(fn, nproc: int, dev: torch.device, kwargs: dict, grace: float = 10.0):
    """Run ``fn(**kwargs)`` in ``nproc`` new processes joined in one process group on this machine
    (gloo on cpu, nccl on cuda; torch threads = cores / nproc each); return rank 0's result.

    A failing rank's error is raised here as one exception of its class (a pcgraph error keeps its
    class; anything else becomes :class:`~pcgraph.errors.WorkerError`), preferring the root cause
    over the failures it causes in the other ranks, which are ended after ``grace`` seconds.
    SIGINT reaches every rank from the terminal; SIGTERM to this process is passed on to them."""
    try:
        pickle.dumps((fn, kwargs))
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"training in several processes needs picklable arguments (a module-level log "
                         f"function, not a lambda): {err}") from None
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port, threads = free_port(), max(1, cores() // nproc)
    procs = [ctx.Process(target=_worker, args=(r, nproc, port, _backend(dev), threads, fn, kwargs, out))
             for r in range(nproc)]
    reports: list[tuple] = []
    for p in procs:
        p.start()
    with _passing_signals(procs) as caught:  # after the start: a child must not inherit an ignored SIGINT
        first_failure = None
        while len(reports) < nproc:
            try:
                reports.append(out.get(timeout=0.2))
            except queue_module.Empty:
                pass
            reported = {r[0] for r in reports}
            for rank, p in enumerate(procs):
                if rank not in reported and not p.is_alive() and p.exitcode not in (0, None):
                    reports.append((rank, "WorkerError", f"rank {rank} died (exit code {p.exitcode})", False))
            if first_failure is None and any(r[1] != "ok" for r in reports):
                first_failure = time.monotonic()
            if first_failure is not None and time.monotonic() - first_failure > grace:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                break
        for p in procs:
            p.join(timeout=grace)
    failures = [r for r in reports if r[1] != "ok"]
    if not failures:
        return next(r[2] for r in reports if r[0] == 0)
    interrupted = [r for r in failures if r[1] in ("Interrupted", "KeyboardInterrupt")]
    rank, name, message, _ = min(interrupted, key=lambda r: r[0]) if interrupted else \
        min(failures, key=lambda r: (r[3], r[1] == "WorkerError" and "died" in r[2], failures.index(r)))
    cls = getattr(errors, name, None)
    if name == "KeyboardInterrupt":
        cls, message = errors.Interrupted, "interrupted"
    if not (isinstance(cls, type) and issubclass(cls, errors.PCGraphError)):
        cls, message = errors.WorkerError, f"rank {rank} failed: {name}: {message.splitlines()[0]}"
    raise cls(message, caught["signum"]) if cls is errors.Interrupted else cls(message)


@contextlib.contextmanager
def _passing_signals(procs):
    """While the workers run: SIGINT (already delivered to them by the terminal) is ignored
    here; SIGTERM is passed on, so they save and stop as a single process would. Yields
    ``{"signum": ...}``, the last signal that came (SIGINT if none)."""
    caught = {"signum": signal.SIGINT}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def note(signum, frame):
        caught["signum"] = signum

    def forward(signum, frame):
        note(signum, frame)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    old = {signal.SIGINT: signal.signal(signal.SIGINT, note),
           signal.SIGTERM: signal.signal(signal.SIGTERM, forward)}
    try:
        yield caught
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
