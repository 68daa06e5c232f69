"""The fixed-step relaxation compiled ahead of time (AOTInductor), kept in an on-disk cache.

A relaxation from the forward init (:func:`~pcgraph.solver.loop.refed`, then the T steps of
:func:`~pcgraph.solver.loop.fixed_loop`), as one function of the clamped values, the parameters
and the buffers,

    (x_clamped, theta, buffers) -> ([E(0), ..., E(T)] + E_fixed, finite, dE/dtheta, x*_relaxed, mu_out)

(E_fixed: the energy of the terms no relaxed state reaches; finite: whether every E(t) is; mu_out:
the init's predictions of the clamped outputs),

is traced once (``torch.export``, non-strict: the Python loop runs on fake tensors), compiled by
AOTInductor into a shared library and stored in ``$PCGRAPH_CACHE_DIR`` (default
``~/.cache/pcgraph/aot``, private to its user) under a hash of everything the traced program
depends on: the source of pcgraph and of the graph's module and energy classes, torch's version,
this host, its CPU and thread count, the spec's graph and inference sections, the modules, the
clamp set, T, the state optimizer's settings, the precision tables and the input shapes. A later
run with the same key loads the library in milliseconds; nothing is traced again. Steps of the
compiled program run the same kernels every time, so the zero errors of the forward init stay
exactly zero (the init is inside the program). Parameters and buffers are inputs, never baked in:
a program that would bake in any other tensor is refused (the eager loop runs instead).

A first compile takes tens of seconds (about 13 s for the MNIST MLP on 2 cores), so ``pcgraph
train`` compiles by default only runs long enough to win it back (:func:`pays`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import platform
import time
import warnings
import weakref
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

import pcgraph
from pcgraph.errors import PCGraphWarning
from pcgraph.solver.loop import Run, fixed_energy, fixed_loop, refed, total_energy

FORMAT = 2  # bump when the traced function's inputs or outputs change
PAYS = 5000  # training updates from which a one-time compile is won back (about 3 ms each on the MLP)
KEEP = 32  # programs kept in the cache folder, the most recently used (a few MB each)


def pays(graph: nn.Module, updates: int) -> bool:
    """Whether ``inference.compile: auto`` compiles a training run of ``updates`` parameter updates
    of ``graph``: long enough, and no op that compiling does not speed up (``OpModule.compile_pays``).
    Decided from the run alone, never from the cache's content, so that running the same command
    twice gives the same numbers."""
    return updates >= PAYS and all(getattr(m, "compile_pays", True) for m in graph.modules())


def cache_dir() -> Path:
    """``$PCGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/pcgraph/aot``, else ``~/.cache/pcgraph/aot``."""
    if os.environ.get("PCGRAPH_CACHE_DIR"):
        return Path(os.environ["PCGRAPH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pcgraph" / "aot"


def _source_digest() -> str:
    """A hash of pcgraph's own source files: any change to the code that is traced invalidates."""
    h = hashlib.sha256()
    root = Path(pcgraph.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


_SOURCE = None


def _class_source(cls: type) -> str:
    """The source of a class outside pcgraph (a user's registered op), or its name when unreadable."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}@{id(cls)}"  # this process only


def _machine() -> list:
    """What the compiled code is specialised to: this host and its CPU (``-march=native``), and the
    thread count written into the kernels' OpenMP pragmas."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):  # Linux: the model and the instruction set extensions
        cpu = sorted({line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("model name", "flags"))})
    return [platform.node(), platform.machine(), cpu, torch.get_num_threads()]


