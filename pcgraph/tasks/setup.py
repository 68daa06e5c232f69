"""Setting up a run: the data shaped for the graph, the weight optimizer and its learning-rate
schedule, the device."""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph
from pcgraph.data import Arrays, Dataset
from pcgraph.errors import DataError, SpecError, UsageError
from pcgraph.spec import DataSpec, LearningSpec, WeightOptimizerSpec, weight_optimizer_class
from pcgraph.spec.problems import ref_path
from pcgraph.tasks.objective import Objective


def prepare(data: Dataset, spec: DataSpec, graph: CompiledGraph, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalise the images and shape them to the input node: (N, *input_shape) on ``device``;
    (x_train, y_train, x_test, y_test) of an image data set (one input, one target or none)."""
    train, test = columns(data, spec, graph, device)
    x, y = spec.names("input")[0], (spec.names("target") or [None])[0]
    return train[x], train.get(y, data.y_train.to(device)), test[x], test.get(y, data.y_test.to(device))


def columns(data: Dataset | Arrays, spec: DataSpec, graph: CompiledGraph, device) -> tuple[dict, dict]:
    """The train and the test split as ``{reference: (N, ...) tensor}`` on ``device``, for every
    reference in ``data.input`` and ``data.target``: inputs normalised and shaped to their nodes,
    targets as class labels (N,) or values shaped to their nodes. An image data set's images go to
    the input, its labels to the target; an npz data set's arrays go by name (checked here: shapes,
    label ranges)."""
    if isinstance(data, Dataset):
        x, targets = spec.names("input")[0], spec.names("target")
        splits = [{x: data.x_train, **dict.fromkeys(targets, data.y_train)},
                  {x: data.x_test, **dict.fromkeys(targets, data.y_test)}]
        files = (data.name, data.name)
    else:
        splits, files = [data.train, data.test], data.files
    out = ({}, {})
    for field in ("input", "target"):
        for i, (ref, text) in enumerate(zip(spec.refs(field), spec.names(field))):
            shape, at = Objective.shape(graph, ref), ref_path(spec, field, i)
            if isinstance(data, Dataset) and field == "target" and shape != (data.num_classes,):
                raise SpecError(f"{text!r} must have {data.num_classes} neurons ([{data.num_classes}]) for one-hot "
                                f"labels, got shape {list(shape)}", at)
            for split, given, file in zip(out, splits, files):
                x = _normalized(given[text], spec.normalize, data) if field == "input" else given[text]
                split[text] = _fitted(x, shape, at, text, data, file).to(device)
    return out


def _fitted(x: Tensor, shape: tuple[int, ...], at: str, text: str, data, file: str) -> Tensor:
    """``x``, a whole split's values for reference ``text`` (at YAML path ``at``), checked against
    the node's ``shape``: class labels (N,) in 0..C-1 for a node of shape [C] kept as int64, any
    other array shaped to (N, *shape) as floats."""
    if not x.is_floating_point() and x.dtype != torch.bool and x.dim() == 1 and len(shape) == 1:
        bad = (x < 0) | (x >= shape[0])
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise DataError(f"{file}: {text!r} holds class labels for a node of {shape[0]} classes, so 0..{shape[0] - 1}; "
                            f"got {int(x[j])} at index {j}")
        return x.long()
    if x[0].numel() != math.prod(shape):
        if isinstance(data, Dataset):
            raise SpecError(f"{text!r} has shape {list(shape)} ({math.prod(shape)} values) but {data.name} images have "
                            f"{list(x.shape[1:])}", at)
        raise DataError(f"{file}: array {text!r} has {list(x.shape[1:])} per sample ({x[0].numel()} values), and "
                        f"{at} expects {list(shape)} ({math.prod(shape)}); reshape the array or the node")
    x = x.reshape(len(x), *shape)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _normalized(x: Tensor, norm, data) -> Tensor:
    """Images in [0, 1] normalised as ``data.normalize`` says (class labels pass unchanged)."""
    if not x.is_floating_point() or norm == "unit":
        return x
    if norm == "center":
        return (x - 0.5) / 0.5
    channels = x.shape[1] if x.dim() == 4 else 1
    if len(norm.mean) != channels or len(norm.std) != channels:
        raise SpecError(f"expected {channels} per-channel values for {data.name}, got {len(norm.mean)} "
                        f"means and {len(norm.std)} stds", "data.normalize")
    c, shape = len(norm.mean), x.shape  # (N, C, pixels) per channel
    x = x.reshape(len(x), c, -1)
    x = (x - torch.tensor(norm.mean, dtype=x.dtype).reshape(1, c, 1)) / torch.tensor(norm.std, dtype=x.dtype).reshape(1, c, 1)
    return x.reshape(shape)


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
