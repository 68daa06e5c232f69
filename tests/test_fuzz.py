"""Hostile and broken specs: mutated shipped specs and random YAML text either compile or raise
SpecError (with a YAML path for mutations); `pcgraph validate` exits 0 or 2; alias bombs and deep
nesting are refused quickly with bounded memory."""

import copy
import signal
import string
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcgraph import SpecError, compile, spec_from_dict, spec_from_yaml
from pcgraph.cli import main

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
DICTS = [yaml.safe_load(p.read_text()) for p in SPECS]
LIMIT = 256 * 2**20  # fuzzed sizes are refused above this instead of allocated
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(-3, 10**10), max_size=3),
    st.dictionaries(st.text(string.ascii_lowercase, max_size=4), st.integers(-2, 5), max_size=2),
)
NAMES = st.one_of(st.text(string.ascii_lowercase, min_size=1, max_size=5), st.text(min_size=1, max_size=4),
                  st.sampled_from(["h1", "image", "label", "ünï", "名前", ""]))


def locations(obj, prefix=()):
    """Every (container, key) pair in a nested structure of dicts and lists."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        yield obj, k
        yield from locations(v, (*prefix, k))


@st.composite
def mutated_specs(draw):
    data = copy.deepcopy(draw(st.sampled_from(DICTS)))
    for _ in range(draw(st.integers(1, 3))):
        places = list(locations(data))
        parent, key = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["delete", "rename", "retype", "huge", "node", "cycle"]))
        if action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(NAMES)] = parent.pop(key)
        elif action == "huge":
            parent[key] = draw(st.sampled_from([10**9, [10**6, 10**6], -1, 0, 2**63]))
        elif action == "node" and isinstance(parent, dict) and key in ("from", "to", "input", "target"):
            parent[key] = draw(NAMES)
        elif action == "cycle" and isinstance(data.get("graph"), dict) and isinstance(data["graph"].get("edges"), list):
            data["graph"]["edges"].append({"from": "label", "to": "h1", "fn": ["linear"]})
        else:
            parent[key] = draw(VALUES)
    return data


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_specs())
def test_mutated_specs_compile_or_raise_spec_error_with_a_path(data):
    try:
        spec = spec_from_dict(data)
        for text in (spec.to_yaml(), spec.to_yaml(resolved=True)):  # a valid spec reads back equal
            assert spec_from_yaml(text) == spec
        compile(spec, max_bytes=LIMIT)
    except SpecError as err:
        assert err.problems and all(path for path, _ in err.problems), err.problems


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=200), st.builds(yaml.safe_dump, mutated_specs())))
def test_random_yaml_text_compiles_or_raises_spec_error(text):
    try:
        compile(spec_from_yaml(text), max_bytes=LIMIT)
    except SpecError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_specs())
def test_validate_exits_0_or_2(tmp_path_factory, monkeypatch, data):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    monkeypatch.setenv("PCGRAPH_MAX_BYTES", str(LIMIT))
    assert main(["validate", str(path)]) in (0, 2)


def billion_laughs(levels=9):
    text = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return text + "name: bomb\n"


def _too_slow(signum, frame):
    raise TimeoutError("still parsing after 60 s")


def test_alias_bomb_is_refused_with_bounded_memory():
    old = signal.signal(signal.SIGALRM, _too_slow)  # a generous guard against a hang, not a speed test
    signal.alarm(60)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="expands to more than"):
            spec_from_yaml(billion_laughs())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert peak < 100 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_deep_nesting_is_refused():
    for depth in (100, 100_000):
        with pytest.raises(SpecError, match="nested"):
            spec_from_yaml("a: " + "[" * depth + "]" * depth)


def test_huge_sizes_are_refused_before_allocation():
    data = copy.deepcopy(DICTS[0])
    first = next(iter(data["graph"]["nodes"]))
    data["graph"]["nodes"][first]["shape"] = [10**10]
    with pytest.raises(SpecError, match="GiB") as err:
        compile(spec_from_dict(data))
    assert err.value.path == f"graph.nodes.{first}.shape"


def test_yaml_tags_cannot_run_code():
    with pytest.raises(SpecError):
        spec_from_yaml("name: !!python/object/apply:os.system ['echo hacked']\n")
