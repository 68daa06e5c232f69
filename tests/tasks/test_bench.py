"""``pcgraph bench``: FLOP counts against hand counts, and well-formed rows from tiny runs."""

import json

import pytest

import pcgraph
from pcgraph.cli import main
from pcgraph.tasks import bench
from tests.strategies import DIGITS_AE


def test_flops_per_update_match_hand_counts():
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    pc, bp = bench.flops_per_update(spec, "pc"), bench.flops_per_update(spec, "bp")
    # BP: forward + backward of a 64-64-64-10 net at batch 32 is 3 x 2 x 32 x 8,832 MACs, minus the
    # input gradient of the first layer (2 x 32 x 64 x 64): 3,129,344 FLOPs from matmuls
    assert bp == 3 * 2 * 32 * (64 * 64 + 64 * 64 + 64 * 10) - 2 * 32 * 64 * 64
    # PC with T = 8 and forward init. image -> h1 is constant (its source is clamped). After the
    # init pass only the label has an error, and it reaches one layer deeper per step:
    # step 0: the label's VJP into h2; step 1: h2 moved, so the h2 -> label prediction and both
    # VJPs; steps 2-7: both non-constant predictions and both VJPs; after relaxing: those two
    # predictions once more, then every layer's weight gradient, nothing else.
    def mm(*sizes):
        return sum(2 * 32 * n for n in sizes)

    l1, l2, l3 = 64 * 64, 64 * 64, 64 * 10
    expected = (mm(l1, l2, l3) + mm(l3) + mm(l2, l3, l3) + 6 * mm(l2, l3, l2, l3)
                + mm(l2, l3) + mm(l1, l2, l3))
    assert pc == expected


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    specs = [pcgraph.load_spec("specs/digits_mlp.yaml"), pcgraph.spec_from_yaml(DIGITS_AE)]
    out = tmp_path_factory.mktemp("runs")
    return bench.bench(specs, seeds=2, epochs=2, out=out, log=lambda s: None), out


def test_rows_are_well_formed(rows):
    rows, out = rows
    assert [(r.spec, r.method, r.metric) for r in rows] == [
        ("digits-mlp", "PC", "accuracy"), ("digits-mlp", "BP", "accuracy"), ("digits-ae", "PC", "mse"), ("digits-ae", "BP", "mse")]
    for r in rows:
        assert len(r.values) == 2 and len(r.curves) == 2 and all(len(c) == 2 for c in r.curves)
        assert all(v == (max(c) if r.metric == "accuracy" else min(c)) for v, c in zip(r.values, r.curves))
        assert r.epoch_seconds > 0 and r.flops_per_update > 0 and r.std >= 0
        assert (r.time_ratio is not None) == (r.method == "PC")
    assert rows[0].mean > 0.5  # digits after 2 epochs, chance 0.1
    assert rows[2].states_per_sample == 40 and rows[3].params == rows[2].params + 64 * 32 + 32 + 32 * 8 + 8
    assert (out / "digits-ae" / "pc-seed0" / "model.pt").is_file() and (out / "digits-ae" / "bp-seed1" / "model.pt").is_file()
    md = bench.to_markdown(rows).splitlines()
    assert len(md) == 2 + len(rows) and md[2].startswith("| digits-mlp | PC | acc ")
    assert [d["spec"] for d in json.loads(bench.to_json(rows))] == ["digits-mlp", "digits-mlp", "digits-ae", "digits-ae"]


