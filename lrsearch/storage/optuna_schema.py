"""lrsearch's own SQL against Optuna's tables: the budget count, the look, first inserts.

Written for Optuna 5.1 (``optuna>=5.0,<6``; the tables of ``optuna/storages/_rdb/models.py``:
``trials``, ``trial_heartbeats``, ``trial_user_attributes``). The tables come from
:func:`lrsearch._optuna_compat.rdb_tables`, which warns when another major version is installed:
that is the version guard, and an upgrade of Optuna's schema touches that function and this file.

- The budget count is the rule :func:`lrsearch.schema.counts_against_budget` written in SQL (not
  interrupted, not re-run elsewhere), one query whatever the size of the study.
- The look adds the RUNNING trials and the age of their heartbeats, on the database's clock.
- A new trial's first heartbeat and first user attribute are one INSERT each, where Optuna's own
  calls read before they write; a trial that has them already raises ``IntegrityError``.

Each function takes a connection (:meth:`lrsearch.storage.resilient.ResilientStorage` runs them
on a connection of its own).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from lrsearch import schema
from lrsearch._optuna_compat import rdb_tables
from lrsearch.schema import OUTCOME_ATTR, RETRY_OF_ATTR, BudgetCount, Outcome

FINISHED = tuple(TrialState[name] for name in schema.FINISHED_STATES)


@functools.cache
def _statements() -> dict[str, Any]:
    """The statements of a look, built once: building one costs more than running it."""
    trials, beats, attrs = rdb_tables()
    study_id: Any = sqlalchemy.bindparam("study_id")
    running = (
        sqlalchemy.select(
            trials.c.trial_id,
            trials.c.datetime_start,
            beats.c.heartbeat,
            sqlalchemy.func.now(),
        )
        .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING)
    )
    # The budget rule (schema.counts_against_budget) in SQL: not interrupted, not re-run elsewhere.
    interrupted = sqlalchemy.exists().where(
        attrs.c.trial_id == trials.c.trial_id,
        attrs.c.key == OUTCOME_ATTR,
        attrs.c.value_json == json.dumps(Outcome.INTERRUPTED.value),
    )
    rerun, retry = trials.alias(), attrs.alias()
    replaced = (
        sqlalchemy.select(retry.c.value_json)
        .select_from(retry.join(rerun, rerun.c.trial_id == retry.c.trial_id))
        .where(rerun.c.study_id == study_id, retry.c.key == RETRY_OF_ATTR)
    )
    by_state = (
        sqlalchemy.select(trials.c.state, sqlalchemy.func.count())
        .where(
            trials.c.study_id == study_id,
            ~interrupted,
            # value_json of a number is its decimal text, never NULL
            sqlalchemy.cast(trials.c.number, sqlalchemy.String).not_in(replaced),
        )
        .group_by(trials.c.state)
    )
    first_beat = sqlalchemy.insert(beats).values(
        trial_id=sqlalchemy.bindparam("trial_id"), heartbeat=sqlalchemy.func.current_timestamp()
    )
    first_attr = sqlalchemy.insert(attrs).values(
        trial_id=sqlalchemy.bindparam("trial_id"),
        key=sqlalchemy.bindparam("key"),
        value_json=sqlalchemy.bindparam("value_json"),
    )
    return {
        "running": running,
        "by_state": by_state,
        "first_beat": first_beat,
        "first_attr": first_attr,
    }


def first_heartbeat(conn: sqlalchemy.Connection, trial_id: int) -> None:
    """Mark a new trial alive now, on the database's clock.

    Raises:
        sqlalchemy.exc.IntegrityError: The trial has a heartbeat already.
    """
    # A new trial has no heartbeat yet: one INSERT instead of Optuna's read-then-write.
    conn.execute(_statements()["first_beat"], {"trial_id": trial_id})


def first_user_attr(conn: sqlalchemy.Connection, trial_id: int, key: str, value: Any) -> None:
    """Set a user attribute that a trial does not have yet.

    Raises:
        sqlalchemy.exc.IntegrityError: The trial has that attribute already.
    """
    # Stored as Optuna stores it (JSON text), so every reader of the study sees the same thing.
    conn.execute(
        _statements()["first_attr"],
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)},
    )


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial as a look sees it."""

    trial_id: int
    started_utc: datetime | None
    age: float | None  # seconds since the last heartbeat; None: never had one


def running_rows(conn: sqlalchemy.Connection, study_id: int) -> list[RunningTrial]:
    """The RUNNING trials of a study, with the age of their last heartbeat."""
    out = []
    for trial_id, started, beat, now in conn.execute(
        _statements()["running"], {"study_id": study_id}
    ):
        age = None
        if beat is not None:
            # As Optuna: PostgreSQL answers now() with a time zone, the column has none.
            age = (now.replace(tzinfo=None) - beat).total_seconds()
        out.append(RunningTrial(trial_id, started, age))
    return out


@dataclass(frozen=True)
class StudyLook:
    """One look at a study: where it stands against its budget, and its lost trials."""

    count: BudgetCount  # `running`: the trials with a live heartbeat
    lost: tuple[int, ...]  # ids of RUNNING trials whose worker is gone


def budget_count(conn: sqlalchemy.Connection, study_id: int) -> BudgetCount:
    """Where a study stands against its budget; ``running`` counts every RUNNING trial."""
    rows = conn.execute(_statements()["by_state"], {"study_id": study_id}).all()
    counts: dict[TrialState, int] = {state: n for state, n in rows}
    return BudgetCount(
        counted=sum(counts.get(state, 0) for state in FINISHED),
        running=counts.get(TrialState.RUNNING, 0),
        waiting=counts.get(TrialState.WAITING, 0),
    )


def look(
    conn: sqlalchemy.Connection, study_id: int, grace: float, orphan_after: float
) -> StudyLook:
    """Where a study stands against its budget, counting only live RUNNING trials, and which
    RUNNING trials lost their worker (see :meth:`ResilientStorage.look`)."""
    running = running_rows(conn, study_id)
    count = budget_count(conn, study_id)
    now_utc = datetime.now(timezone.utc).replace(tzinfo=None)  # datetime_start is naive UTC
    lost = []
    for r in running:
        if r.age is None:
            if (
                r.started_utc is not None
                and (now_utc - r.started_utc).total_seconds() > orphan_after
            ):
                lost.append(r.trial_id)
        elif r.age > grace:
            lost.append(r.trial_id)
    alive = sum(1 for r in running if r.age is not None and r.age <= grace)
    return StudyLook(dataclasses.replace(count, running=alive), tuple(lost))
