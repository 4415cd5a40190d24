"""Reading finished studies: the studies in a storage, and the best trials of one.

Plain dicts here, so the CLI's ``studies`` and ``best`` stay light; DataFrames come with the trial
tables.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from lrsearch.errors import LrsearchError

# Not from lrsearch.search: that imports torch, and `lrsearch best` should start fast.
from lrsearch.storage import OUTCOME_ATTR, SPEC_ATTR, load_study, trial_info


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study: name, direction, trial counts by outcome, best value, whether lrsearch's.

    A multi-objective study (not lrsearch's, but it may share the database) shows its directions
    joined by commas and no best value.
    """
    rows = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        states = [t.state for t in trials]
        best = None
        if len(s.directions) == 1:
            values = [
                float(t.value)
                for t in trials
                if t.state == TrialState.COMPLETE and t.value is not None
            ]
            maximize = s.directions[0] == optuna.study.StudyDirection.MAXIMIZE
            best = (max(values) if maximize else min(values)) if values else None
        rows.append(
            {
                "study": s.study_name,
                "direction": ",".join(d.name.lower() for d in s.directions),
                "trials": len(trials),
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAIL),
                "running": states.count(TrialState.RUNNING),
                "best": best,
                "lrsearch": SPEC_ATTR in s.user_attrs,
            }
        )
    return rows


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial as plain data: number, state, value, per-group rates, frozen groups, duration."""
    info = trial_info(trial)
    lrs: dict[str, float] = info["lrs"]
    outcome = trial.user_attrs.get(OUTCOME_ATTR) or trial.state.name.lower()
    return {
        "trial": trial.number,
        "state": outcome,
        "value": trial.value,
        "lrs": lrs,
        "frozen": [g for g, lr in lrs.items() if lr == 0],
        "weight_decay": info["weight_decay"],
        "host": info["host"],
        "seconds": trial.duration.total_seconds() if trial.duration else None,
        "params": dict(trial.params),
    }


def best_trials(
    storage: optuna.storages.BaseStorage, study_name: str, *, top: int = 1
) -> list[dict[str, Any]]:
    """The ``top`` complete trials of a study, best first.

    Raises:
        StudyNotFoundError: No such study.
        LrsearchError: The study has no complete trial yet.
    """
    if top < 1:
        raise LrsearchError(f"--top must be >= 1, got {top}")
    study = load_study(storage, study_name)
    if len(study.directions) > 1:
        raise LrsearchError(
            f"study {study_name!r} has {len(study.directions)} objectives; lrsearch ranks "
            "single-objective studies only"
        )
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    if not complete:
        raise LrsearchError(
            f"study {study_name!r} has no complete trial yet; run it with `lrsearch run`"
        )
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    # Ties go to the earliest trial.
    ranked = sorted(complete, key=lambda t: (sign * float(t.value or 0.0), t.number))
    return [trial_record(t) for t in ranked[:top]]
