"""The retrying storage: Optuna's RDB storage, every call tried again through a lost connection.

A call that failed on a lost connection or a locked SQLite file is tried again, with backoff, for
up to ``--storage-retry`` seconds (:mod:`lrsearch.storage.outage`; default
:data:`STORAGE_RETRY_S`). Besides Optuna's storage calls, :class:`ResilientStorage` runs lrsearch's
own SQL (:mod:`lrsearch.storage.optuna_schema`) on a connection of its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import BaseStorage

from lrsearch._optuna_compat import cached_storage
from lrsearch.errors import StorageUnavailable
from lrsearch.masking import url_secrets
from lrsearch.schema import BudgetCount
from lrsearch.storage.optuna_schema import (
    StudyLook,
    budget_count,
    first_heartbeat,
    first_user_attr,
    look,
    running_rows,
)
from lrsearch.storage.outage import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    DEFAULT_RETRY_S,
    RETRY_ENV_VAR,
    is_transient,
    retry_limit,
)
from lrsearch.storage.urls import error_detail

# How long a storage call is retried on a lost connection / locked file before the worker gives up
# (its trial is then stored interrupted and queued again, or found stale and re-run): the default
# of `--storage-retry` / $LRSEARCH_STORAGE_RETRY (lrsearch.storage.outage).
STORAGE_RETRY_S = DEFAULT_RETRY_S

_log = logging.getLogger("lrsearch")
T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def _through(
    method: Callable[Concatenate[Any, P], R],
) -> Callable[Concatenate[ResilientStorage, P], R]:
    """A method of :class:`ResilientStorage` that runs a storage call through ``call``.

    Args:
        method: BaseStorage's method: its name picks the cached storage's method of that name at
            call time, its signature types the method made (for mypy and callers).

    Returns:
        ``self.call(<the cached storage's method>, *args, **kwargs)`` as a method. Not made with
        :func:`functools.wraps`: that would copy ``__isabstractmethod__`` and leave the class
        abstract.
    """
    name = method.__name__

    def through(self: ResilientStorage, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.call(getattr(self._inner, name), *args, **kwargs)

    through.__name__ = name
    through.__qualname__ = f"ResilientStorage.{name}"
    through.__doc__ = f"Optuna's ``{name}``, tried again while it fails on a transient error."
    return through


class ResilientStorage(BaseStorage):
    """An RDB storage whose calls outlive a lost connection or a locked SQLite file.

    Every call goes through Optuna's own cache of finished trials (what ``optuna.load_study`` on a
    URL uses) and is tried again, with backoff, while it fails on a transient error
    (:func:`~lrsearch.storage.outage.is_transient`): a PostgreSQL restart, a connection killed by
    the server or a proxy, a SQLite lock held longer than its busy timeout. After ``retry_s``
    seconds it gives up with a :class:`StorageError` naming the storage (masked).

    The few storage writes that are not idempotent may repeat when a connection drops after the
    server committed but before it answered: a new trial (``ask``) may then leave an extra trial
    RUNNING without a heartbeat. That needs a failure inside a commit's last round trip.

    Args:
        backend: The storage from :func:`lrsearch.storage.engine.open_storage`.
        shown: Its URL, masked, for messages.
        retry_s: How long one call keeps trying (default:
            :func:`lrsearch.storage.outage.retry_limit`).
    """

    def __init__(
        self,
        backend: optuna.storages.RDBStorage,
        *,
        shown: str,
        retry_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.shown = shown
        self.retry_s = retry_limit() if retry_s is None else retry_s
        self.should_stop: Callable[[], bool] = lambda: False
        self.recoveries = 0  # calls that failed at first and then went through
        self.recovered_at = -math.inf  # time.monotonic() of the last of them
        self._inner = cached_storage(backend)
        url = backend.engine.url
        self._secrets = url_secrets(
            url.render_as_string(hide_password=False), parsed_password=url.password
        )
        self._conn: sqlalchemy.Connection | None = None

    def _on_connection(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on a connection of lrsearch's own, kept open in autocommit.

        A look before every trial and a first heartbeat after it would otherwise each check a
        connection out (a ping to the server), open a transaction and roll it back: on PostgreSQL
        four round trips where one or two do. Main thread only. A connection that failed is
        dropped; the next call (`call` retries) opens another.
        """
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.backend.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        try:
            return fn(self._conn, *args)
        except Exception:
            self.release()
            raise

    def release(self) -> None:
        """Give lrsearch's own connection back to the pool (reopened when needed)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # A dead connection may fail to close: the pool has discarded it already.
            with contextlib.suppress(Exception):
                conn.close()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, tried again while it fails on a transient storage error.

        Raises:
            StorageUnavailable: It kept failing for ``retry_s`` seconds, or ``should_stop`` said
                to stop trying.
        """
        start: float | None = None
        delay = BACKOFF_START_S
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e):
                    raise
                now = time.monotonic()
                if start is None:
                    start = now
                    _log.warning(
                        "lrsearch: storage %r: %s; trying again for up to %.0f s",
                        self.shown,
                        error_detail(e, self._secrets),
                        self.retry_s,
                    )
                if now - start >= self.retry_s or self.should_stop():
                    why = "stopped waiting" if now - start < self.retry_s else "kept failing"
                    raise StorageUnavailable(
                        f"storage {self.shown!r} {why} after {now - start:.0f} s: "
                        f"{error_detail(e, self._secrets)}; check the database "
                        f"(--storage-retry / ${RETRY_ENV_VAR} sets the wait)"
                    ) from None
                time.sleep(min(delay, start + self.retry_s - now))
                delay = min(2 * delay, BACKOFF_MAX_S)
                continue
            if start is not None:
                self.recoveries += 1
                self.recovered_at = time.monotonic()
                _log.warning(
                    "lrsearch: storage %r answers again after %.1f s",
                    self.shown,
                    time.monotonic() - start,
                )
            return result

    # BaseStorage, each call through `call` to the cached storage's method of the same name; each
    # keeps the signature BaseStorage declares (what mypy checks callers against).
    create_new_study = _through(BaseStorage.create_new_study)
    delete_study = _through(BaseStorage.delete_study)
    set_study_user_attr = _through(BaseStorage.set_study_user_attr)
    set_study_system_attr = _through(BaseStorage.set_study_system_attr)
    get_study_id_from_name = _through(BaseStorage.get_study_id_from_name)
    get_study_name_from_id = _through(BaseStorage.get_study_name_from_id)
    get_study_directions = _through(BaseStorage.get_study_directions)
    get_study_user_attrs = _through(BaseStorage.get_study_user_attrs)
    get_study_system_attrs = _through(BaseStorage.get_study_system_attrs)
    get_all_studies = _through(BaseStorage.get_all_studies)
    create_new_trial = _through(BaseStorage.create_new_trial)
    set_trial_param = _through(BaseStorage.set_trial_param)
    get_trial_id_from_study_id_trial_number = _through(
        BaseStorage.get_trial_id_from_study_id_trial_number
    )
    set_trial_state_values = _through(BaseStorage.set_trial_state_values)
    set_trial_intermediate_value = _through(BaseStorage.set_trial_intermediate_value)
    set_trial_user_attr = _through(BaseStorage.set_trial_user_attr)
    set_trial_system_attr = _through(BaseStorage.set_trial_system_attr)
    get_trial = _through(BaseStorage.get_trial)
    get_all_trials = _through(BaseStorage.get_all_trials)
    get_best_trial = _through(BaseStorage.get_best_trial)

    def set_new_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Set an attribute of a RUNNING trial of ours that does not have it yet; main thread only.

        One INSERT on lrsearch's own connection: Optuna's ``set_trial_user_attr`` opens a session,
        reads the trial to check that it is unfinished, then upserts, which costs a trial of a fast
        study several percent of its time. The caller knows the trial is new and running.
        """
        try:
            self.call(self._on_connection, first_user_attr, trial_id, key, value)
        except sqlalchemy.exc.IntegrityError:  # set already: Optuna's checked upsert
            self.call(self._inner.set_trial_user_attr, trial_id, key, value)

    def record_heartbeat(self, trial_id: int) -> None:
        """Mark a new trial alive now (the database's clock); main thread only."""
        try:
            self.call(self._on_connection, first_heartbeat, trial_id)
        except sqlalchemy.exc.IntegrityError:  # it has a heartbeat already
            self.call(self.backend.record_heartbeat, trial_id)

    def heartbeat_ages(self, study_id: int) -> dict[int, float | None]:
        """Seconds since the last heartbeat of each RUNNING trial of a study, by trial id.

        ``None`` for a trial that never had one. Ages are measured on the database's clock, so
        workers on machines whose clocks differ agree. Main thread only.
        """
        rows = self.call(self._on_connection, running_rows, study_id)
        return {r.trial_id: r.age for r in rows}

    def count(self, study_id: int) -> BudgetCount:
        """Where a study stands against its budget, in one query; ``running`` counts every
        RUNNING trial, alive or not (:meth:`look` tells them apart). Main thread only."""
        return self.call(self._on_connection, budget_count, study_id)

    def look(self, study_id: int, *, grace: float, orphan_after: float) -> StudyLook:
        """Where a study stands against its budget, and which running trials lost their worker.

        Two small queries, whatever the size of the study (a worker looks before every trial:
        reading all trials back would cost more than the rest of lrsearch's bookkeeping). Main
        thread only.

        Args:
            study_id: The study.
            grace: A RUNNING trial whose last heartbeat is older is lost.
            orphan_after: A RUNNING trial that never had a heartbeat and started longer ago is
                lost (its worker died between creating it and its first heartbeat).
        """
        return self.call(self._on_connection, look, study_id, grace, orphan_after)
