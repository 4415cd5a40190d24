"""Where studies live: storage URLs to Optuna RDB storages, and studies created, checked and loaded.

The URL comes from ``--storage``, then ``--storage-file``, then ``$LRSEARCH_STORAGE``, then the file
named by ``$LRSEARCH_STORAGE_FILE``, then ``sqlite:///lrsearch.db`` (:func:`resolve_url`): a URL
read from a file or the environment stays off command lines, where any user can read it.

- SQLite (one machine): the file is switched to WAL mode, so readers do not block the writer, and
  every connection waits up to a minute for a lock instead of failing with "database is locked".
  Connections use ``synchronous=NORMAL``, which WAL makes safe from corruption: a commit no longer
  waits for the disk (a trial is a dozen commits), and a power cut can lose only the last commits.
  A file on a network filesystem (NFS, SMB, sshfs) is refused: SQLite's locks and WAL's shared
  memory do not work across machines (``$LRSEARCH_ALLOW_NETWORK_SQLITE=1`` overrides, with a
  warning).
- PostgreSQL (many workers, many machines): ``postgresql://`` means psycopg 3; connections are
  checked before use (``pool_pre_ping``: PostgreSQL and proxies drop idle ones) and recycled, and
  each process keeps a small pool, so many workers do not exhaust the server's connection slots.

Workers survive a database that comes and goes: :func:`open_storage` can wait for a server that is
not up yet (``wait``; ``$LRSEARCH_DB_WAIT`` for the commands), and :class:`ResilientStorage` retries
a call that failed on a lost connection or a locked SQLite file, with backoff, for up to
``--storage-retry`` seconds (:mod:`lrsearch.outage`; default :data:`STORAGE_RETRY_S`). Processes
creating the tables of a fresh database at once try again instead of failing.

A study keeps its spec in its user attributes (``lrsearch.spec``): running the same study name with
a different search is refused, and readers never need the original file. Passwords are masked in
every message (``mask_url``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url

from lrsearch import schema
from lrsearch._optuna_compat import FrozenStudy, cached_storage, rdb_tables
from lrsearch.errors import (
    SpecError,
    StorageError,
    StorageUnavailable,
    StudyMismatchError,
    StudyNotFoundError,
)
from lrsearch.limits import study_name_problem
from lrsearch.masking import has_stray_at, hide, mask_url, url_secrets
from lrsearch.outage import (
    DEFAULT_RETRY_S,
    RETRY_ENV_VAR,
    SCHEMA_RACE_TRIES,
    is_schema_race,
    retry_limit,
)
from lrsearch.schema import (  # re-exported: readers imported them from here first
    OUTCOME_ATTR,
    RETRY_OF_ATTR,
    SPEC_ATTR,
    TRIAL_ATTR,
    BudgetCount,
    Outcome,
)
from lrsearch.spec import StudySpec
from lrsearch.sqlite_file import check_sqlite_file

ENV_VAR = "LRSEARCH_STORAGE"
FILE_ENV_VAR = "LRSEARCH_STORAGE_FILE"  # a file holding the URL (a Docker / Kubernetes secret)
WAIT_ENV_VAR = "LRSEARCH_DB_WAIT"  # seconds `run`, `create` and `worker` wait for the database
NETWORK_SQLITE_ENV_VAR = "LRSEARCH_ALLOW_NETWORK_SQLITE"
DEFAULT_URL = "sqlite:///lrsearch.db"
SQLITE_BUSY_TIMEOUT_S = 60
# How long to wait for the spec of a study another worker has just created (its two writes are
# not one transaction).
SPEC_WAIT_S = 5.0
DEFAULT_DB_WAIT_S = 60.0
# How long a storage call is retried on a lost connection / locked file before the worker gives up
# (its trial is then stored interrupted and queued again, or found stale and re-run): the default
# of `--storage-retry` / $LRSEARCH_STORAGE_RETRY (lrsearch.outage).
STORAGE_RETRY_S = DEFAULT_RETRY_S
_BACKOFF_START_S = 0.25
_BACKOFF_MAX_S = 5.0
FINISHED = tuple(TrialState[name] for name in schema.FINISHED_STATES)
# Filesystems where several machines may open one SQLite file: its locks do not hold there.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "sshfs",
        "fuse.sshfs",
        "9p",
        "ceph",
        "fuse.ceph",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "beegfs",
        "davfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
    }
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

_log = logging.getLogger("lrsearch")
T = TypeVar("T")


def resolve_url(url: str | None = None, *, file: str | Path | None = None) -> str:
    """The storage URL in force.

    In order: ``url``, the URL in ``file``, ``$LRSEARCH_STORAGE``, the URL in the file named by
    ``$LRSEARCH_STORAGE_FILE``, then ``sqlite:///lrsearch.db``.

    Raises:
        StorageError: A URL file that cannot be read or holds no URL.
    """
    if url:
        return url
    if file is not None:
        return read_url_file(file)
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    env_file = os.environ.get(FILE_ENV_VAR)
    if env_file:
        return read_url_file(env_file, source=f"${FILE_ENV_VAR}")
    return DEFAULT_URL


def read_url_file(path: str | Path, *, source: str = "--storage-file") -> str:
    """The storage URL in a file: its first non-blank line, stripped (a trailing newline is fine).

    Raises:
        StorageError: The file cannot be read or holds no URL (its content is never shown).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise StorageError(
            f"{source} {str(p)!r}: cannot read the storage URL file ({e.strerror or e})"
        ) from None
    except UnicodeDecodeError:
        raise StorageError(f"{source} {str(p)!r}: not a UTF-8 text file") from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise StorageError(f"{source} {str(p)!r} is empty; write the storage URL on its first line")


