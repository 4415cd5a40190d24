"""The best trials of a study as plain data: ``lrsearch best`` and its ``--top``/``--front``/
``--within`` choices, chosen by :mod:`lrsearch.pick`, with seeds when the study was confirmed.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from lrsearch.analysis.studies import _readable
from lrsearch.analysis.trials import trial_state
from lrsearch.errors import LrsearchError
from lrsearch.pick import Rule, Seeded, candidates, cost, pareto_front, pick, rank, rank_seeded
from lrsearch.retrain.records import describe, seed_values
from lrsearch.schema import SPEC_ATTR
from lrsearch.storage import load_study, stored_spec, trial_info


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial as plain data: number, state, value, per-group rates, frozen groups, duration."""
    info = trial_info(trial)
    lrs: dict[str, float] = info["lrs"]
    outcome = trial_state(trial)  # the listing's words: failed, not Optuna's FAIL
    return {
        "trial": trial.number,
        "state": outcome,
        "value": trial.values[0] if trial.values else None,
        "cost": cost(trial),
        "lrs": lrs,
        "frozen": [g for g, lr in lrs.items() if lr == 0],
        "weight_decay": info["weight_decay"],
        "knobs": _knobs(trial, info),
        "host": info["host"],
        "seconds": trial.duration.total_seconds() if trial.duration else None,
        "params": dict(trial.params),
    }


def _knobs(trial: optuna.trial.FrozenTrial, info: dict[str, Any]) -> dict[str, float]:
    """The trial's values besides its per-group rates: weight decay (searched or fixed) and every
    other searched parameter (layer decay's base_lr, decay, head_multiplier; freeze_depth)."""
    knobs: dict[str, float] = {}
    if info["weight_decay"] is not None:
        knobs["weight_decay"] = float(info["weight_decay"])
    for name, value in trial.params.items():
        if not name.startswith(("lr.", "freeze.")) and name not in knobs:
            knobs[name] = float(value)
    return knobs


# What ``cost`` measures, by the study's ``[study] cost`` (None: a one-objective study).
COST_MEANINGS = {
    None: "the trial's wall time in seconds, model building and evaluation included (the study "
    "has no [study] cost)",
    "seconds": 'seconds of training, the study\'s second objective ([study] cost = "seconds")',
    "examples": "examples trained x the share of parameters that train, the study's second "
    'objective ([study] cost = "examples")',
}


def cost_meaning(study: optuna.Study) -> str:
    """What the ``cost`` of the study's trials measures, in words."""
    kind = stored_spec(study).study.cost if SPEC_ATTR in study.user_attrs else None
    return COST_MEANINGS.get(kind, COST_MEANINGS[None])


def best_trials(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    top: int | None = None,
    rule: Rule | None = None,
    front: bool = False,
) -> list[dict[str, Any]]:
    """The ``top`` complete trials of a study, best metric first (ties: the earliest).

    Args:
        top: How many (default: 1, or with ``front`` the whole front).
        rule: Pick one trial by a trade of metric against cost (:mod:`lrsearch.pick`); then the
            result is that one trial, and ``top`` must be 1.
        front: Only the trials on the Pareto front of metric against cost.

    Raises:
        StudyNotFoundError: No such study.
        LrsearchError: The study has no complete trial yet, or none meets ``rule``.
    """
    if top is not None and top < 1:
        raise LrsearchError(f"--top must be >= 1, got {top}")
    study = _readable(load_study(storage, study_name))
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not candidates(trials):
        raise LrsearchError(
            f"study {study_name!r} has no complete trial yet; run it with `lrsearch run`"
        )
    seeds = {} if front else seed_values(study)
    seeded = {s.trial.number: s for s in rank_seeded(trials, seeds, maximize=maximize)}
    meaning = cost_meaning(study)
    if rule is not None and rule.trades:
        if (top is not None and top != 1) or front:
            raise LrsearchError(
                "--within / --max-cost / --within-sd pick one trial; drop --top and --front"
            )
        chosen = pick(trials, maximize=maximize, rule=rule, seeds=seeds)
        return [_seeded_record(chosen, seeded) | {"cost_meaning": meaning}]
    ranked = pareto_front(trials, maximize=maximize) if front else rank(trials, maximize=maximize)
    if seeded:
        # The confirmed trials by their mean (the best is pick's), then the others by value.
        ranked = [
            *(s.trial for s in seeded.values()),
            *(t for t in ranked if t.number not in seeded),
        ]
    # Default: the one best trial, or the whole front.
    count = top if top is not None else len(ranked) if front else 1
    return [_seeded_record(t, seeded) | {"cost_meaning": meaning} for t in ranked[:count]]


def _seeded_record(trial: optuna.trial.FrozenTrial, seeded: dict[int, Seeded]) -> dict[str, Any]:
    """:func:`trial_record`, with ``seeds`` (mean, sd, n, failed) and ``ranking`` (how the best was
    chosen) when the study's top trials were retrained (``lrsearch confirm``)."""
    record = trial_record(trial)
    s = seeded.get(trial.number)
    record["seeds"] = (
        None if s is None else {"mean": s.mean, "sd": s.sd, "n": len(s.values), "failed": s.failed}
    )
    record["ranking"] = describe(list(seeded.values())) if seeded else "by the search's value"
    return record
