"""A run folder's own checks: whom it belongs to, and whether its spec was edited.

``pcgraph train --out DIR`` writes into DIR only if DIR holds no other run (:func:`claim`);
``--resume DIR`` continues the checkpoint's spec and refuses a ``spec.yaml`` edited since
(:func:`check_unedited`). The folder records the resolved spec and :func:`version`.
"""

from __future__ import annotations

from pathlib import Path

from pcgraph.errors import SpecError, UsageError
from pcgraph.spec import GraphSpec, spec_from_yaml
from pcgraph.tasks import checkpoint
from pcgraph.tasks.paths import check_folder

RUN_FILES = (checkpoint.FILE, "model.pt", "metrics.jsonl", "metrics.csv", "spec.yaml")


def claim(out: Path, resume: str | Path | None, force: bool) -> None:
    """Refuse to train into a folder holding another run (its results would be replaced), unless
    ``force``: then its run files go. Resuming the run in ``out`` itself is not a new run."""
    if resume is not None and out.resolve() == Path(resume).resolve():
        return
    check_folder(out, "--out")  # a file, or nowhere this process can write: before any work
    held = [name for name in RUN_FILES if (out / name).is_file()]
    if not held:
        return
    if not force:
        hint = f"continue it with --resume {out}, " if (out / checkpoint.FILE).is_file() else ""
        raise UsageError(f"{str(out)!r} already holds a run ({', '.join(held)}); {hint}choose another --out "
                         "folder, or pass --force (force=True) to replace it")
    for name in held:
        (out / name).unlink(missing_ok=True)


def version() -> str:
    """The pcgraph version a run folder records."""
    import pcgraph

    return pcgraph.__version__


def check_unedited(folder: Path, spec: GraphSpec) -> None:
    """A resumed run continues its checkpoint's spec: refuse a ``spec.yaml`` edited since."""
    path = folder / "spec.yaml" if folder.is_dir() else folder.parent / "spec.yaml"
    if not path.is_file():
        return
    try:
        written = spec_from_yaml(path.read_text(encoding="utf-8"))
    except (SpecError, OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{str(path)!r} was edited and no longer reads as a spec ({err}); --resume continues "
                         "the spec saved in the checkpoint: restore the file") from None
    changed = differences(spec.model_dump(mode="json"), written.model_dump(mode="json"))
    if changed:
        raise UsageError(f"{str(path)!r} differs from the spec this run was trained with (at {', '.join(changed[:4])}); "
                         "--resume continues the checkpoint's spec: restore the file, or train the edited "
                         "spec into a new folder")


def differences(a, b, path: str = "") -> list[str]:
    """The dotted paths at which two nested dicts/lists of plain values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in dict.fromkeys([*a, *b])
                for p in differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "(top)"]
