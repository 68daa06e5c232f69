"""Output paths, checked before any work: a command that trains for an hour must not then fail
on a path it could not write, nor replace a user's results unasked.

Every output a command writes (a table, a plot, a run folder) goes through :func:`check_file` or
:func:`check_folder` at the start; an existing file is replaced only with ``force``. Names that come
from a spec (a benchmark's folder per spec) go through :func:`safe_name` first.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from pcgraph.errors import UsageError


def check_file(path: str | os.PathLike, option: str, force: bool = False, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` can be written as a new file: not a folder, ending in one of ``suffixes`` (if
    given), absent unless ``force``, in an existing folder this process can write in."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    if suffixes and out.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}")
    if out.exists() and not force:
        raise UsageError(f"{option} {path}: the file exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {str(out.parent)!r} does not exist")
    _probe(out.parent, option, path)
    return out


def check_folder(path: str | os.PathLike, option: str) -> Path:
    """``path`` is a folder, or can be created as one: not a file, its nearest existing ancestor
    a folder this process can write in. Nothing is created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {path}: is a file, not a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {str(existing)!r} is a file, not a folder")
    _probe(existing, option, path)
    return out


def _probe(folder: Path, option: str, path) -> None:
    """A real write in ``folder``: permission bits alone do not tell (root, read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".pcgraph-", suffix=".probe")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot write in {str(folder)!r}: {err.strerror or err}") from None


def safe_name(name: str) -> str:
    """A file name made from free text (a spec's ``name``): letters, digits, ``.``, ``_`` and
    ``-`` kept, any other run of characters one ``_``; never empty, hidden, ``.`` or ``..``, so it
    cannot leave the folder it is joined to."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned[:100] or "spec"
