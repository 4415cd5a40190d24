"""The loop of ``run`` and ``worker``: sweep, count, ask, train, tell, until the budget is met.

**One budget for all workers.** ``n_trials`` counts the study's finished trials (complete, pruned
and failed), whichever worker ran them, except a trial stopped by an interrupt and a trial queued
again after its worker was lost (its re-run counts instead). Before each trial a worker reads the
study: it starts a trial while ``counted + running + queued < n_trials``, or while a queued trial
(a re-run) waits; when the trials other workers are running would meet the budget, it waits for
them (a lost one is re-run by whoever is still there); it stops once ``counted >= n_trials``. Only
workers that read the study at the same moment can start more than the budget leaves, so the study
ends with at most ``n_trials + workers - 1`` counted trials, and exactly ``n_trials`` unless such a
race happened.

SIGTERM and SIGINT interrupt the trial in training at once; anywhere else (a storage write, a
sweep, a wait for the database) the worker stops at its next step, so a write is never cut in
half, and more signals change nothing (:mod:`lrsearch.search.signals`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrsearch.pick import best, metric
from lrsearch.schema import Outcome
from lrsearch.search.batch import _run_batch
from lrsearch.search.context import _Loop
from lrsearch.search.liveness import _fail_if_running, _Heartbeat, _Looker
from lrsearch.search.results import SearchSummary, TrialOutcome
from lrsearch.search.signals import _StopSignals
from lrsearch.search.trial import _run_one
from lrsearch.storage import mask_url, trial_lrs


def _summary(loop: _Loop, name: str, url: str, *, resumed: bool) -> SearchSummary:
    return SearchSummary(
        study=name,
        storage=mask_url(url),
        direction=loop.prepared.direction,
        budget=loop.budget,
        resumed=resumed,
        already_finished=0,
    )


def _search(loop: _Loop, summary: SearchSummary) -> SearchSummary:
    """The loop of ``run`` and ``worker``: sweep, count, ask, train, tell, until the budget."""
    study = loop.study
    stop = _StopSignals()
    current: list[optuna.Trial] = []  # the trial in flight, for an interrupt that lands outside it
    start = time.perf_counter()
    look = _Looker(
        study,
        loop.store,
        budget=loop.budget,
        grace=loop.grace,
        interval=loop.prepared.spec.study.heartbeat_interval,
        settings=loop.liveness,
    )
    loop.store.should_stop = lambda: stop.requested  # a signal ends a wait for the database
    # Installed until the very end: a signal that comes late is only noted, never raised in the
    # search's last writes (nor in a garbage collector's callback, as a printed traceback).
    with stop.installed():
        try:
            with (
                _cleaned_up(loop, summary, current),
                _Heartbeat(loop.store, loop.prepared.spec.study.heartbeat_interval) as beat,
            ):
                count = look(sweep=True)  # also of the trials of workers that died before this one
                summary.already_finished = count.counted
                _update_best(summary, study)  # once here, then from this run's own results
                while not stop.requested and not (
                    loop.limit is not None and time.perf_counter() - start >= loop.limit
                ):
                    if not count.start_another(loop.budget):
                        if count.counted >= loop.budget:
                            break
                        # The trials other workers are running would meet the budget: wait for them
                        # (and re-run one of them if its worker is lost).
                        stop.wait(loop.liveness.poll_s)
                        count = look()
                        continue
                    if loop.prepared.spec.train.batch_trials > 1:
                        outcomes = _run_batch(loop, stop, beat, current, count)
                        # all of them recorded
                        stops = [_record(loop, summary, o) for o in outcomes]
                        if any(stops):
                            break
                        count = look()
                        continue
                    try:
                        outcome = _run_one(loop, stop, beat, current)
                    finally:
                        beat.track(None)
                    if _record(loop, summary, outcome):
                        break
                    count = look()
                summary.interrupted = stop.requested or summary.count("interrupted") > 0
                if not stop.requested:  # a stop asked is not delayed by a sweep
                    # before leaving: a trial lost meanwhile is failed, queued again
                    look(sweep=True)
        finally:
            summary.seconds = time.perf_counter() - start
            summary.training_seconds = loop.timing.trainer - loop.timing.reports
            loop.store.release()
        _update_best(summary, study)  # other workers may have found better meanwhile
    return summary


@contextmanager
def _cleaned_up(loop: _Loop, summary: SearchSummary, current: list[optuna.Trial]) -> Iterator[None]:
    """A KeyboardInterrupt that lands outside training (from ``on_trial``, or with no handler
    installed: not the main thread) leaves no trial of ours RUNNING. Inside the installed handler,
    so that more signals meanwhile are only noted."""
    try:
        yield
    except KeyboardInterrupt:
        summary.interrupted = True
        for trial in current:
            _fail_if_running(loop.study, trial, max_losses=loop.liveness.max_losses)


def _record(loop: _Loop, summary: SearchSummary, outcome: TrialOutcome) -> bool:
    """Note a trial's outcome in the summary and tell ``on_trial``; whether the search stops."""
    summary.outcomes.append(outcome)
    if outcome.outcome == Outcome.INTERRUPTED:
        return True
    if outcome.outcome == Outcome.COMPLETE:
        _note_best(summary, outcome)
    if loop.on_trial is not None and outcome.outcome != "lost":
        loop.on_trial(outcome, summary)
    return False


def _update_best(summary: SearchSummary, study: optuna.Study) -> None:
    # Not study.best_trial: it refuses two-objective studies, and its choice among equal values
    # depends on the database's row order; ours is the earliest.
    top = best(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        maximize=summary.direction == "maximize",
    )
    if top is None:  # no complete trial yet
        return
    summary.best_number = top.number
    summary.best_value = metric(top)
    summary.best_lrs = trial_lrs(top)


def _note_best(summary: SearchSummary, outcome: TrialOutcome) -> None:
    """Weigh this run's complete trial against the summary's best, by the one rule of
    :func:`lrsearch.pick.best` (the better metric; of equal ones, the earlier trial)."""
    assert outcome.value is not None
    contenders = [_standing(outcome.number, outcome.value)]
    if summary.best_number is not None and summary.best_value is not None:
        contenders.append(_standing(summary.best_number, summary.best_value))
    top = best(contenders, maximize=summary.direction == "maximize")
    if top is not None and top.number == outcome.number:
        summary.best_number = outcome.number
        summary.best_value = outcome.value
        summary.best_lrs = dict(outcome.lrs)


def _standing(number: int, value: float) -> FrozenTrial:
    """A complete trial as the summary knows it, its number and metric, for :func:`best`."""
    return FrozenTrial(
        number=number,
        state=TrialState.COMPLETE,
        value=value,
        datetime_start=None,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
