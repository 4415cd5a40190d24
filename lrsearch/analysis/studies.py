"""The studies a storage holds, and opening one for reading.

``list_studies`` returns plain dicts, so the CLI's ``studies`` stays light; the helpers here are
what every other reader starts from: a storage opened without creating a database, a study
lrsearch can read, and the study's groups in order.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from lrsearch import _optuna_compat as compat
from lrsearch.errors import LrsearchError
from lrsearch.pick import best, metric
from lrsearch.schema import GROUPS_ATTR, SPEC_ATTR, Outcome
from lrsearch.storage import open_storage, stored_spec, trial_info


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study: name, direction, trial counts by outcome, best value, whether lrsearch's.

    A study with several objectives shows its directions joined by commas; its best value is the
    best first objective (lrsearch's metric) when the study is lrsearch's, else none.
    """
    rows = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(compat.study_id(s), deepcopy=False)
        states = [t.state for t in trials]
        best_value = None
        if len(s.directions) == 1 or SPEC_ATTR in s.user_attrs:
            maximize = s.directions[0] == optuna.study.StudyDirection.MAXIMIZE
            top = best(trials, maximize=maximize)
            best_value = metric(top) if top is not None else None
        rows.append(
            {
                "study": s.study_name,
                "direction": ",".join(d.name.lower() for d in s.directions),
                "trials": len(trials),
                Outcome.COMPLETE.value: states.count(TrialState.COMPLETE),
                Outcome.PRUNED.value: states.count(TrialState.PRUNED),
                Outcome.FAILED.value: states.count(TrialState.FAIL),
                "running": states.count(TrialState.RUNNING),
                "best": best_value,
                "lrsearch": SPEC_ATTR in s.user_attrs,
            }
        )
    return rows


def _open(storage: optuna.storages.BaseStorage | str | None) -> optuna.storages.BaseStorage:
    # A reader never creates a database: a typo in a URL is reported, not left behind empty.
    if storage is None or isinstance(storage, str):
        return open_storage(storage, create=False)
    return storage


def _readable(study: optuna.Study) -> optuna.Study:
    # One objective, or lrsearch's two: the metric and the training cost ([study] cost).
    if len(study.directions) > 1 and SPEC_ATTR not in study.user_attrs:
        raise LrsearchError(
            f"study {study.study_name!r} has {len(study.directions)} objectives and was not made "
            "by lrsearch; lrsearch reads its own two-objective studies (metric, cost) only"
        )
    return study


def study_groups(study: optuna.Study) -> list[str]:
    """The study's groups in their order: the stored ``lrsearch.groups``, else the spec's, plus any
    group a trial names that those lack (a study made by an older version, or ``auto_depth``)."""
    groups: list[str] = list(study.user_attrs.get(GROUPS_ATTR) or {})
    if not groups and SPEC_ATTR in study.user_attrs:
        try:
            groups = list(stored_spec(study).groups.names)
        except LrsearchError:  # a spec this version no longer reads: the trials still name them
            groups = []
    for t in study.get_trials(deepcopy=False):
        for g in trial_info(t)["lrs"]:
            if g not in groups:
                groups.append(g)
    return groups
