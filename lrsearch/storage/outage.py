"""How long a search rides out a database that went away, which failures pass, and the schema race.

Imports nothing of lrsearch but its errors: the engine (:mod:`lrsearch.storage.engine`) and the
retrying wrapper (:mod:`lrsearch.storage.resilient`) read it.

- **The retry limit.** A storage call that fails on a lost connection is retried with backoff for
  up to ``--storage-retry`` seconds, else ``$LRSEARCH_STORAGE_RETRY``, else
  :data:`DEFAULT_RETRY_S` (10 minutes: a database restart, a failover or a short network cut
  passes unnoticed). Past it the worker stops with an error; its trial is not counted, and its
  configuration is queued again (:mod:`lrsearch.search`).
- **The schema race.** Optuna creates its tables when it first opens a database; processes that
  open a fresh one at once race (PostgreSQL: ``duplicate key value violates unique constraint
  "pg_type_typname_nsp_index"``; SQLite: ``table ... already exists``). The loser tries again,
  and then finds the tables made.
- **What passes.** A lost or refused connection, a server starting or shutting down, a locked
  SQLite file may pass if the call is tried again (:func:`is_transient`); bad credentials or a bad
  schema do not.
"""

from __future__ import annotations

import os
import sqlite3

import sqlalchemy.exc

from lrsearch.errors import StorageError

RETRY_ENV_VAR = "LRSEARCH_STORAGE_RETRY"
DEFAULT_RETRY_S = 600.0
# The backoff between tries, both while waiting for a database to come up and while retrying a call.
BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0
# How often the loser of the schema race tries again; each try is one round trip once the winner
# has committed, so a few are plenty even for dozens of processes.
SCHEMA_RACE_TRIES = 8
# What the database says when another process created the same table, type or row a moment
# before (Optuna's CREATE TABLEs and its one row of version info).
_RACE_MESSAGES = (
    "already exists",
    "pg_type_typname_nsp_index",
    "duplicate key value violates unique constraint",
    "unique constraint failed: version_info",
    "unique constraint failed: alembic_version",
    "deadlock detected",
)
# Connection errors that waiting will not cure.
_FATAL_DB_ERRORS = (
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "no such table",
    "no such column",
    "file is not a database",
    "readonly database",
    "unable to open database file",
)


def retry_limit() -> float:
    """Seconds a storage call is retried: ``$LRSEARCH_STORAGE_RETRY``, else 600.

    Raises:
        StorageError: The variable is not a number of seconds >= 0.
    """
    raw = os.environ.get(RETRY_ENV_VAR, "")
    if not raw.strip():
        return DEFAULT_RETRY_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # also NaN
        raise StorageError(f"${RETRY_ENV_VAR} must be a number of seconds >= 0, got {raw!r}")
    return seconds


def is_schema_race(error: BaseException) -> bool:
    """Whether opening a storage failed because another process created its schema at once."""
    seen: set[int] = set()
    err: BaseException | None = error
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(getattr(err, "orig", None) or err).lower()
        if any(m in text for m in _RACE_MESSAGES):
            return True
        err = err.__cause__ or err.__context__
    return False


def is_transient(error: BaseException) -> bool:
    """Whether a storage error may pass if the call is tried again: a lost or refused connection, a
    server starting or shutting down, a locked SQLite file; not bad credentials or a bad schema."""
    seen: set[int] = set()
    err: BaseException | None = error
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, sqlalchemy.exc.PendingRollbackError):
            # A connection lost inside a transaction that was then used again (Optuna retries a
            # failed query in the same session); the session is rolled back, a new call works.
            return True
        connection_error = isinstance(
            err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
        ) or (isinstance(err, sqlalchemy.exc.DBAPIError) and err.connection_invalidated)
        if connection_error or isinstance(err, sqlite3.OperationalError):
            text = str(getattr(err, "orig", None) or err).lower()
            return not any(fatal in text for fatal in _FATAL_DB_ERRORS)
        # Optuna wraps SQLAlchemy's errors in StorageInternalError (`from e`).
        err = err.__cause__
    return False
