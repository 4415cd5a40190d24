"""A trial's fate: what became of it, told to Optuna in one place, :func:`_finish`.

============  ==============  ================================================================
outcome       Optuna state    why
============  ==============  ================================================================
complete      COMPLETE        trained to the end; its value is the last evaluation
pruned        PRUNED          the pruner stopped it at an evaluation
diverged      PRUNED          NaN/inf loss; NaN is reported at that step so TPE ranks it worst
                              among trials that got as far (a FAIL would be ignored by TPE, and
                              it would sample the same cliff again)
failed        FAIL            out of memory, or the task raised; the reason is stored
interrupted   FAIL            Ctrl-C / SIGTERM, or the database unreachable for the whole retry
                              limit; the study stays intact and can be resumed, the trial does
                              not count against the budget, and its parameters are queued again
                              (the next ``run`` or any worker re-runs them first)
lost          FAIL            (seen by the worker only) another worker found no heartbeat of
                              the trial for ``grace_period`` seconds and failed it; this worker
                              drops it and goes on (a trial's ``tell`` never crashes a worker)
============  ==============  ================================================================

A trial that "completes" with a NaN/inf value is diverged too (Optuna refuses to complete it).
:func:`lrsearch.schema.failure_outcome` and :func:`~lrsearch.schema.value_outcome` are these rules
for a training's end alone, which the retrainings of ``verify`` and ``confirm`` apply too.

:func:`_settle` turns what a training gave (a result, or the exception that ended it) into one of
these; every path of the loop, one trial or a batch, goes through it.
"""

from __future__ import annotations

import math
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from lrsearch import _optuna_compat as compat
from lrsearch.errors import LrsearchError, StorageUnavailable, TaskError, TrialFailure
from lrsearch.schema import OUTCOME_ATTR, REASON_ATTR, Outcome, failure_outcome, value_outcome
from lrsearch.search.context import _Loop
from lrsearch.search.liveness import _lost, _queue_again
from lrsearch.search.results import TrialOutcome
from lrsearch.space import Sample
from lrsearch.training import TrainResult


class _TrialLost(Exception):
    """The trial in training was failed by another worker's sweep."""


class _Slot:
    """An asked trial on its way to :func:`_finish`: its sample once drawn, when it started, and
    the last step it reported (a diverged trial's NaN is reported one past it)."""

    __slots__ = ("last_step", "sample", "start", "trial")

    def __init__(self, trial: optuna.Trial, start: float) -> None:
        self.trial = trial
        self.start = start
        self.sample: Sample | None = None
        self.last_step = -1


def _settle(
    loop: _Loop, slot: _Slot, result: TrainResult | BaseException
) -> tuple[TrialOutcome, LrsearchError | None]:
    """The trial's outcome from what its training gave, a result or the exception that ended it,
    told through :func:`_finish`; and the error that must stop the search after it (the task's
    bug), if any."""
    trial, sample, start = slot.trial, slot.sample, slot.start
    if isinstance(result, TrainResult):
        assert sample is not None
        cost = loop.prepared.cost(result, sample) if loop.two_objectives else None
        outcome = _finish(
            loop,
            trial,
            sample,
            start,
            Outcome.COMPLETE,
            value=result.value,
            step=slot.last_step + 1,
            cost=cost,
        )
        return outcome, None
    if isinstance(result, (_TrialLost, UpdateFinishedTrialError)):
        return _lost(trial, sample, start, loop.grace), None
    if isinstance(result, optuna.TrialPruned):
        return _finish(loop, trial, sample, start, Outcome.PRUNED, reason=str(result) or None), None
    if isinstance(result, TrialFailure):
        kind = failure_outcome(result.diverged)
        step = slot.last_step + 1
        return _finish(loop, trial, sample, start, kind, reason=result.reason, step=step), None
    if isinstance(result, KeyboardInterrupt):
        return _finish(loop, trial, sample, start, Outcome.INTERRUPTED, reason="interrupted"), None
    if isinstance(result, StorageUnavailable):
        # Not the configuration's fault: stored interrupted and queued again, once the database
        # answers (within the limit again); else it stays RUNNING and a sweep queues it again.
        reason = "interrupted: the database was unreachable"
        return _finish(loop, trial, sample, start, Outcome.INTERRUPTED, reason=reason), result
    if isinstance(result, LrsearchError):
        return _finish(loop, trial, sample, start, Outcome.FAILED, reason=str(result)), result
    if not isinstance(result, Exception):  # SystemExit and the like are never caught
        raise result
    reason = f"{type(result).__name__}: {result}"
    outcome = _finish(loop, trial, sample, start, Outcome.FAILED, reason=reason)
    error = TaskError(
        f"trial {trial.number} failed in the task's code ({reason}); the trial is stored as "
        "failed and the study kept; fix the task (--debug shows the traceback) and run again"
    )
    error.__cause__ = result  # `raise error from result`, raised later
    return outcome, error


def _finish(
    loop: _Loop,
    trial: optuna.Trial,
    sample: Sample | None,
    start: float,
    outcome: Outcome,
    *,
    value: float | None = None,
    reason: str | None = None,
    step: int = 0,
    cost: float | None = None,
) -> TrialOutcome:
    """Tell Optuna the trial's fate; the one place that decides it.

    ``step`` is where a diverged trial's NaN is reported: one past its last report. ``cost`` is
    the second objective of a study with ``[study] cost``.
    """
    if outcome is Outcome.COMPLETE:
        try:
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            outcome, reason = Outcome.FAILED, f"the trainer returned {value!r}, not a number"
            value = None
        else:
            judged, why = value_outcome(value)
            if judged is not Outcome.COMPLETE:
                # Optuna refuses to complete a trial with NaN/inf: a divergence the trainer missed.
                outcome, reason, value = judged, why, None
    state = TrialState[outcome.optuna_state]
    try:
        if outcome is not Outcome.COMPLETE:
            trial.set_user_attr(OUTCOME_ATTR, outcome.value)
        if reason and outcome is not Outcome.PRUNED:
            trial.set_user_attr(REASON_ATTR, reason)
        two = loop.two_objectives
        if outcome is Outcome.DIVERGED and not two:
            # NaN as the last intermediate value: TPE ranks it worst among trials that got as far.
            # (A two-objective trial takes no reports: it stays PRUNED without a value.)
            trial.report(math.nan, step)
        told_values: float | list[float] | None = None
        if state == TrialState.COMPLETE:
            assert value is not None
            told_values = [value, float(cost if cost is not None else math.nan)] if two else value
        told = compat.tell(loop.study, trial, told_values, state)
    except UpdateFinishedTrialError:
        told = None
    if told != state:  # another worker's sweep failed it first
        return _lost(trial, sample, start, loop.grace)
    if outcome is Outcome.INTERRUPTED:
        _queue_again(loop.study, trial, lost=False, max_losses=loop.liveness.max_losses)
    return TrialOutcome(
        number=trial.number,
        outcome=outcome.value,
        value=value,
        lrs=dict(sample.lrs) if sample else {},
        seconds=time.perf_counter() - start,
        reason=reason,
    )
