"""Noise-aware winners: retrain a study's top trials with more seeds, then rank them by the mean.

A search keeps the best of many noisy trials, so its best single value is partly a lucky seed.
``confirm_study`` retrains the ``top_k`` best trials (by their search value) with ``reseeds`` more
seeds each, on the same validation split, and stores every run with the study exactly as
``lrsearch verify`` does (``lrsearch.verify.<trial>``, one entry per seed; the same seeds, so
``verify`` later reuses them). It marks the study as confirmed (study attribute
``lrsearch.confirm``: the trials confirmed and the seeds); from then on :func:`seed_values` gives
``lrsearch.pick`` each confirmed trial's values, and ``best``, ``export`` and ``report`` rank the
confirmed trials by their mean over the search's run and the retrainings (``lrsearch.pick`` has
the rule) and say so.

With ``[winner] reseeds`` in the study file, ``lrsearch run`` reserves ``reseeds x top_k`` of
``[study] n_trials`` for these retrainings (:func:`search_budget`) and confirms when its search
budget is met. Workers only search: confirm their study with ``lrsearch confirm`` (or ``lrsearch
run``, which finds the search done and confirms). Confirming again after more trials retrains the
new top trials' missing seeds only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from lrsearch import _optuna_compat as compat
from lrsearch.errors import LrsearchError
from lrsearch.pick import pooled_sd, rank, rank_seeded
from lrsearch.retrain.records import (
    RunCallback,
    describe,
    search_seeds,
    seed_values,
    verify_seeds,
)
from lrsearch.retrain.retrainer import Retrainer
from lrsearch.schema import CONFIRM_ATTR
from lrsearch.spec import StudySpec
from lrsearch.storage import load_study, stored_spec

if TYPE_CHECKING:
    from lrsearch.training import TrainResult

__all__ = ["confirm_study", "search_budget"]


def search_budget(spec: StudySpec, n_trials: int) -> int:
    """The trials left to search when ``n_trials`` also pays for ``[winner]``'s retrainings.

    Raises:
        LrsearchError: The retrainings take the whole budget.
    """
    reserved = spec.winner.reseeds * spec.winner.top_k
    if reserved and n_trials - reserved < 1:
        raise LrsearchError(
            f"a budget of {n_trials} trials leaves none to search after [winner]'s {reserved} "
            "retrainings (reseeds x top_k); raise --n-trials or lower [winner] reseeds / top_k"
        )
    return n_trials - reserved


def confirm_study(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    top_k: int | None = None,
    reseeds: int | None = None,
    device: str | None = None,
    on_run: RunCallback | None = None,
    train_fn: Callable[..., TrainResult] | None = None,
    allow_tasks: Sequence[str] = (),
) -> dict[str, Any]:
    """Retrain the study's ``top_k`` best trials with ``reseeds`` more seeds; rank them by mean.

    Args:
        storage: The study's storage.
        study_name: The study.
        top_k: How many of the best trials (default: ``[winner] top_k``).
        reseeds: Seeds per trial beyond the search's own (default: ``[winner] reseeds``).
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        on_run: Called as ``on_run("confirm", trial, run)`` after each new run.
        train_fn: The trainer (``train_trial``'s signature); replaceable in tests.
        allow_tasks: Task entries allowed besides the built-in ones and ``$LRSEARCH_ALLOW_TASKS``
            (see :mod:`lrsearch.trust`); checked before the task is first imported.

    Returns:
        Plain data: ``study``, ``direction``, ``seeds``, ``new_runs``, ``trials`` (best mean first:
        ``trial``, ``search_value``, ``values``, ``mean``, ``sd``, ``failed``), ``seed_sd`` (pooled)
        and ``note``.

    Raises:
        LrsearchError: ``reseeds`` or ``top_k`` below 1, or no complete trial.
        StudyNotFoundError: No such study.
    """
    study = load_study(storage, study_name)
    spec = stored_spec(study)
    k = spec.winner.top_k if top_k is None else top_k
    r = spec.winner.reseeds if reseeds is None else reseeds
    if k < 1:
        raise LrsearchError(f"--top-k must be >= 1, got {k}")
    if r < 1:
        raise LrsearchError(
            f"reseeds must be >= 1, got {r}; pass --reseeds N or set [winner] reseeds in the "
            "study file"
        )
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    top = rank(trials, maximize=maximize)[:k]
    if not top:
        raise LrsearchError(
            f"study {study_name!r} has no complete trial to confirm; run it first (`lrsearch run`)"
        )
    seeds = verify_seeds(r, search_seeds(study, trials))
    retrainer = Retrainer(storage, study, device=device, train_fn=train_fn, allow_tasks=allow_tasks)
    new = 0
    for trial in top:
        _, trained = retrainer.runs(trial, seeds, role="confirm", on_run=on_run)
        new += trained
    # Marked after the runs: an interrupted confirm leaves the ranking as it was.
    old = study.user_attrs.get(CONFIRM_ATTR)
    known = old.get("trials", []) if isinstance(old, dict) else []
    numbers = sorted({*known, *(t.number for t in top)})
    storage.set_study_user_attr(
        compat.study_id(study), CONFIRM_ATTR, {"trials": numbers, "top_k": k, "reseeds": r}
    )
    study = load_study(storage, study_name)  # the attribute just written
    seeded = rank_seeded(
        study.get_trials(deepcopy=False), seed_values(study, storage), maximize=maximize
    )
    return {
        "study": study_name,
        "direction": "maximize" if maximize else "minimize",
        "seeds": seeds,
        "new_runs": new,
        "trials": [
            {
                "trial": s.trial.number,
                "search_value": s.trial.values[0],
                "values": list(s.values),
                "mean": s.mean,
                "sd": s.sd,
                "failed": s.failed,
            }
            for s in seeded
        ],
        "seed_sd": pooled_sd(seeded),
        "note": describe(seeded),
    }
