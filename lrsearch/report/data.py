"""What a report shows, read once from the study (:class:`ReportData`, :func:`collect`).

The numbers come from :mod:`lrsearch.analysis`; the modules above this one only draw them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from lrsearch.analysis import (
    GroupStats,
    Importance,
    complete_rows,
    curves_frame,
    group_importance,
    group_stats,
    outcome_counts,
    ranked_rows,
    searched_ranges,
    study_groups,
    trials_frame,
)
from lrsearch.pick import candidates, pick, rank_seeded
from lrsearch.retrain.records import describe, seed_values
from lrsearch.storage import load_study, open_storage

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, read once from the study."""

    study: str
    direction: str
    groups: list[str]
    trials: pd.DataFrame
    curves: pd.DataFrame
    counts: dict[str, int]
    stats: list[GroupStats]
    importance: Importance
    ranges: dict[str, tuple[float, float]]
    # The best trial as lrsearch.pick chooses it, and how, when the study was confirmed.
    best_number: int | None = None
    ranking: str | None = None

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def complete(self) -> pd.DataFrame:
        return complete_rows(self.trials)

    @property
    def best(self) -> pd.Series | None:
        """The best complete trial's row (ties: the earliest; lrsearch.pick's when it is set)."""
        done = self.complete
        if done.empty:
            return None
        if self.best_number is not None:
            rows = done[done["number"] == self.best_number]
            if not rows.empty:
                return rows.iloc[0]
        return ranked_rows(self.trials, maximize=self.maximize).iloc[0]


def collect(storage: optuna.storages.BaseStorage | str | None, study_name: str) -> ReportData:
    """Read what a report shows from a study.

    Args:
        storage: An Optuna storage or a storage URL (``None``: ``$LRSEARCH_STORAGE``, then the
            default).
        study_name: The study.

    Raises:
        StorageError: The storage cannot be opened.
        StudyNotFoundError: No such study.
        LrsearchError: The study has several objectives.
    """
    if storage is None or isinstance(storage, str):
        storage = open_storage(storage, create=False)
    study = load_study(storage, study_name)
    trials = trials_frame(study)  # also refuses multi-objective studies
    groups = study_groups(study)
    direction = study.directions[0].name.lower()
    ranges = searched_ranges(study, groups)
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    every = study.get_trials(deepcopy=False)
    seeds = seed_values(study, storage)
    seeded = rank_seeded(every, seeds, maximize=maximize)
    best_number = pick(every, maximize=maximize, seeds=seeds).number if candidates(every) else None
    return ReportData(
        study=study_name,
        direction=direction,
        groups=groups,
        trials=trials,
        curves=curves_frame(study),
        counts=outcome_counts(trials),
        stats=group_stats(trials, groups, direction=direction, ranges=ranges),
        importance=group_importance(study, trials, groups),
        ranges=ranges,
        best_number=best_number,
        ranking=describe(seeded) if seeded else None,
    )
