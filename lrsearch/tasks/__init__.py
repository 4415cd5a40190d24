"""The ``Task`` protocol and how a task is named in a study file.

A task is what a trial trains: a fresh model (pretrained weights loaded), one epoch of training
batches, the validation batches, a loss, and a metric with its direction. A study file names a
task as ``"package.module:function"``; the function is called with the file's ``[task] kwargs``
and returns a task.

Example:
    >>> task = load_task("lrsearch.tasks.digits:digits_transfer", {"n_train": 200})
    >>> model = task.build_model()
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError

Batch = Any
"""A tensor, or a tuple/list/dict of tensors; the trainer moves it to the trial's device."""


@runtime_checkable
class Task(Protocol):
    """What a trial trains and how it is scored."""

    metric: str
    direction: Literal["maximize", "minimize"]

    def build_model(self) -> nn.Module:
        """A fresh model on the CPU, pretrained weights loaded; called once per trial."""
        ...

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterable[Batch]:
        """One epoch of training batches, shuffled with ``generator``."""
        ...

    def val_batches(self, batch_size: int) -> Iterable[Batch]:
        """The validation batches, in a fixed order."""
        ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar training loss of ``model`` on ``batch``."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> float:
        """The metric over ``batches``; called in eval mode under ``torch.no_grad``."""
        ...


@dataclass
class TensorClassificationTask:
    """A classification task over in-memory tensors, scored by accuracy.

    Args:
        model_fn: Returns a fresh model (pretrained weights loaded) mapping ``x`` to logits.
        x_train, y_train, x_val, y_val: Inputs and integer labels.
    """

    model_fn: Callable[[], nn.Module]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    metric: str = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    info: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        return self.model_fn()

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(len(self.x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.x_val), batch_size):
            yield self.x_val[start : start + batch_size], self.y_val[start : start + batch_size]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).float(), y)

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> float:
        correct = total = 0
        for x, y in batches:
            correct += int((model(x).argmax(dim=-1) == y).sum())
            total += len(y)
        return correct / max(total, 1)


def load_task(entry: str, kwargs: dict[str, Any] | None = None) -> Task:
    """Import ``"package.module:function"`` and call it with ``kwargs`` to get a task.

    Raises:
        TaskError: The entry cannot be imported or called, or what it returns is not a task.
    """
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(
            f"task entry {entry!r} must look like 'package.module:function' "
            "(e.g. 'lrsearch.tasks.digits:digits_transfer')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(
            f"cannot import task module {module_name!r} of entry {entry!r}: {e}; "
            "install its package or fix [task] entry"
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"module {module_name!r} has no callable {attr!r}; fix [task] entry")
    try:
        task = factory(**(kwargs or {}))
    except TypeError as e:
        raise TaskError(f"calling task {entry!r} with kwargs {kwargs or {}} failed: {e}") from e
    missing = [
        name
        for name in (
            "metric",
            "direction",
            "build_model",
            "train_batches",
            "val_batches",
            "loss",
            "evaluate",
        )
        if not hasattr(task, name)
    ]
    if missing:
        raise TaskError(
            f"task {entry!r} returned {type(task).__name__} without {', '.join(missing)}"
        )
    if task.direction not in ("maximize", "minimize"):
        raise TaskError(
            f"task {entry!r} has direction {task.direction!r}; it must be 'maximize' or 'minimize'"
        )
    return task


def move_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with every tensor in it on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
