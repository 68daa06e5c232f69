"""Data-parallel training: two gloo ranks on the CPU give the single-process update, a run started
on two processes resumes on one, only rank 0 writes, failures come back as one error."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pcgraph
from pcgraph.cli import main
from pcgraph.data import load_dataset
from pcgraph.errors import SpecError
from pcgraph.solver import Solver
from pcgraph.tasks import distributed
from pcgraph.tasks.objective import Backprop, Objective
from pcgraph.tasks.setup import weight_optimizer
from pcgraph.tasks.train import prepare, train

CASES = [(method, dtype) for method in ("pc", "bp") for dtype in (torch.float64, torch.float32)]


def quiet(line):
    """A log that travels to spawned workers (a lambda would not pickle)."""


def spec(batch_size=32):
    s = pcgraph.load_spec("specs/digits_mlp.yaml")
    return s.model_copy(update={"data": s.data.model_copy(update={"batch_size": batch_size})})


def setup(method, dtype):
    """The digits MLP and 128 fixed samples (one global batch), in ``dtype``; the same on every rank."""
    torch.manual_seed(0)
    s = spec()
    graph = pcgraph.compile(s).to(dtype)
    task = Objective(s, graph)
    x, y, _, _ = prepare(load_dataset("digits"), s.data, graph, "cpu")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:128]
    batch = task.batch(x[idx].to(dtype), y[idx])
    model = Backprop(s, graph) if method == "bp" else graph
    return s, graph, model, batch, weight_optimizer(s.learning.optimizer, model.parameters())


def update(method, graph, model, batch, optimizer, s):
    if method == "pc":
        Solver.from_spec(s).step(graph, batch, optimizer)
    else:
        model.step(batch, optimizer)


def _ranks_worker(rank, world, port, folder):
    torch.set_num_threads(1)  # two ranks on two cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for method, dtype in CASES:
            s, graph, model, batch, opt = setup(method, dtype)
            lo, hi = distributed.shard(128, rank, world)
            stepper = distributed.ReducingOptimizer(opt)
            stepper.prepare(hi - lo, 128, False)
            update(method, graph, model, {v: x[lo:hi] for v, x in batch.items()}, stepper, s)
            results[(method, str(dtype))] = graph.state_dict()
        # one rank's relaxation diverges: no rank steps, every rank learns of it
        s, graph, model, batch, opt = setup("pc", torch.float64)
        before = {k: v.clone() for k, v in graph.state_dict().items()}
        stepper = distributed.ReducingOptimizer(opt)
        stepper.prepare(64, 128, rank == 1)
        if rank == 1:
            stepper.abstain()
            peer = "abstained"
        else:
            try:
                update("pc", graph, model, {v: x[:64] for v, x in batch.items()}, stepper, s)
                peer = "stepped"
            except distributed.PeerDivergence:
                peer = "told"
        unchanged = all(torch.equal(before[k], v) for k, v in graph.state_dict().items())
        results["divergence"] = (peer, unchanged, stepper.stop)
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    distributed.end_process(0)  # as launch's workers end: gloo's threads can outlive the group


def test_one_update_on_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    """Global batch 2 x 64: the parameters after one PC (and one BP) update equal a single
    process's on the same 128 samples, to 1e-6, in float64 and float32."""
    mp.spawn(_ranks_worker, args=(2, distributed.free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for method, dtype in CASES:
        s, graph, model, batch, opt = setup(method, dtype)
        start = {k: v.clone() for k, v in graph.state_dict().items()}
        update(method, graph, model, batch, opt, s)
        for k, ref in graph.state_dict().items():
            assert not torch.equal(ref, start[k]) or "bias" in k, (method, k)  # the update moved it
            for r in ranks:
                got = r[(method, str(dtype))][k]
                assert got.dtype == dtype and torch.allclose(got, ref, rtol=0, atol=1e-6), (method, dtype, k)
        assert all(torch.equal(ranks[0][(method, str(dtype))][k], ranks[1][(method, str(dtype))][k])
                   for k in start)
    assert ranks[0]["divergence"] == ("told", True, True)
    assert ranks[1]["divergence"] == ("abstained", True, True)


def test_two_processes_then_resume_on_one_equals_an_uninterrupted_run(tmp_path):
    """Batch 449: four updates per epoch, the last on 1 sample (rank 1 relaxes a stand-in with
    weight 0). Epoch 1 on two processes, epoch 2 resumed on one, equals two epochs on one
    process; only rank 0 wrote (one metrics line per epoch, no stray files)."""
    s = spec(batch_size=449)
    full = train(s, epochs=2, out=tmp_path / "full", progress=False, log=quiet)
    first = train(s, epochs=1, out=tmp_path / "cut", progress=False, log=quiet, nproc=2)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == \
        ["checkpoint.pt", "metrics.csv", "metrics.jsonl", "model.pt", "spec.yaml"]
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = train(resume=tmp_path / "cut", epochs=2, progress=False, log=quiet)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), k
    for got, ref in zip(resumed.history, full.history):
        assert got["energy"] == pytest.approx(ref["energy"], rel=1e-5)
        assert got["train_accuracy"] == pytest.approx(ref["train_accuracy"], abs=1.5 / 1797)
        assert got["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1.5 / 360)
    assert first.history[0]["test_accuracy"] == pytest.approx(full.history[0]["test_accuracy"], abs=1.5 / 360)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 3


def _fail_on_rank_1():
    if dist.get_rank() == 1:
        raise SpecError("rank 1's spec problem", "graph")
    dist.barrier()  # rank 0 waits for a peer that has failed: gloo raises here
    return "unreachable"


def test_a_failing_rank_is_reported_once_as_its_own_error():
    with pytest.raises(SpecError, match="rank 1's spec problem"):
        distributed.launch(_fail_on_rank_1, 2, torch.device("cpu"), {}, grace=20)


@pytest.mark.parametrize("n", range(0, 12))
def test_shards_split_a_batch_into_contiguous_near_equal_parts(n):
    for world in range(1, 5):
        bounds = [distributed.shard(n, r, world) for r in range(world)]
        assert [lo for lo, _ in bounds][0] == 0 and bounds[-1][1] == n
        assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_bad_process_counts_are_one_line_errors(capsys, monkeypatch):
    assert main(["train", "specs/digits_mlp.yaml", "--nproc", "0"]) == 2
    if not torch.cuda.is_available():
        assert main(["train", "specs/digits_mlp.yaml", "--nproc", "2", "--device", "cuda"]) == 2
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["train", "specs/digits_mlp.yaml", "--nproc", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == (2 if torch.cuda.is_available() else 3)
    assert "positive integer" in err[0] and "torchrun" in err[-1]
    with pytest.raises(pcgraph.UsageError, match="at least 1"):
        train(spec(), nproc=0)


def test_end_process_flushes_and_exits_with_the_code():
    code = "import sys; from pcgraph.tasks.distributed import end_process; print('out', end=''); " \
           "print('err', end='', file=sys.stderr); end_process(3)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out", "err")
