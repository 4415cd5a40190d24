"""Training trials: one at a time or K stacked, on the CPU or a GPU.

The layer between the search (which decides what to train and stores what came of it) and the
task (which builds the model and its batches):

- ``common``: what both trainers share: device, precision, schedule, the evaluation plan, the
  divergence record, ``TrainResult``.
- ``single``: one trial's model, optimizer and loop.
- ``stacked`` (with ``stacked_optim``): K trials in one ``torch.func.vmap`` step.
- ``prefix``: the frozen prefix run without autograd, and its outputs cached across trials.
- ``evaluate``: a task's metric over batches, one wait per evaluation.
- ``prepare``: a study's task, groups and space, built and checked once (:func:`prepare`).
- ``trainer``: :class:`Trainer`, the interface the search calls (``train_one``, ``train_many``),
  owner of the state trials share (the prefix cache, epoch counts).

``train_trial`` and ``train_batched`` are the default trainer's two methods, for scripts and
notebooks that train without a search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lrsearch.groups import LayerGroups
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import Task
from lrsearch.training.common import (
    Report,
    TrainResult,
    resolve_device,
    resolve_precision,
    schedule_factor,
)
from lrsearch.training.prefix import CacheInfo
from lrsearch.training.stacked import BatchingUnsupported, can_batch
from lrsearch.training.trainer import Trainer, TrainerLike

__all__ = [
    "DEFAULT",
    "BatchingUnsupported",
    "CacheInfo",
    "Report",
    "TrainResult",
    "Trainer",
    "TrainerLike",
    "cache_info",
    "can_batch",
    "clear_cache",
    "resolve_device",
    "resolve_precision",
    "schedule_factor",
    "steps_per_epoch",
    "train_batched",
    "train_trial",
]

DEFAULT = Trainer()
"""The trainer of ``train_trial``/``train_batched`` and of searches given none: its prefix cache
is shared by every trial of the process that uses it."""


def train_trial(
    task: Task,
    groups: LayerGroups,
    sample: Sample,
    cfg: TrainSection,
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
    report: Report | None = None,
) -> TrainResult:
    """One trial with the default trainer: see :meth:`Trainer.train_one`."""
    return DEFAULT.train_one(task, groups, sample, cfg, device=device, seed=seed, report=report)


def train_batched(
    task: Task,
    groups: LayerGroups,
    samples: Sequence[Sample],
    cfg: TrainSection,
    *,
    device: torch.device | str | None = None,
    seeds: Sequence[int],
    reports: Sequence[Report | None],
) -> list[TrainResult | BaseException]:
    """K stacked trials with the default trainer: see :meth:`Trainer.train_many`."""
    return DEFAULT.train_many(
        task, groups, samples, cfg, device=device, seeds=seeds, reports=reports
    )


def steps_per_epoch(task: Task, batch_size: int) -> int:
    """Training batches in one epoch of ``task`` (counted once per task by the default trainer)."""
    return DEFAULT.epoch_lengths(task, batch_size)


def cache_info() -> CacheInfo:
    """Hits, misses, entries and bytes of the default trainer's prefix cache."""
    return DEFAULT.cache_info()


def clear_cache() -> None:
    """Empty the default trainer's prefix cache (the disk copies stay)."""
    DEFAULT.clear_cache()