def db_wait() -> float:
    """Seconds to wait for a database that is not up yet: ``$LRSEARCH_DB_WAIT``, default 60.

    Raises:
        StorageError: The variable is not a number >= 0.
    """
    raw = os.environ.get(WAIT_ENV_VAR)
    if raw is None or not raw.strip():
        return DEFAULT_DB_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise StorageError(f"${WAIT_ENV_VAR} must be a number of seconds >= 0, got {raw!r}")
    return value


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:  # ValueError: a port that is no number
        raise StorageError(
            f"invalid storage URL {mask_url(url)!r}; use sqlite:///path/to/file.db or "
            "postgresql://user@host:5432/dbname"
        ) from e
    # Part of the password would become the host name, and be shown (an SQLite path has no host).
    if not url.lower().startswith("sqlite") and has_stray_at(url):
        raise StorageError(
            f"storage URL {mask_url(url)!r}: its user name or password holds an unencoded '@'; "
            "write it as %40"
        )
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(
            f"unsupported storage {mask_url(url)!r}; use sqlite:///file.db (one machine) or "
            "postgresql://... (many workers)"
        )
    return parsed


def _engine_kwargs(parsed: URL) -> dict[str, Any]:
    if parsed.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True, "pool_recycle": 300, "pool_size": 2, "max_overflow": 4}


def _prepare_sqlite(parsed: URL, shown: str, *, create: bool) -> None:
    database = parsed.database
    if not database or database == ":memory:":
        raise StorageError(
            f"storage {shown!r} is in memory and would vanish with this process; "
            "name a file: sqlite:///lrsearch.db"
        )
    path = Path(database)
    if not path.parent.exists():
        raise StorageError(
            f"storage {shown!r}: folder {str(path.parent)!r} does not exist; "
            "create it or fix the URL"
        )
    if not create and not path.exists():
        raise StorageError(
            f"storage {shown!r}: no database file {database!r}; check --storage (or "
            f"${ENV_VAR}), or run a study there first"
        )
    _check_local_filesystem(path, shown)
    if path.exists():
        check_sqlite_file(path, shown, create=create)
    if not create:
        return  # a reader leaves the file as it is
    # WAL persists in the file; set it before Optuna's engine opens it. Switching needs the file
    # to itself, and SQLite answers "locked" at once (no busy wait) while processes creating it
    # together hold it: tried again for up to SQLITE_BUSY_TIMEOUT_S (found by test_faults).
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.close()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise StorageError(f"storage {shown!r} is not a usable SQLite database: {e}") from e
            time.sleep(0.05)
        except sqlite3.DatabaseError as e:
            raise StorageError(f"storage {shown!r} is not a usable SQLite database: {e}") from e


