"""The trainer the search uses: one trial at a time, or K stacked, with the state they share.

:class:`Trainer` is the one interface the search loop calls (``train_one``, ``train_many``), so a
test or a benchmark injects another the same way. It owns what trials of a process share: the
prefix cache, the count of batches per epoch of each task, and the notes already logged; a fresh
``Trainer`` starts with none of them (no module-level state to reset by hand).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import torch

from lrsearch.errors import TrialFailure
from lrsearch.groups import LayerGroups
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import Task
from lrsearch.training import stacked as _stacked
from lrsearch.training.common import EpochLengths, Report, TrainResult, as_device, oom_text
from lrsearch.training.prefix import AutoChoice, CacheInfo, FeatureCache
from lrsearch.training.single import Trial

_log = logging.getLogger("lrsearch")


class TrainerLike(Protocol):
    """What the search loop needs of a trainer."""

    def train_one(
        self,
        task: Task,
        groups: LayerGroups,
        sample: Sample,
        cfg: TrainSection,
        *,
        device: torch.device | str | None = None,
        seed: int = 0,
        report: Report | None = None,
    ) -> TrainResult: ...

    def train_many(
        self,
        task: Task,
        groups: LayerGroups,
        samples: Sequence[Sample],
        cfg: TrainSection,
        *,
        device: torch.device | str | None = None,
        seeds: Sequence[int],
        reports: Sequence[Report | None],
    ) -> list[TrainResult | BaseException]: ...


class Trainer:
    """Trains trials; holds the prefix cache and the epoch counts its trials share."""

    def __init__(self) -> None:
        self.cache = FeatureCache()
        self.auto = AutoChoice()  # prefix_cache = "auto": per prefix, cached or not as measured
        self.epoch_lengths = EpochLengths()
        self.told: set[str] = set()  # why the prefix cache did not apply, logged once each

    def cache_info(self) -> CacheInfo:
        """Hits, misses, entries and bytes of this trainer's prefix cache."""
        return self.cache.info()

    def clear_cache(self) -> None:
        """Empty this trainer's prefix cache (the disk copies stay)."""
        self.cache.clear()

    def train_one(
        self,
        task: Task,
        groups: LayerGroups,
        sample: Sample,
        cfg: TrainSection,
        *,
        device: torch.device | str | None = None,
        seed: int = 0,
        report: Report | None = None,
    ) -> TrainResult:
        """Train a fresh model of ``task`` with ``sample``'s per-group rates; its final metric.

        Args:
            task: What to train.
            groups: The layer groups, resolved on a model of the same task.
            sample: ``{group: lr}`` (0 = frozen) and weight decay.
            cfg: The ``[train]`` section.
            device: A torch device, ``"auto"`` or ``None`` (CUDA when present).
            seed: Seeds model initialisation and data order.
            report: Called as ``report(step, value)`` after each evaluation; may raise to stop
                the trial.

        Returns:
            The last evaluation's value and what the trial cost.

        Raises:
            TrialFailure: The trial diverged (NaN/inf) or ran out of GPU memory.
        """
        dev = as_device(device)
        start = time.perf_counter()
        trial: Trial | None = None
        oom = ""
        try:
            trial = Trial(self, task, groups, sample, cfg, dev, seed)
            ran = time.perf_counter()
            value, steps, evaluations = trial.run(report)
            if trial.auto_key is not None:
                said = self.auto.record(
                    trial.auto_key,
                    trial.features is not None,
                    (time.perf_counter() - ran) / max(steps, 1),
                )
                if said:
                    _log.info(
                        "prefix cache (auto) for the frozen prefix (%s): %s",
                        ", ".join(trial.prefix),
                        said,
                    )
            return TrainResult(
                value,
                steps,
                evaluations,
                time.perf_counter() - start,
                str(dev),
                trial.precision,
                frozen_prefix=len(trial.prefix),
                prefix_cached=trial.features is not None,
            )
        except torch.cuda.OutOfMemoryError as e:
            # Raised below, outside this block: the OOM traceback holds frames that hold GPU
            # tensors.
            oom = oom_text(e)
        finally:
            # Drop the model and optimizer before the next trial allocates its own.
            del trial
            emptied = ""
            if oom and self.cache.info().entries:
                # Cached prefix outputs live on the trial's device: memory the next trial may need.
                self.cache.clear()
                emptied = "; the prefix cache was emptied to free its memory"
            if dev.type == "cuda" and oom:
                gc.collect()
                torch.cuda.empty_cache()
        raise TrialFailure(
            f"CUDA out of memory at [train] batch_size = {cfg.batch_size}; lower it or use a "
            f"smaller model ({oom}){emptied}"
        )

    def train_many(
        self,
        task: Task,
        groups: LayerGroups,
        samples: Sequence[Sample],
        cfg: TrainSection,
        *,
        device: torch.device | str | None = None,
        seeds: Sequence[int],
        reports: Sequence[Report | None],
    ) -> list[TrainResult | BaseException]:
        """Train ``len(samples)`` trials together, each as :meth:`train_one` would.

        The trials' models are stacked and stepped as one under ``torch.func.vmap``
        (``lrsearch.training.stacked``); trials whose every group is frozen only evaluate, one at a
        time, after the others.

        Args:
            task: What to train.
            groups: The layer groups, resolved on a model of the same task.
            samples: Each trial's ``{group: lr}`` (0 = frozen) and weight decay.
            cfg: The ``[train]`` section, shared by all trials.
            device: A torch device, ``"auto"`` or ``None`` (CUDA when present).
            seeds: Each trial's seed (model initialisation and data order).
            reports: Each trial's ``report(step, value)`` callback, or ``None``; one that raises
                stops its trial alone.

        Returns:
            One entry per trial, in order: its ``TrainResult``, or the exception that ended it
            (``TrialFailure`` on divergence or out of memory, or whatever its report raised).

        Raises:
            BatchingUnsupported: The trials cannot train stacked (raised before any trial trains
                or reports).
            GroupError: A sample's rates do not name exactly the groups.
        """
        return _stacked.train_many(
            self, task, groups, samples, cfg, device=device, seeds=seeds, reports=reports
        )
