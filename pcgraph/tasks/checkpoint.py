"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is one ``checkpoint.pt`` in the run folder holding the spec (YAML text), parameters,
weight-optimizer and schedule state, RNG states, the position in the current epoch and the
metrics so far. It is written to a temporary file and renamed over the old one, so a crash during
the write leaves the previous checkpoint intact. It loads with ``torch.load(weights_only=True)``:
tensors, numbers, strings and containers only, never code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pcgraph.compiler import CompiledGraph, compile
from pcgraph.errors import SpecError, UsageError
from pcgraph.spec import GraphSpec, spec_from_yaml

FILE = "checkpoint.pt"
FORMAT = 1


def save(folder: Path, payload: dict) -> Path:
    """Write ``payload`` to ``folder/checkpoint.pt`` atomically (temporary file, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / FILE, folder / f"{FILE}.tmp"
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def read(folder: str | os.PathLike) -> dict:
    """The checkpoint in ``folder`` (or the file itself); UsageError if missing or not ours."""
    path = Path(folder)
    path = path / FILE if path.is_dir() else path
    if not path.is_file():
        raise UsageError(f"no checkpoint at {str(path)!r}; train with --out DIR to write one")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds
        raise UsageError(f"{str(path)!r} is not a readable pcgraph checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "spec" not in payload:
        raise UsageError(f"{str(path)!r} is not a pcgraph checkpoint (format {FORMAT})")
    return payload


def restore_graph(payload: dict) -> tuple[CompiledGraph, GraphSpec]:
    """Compile the checkpoint's spec and load its parameters; refuse tensors that do not fit it."""
    try:
        spec = spec_from_yaml(payload["spec"])
    except SpecError as err:
        raise UsageError(f"the checkpoint's spec is invalid: {err}") from None
    if payload.get("method") == "bp" and spec.bp.encoder is not None:
        raise UsageError("this run trained the backprop autoencoder (encoder + decoder), not a PC graph; "
                         "load its model.pt into pcgraph.tasks.objective.Backprop(spec, pcgraph.compile(spec))")
    graph = compile(spec)
    load_parameters(graph, payload)
    return graph, spec


def load_parameters(graph: torch.nn.Module, payload: dict) -> None:
    """Put the checkpoint's parameters into ``graph``; UsageError naming the missing, unexpected
    and mis-shaped tensors when they do not fit it."""
    saved, own = payload.get("model"), graph.state_dict()
    if not isinstance(saved, dict):
        raise UsageError("the checkpoint holds no parameters (its 'model' entry is missing)")
    try:
        graph.load_state_dict(saved)
    except RuntimeError as err:  # torch lists the keys over many lines; one line here
        problems = mismatches(own, saved) or str(err).strip().splitlines()[-1].strip()
        raise UsageError(f"the checkpoint's parameters do not match its spec: {problems}") from None


def mismatches(own: dict, saved: dict, show: int = 4) -> str:
    """What differs between two state dicts, one clause per kind ('' if they fit)."""
    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - show} more" if len(keys) > show else ""
        return ", ".join(keys[:show]) + more

    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shaped = [f"{k} (saved {list(saved[k].shape)}, the spec's {list(own[k].shape)})" for k in own
              if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)]
    clauses = [f"{label}: {names(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                               ("mis-shaped", shaped)) if keys]
    return "; ".join(clauses)


def load(folder: str | os.PathLike) -> tuple[CompiledGraph, GraphSpec]:
    """A trained model back from a run folder written by ``pcgraph train --out``: (graph, spec)."""
    return restore_graph(read(folder))
