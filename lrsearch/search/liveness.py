"""Workers that die: heartbeats, sweeps of lost trials, and their configurations queued again.

While a trial trains, a thread of the worker writes its heartbeat every ``[study]
heartbeat_interval`` seconds (the first one at once; :class:`_Heartbeat`). Every worker sweeps the
study when it starts, before its trials (at most once per heartbeat interval: a trial cannot go
stale faster), while it waits and before it exits (:class:`_Looker`): a RUNNING trial whose last
heartbeat is older than ``[study] grace_period`` seconds is failed with reason ``"worker lost"``
and its parameters are queued again once (``lrsearch.retry_of`` names the trial a re-run replaces;
a re-run that loses its worker too stays failed). A RUNNING trial that never had a heartbeat (its
worker died in the few milliseconds between creating it and the first heartbeat) is swept
``orphan_after_s`` (:class:`Liveness`) seconds after it started. A lost trial that was never
sampled (its worker died between ``ask`` and its rates) has no configuration to lose: it is stored
interrupted, and does not count.

The worker whose trial was swept behind its back finds out at its next write and drops the trial
(:func:`_lost`): a trial's ``tell`` never crashes a worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lrsearch import _optuna_compat as compat
from lrsearch.schema import (
    LOSSES_ATTR,
    LOST_REASON,
    OUTCOME_ATTR,
    REASON_ATTR,
    RETRY_OF_ATTR,
    BudgetCount,
    Outcome,
)
from lrsearch.search.results import TrialOutcome
from lrsearch.space import Sample
from lrsearch.storage import ResilientStorage

_log = logging.getLogger("lrsearch")

# The reason of a lost trial that was never sampled (not counted: no configuration was lost).
_UNSAMPLED = "worker lost before the trial was sampled"


@dataclass(frozen=True)
class Liveness:
    """How a worker watches for lost trials, beyond the study's ``heartbeat_interval`` and
    ``grace_period``. The defaults suit every study; tests shorten them (``run_search(...,
    liveness=Liveness(orphan_after_s=0.0))``)."""

    # How often a worker with nothing to start looks again while other workers finish the budget.
    poll_s: float = 1.0
    # A RUNNING trial that never had a heartbeat is failed this long after it started: long enough
    # for clocks of different machines to disagree (its start time is the worker's clock).
    orphan_after_s: float = 600.0
    # A configuration whose worker died is re-run this many times; after that its trial stays
    # failed (a configuration that kills its worker, e.g. by exhausting memory, must not kill them
    # all).
    max_losses: int = 1


class _Looker:
    """Reads the study before each trial: its count always (one query), and its heartbeats with a
    sweep of lost trials once per heartbeat interval (a trial cannot go stale faster), and also
    whenever the count alone cannot tell whether to start a trial: near the budget, where a dead
    trial must not hold the others up."""

    def __init__(
        self,
        study: optuna.Study,
        store: ResilientStorage,
        *,
        budget: int,
        grace: int,
        interval: float,
        settings: Liveness,
    ) -> None:
        self.study = study
        self.store = store
        self.budget = budget
        self.grace = grace
        self.interval = interval
        self.settings = settings
        self.next_sweep = 0.0

    def __call__(self, *, sweep: bool = False) -> BudgetCount:
        study_id = compat.study_id(self.study)
        if not sweep and time.monotonic() < self.next_sweep:
            count = self.store.count(study_id)  # every RUNNING trial taken for alive
            if count.start_another(self.budget) or count.counted >= self.budget:
                return count
        self.next_sweep = time.monotonic() + self.interval
        orphan_after = self.settings.orphan_after_s
        look = self.store.look(study_id, grace=self.grace, orphan_after=orphan_after)
        # Just after an outage every heartbeat is old: the other workers get a grace period to
        # beat again before their trials are taken for lost (and re-run for nothing).
        settled = time.monotonic() - self.store.recovered_at > self.grace
        if look.lost and not settled:  # taken for alive meanwhile
            return replace(look.count, running=look.count.running + len(look.lost))
        if look.lost and _sweep(
            self.study, self.store, look.lost, self.grace, max_losses=self.settings.max_losses
        ):
            look = self.store.look(study_id, grace=self.grace, orphan_after=orphan_after)
        return look.count


def _sweep(
    study: optuna.Study,
    store: ResilientStorage,
    lost: Sequence[int],
    grace: int,
    *,
    max_losses: int,
) -> int:
    """Fail the trials whose worker is gone and queue their parameters again; how many."""
    swept = 0
    for trial_id in lost:
        trial = store.get_trial(trial_id)
        # A trial whose worker died before sampling it has no configuration to re-run, and must
        # not use the budget (the budget rule skips interrupted trials).
        sampled = bool(_params(study, trial))
        try:
            # Attributes first: a finished trial takes no more writes.
            outcome, reason = ("failed", LOST_REASON) if sampled else ("interrupted", _UNSAMPLED)
            store.set_trial_user_attr(trial_id, OUTCOME_ATTR, outcome)
            store.set_trial_user_attr(trial_id, REASON_ATTR, reason)
            store.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # its worker finished it after all, or another worker swept it first
        swept += 1
        if not sampled:
            _log.warning(
                "lrsearch: trial %d lost its worker before it was sampled: not counted, nothing "
                "to re-run",
                trial.number,
            )
            continue
        queued = _queue_again(study, trial, lost=True, max_losses=max_losses)
        _log.warning(
            "lrsearch: trial %d lost its worker (no heartbeat for %d s): failed, %s",
            trial.number,
            grace,
            "its parameters queued again"
            if queued
            else f"not queued again (its worker was lost {max_losses + 1} times)",
        )
    return swept


def _params(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """The trial's configuration: its sampled parameters, or, for a queued trial not sampled yet
    (its worker died or was stopped first), the parameters it was queued with."""
    if trial.params:
        return dict(trial.params)
    stored = (
        trial
        if isinstance(trial, FrozenTrial)
        else compat.study_storage(study).get_trial(compat.trial_id(trial))
    )
    return dict(stored.system_attrs.get("fixed_params") or {})


def _queue_again(
    study: optuna.Study, trial: FrozenTrial | optuna.Trial, *, lost: bool, max_losses: int
) -> bool:
    """Queue ``trial``'s parameters as a new trial that replaces it; whether it was queued."""
    losses = int(trial.user_attrs.get(LOSSES_ATTR, 0)) + int(lost)
    params = _params(study, trial)
    if not params or losses > max_losses:
        return False
    # enqueue_trial, not Optuna's RetryHeartbeatStaleTrialCallback: that copies the system
    # attributes, among them the pruner's rung records, which a re-run must earn anew.
    study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: trial.number, LOSSES_ATTR: losses})
    return True