def key(run: Run, optimizer, steps: int, learn: bool, inputs: list[Tensor]) -> str:
    """The cache key of one traced relaxation: everything the program depends on, nothing else (a
    seed, a learning rate or a data set reuse the same program)."""
    global _SOURCE
    if _SOURCE is None:
        _SOURCE = _source_digest()
    graph, plan, spec = run.graph, run.plan, run.graph.spec
    terms = [*graph.terms.values(), *graph.priors.values()]
    classes = {*map(type, graph.modules()), *map(type, terms), *(type(t.energy) for t in terms)}
    foreign = sorted(_class_source(c) for c in classes if not c.__module__.startswith(("torch.", "pcgraph.")))
    settings = [spec.graph.model_dump_json(), spec.inference.model_dump_json(exclude={"compile"}),
                spec.learning.variant.model_dump_json(), spec.learning.update.model_dump_json()]
    parts = [FORMAT, torch.__version__, _SOURCE, _machine(), settings, repr(graph), sorted(map(repr, classes)), foreign,
             plan.relaxed, sorted(plan.clamped), steps, learn, type(optimizer).__qualname__, sorted(vars(optimizer).items()),
             repr(run.precision), repr(run.learn_weights), [(tuple(t.shape), str(t.dtype), str(t.device)) for t in inputs],
             [n for n, _ in graph.named_parameters()], torch.get_default_dtype()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


class _Traced(nn.Module):
    """The function that is exported: the graph is reached through its swapped-in parameters and
    buffers so that they stay inputs (a registered submodule would be baked in as constants)."""

    def __init__(self, run: Run, optimizer, steps: int, learn: bool, clamped: list[str], names: list[str],
                 outputs: list[str]):
        super().__init__()
        self.__dict__["bound"] = (run, optimizer, steps, learn, clamped, names, outputs)  # not submodules

    def forward(self, *tensors: Tensor):
        run, optimizer, steps, learn, clamped, names, outputs = self.bound
        graph, plan, k = run.graph, run.plan, len(clamped)
        params = [n for n, _ in graph.named_parameters()]  # frozen ones too, as the eager rules give them
        swapped = dict(zip(names, tensors[k:]))
        with torch.nn.utils.stateless._reparametrize_module(graph, swapped), torch.no_grad():
            run, states = refed(replace(run, params=[swapped[n] for n in params]), dict(zip(clamped, tensors[:k])))
            predicted = [graph.terms[v].optimum(_prediction(run, v)) for v in outputs]
            fixed = fixed_energy(graph, plan, states)
            trace, gp = fixed_loop(run, optimizer, states, steps, learn)
            energy, finite = total_energy(trace, fixed)
        gp = [gp.get(p) for p in run.params] if gp is not None else []
        return energy, finite, tuple(gp), tuple(states[v] for v in plan.relaxed), tuple(predicted)


def _prediction(run: Run, v: str) -> Tensor:
    """mu_v at the forward init, from the constants it left (every edge into v is kept there)."""
    const = run.const
    mu = const.mu.get(v)
    for i in run.graph.nodes[v].incoming:
        if i in const.cache:
            mu = const.cache[i][0] if mu is None else mu + const.cache[i][0]
    return mu


class AheadOfTime:
    """Relaxations from a forward init, compiled ahead of time and cached (the module's docstring).
    :meth:`relax` returns what the eager init and :func:`fixed_loop` together give."""

    def __init__(self):
        self.programs: dict = {}  # key -> loaded runner
        # per graph: its parameters' and buffers' names and owners, and {what varies between calls: key}
        self.graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.failed = False

    def attempt(self, *args):
        """:meth:`relax`, or None after a failure (tracing, compiling, loading): it warns once, and
        the caller runs eagerly from then on."""
        try:
            return self.relax(*args)
        except Exception as err:  # noqa: BLE001 - any export, compiler or loader failure
            self.failed = True
            first = (str(err).strip().splitlines() or [""])[0]
            warnings.warn(f"compiling the inference loop ahead of time failed ({type(err).__name__}: {first}); "
                          "running it eagerly", PCGraphWarning, stacklevel=4)
            return None

    def relax(self, run: Run, optimizer, batch: dict, outputs: list[str], steps: int, learn: bool):
        """(relaxed states {node: x*}, the energy before each step and after the last, whether it
        is finite, parameter gradients or None, {clamped output: feedforward prediction}) from the
        clamped ``batch``. ``run.params`` is not read: the program takes every parameter (frozen ones
        too) and buffer as an input."""
        graph, plan = run.graph, run.plan
        clamped = [v for v in graph.order if v in batch]
        (names, owners), keys = self._slots(graph)
        slots = [getattr(m, leaf) for m, leaf in owners]
        # the program reads its inputs with the strides it was traced with
        tensors = [t.detach().contiguous() for t in [batch[v] for v in clamped] + slots]
        quick = (tuple(plan.relaxed), tuple(clamped), tuple(outputs), steps, learn, type(optimizer),
                 tuple(sorted(vars(optimizer).items())), repr(run.precision), repr(run.learn_weights),
                 tuple((t.shape, t.dtype, t.device) for t in tensors), torch.get_num_threads())
        k = keys.get(quick) or keys.setdefault(quick, key(run, optimizer, steps, learn, tensors))
        program = self.programs.get(k) or self._load(k, _Traced(run, optimizer, steps, learn, clamped, names, outputs),
                                                     tensors)
        energy, finite, gp, relaxed, predicted = program(tensors)
        gp = {p: g for p, g in zip(slots, gp) if g is not None} if learn else None  # parameters come first
        return dict(zip(plan.relaxed, relaxed)), energy, finite, gp, dict(zip(outputs, predicted))

    def _slots(self, graph: nn.Module):
        """((names of the graph's parameters and buffers, (module, attribute) to read each from), {what
        varies between calls: key}); walking the module tree on every call would cost more than the call."""
        if graph not in self.graphs:
            names = [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]
            owners = [(graph.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
            self.graphs[graph] = (names, owners), {}
        return self.graphs[graph]

    def _load(self, k: str, traced: _Traced, tensors: list[Tensor]):
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(folder)
        path = folder / f"{k}.pt2"
        if not path.exists():
            program = torch.export.export(traced, tuple(tensors), strict=False)
            if program.constants:  # a tensor that is neither a parameter nor a buffer would be frozen in
                raise RuntimeError(f"the traced loop reads tensors that are not inputs: {sorted(program.constants)}")
            with _quiet():
                build(program, path)
        _check_private(path)
        with _quiet():
            runner = Program(torch._inductor.aoti_load_package(str(path)))
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept when the cache is pruned
        self.programs[k] = runner
        return runner


class Program:
    """A loaded package called on a flat list of tensors. The package's own call reads back and
    walks the saved tree layouts of its inputs and outputs on every call (a few percent of the
    MLP's update); here the output layout is read once, at load."""

    def __init__(self, package):
        self.package = package
        loader = getattr(package, "loader", None)
        self.run = getattr(loader, "boxed_run", None)
        if self.run is not None:
            out = pytree.treespec_loads(loader.get_call_spec()[1])
            self.layout = pytree.tree_unflatten(list(range(out.num_leaves)), out)

    def __call__(self, tensors: list[Tensor]):
        if self.run is None:  # a torch whose packages keep their loader elsewhere
            return self.package(*tensors)
        return _place(self.layout, self.run(list(tensors)))  # the call takes the list it is given


def _place(layout, flat: list):
    """``layout`` with every leaf index i replaced by ``flat[i]`` (tuples, lists and None kept)."""
    if isinstance(layout, int):
        return flat[layout]
    if layout is None:
        return None
    return type(layout)(_place(part, flat) for part in layout)


@contextlib.contextmanager
def _quiet():
    """Without torch's "No CUDA runtime is found" warning, which its C++ tooling logs on CPU machines."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_private(path: Path) -> None:
    """A program is a shared library: load only what no one else can have written."""
    st = path.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise PermissionError(f"{path} is writable by other users or not yours; set PCGRAPH_CACHE_DIR to a "
                              "private folder")


def build(program, path: Path) -> None:
    """AOTInductor-compile an exported program into ``path``, atomically (a reader never sees half)."""
    from pcgraph.solver import passes

    part = path.with_name(f"{path.stem}.{os.getpid()}.part.pt2")
    torch._inductor.aoti_compile_and_package(program, package_path=str(part), inductor_configs=passes.cpu_options())
    part.chmod(0o600)
    os.replace(part, path)  # several processes compiling the same program: the last one wins
    with contextlib.suppress(OSError):  # another process may be pruning too
        _prune(path.parent)


def _prune(folder: Path) -> None:
    """Keep the KEEP most recently used programs, and no compile's leftovers older than an hour."""
    now, programs = time.time(), []
    for p in folder.glob("*.pt2"):
        age = now - p.stat().st_mtime
        if p.stem.count("."):  # NAME.PID.part: a compile in progress, or one that was killed
            if age > 3600:
                p.unlink(missing_ok=True)
        else:
            programs.append((age, p))
    for _, old in sorted(programs)[KEEP:]:
        old.unlink(missing_ok=True)
