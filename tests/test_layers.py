"""The package's imports run one way, down the pipeline's layers (docs/architecture.md), and every
public name imports."""

import ast
from pathlib import Path

import pcgraph

ROOT = Path(pcgraph.__file__).resolve().parent

# lower number = lower layer; a module may import only from its own layer or below
LAYERS = {
    "errors": 0, "registry": 1, "ops": 2, "energies": 2, "variants": 2, "updates": 2, "precision": 2, "topology": 2,
    "spec": 3, "builder": 4, "compiled": 5, "compiler": 5, "solver": 6, "kalman": 6, "data": 6,
    "tasks": 7, "cli": 8, "__main__": 9,
}


def layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return LAYERS[top]


def modules():
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("pcgraph", *parts)).removesuffix(".__init__")
        if name != "pcgraph":
            yield name, path


def pcgraph_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pcgraph"):
            if node.module == "pcgraph":  # `from pcgraph import x`: x is a submodule
                yield from (f"pcgraph.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("pcgraph."))


def test_imports_only_run_down_the_layers():
    upward = [(name, imported) for name, path in modules() for imported in pcgraph_imports(path)
              if imported != "pcgraph" and layer(imported) > layer(name)]
    assert upward == []


def test_every_public_name_imports():
    assert all(getattr(pcgraph, name) is not None for name in pcgraph.__all__)
    assert len(set(pcgraph.__all__)) == len(pcgraph.__all__)


def test_the_command_line_starts_without_importing_torch():
    """pcgraph's names import on first use: `pcgraph --help` is instant and a Ctrl-C during
    start-up lands in the CLI's own handler (see tests/test_cli_signals.py)."""
    import subprocess
    import sys

    code = "import sys, pcgraph, pcgraph.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