def filesystem_of(path: str | Path, mounts: str | None = None) -> tuple[str, str] | None:
    """The mount point and type of the filesystem that holds ``path``.

    Args:
        path: A file or folder; a file that does not exist yet is looked up by its folder.
        mounts: The text of ``/proc/mounts``; read from there by default.

    Returns:
        ``(mount point, filesystem type)``, or ``None`` where the mount table cannot be read (not
        Linux).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    p = Path(path)
    target = str((p if p.exists() else p.parent).resolve())
    best: tuple[str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts writes a space in a mount point as \040 (and tab, newline, \\ alike).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # The last of equally long matches wins: a later mount hides an earlier one there.
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2])
    return best


def _check_local_filesystem(path: Path, shown: str) -> None:
    found = filesystem_of(path)
    if found is None:
        return
    point, fstype = found
    if fstype in NETWORK_FILESYSTEMS:
        message = (
            f"storage {shown!r} is on a network filesystem ({fstype} at {point!r}): SQLite's locks "
            "do not hold across machines and a shared file gets corrupted; use PostgreSQL for "
            "workers on several machines, or a local path for one machine"
        )
        if os.environ.get(NETWORK_SQLITE_ENV_VAR) != "1":
            raise StorageError(f"{message} (${NETWORK_SQLITE_ENV_VAR}=1 overrides)")
        _log.warning("lrsearch: warning: %s", message)
    elif fstype == "fuse" or fstype.startswith("fuse."):
        _log.warning(
            "lrsearch: warning: storage %r is on a FUSE filesystem (%s at %r); if that is a "
            "network share, SQLite's locks do not hold there: use PostgreSQL",
            shown,
            fstype,
            point,
        )


def open_storage(
    url: str | None = None, *, create: bool = True, wait: float = 0.0
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (resolved as in :func:`resolve_url`).

    Args:
        url: Storage URL; ``None`` resolves as in :func:`resolve_url`.
        create: Whether a missing SQLite file may be created; readers pass ``False`` so that a typo
            in ``--storage`` is reported instead of leaving an empty database behind.
        wait: Seconds to keep trying, with backoff, while the database cannot be reached (a
            server still starting, as in a compose start); 0 fails at once. Wrong credentials or
            a missing database fail at once either way.

    Raises:
        StorageError: The URL is invalid, its driver is missing, or the database cannot be reached
            (within ``wait``).
    """
    raw = resolve_url(url)
    shown = mask_url(raw)
    parsed = _parse(raw)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, shown, create=create)
    # Optuna fills the URL in with str.format: braces must reach it doubled.
    rendered = parsed.render_as_string(hide_password=False).replace("{", "{{").replace("}", "}}")
    start = time.monotonic()
    delay = _BACKOFF_START_S
    races = 0
    while True:
        try:
            storage = optuna.storages.RDBStorage(rendered, engine_kwargs=_engine_kwargs(parsed))
            break
        except ImportError as e:
            raise StorageError(
                f"storage {shown!r} needs a database driver: {e}; for PostgreSQL install "
                "'lrsearch[postgres]'"
            ) from e
        except (
            sqlalchemy.exc.SQLAlchemyError,
            optuna.exceptions.StorageInternalError,
            ValueError,
            RuntimeError,
            KeyError,
            IndexError,
        ) as e:
            if races < SCHEMA_RACE_TRIES and is_schema_race(e):
                # Another process is creating the same tables on a fresh database: once it
                # commits, they are there. Not a wait for the user to hear about.
                races += 1
                time.sleep(0.05 * races)
                continue
            detail = _detail(e, url_secrets(raw, parsed_password=parsed.password))
            waited = time.monotonic() - start
            if is_transient(e) and waited < wait:
                if delay == _BACKOFF_START_S:
                    _log.warning(
                        "lrsearch: waiting up to %.0f s for storage %r (%s)", wait, shown, detail
                    )
                time.sleep(min(delay, wait - waited))
                delay = min(2 * delay, _BACKOFF_MAX_S)
                continue
            if waited > 1.0:
                # `from None`: the chained driver error may repeat the connection parameters.
                raise StorageError(
                    f"cannot reach storage {shown!r} after {waited:.0f} s: {detail}; check that "
                    f"the database is up and the URL is right (${WAIT_ENV_VAR} sets the wait)"
                ) from None
            raise StorageError(f"cannot open storage {shown!r}: {detail}") from None
    if parsed.get_backend_name() == "sqlite":
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connect)
        storage.engine.dispose()  # the connections Optuna opened to create its tables lack it
    return storage


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _detail(error: BaseException, secrets: Sequence[str]) -> str:
    """The first line of the database's own message, ``secrets`` hidden."""
    cause: Any = error
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        cause = error.__cause__
    lines = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return hide(lines[0] if lines else type(cause).__name__, secrets)


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


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of every study in ``storage``."""
    return [s.study_name for s in storage.get_all_studies()]


def stored_spec(study: optuna.Study) -> StudySpec:
    """The spec saved inside ``study``.

    Raises:
        StorageError: The study was not created by lrsearch.
        SpecError: The stored spec no longer passes the checks of this version.
    """
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise StorageError(
            f"study {study.study_name!r} was not created by lrsearch (it has no stored spec); "
            "use another --study name"
        )
    source = f"study {study.study_name!r}"
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise SpecError(source, [f"the stored spec is not JSON ({e})"]) from e
    if not isinstance(data, dict):
        raise SpecError(source, ["the stored spec is not a table of sections"])
    return StudySpec.from_dict(data, source=source)


def load_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load an existing study.

    Raises:
        StudyNotFoundError: No study of that name; the message lists the ones there are.
    """
    names = study_names(storage)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise StudyNotFoundError(
            f"no study named {name!r} in this storage (studies here: {there}); "
            "check --study and --storage"
        )
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def create_or_resume(
    storage: optuna.storages.BaseStorage,
    name: str,
    spec: StudySpec,
    *,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """Create study ``name`` with ``spec`` saved in it, or resume it if it has the same search.

    Several workers may start on the same new study at once: one creates it, the others resume it
    (waiting briefly for the creator to store the spec).

    Returns:
        The study, and whether it already existed.

    Raises:
        StudyMismatchError: A study of that name exists with a different search (the differing keys
            are listed) or was not created by lrsearch.
        StorageError: ``name`` cannot name a study (too long for Optuna's schema).
    """
    problem = study_name_problem(name)
    if problem:
        raise StorageError(
            f"study name {name[:40] + '...' if len(name) > 40 else name!r} {problem}"
        )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            # [study] cost: a second objective, the trial's training cost, minimised.
            directions=[StudyDirection[direction.upper()], StudyDirection.MINIMIZE][
                : 2 if spec.study.cost else 1
            ],
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same_search(study, spec)
        return study, True
    # The study's own name, which `--study` may have given it, not the file's [study] name.
    spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, name=name))
    # Not sort_keys: the order of [groups] is meaning (first match wins; layer_decay is bottom-up).
    study.set_user_attr(SPEC_ATTR, json.dumps(spec.to_dict()))
    return study, False