def test_plot_and_reconstruction_grid(rows, tmp_path):
    rows, out = rows
    bench.plot(rows, tmp_path / "curves.png")
    bench.reconstruction_grid(pcgraph.spec_from_yaml(DIGITS_AE), out, tmp_path / "grid.png", count=4)
    for name in ("curves.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench(tmp_path, capsys):
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    rc = main(["bench", "specs/digits_mlp.yaml", "--seeds", "1", "--epochs", "1", "--methods", "bp",
               "--no-progress", "--json", "--markdown", str(md), "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # with --json, stdout is the JSON line alone
    rows = json.loads(out[0])
    assert [(r["spec"], r["method"]) for r in rows] == [("digits-mlp", "BP")]
    assert "| digits-mlp | BP |" in md.read_text() and png.is_file()


@pytest.mark.parametrize("argv", [
    ["bench", "specs/digits_mlp.yaml", "--methods", "pc,xx"],
    ["bench", "specs/digits_mlp.yaml", "--seeds", "0"],
    ["bench", "specs/digits_mlp.yaml", "--images", "somewhere"],
    ["bench", "no/such/spec.yaml"],
])
def test_cli_bench_bad_input_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_spec_that_cannot_run_fails_before_any_training(tmp_path, capsys):
    """digits_fc is cyclic: no backprop baseline. Found before digits_mlp's runs, not after them."""
    out = tmp_path / "runs"
    assert main(["bench", "specs/digits_mlp.yaml", "specs/digits_fc.yaml", "--seeds", "1", "--epochs", "1",
                 "--no-progress", "--out", str(out), "--markdown", str(tmp_path / "t.md")]) == 2
    captured = capsys.readouterr()
    assert "digits-fc: graph.edges: backprop needs a feedforward pass" in captured.err
    assert "seed" not in captured.out and not out.exists() and not (tmp_path / "t.md").exists()


def test_rows_that_finished_are_written_when_a_later_run_fails(tmp_path, monkeypatch, capsys):
    from pcgraph.errors import DivergenceError

    real = bench.train

    def second_spec_diverges(spec, **kw):
        if spec.name == "second":
            raise DivergenceError("energy became inf")
        return real(spec, **kw)

    monkeypatch.setattr(bench, "train", second_spec_diverges)
    second = tmp_path / "second.yaml"
    second.write_text(pcgraph.load_spec("specs/digits_mlp.yaml").to_yaml().replace("name: digits-mlp", "name: second"))
    md = tmp_path / "t.md"
    assert main(["bench", "specs/digits_mlp.yaml", str(second), "--seeds", "1", "--epochs", "1", "--methods", "bp",
                 "--no-progress", "--markdown", str(md)]) == 1
    assert "| digits-mlp | BP |" in md.read_text() and "second" not in md.read_text()
    assert "1 of 2 rows finished" in capsys.readouterr().out


def test_spec_names_cannot_leave_the_out_folder(tmp_path):
    spec = pcgraph.load_spec("specs/digits_mlp.yaml")
    specs = [spec.model_copy(update={"name": name}) for name in ("../../escape", "/abs/path", "..", "a b")]
    assert bench.folder_names(specs) == ["escape", "abs_path", "spec", "a_b"]
    assert bench.folder_names([spec, spec]) == ["digits-mlp", "digits-mlp-2"]
    out = tmp_path / "deep" / "runs"
    bench.bench(specs[:1], seeds=1, epochs=1, out=out, methods=("bp",), log=lambda s: None)
    assert (out / "escape" / "bp-seed0" / "model.pt").is_file() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("option", ["--markdown", "--plot"])
def test_output_paths_are_checked_before_training(tmp_path, capsys, option):
    base = ["bench", "specs/digits_mlp.yaml", "--seeds", "1", "--epochs", "1", "--methods", "bp", "--no-progress"]
    assert main([*base, option, str(tmp_path / "missing" / "t.out")]) == 2
    (tmp_path / "t.out").write_text("earlier results")
    assert main([*base, option, str(tmp_path / "t.out")]) == 2  # not replaced unasked
    err = capsys.readouterr()
    assert "does not exist" in err.err and "pass --force" in err.err and "seed" not in err.out
    assert (tmp_path / "t.out").read_text() == "earlier results"


def test_out_folder_holding_runs_is_refused_unless_forced(tmp_path, capsys):
    argv = ["bench", "specs/digits_mlp.yaml", "--seeds", "1", "--epochs", "1", "--methods", "bp", "--no-progress",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert main(argv) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
