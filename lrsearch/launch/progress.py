"""A launch's one view of the study: its progress read from the storage, shown as one bar."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    """A study's trials by outcome, as read from its storage."""

    finished: int = 0  # counts against the budget: complete, pruned, failed (not interrupted)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0  # queued, e.g. a dead worker's trial re-queued
    best_number: int | None = None
    best_value: float | None = None


def progress_of(trials: Sequence[Any], direction: str) -> Progress:
    """Count ``trials`` (Optuna frozen trials) by outcome and find the best.

    A trial is finished when it counts against the budget, by the search's own rule
    (``lrsearch.storage.counts_against_budget``): an interrupted trial, or a lost one queued again,
    does not; its re-run does.

    Args:
        trials: A study's trials.
        direction: ``"maximize"`` or ``"minimize"``.
    """
    from optuna.trial import TrialState

    from lrsearch.pick import best, metric
    from lrsearch.storage import counts_against_budget, replaced_numbers

    replaced = replaced_numbers(trials)
    counted = {s: 0 for s in TrialState}
    running = waiting = 0
    for t in trials:
        if counts_against_budget(t, replaced):
            counted[t.state] += 1
        running += t.state == TrialState.RUNNING
        waiting += t.state == TrialState.WAITING
    top = best(trials, maximize=direction == "maximize")
    complete, pruned = counted[TrialState.COMPLETE], counted[TrialState.PRUNED]
    failed = counted[TrialState.FAIL]
    return Progress(
        finished=complete + pruned + failed,
        complete=complete,
        pruned=pruned,
        failed=failed,
        running=running,
        waiting=waiting,
        best_number=None if top is None else top.number,
        best_value=None if top is None else metric(top),
    )


def read_progress(storage: Any, study: str) -> Progress:
    """The progress of ``study`` in an Optuna ``storage`` (one read of all its trials)."""
    study_id = storage.get_study_id_from_name(study)
    direction = storage.get_study_directions(study_id)[0].name.lower()
    return progress_of(storage.get_all_trials(study_id, deepcopy=False), direction)


class ProgressView:
    """The launch's tqdm bar on stderr: finished / budget, with the counts and the best value.

    Args:
        study: The study's name (the bar's label).
        budget: The study's budget of finished trials.
        enabled: Whether to show the bar at all (``False``: every call does nothing).
    """

    def __init__(self, study: str, budget: int, *, enabled: bool) -> None:
        self.study = study
        self.budget = budget
        self.enabled = enabled
        self._bar: Any = None

    def show(self, progress: Progress | None, start_finished: int) -> None:
        """Show ``progress`` (``None``: the storage did not answer); the first call opens the bar
        at ``start_finished``."""
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=self.budget,
                initial=start_finished,
                desc=self.study,
                unit="trial",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if progress is None:
            self._bar.set_postfix(storage="unreachable", refresh=True)
            return
        self._bar.total = max(self.budget, progress.finished)
        self._bar.n = progress.finished
        postfix = {
            "complete": progress.complete,
            "pruned": progress.pruned,
            "failed": progress.failed,
            "running": progress.running,
        }
        if progress.waiting:
            postfix["queued"] = progress.waiting
        shown: dict[str, Any] = dict(postfix)
        shown["best"] = "-" if progress.best_value is None else f"{progress.best_value:.4g}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Close the bar, if it was opened."""
        if self._bar is not None:
            self._bar.close()