def _check_same_search(study: optuna.Study, spec: StudySpec) -> None:
    deadline = time.monotonic() + SPEC_WAIT_S
    # A study without a spec and without trials may be another worker's, created a moment ago.
    while (
        SPEC_ATTR not in study.user_attrs
        and time.monotonic() < deadline
        and not study.get_trials(deepcopy=False)
    ):
        time.sleep(0.05)
    try:
        old = stored_spec(study)
    except (StorageError, SpecError) as e:
        raise StudyMismatchError(str(e)) from e
    diff = _diff(old.search_dict(), spec.search_dict())
    if not diff and old.groups.names != spec.groups.names:
        # Equal dicts may differ in order, and the order of [groups] is meaning.
        diff = [f"groups: order {list(old.groups.names)} -> {list(spec.groups.names)}"]
    if diff:
        raise StudyMismatchError(
            f"study {study.study_name!r} exists with a different search "
            f"({'; '.join(diff[:5])}); run it with its original file, or choose a new name "
            "with --study"
        )


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(f"{sub}: {old.get(key)!r} -> {new.get(key)!r}")
            else:
                out.extend(_diff(old[key], new[key], sub))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def trial_lrs(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The resolved ``{group: lr}`` a trial trained with (0.0 = frozen); empty if it has none."""
    return dict(trial.user_attrs.get(TRIAL_ATTR, {}).get("lrs", {}))


def trial_info(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Everything lrsearch stored about a trial when it started: lrs, weight_decay, host, pid."""
    info = dict(trial.user_attrs.get(TRIAL_ATTR, {}))
    info.setdefault("lrs", {})
    info.setdefault("weight_decay", None)
    info.setdefault("host", None)
    info.setdefault("pid", None)
    return info


class ResilientStorage(optuna.storages.BaseStorage):
    """An RDB storage whose calls outlive a lost connection or a locked SQLite file.

    Every call goes through Optuna's own cache of finished trials (what ``optuna.load_study`` on a
    URL uses) and is tried again, with backoff, while it fails on a transient error
    (:func:`is_transient`): a PostgreSQL restart, a connection killed by the server or a proxy, a
    SQLite lock held longer than its busy timeout. After ``retry_s`` seconds it gives up with a
    :class:`StorageError` naming the storage (masked).

    The few storage writes that are not idempotent may repeat when a connection drops after the
    server committed but before it answered: a new trial (``ask``) may then leave an extra trial
    RUNNING without a heartbeat. That needs a failure inside a commit's last round trip.

    Args:
        backend: The storage from :func:`open_storage`.
        shown: Its URL, masked, for messages.
        retry_s: How long one call keeps trying (default: :func:`lrsearch.outage.retry_limit`).
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
        delay = _BACKOFF_START_S
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
                        _detail(e, self._secrets),
                        self.retry_s,
                    )
                if now - start >= self.retry_s or self.should_stop():
                    why = "stopped waiting" if now - start < self.retry_s else "kept failing"
                    raise StorageUnavailable(
                        f"storage {self.shown!r} {why} after {now - start:.0f} s: "
                        f"{_detail(e, self._secrets)}; check the database "
                        f"(--storage-retry / ${RETRY_ENV_VAR} sets the wait)"
                    ) from None
                time.sleep(min(delay, start + self.retry_s - now))
                delay = min(2 * delay, _BACKOFF_MAX_S)
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

    # BaseStorage, each call through `call`.
    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self.call(self._inner.create_new_study, directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.call(self._inner.delete_study, study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.call(self._inner.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.call(self._inner.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.call(self._inner.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.call(self._inner.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.call(self._inner.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.call(self._inner.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.call(self._inner.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.call(self._inner.get_all_studies)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self.call(self._inner.create_new_trial, study_id, template_trial)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self.call(
            self._inner.set_trial_param, trial_id, param_name, param_value_internal, distribution
        )

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.call(
            self._inner.get_trial_id_from_study_id_trial_number, study_id, trial_number
        )

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        return self.call(self._inner.set_trial_state_values, trial_id, state, values)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self.call(self._inner.set_trial_intermediate_value, trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.call(self._inner.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.call(self._inner.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.call(self._inner.get_trial, trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self.call(self._inner.get_all_trials, study_id, deepcopy, states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.call(self._inner.get_best_trial, study_id)

    def set_new_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Set an attribute of a RUNNING trial of ours that does not have it yet; main thread only.

        One INSERT on lrsearch's own connection: Optuna's ``set_trial_user_attr`` opens a session,
        reads the trial to check that it is unfinished, then upserts, which costs a trial of a fast
        study several percent of its time. The caller knows the trial is new and running.
        """
        try:
            self.call(self._on_connection, _first_user_attr, trial_id, key, value)
        except sqlalchemy.exc.IntegrityError:  # set already: Optuna's checked upsert
            self.call(self._inner.set_trial_user_attr, trial_id, key, value)

    def record_heartbeat(self, trial_id: int) -> None:
        """Mark a new trial alive now (the database's clock); main thread only."""
        try:
            self.call(self._on_connection, _first_heartbeat, trial_id)
        except sqlalchemy.exc.IntegrityError:  # it has a heartbeat already
            self.call(self.backend.record_heartbeat, trial_id)

    def heartbeat_ages(self, study_id: int) -> dict[int, float | None]:
        """Seconds since the last heartbeat of each RUNNING trial of a study, by trial id.

        ``None`` for a trial that never had one. Ages are measured on the database's clock, so
        workers on machines whose clocks differ agree. Main thread only.
        """
        rows = self.call(self._on_connection, _running_rows, study_id)
        return {r.trial_id: r.age for r in rows}

    def count(self, study_id: int) -> BudgetCount:
        """Where a study stands against its budget, in one query; ``running`` counts every
        RUNNING trial, alive or not (:meth:`look` tells them apart). Main thread only."""
        return self.call(self._on_connection, _count, study_id)

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
        return self.call(self._on_connection, _look, study_id, grace, orphan_after)


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


def _first_heartbeat(conn: sqlalchemy.Connection, trial_id: int) -> None:
    # A new trial has no heartbeat yet: one INSERT instead of Optuna's read-then-write.
    conn.execute(_statements()["first_beat"], {"trial_id": trial_id})


def _first_user_attr(conn: sqlalchemy.Connection, trial_id: int, key: str, value: Any) -> None:
    # Stored as Optuna stores it (JSON text), so every reader of the study sees the same thing.
    conn.execute(
        _statements()["first_attr"],
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)},
    )


