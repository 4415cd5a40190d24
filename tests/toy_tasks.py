"""Tiny, fast toy tasks for tests, named in study files as ``"toy_tasks:NAME"``.

``tests/`` is on ``sys.path`` for in-process runs (conftest.py); subprocess runs set ``PYTHONPATH``.
Every model starts from the same weights (a fixed seed stands in for "pretrained"), so trials differ
only by their rates and data order. The toy model has three groups: ``embed``, ``body``, ``head``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrsearch.tasks import TensorClassificationTask

GROUPS = {"embed": ["embed"], "body": ["body"], "head": ["head"]}
N_FEATURES = 4


class ToyNet(nn.Module):
    """Three linear layers, one per group."""

    def __init__(self, hidden: int = 8, n_classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(N_FEATURES, hidden)
        self.body = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(torch.relu(self.embed(x)))))


def _model_fn(hidden: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return ToyNet(hidden)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # linearly separable: a good rate learns it fast
    return x, y


def tiny(
    n_train: int = 64, n_val: int = 64, hidden: int = 8, seed: int = 0
) -> TensorClassificationTask:
    """A two-class problem a few steps of training learn; accuracy, maximized."""
    x_train, y_train = _data(n_train, seed)
    x_val, y_val = _data(n_val, seed + 1)
    return TensorClassificationTask(lambda: _model_fn(hidden), x_train, y_train, x_val, y_val)


class _RaisingTask(TensorClassificationTask):
    """``tiny``, whose loss raises ``error`` on the first call."""

    error: BaseException

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise self.error


def _raising(error: BaseException) -> TensorClassificationTask:
    base = tiny()
    task = _RaisingTask(base.model_fn, base.x_train, base.y_train, base.x_val, base.y_val)
    task.error = error
    return task


def interrupting() -> TensorClassificationTask:
    """``tiny``, whose training is interrupted at its first step as by Ctrl-C."""
    return _raising(KeyboardInterrupt())


def buggy() -> TensorClassificationTask:
    """``tiny`` with a bug in its loss whose message spans several lines."""
    return _raising(ValueError("shapes do not match:\n  got (2, 3)\n  want (3, 2)"))


def exploding_factory() -> TensorClassificationTask:
    """A factory that fails the way user code does (not with a TypeError)."""
    raise RuntimeError("dataset folder /nonexistent is missing")


def not_a_task() -> object:
    """Returns something that is not a task."""
    return object()


class _SleepyTask(TensorClassificationTask):
    """``tiny``, whose every training step sleeps first: a trial of known length, idle CPU."""

    sleep_s: float = 0.0

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        import time

        time.sleep(self.sleep_s)
        return super().loss(model, batch)


def sleepy(sleep_s: float = 0.05, n_train: int = 64) -> TensorClassificationTask:
    """``tiny`` whose training steps sleep ``sleep_s`` each (``n_train / batch_size`` steps an
    epoch), for tests of worker processes: a trial lasts long enough to be killed mid-way."""
    base = tiny(n_train=n_train)
    task = _SleepyTask(base.model_fn, base.x_train, base.y_train, base.x_val, base.y_val)
    task.sleep_s = sleep_s
    return task


def typo_inside(n_train: int = 64) -> TensorClassificationTask:
    """A factory whose own code has a bug that raises TypeError (not a bad keyword argument)."""
    return tiny(n_train=n_train, hidden="8" + 1)  # type: ignore[operator]


THREADS_SEEN: list[int] = []


def thread_recording(n_train: int = 64) -> TensorClassificationTask:
    """``tiny``, appending torch's threads to ``THREADS_SEEN`` as each trial builds its model."""
    base = tiny(n_train=n_train)

    def model_fn() -> nn.Module:
        THREADS_SEEN.append(torch.get_num_threads())
        return base.model_fn()

    return TensorClassificationTask(model_fn, base.x_train, base.y_train, base.x_val, base.y_val)


def cuda_allocated() -> int:
    """Bytes the CUDA caching allocator holds for live tensors, after a collection and a sync."""
    import gc

    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()