def _fail_if_running(study: optuna.Study, trial: optuna.Trial, *, max_losses: int) -> None:
    store, trial_id = compat.study_storage(study), compat.trial_id(trial)
    if store.get_trial(trial_id).state == TrialState.RUNNING:
        try:
            store.set_trial_user_attr(trial_id, OUTCOME_ATTR, Outcome.INTERRUPTED.value)
            store.set_trial_user_attr(trial_id, REASON_ATTR, Outcome.INTERRUPTED.value)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            return
        _queue_again(study, trial, lost=False, max_losses=max_losses)


class _Heartbeat:
    """Keeps the trials in hand alive (one, or a batch): their heartbeats, every ``interval``
    seconds, from a thread.

    Optuna records heartbeats inside ``study.optimize`` only; an ask/tell loop must do it itself.
    The thread never dies of a storage error (a dead heartbeat thread gets live trials failed): it
    says so and tries again at the next beat.
    """

    def __init__(self, store: ResilientStorage, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._trial_ids: tuple[int, ...] = ()
        # Messages name a trial by its number in the study, as every other line does, not by the
        # database's id.
        self._numbers: dict[int, int] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lrsearch-heartbeat", daemon=True)
        self.failures = 0

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._trial_ids = ()
        self._closing.set()
        self._thread.join(timeout=5.0)  # a beat stuck on a locked database is left to die with us

    def track(self, trial_id: int | None, number: int | None = None) -> None:
        """Beat for ``trial_id`` (trial ``number``) alone from now on (``None``: for no trial)."""
        if trial_id is not None:
            # At once, not one interval later: a trial whose worker dies before its first
            # heartbeat could never be found stale.
            self._store.record_heartbeat(trial_id)
        self._trial_ids = () if trial_id is None else (trial_id,)
        if trial_id is not None and number is not None:
            self._numbers[trial_id] = number

    def add(self, trial_id: int, number: int | None = None) -> None:
        """Beat for ``trial_id`` too from now on, with its first heartbeat at once (a batch)."""
        self._store.record_heartbeat(trial_id)
        self._trial_ids = (*self._trial_ids, trial_id)
        if number is not None:
            self._numbers[trial_id] = number

    def _run(self) -> None:
        failing: set[int] = set()
        while not self._closing.wait(self._interval):
            for trial_id in self._trial_ids:  # a tuple: the main thread swaps it, never edits it
                try:
                    self._store.backend.record_heartbeat(trial_id)
                except Exception as e:
                    self.failures += 1
                    if trial_id not in failing:
                        _log.warning(
                            "lrsearch: heartbeat of trial %s failed (%s); trying again in %g s",
                            self._numbers.get(trial_id, f"id {trial_id}"),
                            type(e).__name__,
                            self._interval,
                        )
                    failing.add(trial_id)
                else:
                    failing.discard(trial_id)


def _lost(trial: optuna.Trial, sample: Sample | None, start: float, grace: int) -> TrialOutcome:
    _log.warning(
        "lrsearch: trial %d was failed by another worker, which saw no heartbeat of it for %d s; "
        "dropped here (a re-run, if queued, goes on elsewhere)",
        trial.number,
        grace,
    )
    return TrialOutcome(
        number=trial.number,
        outcome="lost",
        value=None,
        lrs=dict(sample.lrs) if sample else {},
        seconds=time.perf_counter() - start,
        reason=LOST_REASON,
    )