@dataclass(frozen=True)
class _Running:
    trial_id: int
    started_utc: datetime | None
    age: float | None  # seconds since the last heartbeat; None: never had one


def _running_rows(conn: sqlalchemy.Connection, study_id: int) -> list[_Running]:
    out = []
    for trial_id, started, beat, now in conn.execute(
        _statements()["running"], {"study_id": study_id}
    ):
        age = None
        if beat is not None:
            # As Optuna: PostgreSQL answers now() with a time zone, the column has none.
            age = (now.replace(tzinfo=None) - beat).total_seconds()
        out.append(_Running(trial_id, started, age))
    return out


@dataclass(frozen=True)
class StudyLook:
    """One look at a study: where it stands against its budget, and its lost trials."""

    count: BudgetCount  # `running`: the trials with a live heartbeat
    lost: tuple[int, ...]  # ids of RUNNING trials whose worker is gone


def _count(conn: sqlalchemy.Connection, study_id: int) -> BudgetCount:
    rows = conn.execute(_statements()["by_state"], {"study_id": study_id}).all()
    counts: dict[TrialState, int] = {state: n for state, n in rows}
    return BudgetCount(
        counted=sum(counts.get(state, 0) for state in FINISHED),
        running=counts.get(TrialState.RUNNING, 0),
        waiting=counts.get(TrialState.WAITING, 0),
    )


