"""The docs run: every command and snippet README.md and docs/*.md show, and the generated reference.

- ```bash blocks: each `pcgraph ...` line runs in-process (``pcgraph.cli.main``) and each
  `python examples/...` line in a subprocess, from a sandbox holding copies of specs/, examples/
  and docs/ (so a command that writes a committed figure must say --force, as it must in a clone),
  with $PCGRAPH_DATA pointing at an empty folder. Any other command fails the test until its block
  is marked.
- ```python blocks of a page run in order, in one fresh interpreter per page, from the sandbox.
- ```yaml blocks that are whole specs (``name`` and ``graph``) load and compile; one whose first
  line names a file (``# specs/mnist_mlp.yaml``) must equal that file's spec. Other YAML must parse.
- A block preceded by ``<!-- no-test: reason -->`` is not run; the reason is visible in the page.
  Skipping is always such a marked decision, never a filter here, except two README lines that
  cannot run inside this suite: `pip install -e ".[dev]"` (the environment is installed) and
  `python -m pytest` (it is this suite).
- Relative links and their #anchors resolve; docs/spec-reference.md is what
  docs/make_spec_reference.py writes.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*no-test(.*?)-->\s*$")
TIMEOUT = 300


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the no-test reason, or None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the no-test marker just before it (if any)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i, last = [], 0, None  # last: the previous non-blank line outside blocks
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last = lines[i]
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        marker = MARKER.match(last) if last else None
        skip = marker.group(1).strip().lstrip(":").strip() if marker else None
        if marker and not skip:
            raise AssertionError(f"{page.relative_to(ROOT)}:{start + 1}: say why: <!-- no-test: reason -->")
        text = textwrap.dedent("\n".join(body)) if indent else "\n".join(body)
        found.append(Block(page, start + 1, lang, text + "\n", skip))
        last, i = None, i + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def _ids(bs):
    return [b.where for b in bs]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder like a fresh clone's root: copies of specs/, examples/ and docs/, no data."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("specs", "examples", "docs"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "no-data").mkdir()
    for b in ALL:  # a YAML block headed `# FILE.yaml` that is no shipped file: the file the page's commands read
        named = re.fullmatch(r"#\s*(\S+\.ya?ml)\s*", b.text.splitlines()[0]) if b.lang in ("yaml", "yml") else None
        if named and not (root / named.group(1)).exists():
            (root / named.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (root / named.group(1)).write_text(b.text)
    return root


def _enter(sandbox: Path, monkeypatch) -> None:
    """Run in-process commands from the sandbox, with its environment (less PYTHONPATH)."""
    monkeypatch.chdir(sandbox)
    for key, value in _env(sandbox).items():
        if key != "PYTHONPATH":
            monkeypatch.setenv(key, value)


def _env(sandbox: Path) -> dict:
    env = dict(os.environ, PCGRAPH_DATA=str(sandbox / "no-data"), PCGRAPH_CACHE=str(sandbox / "cache"),
               MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


# --- the README's opening lines -----------------------------------------------------------------


def test_readme_opens_with_the_install_and_test_commands():
    """CI (.ci/run) runs the README's test command: the README must open with both lines."""
    head = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:6]
    assert head[0] == "# pcgraph" and head[2] == "```bash" and head[5] == "```"
    assert head[3].startswith('pip install -e ".[dev]" && pcgraph train specs/digits_mlp.yaml ')
    assert head[4].startswith('pip install -e ".[dev]" && python -m pytest -q -m "not slow" ')
    assert 'python -m pytest -q -m "not slow"' in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_command_table_lists_every_subcommand_and_option():
    """The README's command table names every subcommand and each of its options (from the parser)."""
    import argparse

    from pcgraph.cli import build_parser

    rows = [line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| `pcgraph ")]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, command in sub.choices.items():
        usage = " ".join(r.split("` |")[0] for r in rows if r.startswith(f"| `pcgraph {name} "))
        if not usage and not any(r.startswith(f"| `pcgraph {name}`") for r in rows):
            missing.append(f"pcgraph {name} (no row)")
            continue
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help") and not re.search(re.escape(option) + r"(?![\w-])", usage):
                    missing.append(f"pcgraph {name} {option}")
    assert not missing, "README.md's command table lacks: " + ", ".join(missing)


# --- bash --------------------------------------------------------------------------------------


def commands(block: Block) -> list[list[str]]:
    """The commands of a bash block: one per line (backslash continuations joined, && split)."""
    text = re.sub(r"\\\n\s*", " ", block.text)
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return out


def run_command(words: list[str], where: str, sandbox: Path, capsys) -> None:
    from pcgraph.cli import main

    if words[:2] == ["pip", "install"] and words[2:] == ["-e", ".[dev]"]:
        return  # the environment running this test is installed
    if words[:4] == ["python", "-m", "pytest", "-q"]:
        return  # the test suite: this test is part of it
    if words[0] == "pcgraph" or words[:3] == ["python", "-m", "pcgraph"]:
        argv = words[1:] if words[0] == "pcgraph" else words[3:]
        capsys.readouterr()
        rc = main(argv)
        captured = capsys.readouterr()
        assert rc == 0, f"{where}: `{shlex.join(words)}` exited {rc}:\n{captured.err[-3000:]}"
        return
    if words[0] == "python" and len(words) > 1 and words[1].startswith("examples/"):
        r = subprocess.run([sys.executable, *words[1:]], cwd=sandbox, env=_env(sandbox), capture_output=True,
                           text=True, timeout=TIMEOUT)
        assert r.returncode == 0, f"{where}: `{shlex.join(words)}` exited {r.returncode}:\n{r.stderr[-3000:]}"
        return
    pytest.fail(f"{where}: cannot run `{shlex.join(words)}` here; mark its block <!-- no-test: reason -->")


BASH = [b for b in ALL if b.lang in ("bash", "sh", "shell")]
CONSOLE = [b for b in ALL if b.lang == "console" and b.skip is None]


def sessions(block: Block) -> list[tuple[list[str], list[str]]]:
    """A console block's (`$ command` words, the output lines shown after it) pairs."""
    out: list[tuple[list[str], list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            out.append((shlex.split(line[2:]), []))
        elif out and line.strip():
            out[-1][1].append(line.strip())
    return out


@pytest.mark.parametrize("block", CONSOLE, ids=_ids(CONSOLE))
def test_console_block_prints_what_it_shows(block, sandbox, monkeypatch, capsys):
    """Each `$ pcgraph ...` line prints the lines shown under it; one that shows an error exits 2."""
    from pcgraph.cli import main

    _enter(sandbox, monkeypatch)
    shown = sessions(block)
    assert shown, f"{block.where}: a console block without `$ ` commands"
    for words, expected in shown:
        assert words[0] == "pcgraph", f"{block.where}: only pcgraph commands run here, got {shlex.join(words)}"
        capsys.readouterr()
        rc = main(words[1:])
        captured = capsys.readouterr()
        printed = captured.out + captured.err
        for line in expected:
            assert line in printed, f"{block.where}: `{shlex.join(words)}` did not print {line!r}:\n{printed[-2000:]}"
        errors = any(line.startswith("pcgraph: error") for line in expected)
        assert rc == (2 if errors else 0), f"{block.where}: `{shlex.join(words)}` exited {rc}"


@pytest.mark.parametrize("block", [b for b in BASH if b.skip is None], ids=_ids([b for b in BASH if b.skip is None]))
def test_bash_block_runs(block, sandbox, monkeypatch, capsys):
    _enter(sandbox, monkeypatch)
    cmds = commands(block)
    assert cmds, f"{block.where}: an empty bash block"
    for words in cmds:
        run_command(words, block.where, sandbox, capsys)


# --- python ------------------------------------------------------------------------------------

RUNNER = """
namespace = {"__name__": "__docs__"}  # one session for the whole page
for where, source in BLOCKS:
    exec(compile(source, where, "exec"), namespace)  # a traceback names the page and block line
    print("ran", where, flush=True)
"""


PYTHON_PAGES = sorted({b.page for b in ALL if b.lang == "python" and b.skip is None})


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(ROOT)) for p in PYTHON_PAGES])
def test_python_blocks_run(page, sandbox, tmp_path):
    """A page's python blocks, in order, in one session (as a reader would run them)."""
    todo = [(b.where, b.text) for b in ALL if b.page == page and b.lang == "python" and b.skip is None]
    script = tmp_path / "blocks.py"
    script.write_text(f"BLOCKS = {todo!r}\n{RUNNER}", encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=sandbox, env=_env(sandbox), capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"a python block failed ({r.stdout.strip().splitlines()[-1:] or 'none ran'}):\n" \
                              f"{r.stderr[-3000:]}"
    assert r.stdout.count("ran ") == len(todo)


# --- yaml --------------------------------------------------------------------------------------

YAML = [b for b in ALL if b.lang in ("yaml", "yml") and b.skip is None]


@pytest.mark.parametrize("block", YAML, ids=_ids(YAML))
def test_yaml_block_is_a_valid_spec(block):
    import pcgraph
    from pcgraph.spec import load_spec, spec_from_yaml

    data = yaml.safe_load(block.text)
    if not (isinstance(data, dict) and "name" in data and "graph" in data):
        return  # a fragment: it parsed
    spec = spec_from_yaml(block.text)  # a SpecError names the field
    pcgraph.compile(spec)
    first = block.text.splitlines()[0]
    named = re.fullmatch(r"#\s*(\S+\.ya?ml)\s*", first)
    if named and (ROOT / named.group(1)).exists():
        assert spec == load_spec(ROOT / named.group(1)), f"{block.where}: differs from {named.group(1)}"


# --- markers, links, the generated reference ------------------------------------------------------


def test_every_no_test_marker_sits_on_a_block():
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for k, line in enumerate(lines):
            if MARKER.match(line):
                rest = [x for x in lines[k + 1:] if x.strip()]
                assert rest and FENCE.match(rest[0]), f"{page.relative_to(ROOT)}:{k + 1}: marker before no block"


def _slug(heading: str) -> str:
    return _reference().slug(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_links_resolve():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "broken links:\n" + "\n".join(dict.fromkeys(bad))


@functools.cache
def _reference():
    spec = importlib.util.spec_from_file_location("make_spec_reference", ROOT / "docs" / "make_spec_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_reference_is_what_the_generator_writes():
    ref = _reference()
    committed = ref.TARGET.read_text(encoding="utf-8") if ref.TARGET.exists() else ""
    fresh = ref.render()
    if committed != fresh:
        old, new = committed.splitlines(), fresh.splitlines()
        k = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        pytest.fail(f"docs/spec-reference.md is out of date (first difference at line {k + 1}: "
                    f"{old[k] if k < len(old) else '<end>'!r} vs {new[k] if k < len(new) else '<end>'!r}); "
                    f"regenerate it with `{ref.COMMAND}`")
