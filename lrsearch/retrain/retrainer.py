"""Retrain stored trials with given seeds: the engine of ``verify`` and ``confirm``.

Torch and the task are imported on the first run that must train: runs already stored are read
back (:mod:`lrsearch.retrain.records`) without either.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import optuna

from lrsearch.errors import TrialFailure
from lrsearch.retrain.records import RunCallback, store_run, stored_runs, verify_attr
from lrsearch.schema import Outcome, failure_outcome, value_outcome
from lrsearch.storage import stored_spec, trial_info
from lrsearch.trust import check_stored_entry

if TYPE_CHECKING:
    from lrsearch.training import TrainResult

__all__ = ["Retrainer"]


class Retrainer:
    """Retrains trials of one study with given seeds, each run stored as soon as it ends.

    Runs already stored for a seed are read back, not trained again. The task is built on the
    first run that trains (stored runs need no task, no torch).
    """

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        study: optuna.Study,
        *,
        device: str | None = None,
        train_fn: Callable[..., TrainResult] | None = None,
        allow_tasks: Sequence[str] = (),
    ) -> None:
        self.storage = storage
        self.study = study
        self.spec = stored_spec(study)
        self.allow_tasks = allow_tasks
        self.device = device
        self.train_fn = train_fn
        self._prepared: Any = None

    def runs(
        self,
        frozen: optuna.trial.FrozenTrial,
        seeds: Sequence[int],
        *,
        role: str = "",
        on_run: RunCallback | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """The trial's run for each seed (in ``seeds``' order) and how many were trained now."""
        info = trial_info(frozen)
        search_seed = self.spec.study.seed or 0
        known = {
            r["seed"]: r for r in stored_runs(self.storage, self.study, verify_attr(frozen.number))
        }
        runs, new = [], 0
        for seed in seeds:
            if seed not in known:
                if self._prepared is None:
                    # Checked before the task is first imported (lrsearch.trust).
                    check_stored_entry(
                        self.spec.task.entry, self.study.study_name, self.allow_tasks
                    )
                    self._prepared = _prepare(self.spec, self.device, self.train_fn)
                run = _train_one(self._prepared, info, seed, self.device)
                known[seed] = run
                new += 1
                store_run(self.storage, self.study, frozen, info, search_seed, run)
                if on_run is not None:
                    on_run(role, frozen.number, run)
            runs.append(known[seed])
        return runs, new


def _prepare(spec: Any, device: str | None, train_fn: Callable[..., TrainResult] | None) -> Any:
    """The task, groups and trainer, built once (torch is imported here, not at import time)."""
    from lrsearch.training import train_trial
    from lrsearch.training.prepare import prepare

    return prepare(spec, device=device), train_fn or train_trial


def _train_one(
    prepared: Any, info: dict[str, Any], seed: int, device: str | None
) -> dict[str, Any]:
    from lrsearch.space import Sample

    setup, train = prepared
    sample = Sample(lrs=dict(info["lrs"]), weight_decay=info["weight_decay"])
    run: dict[str, Any] = {"seed": seed, "value": None, "outcome": "complete", "reason": None}
    try:
        result = train(setup.task, setup.groups, sample, setup.spec.train, device=device, seed=seed)
    except TrialFailure as e:
        # A seed that diverges is evidence too (an unstable config): kept, never raised.
        run.update(outcome=failure_outcome(e.diverged).value, reason=e.reason)
        run.update(seconds=None, device=device or "auto")
    else:
        value = float(result.value)
        outcome, reason = value_outcome(value)
        if outcome is Outcome.COMPLETE:
            run["value"] = value
        else:
            run.update(outcome=outcome.value, reason=reason)
        run.update(seconds=round(result.seconds, 3), device=result.device)
    run["host"] = socket.gethostname()
    run["at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return run
