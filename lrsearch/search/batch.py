"""Batches: ``[train] batch_trials = K`` above 1 trains up to K trials together.

A worker asks up to K trials at once (one at a time while the budget rule lets it start another),
keeps them all alive with heartbeats and trains them together (``Trainer.train_many``,
:mod:`lrsearch.training.stacked`); each trial still has its own seed, reports, pruning and fate
(:func:`lrsearch.search.fate._settle`). Trials that cannot stack are trained one at a time, the
reason logged once. An interrupt interrupts every trial of the batch not yet finished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from lrsearch import _optuna_compat as compat
from lrsearch.errors import LrsearchError
from lrsearch.schema import BudgetCount, Outcome
from lrsearch.search import trial as one_trial  # through the module: tests replace its steps
from lrsearch.search.context import _Loop
from lrsearch.search.fate import _settle, _Slot
from lrsearch.search.liveness import _Heartbeat
from lrsearch.search.results import TrialOutcome
from lrsearch.search.signals import _StopSignals
from lrsearch.space import Sample
from lrsearch.training import BatchingUnsupported, TrainResult

_log = logging.getLogger("lrsearch")


def _run_batch(
    loop: _Loop,
    stop: _StopSignals,
    beat: _Heartbeat,
    current: list[optuna.Trial],
    count: BudgetCount,
) -> list[TrialOutcome]:
    """Ask up to ``[train] batch_trials`` trials, one at a time while the budget rule lets this
    worker start another (``count``: the last look, which must say yes to the first), and train
    them together.

    Raises:
        LrsearchError: The task failed in a way that is a bug in the task, after every trial of the
            batch has its fate.
    """
    current.clear()
    slots: list[_Slot] = []
    try:
        while True:
            trial = loop.study.ask()
            current.append(trial)
            beat.add(compat.trial_id(trial), trial.number)
            slots.append(_Slot(trial, time.perf_counter()))
            # The next look would count this trial running, and one queued trial fewer if there
            # was one (ask takes a queued trial first).
            count = replace(count, running=count.running + 1, waiting=max(count.waiting - 1, 0))
            if (
                len(slots) >= loop.prepared.spec.train.batch_trials
                or stop.requested
                or not count.start_another(loop.budget)
            ):
                break
        outcomes, error = _train_batch(loop, stop, slots)
    finally:
        beat.track(None)
    if error is not None:
        raise error
    return outcomes


def _train_batch(
    loop: _Loop, stop: _StopSignals, slots: list[_Slot]
) -> tuple[list[TrialOutcome], LrsearchError | None]:
    """Sample and train asked trials together (one at a time when they cannot stack), then decide
    each one's fate; the first error that must stop the search, if any."""
    prepared = loop.prepared
    results: list[TrainResult | BaseException | None] = [None] * len(slots)
    try:
        ready: list[int] = []
        samples: list[Sample] = []
        for i, slot in enumerate(slots):
            try:
                slot.sample = one_trial._sample(loop, slot.trial)
            except Exception as e:  # decided as for a trial alone; the others still train
                results[i] = e
            else:
                ready.append(i)
                samples.append(slot.sample)
        if any(r is not None and not isinstance(r, UpdateFinishedTrialError) for r in results):
            # That error stops the search after this batch: train none of the others.
            results = [KeyboardInterrupt() if r is None else r for r in results]
            ready = []
        if ready:
            start = time.perf_counter()
            try:
                with stop.training():
                    trained = loop.trainer.train_many(
                        prepared.task,
                        prepared.groups,
                        samples,
                        prepared.spec.train,
                        device=loop.device,
                        seeds=[one_trial._seed(loop, slots[i].trial) for i in ready],
                        reports=[one_trial._reporter(loop, stop, slots[i]) for i in ready],
                    )
            finally:
                loop.timing.trainer += time.perf_counter() - start
            for i, done in zip(ready, trained, strict=True):
                results[i] = done
    except BatchingUnsupported as e:
        # Raised before any report: the same trials, one at a time (below). Warned once a
        # search: the same cause recurs batch after batch (with other trial numbers).
        _log.log(
            logging.DEBUG if loop.fell_back else logging.WARNING,
            "lrsearch: [train] batch_trials: cannot batch these trials (%s); training them one "
            "at a time",
            e.reason,
        )
        if not loop.fell_back:
            loop.fell_back.append(e.reason)
    except (KeyboardInterrupt, Exception) as e:  # every trial not ended yet ends with it
        results = [e if r is None else r for r in results]
    outcomes: list[TrialOutcome] = []
    error: LrsearchError | None = None
    for slot, result in zip(slots, results, strict=True):
        stopping = error is not None or any(o.outcome == Outcome.INTERRUPTED for o in outcomes)
        if result is not None:
            outcome, failed = _settle(loop, slot, result)
        elif stopping:
            # The search stops after this batch: a trial not trained yet is not trained at all.
            outcome, failed = _settle(loop, slot, KeyboardInterrupt())
        else:
            outcome, failed = one_trial._train_one(loop, stop, slot)
        outcomes.append(outcome)
        error = error or failed
    return outcomes, error
