"""What the one search loop needs, from ``run`` or ``worker``: :class:`_Loop`, handed down to every
step of a trial (training, its fate, batches), and the trainer it trains with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from lrsearch.search.liveness import Liveness
from lrsearch.search.results import OnTrial
from lrsearch.storage import ResilientStorage
from lrsearch.training import DEFAULT, TrainerLike, TrainResult
from lrsearch.training.prepare import Prepared

TrainFn = Callable[..., TrainResult]


class _Timing:
    """Seconds in the trainer, and of them in the trials' reports (storage and pruner)."""

    def __init__(self) -> None:
        self.trainer = self.reports = 0.0


@dataclass(frozen=True)
class _Loop:
    """What the one search loop needs, from ``run`` or ``worker``."""

    study: optuna.Study
    store: ResilientStorage
    prepared: Prepared
    device: Any
    budget: int
    limit: float | None
    trainer: TrainerLike
    on_trial: OnTrial | None
    liveness: Liveness = field(default_factory=Liveness)
    # Why a batch first fell back to one trial at a time (then logged as a warning), if one did.
    fell_back: list[str] = field(default_factory=list)
    timing: _Timing = field(default_factory=_Timing)

    @property
    def grace(self) -> int:
        return self.prepared.spec.study.grace_period

    @property
    def two_objectives(self) -> bool:
        """``[study] cost``: metric and cost are told, and Optuna takes no reports."""
        return len(self.study.directions) > 1


class _OneByFunction:
    """A trainer whose ``train_one`` is a given function; ``train_many`` is the base trainer's."""

    def __init__(self, train_fn: TrainFn, base: TrainerLike) -> None:
        self.train_one = train_fn
        self.train_many = base.train_many


def _trainer(trainer: TrainerLike | None, train_fn: TrainFn | None) -> TrainerLike:
    base = trainer if trainer is not None else DEFAULT
    return base if train_fn is None else _OneByFunction(train_fn, base)
