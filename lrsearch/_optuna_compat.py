"""Every use of an Optuna name that is not public API, in one place.

lrsearch leans on a few of Optuna's internals where the public API costs a round trip per trial
or lacks a handle: a study's and a trial's storage ids, the cached storage wrapper that
``optuna.create_study`` puts around an RDB storage, ``tell`` without re-reading the stored trial,
and the ORM tables that the storage's one-query budget count reads. They were written against
:data:`TESTED` (Optuna 5.x, whose migrations keep these stable); :func:`check_version` warns when
another major version is installed, and a missing name falls back to public API where one exists.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:  # the type only: importing it at run time reaches into a private module
    from optuna.study._frozen import FrozenStudy as FrozenStudy
else:
    FrozenStudy = Any

try:  # private but stable since Optuna 3
    from optuna.study._tell import _tell_with_warning
except ImportError:  # pragma: no cover - a future Optuna without the helper
    _tell_with_warning = None  # type: ignore[assignment]

__all__ = [
    "TESTED",
    "FrozenStudy",
    "cached_storage",
    "check_version",
    "rdb_tables",
    "study_id",
    "study_storage",
    "tell",
    "trial_id",
]

TESTED = (5,)  # the Optuna major versions these internals were checked against
_checked = False


def check_version() -> None:
    """Warn once when the installed Optuna is a major version these were not checked on."""
    global _checked
    if _checked:
        return
    _checked = True
    major = int(optuna.__version__.split(".")[0])
    if major not in TESTED:
        warnings.warn(
            f"lrsearch was checked against Optuna {', '.join(map(str, TESTED))}.x, not "
            f"{optuna.__version__}; install 'optuna>=5,<6' if storage calls fail",
            RuntimeWarning,
            stacklevel=2,
        )


def study_id(study: Any) -> int:
    """A study's id in its storage (of an ``optuna.Study`` or a ``FrozenStudy``)."""
    return int(study._study_id)


def study_storage(study: optuna.Study) -> Any:
    """The storage a study object writes through (the wrapper lrsearch gave it, if any)."""
    return study._storage


def trial_id(trial: optuna.Trial) -> int:
    """A trial's id in its storage (its ``number`` counts within the study)."""
    return int(trial._trial_id)


def cached_storage(backend: optuna.storages.RDBStorage) -> Any:
    """The cache ``optuna.create_study`` wraps around an RDB storage: finished trials are read
    once, not on every ``get_all_trials``."""
    check_version()
    return optuna.storages._CachedStorage(backend)


def rdb_tables() -> tuple[Any, Any, Any]:
    """Optuna's trials, heartbeats and trial user-attributes tables (SQLAlchemy ``Table`` objects).

    Read by the storage's one-query budget count: Optuna's own stale-trial check skips trials that
    never had a heartbeat, and counting from its trial objects reads every attribute of every trial.
    """
    check_version()
    from optuna.storages._rdb import models

    return (
        models.TrialModel.__table__,
        models.TrialHeartbeatModel.__table__,
        models.TrialUserAttributeModel.__table__,
    )


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    value: float | Sequence[float] | None,
    state: TrialState,
) -> TrialState:
    """``study.tell`` without reading the finished trial back (what ``optimize`` does internally).

    ``study.tell`` re-reads and deep-copies the trial it just stored; that round trip alone is
    several percent of a trivial trial's cost. ``skip_if_finished``: a trial failed behind our back
    (a heartbeat sweep) must not crash the run; the state returned then is the one it has.
    """
    if _tell_with_warning is None:  # pragma: no cover - a future Optuna without the helper
        return study.tell(trial, value, state=state, skip_if_finished=True).state
    stored, _, _ = _tell_with_warning(
        study=study,
        trial=trial,
        value_or_values=value,
        state=state,
        skip_if_finished=True,
        suppress_warning=True,
    )
    return TrialState(stored)
