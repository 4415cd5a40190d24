"""One trial's life in the loop: ask, keep alive, sample its rates, train it, report, settle it.

Each trial stores its resolved rates in one user attribute (``lrsearch.trial``) so readers never
reconstruct them from the sampled parameters. Its training seed is ``[study] seed`` plus its
number, batched or not.
"""

from __future__ import annotations

import os
import socket
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from lrsearch import _optuna_compat as compat
from lrsearch.errors import LrsearchError
from lrsearch.schema import TRIAL_ATTR
from lrsearch.search.context import _Loop
from lrsearch.search.fate import _settle, _Slot, _TrialLost
from lrsearch.search.liveness import _Heartbeat
from lrsearch.search.results import TrialOutcome
from lrsearch.search.signals import _StopSignals
from lrsearch.space import Sample
from lrsearch.training import Report, TrainResult

_HOST = socket.gethostname()


def _run_one(
    loop: _Loop,
    stop: _StopSignals,
    beat: _Heartbeat,
    current: list[optuna.Trial],
) -> TrialOutcome:
    current.clear()
    trial = loop.study.ask()
    current.append(trial)
    beat.track(compat.trial_id(trial), trial.number)
    outcome, error = _train_one(loop, stop, _Slot(trial, time.perf_counter()))
    if error is not None:
        raise error
    return outcome


def _sample(loop: _Loop, trial: optuna.Trial) -> Sample:
    """The trial's rates, stored with it (``lrsearch.trial``) before it trains."""
    sample = loop.prepared.space.sample(trial)
    loop.store.set_new_trial_user_attr(
        compat.trial_id(trial),
        TRIAL_ATTR,
        {
            "lrs": sample.lrs,
            "weight_decay": sample.weight_decay,
            "host": _HOST,
            "pid": os.getpid(),
        },
    )
    return sample


def _seed(loop: _Loop, trial: optuna.Trial) -> int:
    """The trial's training seed (initial weights, data order), batched or not."""
    return (loop.prepared.spec.study.seed or 0) + trial.number


def _reporter(loop: _Loop, stop: _StopSignals, slot: _Slot) -> Report:
    """The trial's ``report``: stores each evaluation and raises ``TrialPruned`` when the pruner
    says so."""
    trial = slot.trial
    two_objectives = loop.two_objectives

    def report(step: int, value: float) -> None:
        slot.last_step = max(slot.last_step, step)
        if two_objectives:
            return  # Optuna takes no intermediate values (and prunes nothing) with two
        start = time.perf_counter()
        with stop.writing():
            try:
                trial.report(value, step)
                prune = trial.should_prune()
            except UpdateFinishedTrialError as e:
                raise _TrialLost from e
            finally:
                loop.timing.reports += time.perf_counter() - start
        if prune:
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")

    return report


def _train_one(
    loop: _Loop, stop: _StopSignals, slot: _Slot
) -> tuple[TrialOutcome, LrsearchError | None]:
    """Sample (unless sampled already) and train an asked trial alone, then decide its fate."""
    prepared = loop.prepared
    result: TrainResult | BaseException
    try:
        if slot.sample is None:
            slot.sample = _sample(loop, slot.trial)
        report = _reporter(loop, stop, slot)
        start = time.perf_counter()
        try:
            with stop.training():
                result = loop.trainer.train_one(
                    prepared.task,
                    prepared.groups,
                    slot.sample,
                    prepared.spec.train,
                    device=loop.device,
                    seed=_seed(loop, slot.trial),
                    report=report,
                )
        finally:
            loop.timing.trainer += time.perf_counter() - start
    except (KeyboardInterrupt, Exception) as e:
        result = e
    return _settle(loop, slot, result)