def _look(
    conn: sqlalchemy.Connection, study_id: int, grace: float, orphan_after: float
) -> StudyLook:
    running = _running_rows(conn, study_id)
    count = _count(conn, study_id)
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


def counts_against_budget(trial: FrozenTrial, replaced: Container[int]) -> bool:
    """Whether a stored trial counts against the budget (:func:`schema.counts_against_budget`).

    ``replaced``: the numbers some trial's ``lrsearch.retry_of`` names (:func:`replaced_numbers`).
    """
    return schema.counts_against_budget(
        trial.state.name, trial.user_attrs.get(OUTCOME_ATTR), trial.number, replaced
    )


def replaced_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of trials queued again after their worker was lost: their re-runs count."""
    return {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}


def count_budget(trials: Iterable[FrozenTrial], *, running: int | None = None) -> BudgetCount:
    """How far a study's trials are towards its budget (the rule: :mod:`lrsearch.search`).

    Args:
        trials: All trials of the study.
        running: How many trials are being trained now; default every RUNNING trial. The search
            passes those with a heartbeat: a trial without one can never be found stale, and
            waiting for it could last forever.
    """
    trials = list(trials)
    replaced = replaced_numbers(trials)
    return BudgetCount(
        counted=sum(1 for t in trials if counts_against_budget(t, replaced)),
        running=(
            running
            if running is not None
            else sum(1 for t in trials if t.state == TrialState.RUNNING)
        ),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
    )
