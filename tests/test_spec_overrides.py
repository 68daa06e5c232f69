"""Spec overrides (``PATH=VALUE``): paths, YAML values, every error, and the commands that take them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pcgraph.cli import main
from pcgraph.errors import SpecError
from pcgraph.spec import load_spec
from pcgraph.spec.overrides import apply_overrides, parse_path, set_values

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "specs" / "digits_mlp.yaml")
KALMAN = str(ROOT / "specs" / "kalman_tracking.yaml")

SPEC = {"name": "t",
        "graph": {"nodes": {"x": {"shape": [4]}, "my node": {"shape": 3}},
                  "edges": [{"from": "x", "to": "my node", "fn": ["linear", "tanh"]}]},
        "inference": {"steps": 8, "optimizer": "sgd"},
        "data": None}


def _problems(data, overrides) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        apply_overrides(data, overrides)
    return err.value.problems


# --- paths and values --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["graph.edges[0].fn", "graph.edges.0.fn", " graph.edges[0] .fn"])
def test_list_items_by_dotted_or_bracketed_index(text):
    assert parse_path(text.replace(" .", ".")) == ("graph", "edges", 0, "fn")


def test_quoted_keys_as_spec_errors_print_them():
    assert parse_path("graph.nodes['my node'].shape") == ("graph", "nodes", "my node", "shape")
    assert parse_path('graph.nodes["a.b"]') == ("graph", "nodes", "a.b")


def test_values_are_yaml():
    out = apply_overrides(SPEC, ["inference.steps=20", "learning.optimizer.lr=1e-3", "graph.nodes.x.shape=[256]",
                                 "inference.tol=null", "inference.compile=true", "name='8'",
                                 "learning.optimizer={kind: adam, lr: 0.01}"])
    assert out["inference"]["steps"] == 20
    assert out["learning"]["optimizer"] == {"kind": "adam", "lr": 0.01}  # the later override of the path wins
    assert out["graph"]["nodes"]["x"]["shape"] == [256]
    assert out["inference"]["tol"] is None and out["inference"]["compile"] is True and out["name"] == "8"
    one = apply_overrides(SPEC, ["learning.optimizer.lr=1e-3"])["learning"]["optimizer"]["lr"]
    assert one == 0.001 and isinstance(one, float)  # YAML 1.1 alone would read the string '1e-3'


def test_items_keys_and_new_mappings():
    out = apply_overrides(SPEC, ["graph.edges[0].to=x", "graph.edges.0.fn.1=relu",
                                 "graph.nodes['my node'].shape=5", "learning.schedule=cosine", "data.batch_size=16"])
    assert out["graph"]["edges"][0] == {"from": "x", "to": "x", "fn": ["linear", "relu"]}
    assert out["graph"]["nodes"]["my node"]["shape"] == 5
    assert out["learning"] == {"schedule": "cosine"}  # created: the model judges whether it belongs
    assert out["data"] == {"batch_size": 16}  # null on the way is a new mapping too


def test_a_bare_name_on_the_way_is_its_kind():
    """``optimizer: sgd`` is the spec's short form of ``{kind: sgd}``: a field below it extends that."""
    out = apply_overrides(SPEC, ["inference.optimizer.lr=0.2", "graph.edges.0.fn.1.negative_slope=0.1"])
    assert out["inference"]["optimizer"] == {"kind": "sgd", "lr": 0.2}
    assert out["graph"]["edges"][0]["fn"][1] == {"kind": "tanh", "negative_slope": 0.1}


def test_the_input_is_left_alone():
    before = yaml.safe_dump(SPEC)
    apply_overrides(SPEC, ["inference.steps=1", "graph.edges.0.fn.0=relu", "graph.nodes.x.shape=[1]"])
    set_values(SPEC, {"graph.nodes.x.shape": [2]})
    assert yaml.safe_dump(SPEC) == before


def test_set_values_takes_plain_values():
    out = set_values(SPEC, {"inference.steps": 3, "graph.edges[0].fn": ["linear"]})
    assert out["inference"]["steps"] == 3 and out["graph"]["edges"][0]["fn"] == ["linear"]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("item, path, words", [
    ("foo", "", "expected PATH=VALUE"),
    ("=3", "", "the path before '=' is empty"),
    ("  =3", "", "the path before '=' is empty"),
    ("inference.steps=", "inference.steps", "expected a YAML value"),
    ("graph.nodes.x.shape=[256", "graph.nodes.x.shape", "not valid YAML"),
    ("a..b=1", "", "expected names joined by '.'"),
    ("a.=1", "", "nothing after 'a.'"),
    ("a[x]=1", "", "expected names joined by '.'"),
    ("graph.edges]0=1", "", "expected '.' or '['"),
    ("graph.edges.3.fn=[linear]", "graph.edges[3]", "expected an index from 0 to 0, got 3"),
    ("graph.edges.first.fn=[linear]", "graph.edges", "expected an index from 0 to 0, got 'first'"),
    ("inference.steps.x=1", "inference.steps", "is 8, which has no field 'x'"),
    ("graph.nodes.x.shape.0.y=1", "graph.nodes.x.shape[0]", "is 4, which has no field 'y'"),
])
def test_bad_overrides_name_the_path_and_what_was_expected(item, path, words):
    (got_path, message), = _problems(SPEC, [item])
    assert got_path == path and words in message, (got_path, message)
    if not path:
        assert repr(item.partition("=")[0]) in message or repr(item) in message


