"""Setting up a run: the data shaped for the graph, the weight optimizer and its learning-rate
schedule, the device."""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph
from pcgraph.data import Dataset
from pcgraph.errors import SpecError, UsageError
from pcgraph.spec import DataSpec, LearningSpec, Standardize, WeightOptimizerSpec, weight_optimizer_class
from pcgraph.tasks.objective import Objective


def prepare(data: Dataset, spec: DataSpec, graph: CompiledGraph, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalise the images and shape them to the input node: (N, *input_shape) on ``device``."""
    shape, target = Objective.shape(graph, spec.ref("input")), spec.ref("target")
    norm = spec.normalize
    if isinstance(norm, Standardize):
        channels = data.x_train.shape[1] if data.x_train.dim() == 4 else 1
        if len(norm.mean) != channels or len(norm.std) != channels:
            raise SpecError(f"expected {channels} per-channel values for {data.name}, got {len(norm.mean)} "
                            f"means and {len(norm.std)} stds", "data.normalize")
    out = []
    for x in (data.x_train, data.x_test):
        if x[0].numel() != math.prod(shape):
            raise SpecError(f"{spec.input!r} has shape {list(shape)} ({math.prod(shape)} values) but "
                            f"{data.name} images have {list(x.shape[1:])}", "data.input")
        if isinstance(norm, Standardize):  # (N, C, pixels) per channel
            c = len(norm.mean)
            x = x.reshape(len(x), c, -1)
            x = (x - torch.tensor(norm.mean).reshape(1, c, 1)) / torch.tensor(norm.std).reshape(1, c, 1)
        x = x.reshape(len(x), *shape)
        out.append((x - 0.5) / 0.5 if norm == "center" else x)
    if target is not None:
        got = Objective.shape(graph, target)
        if got != (data.num_classes,):
            raise SpecError(f"{spec.target!r} must have {data.num_classes} neurons ([{data.num_classes}]) for "
                            f"one-hot labels, got shape {list(got)}", "data.target")
    return out[0].to(device), data.y_train.to(device), out[1].to(device), data.y_test.to(device)


def lr_schedule(optimizer: torch.optim.Optimizer, learning: LearningSpec, updates: int):
    """Per-update learning-rate factor: linear warm-up over ``warmup * updates``, then constant or
    a cosine decay that would reach 0 one update after the last."""
    warm = int(learning.warmup * updates)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if learning.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, updates - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)``, refusing unknown names and devices this machine lacks."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; expected cpu or cuda")
    return dev


def weight_optimizer(spec: WeightOptimizerSpec, params, path: str = "learning.optimizer") -> torch.optim.Optimizer:
    """Build the spec's torch.optim optimizer over ``params``; a SpecError at ``path`` (where the
    spec holds it) when torch refuses its options."""
    cls = weight_optimizer_class(spec.kind)
    options = dict(spec.options)
    accepts = inspect.signature(cls).parameters
    if "fused" in accepts and not {"fused", "foreach"} & set(options):
        options["fused"] = True  # one fused kernel per step; the CPU default is a Python loop
    elif "foreach" in accepts and not {"fused", "foreach"} & set(options):
        options["foreach"] = True
    if "weight_decay" in accepts:
        options["weight_decay"] = spec.weight_decay
    elif spec.weight_decay:
        raise SpecError(f"{cls.__name__} has no weight decay; remove weight_decay", f"{path}.weight_decay")
    try:
        return cls(params, lr=spec.lr, **options)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{cls.__name__} rejected these options: {err}", f"{path}.options") from None
