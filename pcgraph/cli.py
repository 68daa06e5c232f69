"""The ``pcgraph`` command line: validate, schema, show, train, eval, bench, filter, verify-bp.

Bad input (a missing or invalid spec, a missing data set, an unknown device) prints one line on
stderr and exits with status 2; a diverging run exits with status 1. With ``--json`` the last
line of stdout is one JSON object with the final figures.

(Longer than the ~300 lines the other modules keep to: it is one small function per subcommand
and the argument parser that documents them all, which read best side by side in one file.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from pcgraph.errors import DivergenceError, Interrupted, PCGraphError, SpecError, UsageError, WorkerError


def _graph(args, dtype=None):
    import torch

    from pcgraph.compiler import compile
    from pcgraph.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    return spec, compile(spec, dtype=dtype or torch.float32)


def cmd_validate(args) -> int:
    from pcgraph.tasks.methods import check_buildable

    spec, graph = _graph(args)
    check_buildable(spec)  # the solver, objective and weight optimizer, as train builds them
    print(f"{args.spec}: valid ({_count(len(graph.nodes), 'node')}, {_count(len(graph.edges), 'edge')}, "
          f"{_count(graph.num_params(), 'parameter')})")
    return 0


def cmd_schema(args) -> int:
    from pcgraph.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_show(args) -> int:
    _check_file(args.png, "--png", args.force)
    spec, graph = _graph(args)
    clamped = {v for v, n in graph.nodes.items() if n.spec.role == "observed"}
    node_rows = [(v, "x".join(map(str, n.shape)), "previous step" if v in graph.delayed else n.spec.role,
                  "-" if v in graph.delayed else n.spec.energy.kind,
                  "-" if v in clamped else f"{math.prod(n.shape):,}") for v, n in graph.nodes.items()]
    edge_rows = [(" + ".join(e.sources), e.target, " -> ".join(op.kind for op in spec.graph.edges[i].fn),
                  f"{sum(p.numel() for p in e.parameters()):,}") for i, e in enumerate(graph.edges)]
    print(f"{spec.name}" + (f": {spec.description}" if spec.description else ""))
    print()
    _table(("node", "shape", "role", "energy", "states"), node_rows)
    print()
    _table(("from", "to", "ops", "params"), edge_rows)
    print()
    inferred = graph.states_per_sample()
    if spec.data is not None:  # neuron ranges of the data section are clamped too
        from pcgraph.tasks.objective import Objective

        with contextlib.suppress(SpecError):
            inferred = Objective(spec, graph).states_per_sample(graph)
    print(f"total: {_count(len(graph.nodes), 'node')}, {_count(len(graph.edges), 'edge')}, "
          f"{_count(graph.num_params(), 'parameter')}, "
          f"{inferred:,} inferred states per sample")
    bp_params = graph.num_params() - sum(p.numel() for p in graph.encoders.parameters())  # those are PC's
    if spec.bp.encoder is not None:
        from pcgraph.tasks.objective import Backprop

        bp_params = sum(p.numel() for p in Backprop(spec, graph).trained_parameters())
        print(f"backprop baseline: encoder {spec.bp.encoder.source[0]} -> {spec.bp.encoder.to} + this graph "
              f"as decoder, {bp_params:,} parameters")
    from pcgraph.tasks import topology

    sparse = any(not b.dense for b in topology.blocks(graph))
    stats = topology.degree_stats(graph) if (sparse or args.png) else None
    if stats is not None:
        print(f"neurons: {stats['neurons']:,}, connections: {stats['connections']:,} (density {stats['density']:.3g}, "
              f"{stats['self_loops']:,} self-loops); in-degree min/mean/max {stats['in_degree_min']}/"
              f"{stats['in_degree_mean']:.1f}/{stats['in_degree_max']}, out-degree {stats['out_degree_min']}/"
              f"{stats['out_degree_mean']:.1f}/{stats['out_degree_max']}" + ("" if sparse else " (dense edges: all pairs)"))
    if args.png:
        if stats["neurons"] <= args.max_neurons:
            topology.draw(graph, args.png, args.max_neurons)
            print(f"drew the neuron-level graph to {args.png}")
        else:
            print(f"not drawn: {stats['neurons']:,} neurons is over --max-neurons {args.max_neurons} "
                  "(the degree statistics above describe it)")
    if args.json:
        print(json.dumps({"name": spec.name, "params": graph.num_params(),
                          "states_per_sample": inferred, "bp_params": bp_params,
                          "nodes": len(graph.nodes), "edges": len(graph.edges), **({"neuron_level": stats} if stats else {})}))
    return 0


def cmd_train(args) -> int:
    from pcgraph.spec import load_spec
    from pcgraph.tasks import train

    if args.resume is not None and (args.overrides or (args.spec and "=" in args.spec and not Path(args.spec).exists())):
        raise UsageError(f"--resume continues the run's saved spec and takes no overrides (got "
                         f"{' '.join(filter(None, [args.spec, *args.overrides]))}); to change the spec, train it "
                         "into a new folder: pcgraph train SPEC PATH=VALUE --out NEW")
    if (args.spec is None) == (args.resume is None):
        raise UsageError("give either a SPEC to train or --resume DIR to continue a run")
    spec = load_spec(args.spec, args.overrides) if args.spec else None
    if spec is not None and args.compile:
        spec = spec.model_copy(update={"inference": spec.inference.model_copy(update={"compile": True})})
    if spec is not None and args.node_energies:
        spec = spec.model_copy(update={"inference": spec.inference.model_copy(update={"trace_nodes": True})})
    if spec is not None and args.seed is not None:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": args.seed})})
    log = _log_stderr if args.json else print  # module-level: it travels to --nproc workers
    result = train(spec, epochs=args.epochs, data_root=args.data_root, device=args.device, out=args.out,
                   progress=not args.no_progress, log=log, resume=args.resume, on_divergence=args.on_divergence,
                   nproc=args.nproc, force=args.force, tensorboard=args.tensorboard)
    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank returns here; rank 0 reports
        return 0
    trace = next((row["node_energy"] for row in reversed(result.history) if "node_energy" in row), None)
    if args.out and trace:
        from pcgraph.tasks import plots

        plots.node_energy(trace, str(Path(args.out) / "node_energy.png"), f"{result.name}: energy per node, "
                          f"epoch {len(result.history)}")
    if args.json:
        print(result.to_json())
    else:
        print(f"final test {_score(result.metric, result.test_metric)} (best {_score(result.metric, result.best_test_metric)}), "
              f"{result.params:,} parameters, {result.states_per_sample} states per sample")
    return 0


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_eval(args) -> int:
    from pcgraph.data import load_dataset
    from pcgraph.solver import Solver
    from pcgraph.tasks.checkpoint import load
    from pcgraph.tasks.objective import Objective
    from pcgraph.tasks.setup import columns
    from pcgraph.tasks.train import resolve_device

    graph, spec = load(args.run)
    if spec.data is None:
        raise UsageError("the run's spec has no data section to evaluate on")
    dev = resolve_device(args.device)
    graph = graph.to(dev)
    d = spec.data
    _, test = columns(load_dataset(d.dataset, args.data_root, d.names("input") + d.names("target")), d, graph, dev)
    task = Objective(spec, graph)
    value = task.evaluate(graph, Solver.from_spec(spec), test)
    metric, samples = task.metric, len(next(iter(test.values())))
    how = (spec.train.eval if metric == "accuracy" else f"completing {spec.data.complete}" if task.hidden
           else "inferred code")
    print(f"{spec.name}: test {_score(metric, value)} ({how}, {samples} samples)")
    if args.json:
        print(json.dumps({"name": spec.name, f"test_{metric}": value, "samples": samples}))
    return 0


def _score(metric: str, value: float) -> str:
    return f"accuracy {100 * value:.2f}%" if metric == "accuracy" else f"mse {value:.4e}"


def cmd_bench(args) -> int:
    from pcgraph.spec import load_spec
    from pcgraph.tasks import bench
    from pcgraph.tasks.paths import check_folder

    overrides = args.overrides + [a for a in args.specs if "=" in a and not Path(a).exists()]
    args.specs = [a for a in args.specs if a not in overrides]
    if not args.specs:
        raise UsageError(f"give at least one SPEC file to benchmark (got only overrides: {' '.join(overrides)})")
    specs = [load_spec(path, overrides) for path in args.specs]
    if args.compile:
        specs = [s.model_copy(update={"inference": s.inference.model_copy(update={"compile": True})}) for s in specs]
    for path, spec in zip(args.specs, specs):
        if spec.data is None:
            raise UsageError(f"{path}: a spec needs a data section to be benchmarked")
    if args.images and args.out is None:
        raise UsageError("--images needs --out DIR (the trained runs it draws from)")
    _check_file(args.markdown, "--markdown", args.force)  # before hours of training, not after
    _check_file(args.plot, "--plot", args.force)
    if args.images:
        check_folder(args.images, "--images")
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    where = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON line
    rows = []
    try:
        for row in bench.run_bench(specs, seeds=args.seeds, epochs=args.epochs, data_root=args.data_root,
                                   device=args.device, out=args.out, methods=tuple(args.methods), log=log,
                                   progress=not args.no_progress, force=args.force):
            rows.append(row)
    finally:  # a failure or an interrupt later on still writes the rows that finished
        if rows:
            total = len(specs) * len(args.methods)
            print(file=where)
            if len(rows) < total:
                print(f"(stopped early: {len(rows)} of {total} rows finished)", file=where)
            _table(bench.HEADER, bench.table(rows), where)
            if args.markdown:
                Path(args.markdown).write_text(bench.to_markdown(rows))
            if args.plot:
                bench.plot(rows, args.plot)
            if args.json:
                print(bench.to_json(rows))
    if args.images:
        Path(args.images).mkdir(parents=True, exist_ok=True)
        for spec, folder in zip(specs, bench.folder_names(specs)):
            if spec.data.target is None:
                bench.reconstruction_grid(spec, args.out, Path(args.images) / f"{folder}-reconstructions.png",
                                          args.data_root, folder=folder)
    return 0


def cmd_tune(args) -> int:
    from pcgraph.spec import load_spec
    from pcgraph.tasks import search_space, tune
    from pcgraph.tasks.paths import check_file, check_folder

    optuna = tune.import_optuna()  # before any work: one line saying how to install it
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study logs one line per trial itself
    params = [search_space.parse_param(t) for t in args.param]
    params += search_space.load_space(args.space) if args.space else []
    if not params:
        raise UsageError("give a search space: --param 'PATH=DISTRIBUTION' (DISTRIBUTION: "
                         f"{search_space.FORMS}) or --space FILE")
    if args.storage and args.study_dir:
        raise UsageError("give --storage URL or --study-dir DIR (which holds study.db), not both")
    folder = Path(args.study_dir) if args.study_dir else None
    best = args.best or (folder / "best.yaml" if folder else None)
    plots = Path(args.plots) if args.plots else folder
    spec = load_spec(args.spec, args.overrides)
    for where, option in ((folder, "--study-dir"), (Path(args.plots) if args.plots else None, "--plots")):
        if where is not None:
            check_folder(where, option)
            where.mkdir(parents=True, exist_ok=True)
    outputs = [(best, "--best")] + ([(plots / "history.png", "--plots"), (plots / "importances.png", "--plots")]
                                    if plots else [])
    for path, option in outputs:  # before hours of trials, not after
        if path is not None:
            check_file(path, option, args.force)
    log = _log_stderr if args.json else print
    result = tune.tune(spec, params, trials=args.trials, timeout=args.timeout, epochs=args.epochs,
                       val_fraction=args.val_fraction, seed=args.seed, data_root=args.data_root, device=args.device,
                       storage=args.storage or (f"sqlite:///{folder / 'study.db'}" if folder else None),
                       study_name=args.study_name, pruner=None if args.prune else _no_pruner(), log=log)
    counts = ", ".join(f"{n} {state}" for state, n in result.trials.items())
    if result.best_spec is None:
        log(f"study {result.study_name!r}: no trial completed ({counts}); nothing written")
        if args.json:
            print(result.to_json())
        return 1
    log(f"best: trial {result.best_trial}, validation {_score(result.metric, result.best_value)} with "
        + " ".join(f"{p}={v:.4g}" if isinstance(v, float) else f"{p}={v}" for p, v in result.best_params.items())
        + f" ({counts})")
    if best is not None:
        Path(best).write_text(result.best_yaml(args.val_fraction, args.epochs), encoding="utf-8")
        log(f"wrote the best spec to {best}; train it on the whole training set, scored on the test set: "
            f"pcgraph train {best}")
    if plots is not None:
        tune.save_plots(result.study, plots / "history.png", plots / "importances.png", log)
    if args.json:
        print(result.to_json())
    return 0


def _no_pruner():
    import optuna

    return optuna.pruners.NopPruner()


def cmd_filter(args) -> int:
    import torch

    from pcgraph.tasks import sequence as seq
    from pcgraph.tasks import sequence_io
    from pcgraph.tasks.setup import weight_optimizer

    if args.out:  # refuse a taken or unwritable output before the (long) run, not after it
        sequence_io.check_output(args.out, args.force)
    _check_file(args.plot, "--plot", args.force)
    spec, graph = _graph(args, torch.float64)  # the spec's values (A, C, Q, R) in full precision
    if not graph.delayed:
        raise UsageError(f"{args.spec}: the graph has no delayed edge (delay: 1), so there is nothing to filter")
    truth = None
    if args.input:
        observations, truth = sequence_io.read_sequence(args.input, graph)
    else:
        seed = spec.sequence.seed if args.seed is None else args.seed
        truth, observations = seq.simulate(graph, args.length or spec.sequence.length, 1,
                                           torch.Generator().manual_seed(seed), torch.float64)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.learn:
        opt = weight_optimizer(spec.learning.optimizer, graph.parameters())
        for epoch in range(1, args.epochs + 1):
            r = seq.run_sequence(graph, observations, optimizer=opt, progress=not args.no_progress)
            mse = sum(float(((r.predictions[v] - observations[v]) ** 2).mean()) for v in observations)
            log(f"epoch {epoch}: one-step-ahead prediction MSE {mse:.4e} (learning online)")
    try:
        seq.linear_system(graph)
        modes = ["fixed", "steady_state", "propagated"]
    except SpecError:
        modes = [spec.sequence.prior_precision]
    rows, tracks = seq.filter_report(graph, observations, truth, modes, progress=not args.no_progress)
    length = len(next(iter(observations.values())))
    truth_note = "" if truth is None or not args.input else ", with true states"
    log(f"{spec.name}: {length} steps ({args.input or 'simulated from the spec'}{truth_note})")
    _table(("method", "state RMSE", "one-step prediction MSE"),
           [(r["method"], f"{r['state_rmse']:.4f}" if "state_rmse" in r else "-", f"{r['prediction_mse']:.4e}")
            for r in rows], sys.stderr if args.json else None)
    if args.plot:
        from pcgraph.tasks import plots

        plots.tracks(tracks, truth, observations, args.plot)
    if args.out:
        sequence_io.write_estimates(args.out, sequence_io.estimate_table(seq.tracked_state(graph), tracks,
                                                                          observations, truth), args.force)
        log(f"wrote the per-step estimates to {args.out}")
    if args.json:
        print(json.dumps({"name": spec.name, "steps": length, "rows": rows, **({"out": args.out} if args.out else {})}))
    return 0


def cmd_verify_bp(args) -> int:
    import torch

    from pcgraph.tasks.verify import check_verifiable, random_batch, verify_bp

    _check_file(args.plot, "--plot", args.force)
    torch.manual_seed(args.seed)  # the parameters' initialisation: the same figures on every run
    spec, graph = _graph(args)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    graph = graph.to(dtype)
    observed = [v for v, n in graph.nodes.items() if n.spec.role == "observed"]
    if args.random_batch or spec.data is None:
        batch = random_batch(graph, observed, args.batch_size, dtype, args.seed)
    else:
        batch = _data_batch(spec, graph, args, dtype)
    check_verifiable(graph, batch)
    result = verify_bp(graph, batch, args.mode, scales=tuple(args.precision_scales), steps=tuple(args.steps),
                       tol=args.tol)
    if result.mode == "exact":
        print(f"exact mode (fixed prediction, T = {graph.depth}), batch {args.batch_size}, {args.dtype}")
    else:
        print(f"approx mode: output precision x s, PC gradient / s; state SGD 0.1, momentum 0.9; "
              f"batch {args.batch_size}, {args.dtype}")
        _table(("scale s", "steps T", "min cosine", "mean cosine", "max rel. error"),
               [(f"{r['scale']:g}", r["steps"], f"{r['min_cosine']:.6f}", f"{r['mean_cosine']:.6f}",
                 f"{r['max_rel_error']:.3e}") for r in result.sweep])
        print(f"\nper parameter at s = {result.sweep[-1]['scale']:g}, T = {result.sweep[-1]['steps']}:")
    _table(("parameter", "cosine", "rel. error", "norm ratio"),
           [(r.name, f"{r.cosine:.8f}", f"{r.rel_error:.3e}", "-" if r.norm_ratio is None else f"{r.norm_ratio:.6f}")
            for r in result.rows])
    if result.mode == "exact":
        print(f"\nworst relative error {result.worst_rel_error:.3e} (tolerance {result.tol:g}): "
              + ("OK" if result.ok else "FAILED"))
    if args.plot:
        from pcgraph.tasks import plots

        plots.bp_sweep(result, args.plot)
    if args.json:
        print(result.to_json())
    return 0 if result.ok else 1


def _data_batch(spec, graph, args, dtype):
    from pcgraph.data import load_dataset, to_nodes
    from pcgraph.spec.problems import data_refs, ref_path
    from pcgraph.tasks.setup import columns

    d = spec.data
    for field, i, ref, text in data_refs(d, ("input", "target")):
        if ref.neurons is not None:
            raise SpecError(f"verify-bp compares with backprop, which clamps whole nodes; {text} is "
                            "a range of neurons (use --random-batch to clamp whole nodes)", ref_path(d, field, i))
    names = d.names("input") + d.names("target")
    train, _ = columns(load_dataset(d.dataset, args.data_root, names), d, graph, "cpu")
    batch = to_nodes({k: v[: args.batch_size] for k, v in train.items()}, graph, names)
    return {v: x.to(dtype) for v, x in batch.items()}


def _count(n: int, noun: str) -> str:
    """``1 node``, ``2 nodes``, ``1,024 parameters``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _check_file(path: str | None, option: str, force: bool) -> None:
    """An output file named on the command line can be written, and replaces nothing unasked."""
    if path:
        from pcgraph.tasks.paths import check_file

        check_file(path, option, force)


