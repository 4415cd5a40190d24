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

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError, TaskSpecError

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


@runtime_checkable
class StagedTask(Task, Protocol):
    """Optional capability of a task: its model is a chain of stages, its examples have indices.

    A task that has it lets the trainer run a frozen prefix of the network (the stages before the
    first trained parameter) without autograd, and, with ``[train] prefix_cache = true``, compute
    that prefix's outputs once per study and reuse them in every trial with the same prefix.

    The rules a task promises by providing these:

    - ``stages(model)`` names modules of ``model`` (``"stem"``, ``"body.0"``, ...) in forward
      order; the model's output is the stages applied one after another. An empty list means the
      task has no stages for this model (the trainer then runs it as a plain task).
    - ``run_prefix(model, batch, upto)`` returns ``batch`` with its inputs replaced by the output
      of stages ``[0, upto)``, and ``rest(model, upto)`` a module (sharing the model's parameters)
      that maps that output to the model's; so ``loss(rest, run_prefix(model, b, upto))`` is
      ``loss(model, b)``, and likewise for ``evaluate``. Every tensor in the returned batch has its
      examples along dimension 0 (the cache stores and gathers it per example).
    - ``train_indices(batch_size, generator)`` yields the example indices (``0..n-1``, each once)
      of the batches that ``train_batches(batch_size, generator)`` yields, drawing the same random
      numbers, so a trial sees the same data order with the cache as without it.
    - ``deterministic_batches``: the same example index gives the same tensors in every epoch and
      trial (no augmentation), and ``val_batches`` yields the same examples in the same order at
      any batch size. Only then may the prefix outputs be cached.
    - ``fingerprint()``: a string that changes whenever the examples change (a hash of the data,
      or of what builds it); ``None`` when the task cannot tell, which keeps the cache in memory,
      keyed by the task object itself.
    """

    deterministic_batches: bool

    def stages(self, model: nn.Module) -> Sequence[str]:
        """Module paths of the model's stages, in forward order."""
        ...

    def run_prefix(self, model: nn.Module, batch: Batch, upto: int) -> Batch:
        """``batch`` with its inputs replaced by the output of stages ``[0, upto)``."""
        ...

    def rest(self, model: nn.Module, upto: int) -> nn.Module:
        """A module computing the model's output from the output of stages ``[0, upto)``."""
        ...

    def train_indices(self, batch_size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
        """The example indices of ``train_batches(batch_size, generator)``, batch by batch."""
        ...

    def fingerprint(self) -> str | None:
        """A digest of the task's examples, or ``None``."""
        ...


@runtime_checkable
class ScoredTask(Task, Protocol):
    """Optional capability of a task: its metric is a sum over examples divided by their count.

    ``score(model, batch)`` returns a tensor ``[sum, count]`` for one batch (for accuracy: the
    correct predictions and the examples), computed on the batch's device; the metric over many
    batches is the total of the sums over the total of the counts (0 when there are none), and
    must equal ``evaluate``'s. The trainer then evaluates without waiting for the GPU after every
    batch, and K stacked trials (``[train] batch_trials``) evaluate their copies together under
    ``torch.func.vmap``: so ``score`` must be vmap-safe (no ``.item()``, ``int()`` or branches on
    values).
    """

    def score(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``[sum, count]`` of the metric over ``batch``'s examples, as a tensor."""
        ...


def scored(task: object) -> ScoredTask | None:
    """``task`` when its ``score`` stands for its ``evaluate``, else ``None``.

    A subclass that overrides ``evaluate`` below the class that defines ``score`` (a
    ``TensorClassificationTask`` with a metric of its own) is scored by its ``evaluate``.
    """
    if not isinstance(task, ScoredTask):
        return None
    mro = type(task).__mro__
    score_owner = next((c for c in mro if "score" in vars(c)), None)
    eval_owner = next((c for c in mro if "evaluate" in vars(c)), None)
    if score_owner is None or eval_owner is None:  # set on the instance: trust it
        return task
    return task if issubclass(score_owner, eval_owner) else None


@runtime_checkable
class AlignedTask(Task, Protocol):
    """Optional capability of a task: batches of different shapes made one shape.

    K stacked trials (``[train] batch_trials``) draw K batches a step, one per trial's data order,
    and stack them. Where a task's batches vary in shape (text cut to its longest sequence),
    ``align(batches)`` returns them padded to one shape, with no change to any result (padding
    masked out).
    """

    def align(self, batches: Sequence[Batch]) -> list[Batch]:
        """``batches`` padded to one shape, in order."""
        ...


@dataclass
class TensorClassificationTask:
    """A classification task over in-memory tensors, scored by accuracy.

    Args:
        model_fn: Returns a fresh model (pretrained weights loaded) mapping ``x`` to logits.
        x_train, y_train, x_val, y_val: Inputs and integer labels.
        stage_paths: Module paths of the model's stages in forward order, when its forward is
            exactly those modules applied one after another (``("stem", "body.0", "head")``);
            gives the task the ``StagedTask`` capability. Empty (the default): no stages.
        deterministic_batches: The batches are the stored tensors as they are (true here; a
            subclass that augments them must set it false).
    """

    model_fn: Callable[[], nn.Module]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    metric: str = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    info: dict[str, Any] = field(default_factory=dict)
    stage_paths: tuple[str, ...] = ()
    deterministic_batches: bool = True

    def build_model(self) -> nn.Module:
        return self.model_fn()

    def train_indices(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for idx in self.train_indices(batch_size, generator):
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

    def score(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        correct = (model(x).argmax(dim=-1) == y).sum()
        return torch.stack([correct.double(), y.new_full((), len(y), dtype=torch.float64)])

    def stages(self, model: nn.Module) -> Sequence[str]:
        return self.stage_paths

    def run_prefix(self, model: nn.Module, batch: Batch, upto: int) -> Batch:
        x, y = batch
        for path in self.stage_paths[:upto]:
            x = model.get_submodule(path)(x)
        return x, y

    def rest(self, model: nn.Module, upto: int) -> nn.Module:
        # The stages stay children of `model` too: the parameters are shared, not copied.
        return nn.Sequential(*(model.get_submodule(p) for p in self.stage_paths[upto:]))

    def fingerprint(self) -> str | None:
        return digest_tensors(self.x_train, self.y_train, self.x_val, self.y_val)


def digest_tensors(*tensors: torch.Tensor) -> str:
    """A hex digest of the tensors' shapes, dtypes and contents (for ``StagedTask.fingerprint``)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_task(
    entry: str, kwargs: dict[str, Any] | None = None, *, folders: Sequence[str | Path] = ()
) -> Task:
    """Import ``"package.module:function"`` and call it with ``kwargs`` to get a task.

    The module is looked for on ``sys.path`` first (installed packages, ``$PYTHONPATH``), then in
    ``folders`` (the study file's folder), then in the working directory; the extra folders are
    searched while the module is imported and the task built, and taken off ``sys.path`` after.

    Args:
        entry: ``"package.module:function"``.
        kwargs: Passed to the function (``[task] kwargs``).
        folders: Folders to search after ``sys.path`` (``run SPEC``: the folder of ``SPEC``).

    Raises:
        TaskError: The entry cannot be imported or called, or what it returns is not a task.
    """
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise TaskSpecError(
            f"task entry {entry!r} must look like 'package.module:function' "
            "(e.g. 'lrsearch.tasks.digits:digits_transfer')"
        )
    with _searched(*folders, Path.cwd()):
        return _load(entry, module_name, attr, kwargs)


@contextmanager
def _searched(*folders: str | Path) -> Iterator[None]:
    """``folders`` at the end of ``sys.path`` (those not on it already) for the ``with`` block."""
    added = []
    for folder in folders:
        text = os.fspath(Path(folder).resolve())
        if text not in sys.path and text not in added:
            added.append(text)
    sys.path.extend(added)
    try:
        yield
    finally:
        for text in added:
            if text in sys.path:
                sys.path.remove(text)


def _load(entry: str, module_name: str, attr: str, kwargs: dict[str, Any] | None) -> Task:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(
            f"cannot import task module {module_name!r} of entry {entry!r}: {e}; install its "
            "package, put it beside the study file or in the working directory, or fix [task] "
            "entry"
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"module {module_name!r} has no callable {attr!r}; fix [task] entry")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check up front
        signature = None
    if signature is not None:
        try:
            signature.bind(**(kwargs or {}))
        except TypeError as e:
            raise TaskSpecError(
                f"task {entry!r} does not take [task] kwargs {kwargs or {}}: {e}; its "
                f"parameters are {signature}"
            ) from e
    try:
        task = factory(**(kwargs or {}))
    except TypeError as e:
        if signature is not None:  # the kwargs fit: the TypeError is the task's own
            raise TaskError(f"task {entry!r} raised TypeError while building: {e}") from e
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
    """``batch`` with every tensor in it on ``device``.

    To a GPU, a CPU tensor goes through pinned memory, so that the copy is queued behind the work
    already on the GPU and the host does not wait for it.
    """
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