def test_an_empty_list_takes_no_index():
    (path, message), = _problems({"inference": {"precisions": []}}, ["inference.precisions.0.nodes=[x]"])
    assert path == "inference.precisions[0]" and "the list is empty" in message


def test_every_bad_override_is_reported_at_once():
    problems = _problems(SPEC, ["foo", "inference.steps=1", "inference.steps.x=1", "=2"])
    assert [p for p, _ in problems] == ["", "inference.steps", ""]


def test_the_top_must_be_a_mapping():
    with pytest.raises(SpecError, match="expected a mapping at the top"):
        apply_overrides(["name"], ["name=x"])


# --- through the spec model ------------------------------------------------------------------


def test_load_spec_applies_overrides():
    spec = load_spec(DIGITS, ["inference.steps=20", "learning.optimizer.lr=1e-3", "graph.nodes.h1.shape=[256]",
                              "learning.schedule=cosine", "graph.edges[0].fn.1.negative_slope=0.2"])
    assert spec.inference.steps == 20 and spec.learning.optimizer.lr == 1e-3 and spec.learning.schedule == "cosine"
    assert spec.graph.nodes["h1"].shape == (256,) and spec.graph.edges[0].fn[1].negative_slope == 0.2
    assert load_spec(DIGITS) == load_spec(DIGITS, [])


@pytest.mark.parametrize("item, path", [
    ("learning.schedul=cosine", "learning.schedul"),  # a typo: the model's own error at its path
    ("inference.steps=0", "inference.steps"),
    ("inference.stepz=3", "inference.stepz"),
    ("graph.nodes.h1.shape=[0]", "graph.nodes.h1.shape[0]"),
    ("inference.optimizer.kind=adam", "inference.optimizer.momentum"),  # digits_mlp sets momentum: sgd only
])
def test_the_spec_model_judges_the_result(item, path):
    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, [item])
    assert err.value.path == path, err.value.problems


# --- the commands ------------------------------------------------------------------------------


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _error(capsys, *argv: str) -> str:
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("pcgraph: error: "), err
    return err


def test_validate_and_show_take_overrides_around_options(capsys):
    rc, out, _ = _run(capsys, "validate", DIGITS, "graph.nodes.h1.shape=[32]")
    assert rc == 0 and "4,842 parameters" in out  # 64*32+32 + 32*64+64 + 64*10+10
    rc, out, _ = _run(capsys, "show", DIGITS, "--json", "graph.nodes.h1.shape=[32]", "graph.nodes.h2.shape=[16]")
    assert rc == 0 and '"params": 2778' in out  # 64*32+32 + 32*16+16 + 16*10+10


@pytest.mark.parametrize("argv, words", [
    (["validate", DIGITS, "foo"], "override 'foo': expected PATH=VALUE"),
    (["validate", DIGITS, "learning.schedul=cosine"], "learning.schedul: unknown field"),
    (["show", DIGITS, "=1"], "the path before '=' is empty"),
    (["verify-bp", DIGITS, "inference.steps=0"], "inference.steps"),
    (["filter", KALMAN, "sequence.length=0"], "sequence.length"),
    (["bench", DIGITS, "--epochs", "1", "--seeds", "1", "inference.steps=0"], "inference.steps"),
    (["bench", "inference.steps=2"], "at least one SPEC"),
    (["train", DIGITS, "--epochs", "1", "inference.steps=0"], "inference.steps"),
    (["train", "--resume", "somewhere", "inference.steps=3"], "takes no overrides"),
])
def test_bad_overrides_are_one_line_and_exit_2(capsys, argv, words):
    assert words in _error(capsys, *argv)


def test_a_stray_option_is_still_refused(capsys):
    rc, _, err = _run(capsys, "validate", DIGITS, "inference.steps=3", "--bogus")
    assert rc == 2 and "unrecognized arguments: --bogus" in err


def test_filter_takes_overrides(capsys):
    import json

    rc, out, _ = _run(capsys, "filter", KALMAN, "sequence.length=17", "--no-progress", "--json")
    assert rc == 0 and json.loads(out.splitlines()[-1])["steps"] == 17


def test_the_run_folder_records_the_overridden_spec(capsys, tmp_path):
    out = tmp_path / "run"
    rc, _, err = _run(capsys, "train", DIGITS, "--epochs", "1", "--no-progress", "--out", str(out), "--json",
                      "inference.steps=3", "graph.nodes.h1.shape=[16]", "learning.schedule=cosine")
    assert rc == 0, err
    saved = load_spec(out / "spec.yaml")
    assert saved == load_spec(DIGITS, ["inference.steps=3", "graph.nodes.h1.shape=[16]", "learning.schedule=cosine"])
    assert saved.inference.steps == 3 and saved.graph.nodes["h1"].shape == (16,)
    # --resume continues that spec (and refuses overrides, above)
    rc, _, err = _run(capsys, "train", "--resume", str(out), "--epochs", "2", "--no-progress", "--json")
    assert rc == 0, err
    assert load_spec(out / "spec.yaml").inference.steps == 3
