"""Bad arguments and outputs on the command line: one line on stderr, exit 2, nothing lost."""

from __future__ import annotations

import pytest

from pcgraph.cli import main
from tests.strategies import SMALL_SPEC

DIGITS = "specs/digits_mlp.yaml"


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("options", "path"), [
    ("learning: {optimizer: {kind: adam, lr: 0.001, options: {betas: [2, 3]}}}", "learning.optimizer.options"),
    ("learning: {optimizer: {kind: adam, lr: 0.001, options: {bogus: 1}}}", "learning.optimizer.options"),
    ("bp: {optimizer: {kind: sgd, lr: 0.1, options: {momentum: -1}}}", "bp.optimizer.options"),
    ("learning: {optimizer: {kind: rprop, lr: 0.1, weight_decay: 0.1}}", "learning.optimizer.weight_decay"),
])
def test_validate_builds_the_weight_optimizers_train_builds(tmp_path, capsys, options, path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC + options + "\n")
    assert main(["validate", str(spec)]) == 2
    assert f"error: {path}:" in one_line(capsys)


@pytest.mark.parametrize("argv", [
    ["verify-bp", DIGITS, "--mode", "approx", "--precision-scales", "nan"],
    ["verify-bp", DIGITS, "--mode", "approx", "--precision-scales", "1,inf"],
    ["verify-bp", DIGITS, "--tol", "-1"],
    ["verify-bp", DIGITS, "--tol", "nan"],
    ["train", DIGITS, "--seed", "99999999999999999999999"],
    ["train", DIGITS, "--seed", "-1"],
    ["verify-bp", DIGITS, "--seed", str(2**63)],
])
def test_out_of_range_numbers_are_refused(capsys, argv):
    assert main(argv) == 2
    assert "expected" in one_line(capsys)


def test_a_huge_seed_in_the_spec_is_a_spec_error(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC + f"train: {{seed: {2**70}}}\n")
    assert main(["validate", str(spec)]) == 2
    assert "train.seed" in one_line(capsys)


def test_show_png_is_checked_first_and_replaces_nothing_unasked(tmp_path, capsys):
    png = tmp_path / "g.png"
    png.write_bytes(b"a drawing of mine")
    assert main(["show", "examples/small_world.yaml", "--png", str(png)]) == 2
    assert "pass --force" in one_line(capsys) and png.read_bytes() == b"a drawing of mine"
    assert main(["show", "examples/small_world.yaml", "--png", str(tmp_path / "no" / "g.png")]) == 2
    assert "does not exist" in one_line(capsys)
    assert main(["show", "examples/small_world.yaml", "--png", str(png), "--force"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_train_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("mine")
    assert main(["train", DIGITS, "--no-progress", "--out", str(afile)]) == 2
    assert "is a file" in one_line(capsys) and afile.read_text() == "mine"


def test_counts_read_as_english(tmp_path, capsys):
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\ngraph:\n  nodes: {x: {shape: 1, role: observed}, y: {shape: 1, role: observed}}\n"
                    "  edges: [{from: x, to: y, fn: [{kind: linear, bias: false}]}]\n")
    assert main(["validate", str(spec)]) == 0
    assert capsys.readouterr().out.strip().endswith("valid (2 nodes, 1 edge, 1 parameter)")


def test_a_single_seed_shows_no_spread():
    from pcgraph.tasks.bench import BenchRow, table

    rows = [BenchRow("s", "PC", "accuracy", [0.9], 1.0, 10, 3, 100, 1),
            BenchRow("s", "PC", "accuracy", [0.9, 0.8], 1.0, 10, 3, 100, 1),
            BenchRow("s", "PC", "mse", [0.0042], 1.0, 10, 3, 100, 1)]
    assert [cells[2] for cells in table(rows)] == ["acc 90.00%", "acc 85.00% ± 7.07", "MSE 4.20e-3"]


def test_a_weight_optimizer_argument_beside_kind_says_where_it_goes(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC + "learning: {optimizer: {kind: sgd, lr: 0.1, momentum: 0.9}}\n")
    assert main(["validate", str(spec)]) == 2
    assert "learning.optimizer: unknown field(s) momentum; the torch.optim class's own arguments go under " \
        "options: {momentum: 0.9}" in one_line(capsys)