def _float_list(text: str) -> list[float]:
    values = [_positive_float(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # nan and inf are no scale or tolerance
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _seed(text: str) -> int:
    from pcgraph.spec.run import SEED_MAX

    if not text.isdigit() or int(text) > SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {text!r}")
    return int(text)


def _int_list(text: str) -> list[int]:
    values = [_positive_int(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("pc", "bp") for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected pc, bp or pc,bp, got {text!r}")
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)



def _table(header: tuple, rows: list[tuple], file=None) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=file)


def _add_overrides(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("overrides", nargs="*", metavar="PATH=VALUE",
                        help="set a field of the spec, value as YAML: inference.steps=20 learning.optimizer.lr=1e-3 "
                             f"'graph.nodes.h1.shape=[256]' graph.edges[0].fn=[linear] (docs/tuning.md){note}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pcgraph", description="Predictive coding over arbitrary computation graphs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    v = sub.add_parser("validate", help="check a spec (parse and compile)")
    v.add_argument("spec")
    _add_overrides(v)
    v.set_defaults(fn=cmd_validate)
    s = sub.add_parser("schema", help="print the JSON Schema of the spec format")
    s.set_defaults(fn=cmd_schema)
    sh = sub.add_parser("show", help="print a spec's nodes, edges, totals and neuron-level degrees; draw it")
    sh.add_argument("spec")
    _add_overrides(sh)
    sh.add_argument("--png", metavar="FILE", help="draw the neuron-level graph (up to --max-neurons neurons)")
    sh.add_argument("--max-neurons", type=_positive_int, default=300, help="largest graph --png draws (default 300)")
    sh.add_argument("--force", action="store_true", help="replace an existing --png file")
    sh.add_argument("--json", action="store_true", help="also print the totals as one JSON line")
    sh.set_defaults(fn=cmd_show)
    t = sub.add_parser("train", help="train a spec with PC on its data set")
    t.add_argument("spec", nargs="?", help="the spec (omit with --resume)")
    _add_overrides(t, " (recorded in the run folder's spec.yaml; not with --resume)")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (by --out)")
    t.add_argument("--on-divergence", choices=["stop", "skip"], default="stop",
                   help="stop (default) or skip a batch whose energy becomes NaN/inf")
    t.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    t.add_argument("--data-root", help="folder with the data set's files (default: $PCGRAPH_DATA)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--out", help="write spec.yaml, metrics (jsonl, csv), checkpoint.pt every epoch, model.pt "
                   "(a folder holding another run is refused, see --force)")
    t.add_argument("--force", action="store_true", help="replace the run already in the --out folder and the event "
                   "files in the --tensorboard folder")
    t.add_argument("--seed", type=_seed, help="override train.seed")
    t.add_argument("--compile", action="store_true",
                   help="compile the inference loop whatever the run's length (cpu: ahead of time, cached on disk; "
                   "cuda: torch.compile, captured once as a CUDA graph); inference.compile=false runs eagerly")
    t.add_argument("--nproc", type=_positive_int, metavar="N",
                   help="data-parallel training in N processes on this machine (gloo on cpu; nccl on cuda, "
                        "one GPU each); data.batch_size stays the global batch, each process relaxes its "
                        "shard and gradients are all-reduced once per update; rank 0 logs and writes. "
                        "For several machines launch with torchrun instead (see docs/distributed.md)")
    t.add_argument("--node-energies", action="store_true",
                   help="record every node's energy at every inference step (inference.trace_nodes): in each "
                        "epoch's history (--json, metrics.jsonl) and, with --out, as node_energy.png")
    t.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard event files to DIR: the epoch metrics, learning rates, node energies and "
                        "an inference energy curve per epoch (needs pip install 'pcgraph[tensorboard]'; a folder "
                        "holding event files is refused unless --force)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="epoch lines to stderr, final figures as JSON on stdout")
    t.set_defaults(fn=cmd_train)
    ev = sub.add_parser("eval", help="test metric of a trained run folder")
    ev.add_argument("run", help="a folder written by pcgraph train --out")
    ev.add_argument("--data-root", help="folder with the data set's files (default: $PCGRAPH_DATA)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(fn=cmd_eval)
    b = sub.add_parser("bench", help="train specs with PC and their backprop baseline over seeds: Table 1 rows")
    b.add_argument("specs", nargs="+", metavar="SPEC", help="spec files, then PATH=VALUE overrides applied to each")
    b.add_argument("--seeds", type=_positive_int, default=3, help="seeds train.seed, +1, ... (default 3)")
    b.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    b.add_argument("--methods", type=_methods, default=["pc", "bp"], help="pc,bp (default) or one of them")
    b.add_argument("--data-root", help="folder with the data sets' files (default: $PCGRAPH_DATA)")
    b.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    b.add_argument("--compile", action="store_true", help="compile PC's inference loop whatever the run's length")
    b.add_argument("--out", help="keep every run folder under DIR/<spec>/<method>-seed<k> (<spec>: the spec's "
                   "name with characters other than letters, digits, '.', '_', '-' replaced by '_')")
    b.add_argument("--force", action="store_true", help="replace existing run folders and output files")
    b.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    b.add_argument("--plot", metavar="FILE", help="PNG of test metric vs epoch, PC and BP")
    b.add_argument("--images", metavar="DIR", help="reconstruction grids (PNG) of the autoencoder specs")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="log to stderr; the rows as one JSON line on stdout")
    b.set_defaults(fn=cmd_bench, overrides=[])
    fl = sub.add_parser("filter", help="run a recurrent graph (delayed edges) along a sequence, next to a Kalman filter")
    fl.add_argument("spec")
    _add_overrides(fl)
    fl.add_argument("--length", type=_positive_int, help="length of the simulated sequence (default sequence.length)")
    fl.add_argument("--input", metavar="FILE",
                    help="observations and optionally true states (scored by state RMSE): CSV (rows = time steps, "
                         "columns named by node, e.g. y0,y1,x0,...,x3, or observations then states) or .npz (one "
                         "array per node); default: simulate from the spec")
    fl.add_argument("--seed", type=_seed, help="seed of the simulation (default sequence.seed)")
    fl.add_argument("--learn", action="store_true", help="first learn the parameters online over the sequence")
    fl.add_argument("--epochs", type=_positive_int, default=1, help="with --learn: passes over the sequence")
    fl.add_argument("--plot", metavar="FILE", help="PNG of the true track, observations and estimates")
    fl.add_argument("--out", metavar="FILE", help="write the per-step estimates of PC and the Kalman filter, the "
                                                  "observations and true states (.csv or .npz by suffix)")
    fl.add_argument("--force", action="store_true", help="let --out and --plot replace existing files")
    fl.add_argument("--no-progress", action="store_true", help="no progress bar")
    fl.add_argument("--json", action="store_true", help="the table to stderr; the rows as one JSON line on stdout")
    fl.set_defaults(fn=cmd_filter)
    vb = sub.add_parser("verify-bp", help="compare PC's parameter gradients with backprop's")
    vb.add_argument("spec")
    _add_overrides(vb)
    vb.add_argument("--mode", choices=["exact", "approx"], default="exact",
                    help="exact: fixed prediction, must match BP; approx: output precision sweep")
    vb.add_argument("--precision-scales", type=_float_list, default=[1.0, 0.1, 0.01, 0.001],
                    help="approx mode: output precision scales s (default 1,0.1,0.01,0.001)")
    vb.add_argument("--steps", type=_int_list, default=[200], help="approx mode: inference steps T (default 200)")
    vb.add_argument("--random-batch", action="store_true", help="random tensors instead of the spec's data")
    vb.add_argument("--batch-size", type=_positive_int, default=64)
    vb.add_argument("--data-root", help="folder with the data set's files (default: $PCGRAPH_DATA)")
    vb.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    vb.add_argument("--tol", type=_positive_float, help="exact mode: largest relative error allowed")
    vb.add_argument("--seed", type=_seed, default=0, help="seed of the parameters and of the random batch")
    vb.add_argument("--plot", help="approx mode: save the error-vs-scale curve as a PNG")
    vb.add_argument("--force", action="store_true", help="replace an existing --plot file")
    vb.add_argument("--json", action="store_true", help="last line: the result as JSON")
    vb.set_defaults(fn=cmd_verify_bp)
    tu = sub.add_parser("tune", help="search hyperparameters with Optuna, scored on a validation split of the "
                        "training set (never the test set)")
    tu.add_argument("spec")
    _add_overrides(tu, " (fixed for every trial)")
    tu.add_argument("--param", action="append", default=[], metavar="'PATH=DISTRIBUTION'",
                    help="a dimension of the search space, DISTRIBUTION one of 'uniform LOW HIGH', "
                         "'log-uniform LOW HIGH', 'int LOW HIGH [log]', 'choice A B ...': e.g. --param "
                         "'learning.optimizer.lr=log-uniform 1e-4 1e-2' --param 'inference.steps=int 4 32' (repeat)")
    tu.add_argument("--space", metavar="FILE", help="a YAML search space: spec path -> distribution (as --param) "
                    "or a list of choices")
    tu.add_argument("--trials", type=_positive_int, default=20,
                    help="the study's total of finished trials (default 20): a stored study continues up to it")
    tu.add_argument("--timeout", type=_positive_float, metavar="S", help="start no trial after S seconds")
    tu.add_argument("--epochs", type=_positive_int, help="epochs per trial (override train.epochs; the best "
                    "spec keeps the spec's own)")
    tu.add_argument("--val-fraction", type=_fraction, default=0.1,
                    help="share of the training set held out as the validation split every trial is scored on "
                         "(default 0.1, drawn with --seed); the test set is never used")
    tu.add_argument("--seed", type=_seed, default=0, help="seed of the validation split and the TPE sampler")
    tu.add_argument("--study-dir", metavar="DIR", help="keep the study in DIR/study.db (SQLite: run the command "
                    "again to continue an interrupted study) and write best.yaml, history.png, importances.png there")
    tu.add_argument("--storage", metavar="URL", help="an Optuna storage instead, e.g. sqlite:///study.db")
    tu.add_argument("--study-name", help="the study's name in the storage (default: the spec's name)")
    tu.add_argument("--best", metavar="FILE", help="write the best spec (resolved YAML) here (default DIR/best.yaml)")
    tu.add_argument("--plots", metavar="DIR", help="write history.png and importances.png here (default: --study-dir)")
    tu.add_argument("--no-prune", dest="prune", action="store_false",
                    help="run every trial to the end (default: median pruning after each epoch)")
    tu.add_argument("--force", action="store_true", help="replace existing --best and plot files")
    tu.add_argument("--data-root", help="folder with the data set's files (default: $PCGRAPH_DATA)")
    tu.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    tu.add_argument("--json", action="store_true", help="trial lines to stderr; best value, best params and "
                    "trial counts as one JSON line on stdout")
    tu.set_defaults(fn=cmd_tune)
    return p


def _import_torch() -> None:
    """Import torch with Ctrl-C held back until it is done, then raise it: a KeyboardInterrupt
    raised inside torch's C++ start-up ends the process with SIGABRT instead of unwinding."""
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    group = sys.modules.get("pcgraph.tasks.distributed")
    if group is not None and group.joined_a_group():  # a torchrun rank: see distributed.end_process
        group.end_process(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and (not hasattr(args, "overrides") or any(a.startswith("-") for a in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help, or a usage error already printed as one line
        return int(exit_.code or 0)
    if extra:  # PATH=VALUE after an option: argparse leaves them over
        args.overrides = [*args.overrides, *extra]
    try:
        _import_torch()
        from pcgraph.tasks.memory import keep_freed_memory
        keep_freed_memory()  # large maps freed at each inference step are not faulted in again
        return args.fn(args)
    except Interrupted as err:
        print(f"pcgraph: {err}", file=sys.stderr)
        return 128 + err.signum  # 130 for SIGINT, 143 for SIGTERM
    except DivergenceError as err:
        print(f"pcgraph: diverged: {err}", file=sys.stderr)
        return 1
    except WorkerError as err:  # a training process failed unexpectedly
        print(f"pcgraph: error: {'; '.join(str(err).splitlines())}", file=sys.stderr)
        return 1
    except PCGraphError as err:  # bad input: a spec, a data set, an argument
        print(f"pcgraph: error: {'; '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pcgraph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
