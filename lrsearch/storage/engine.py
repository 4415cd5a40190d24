"""Opening a storage: the SQLAlchemy engine, the SQLite rules, and waiting for a database.

- SQLite (one machine): the file is switched to WAL mode, so readers do not block the writer, and
  every connection waits up to a minute for a lock instead of failing with "database is locked".
  Connections use ``synchronous=NORMAL``, which WAL makes safe from corruption: a commit no longer
  waits for the disk (a trial is a dozen commits), and a power cut can lose only the last commits.
  A file on a network filesystem (NFS, SMB, sshfs) is refused: SQLite's locks and WAL's shared
  memory do not work across machines (``$LRSEARCH_ALLOW_NETWORK_SQLITE=1`` overrides, with a
  warning). A file that is not an Optuna database is refused before anything writes to it
  (:mod:`lrsearch.storage.sqlite_file`).
- PostgreSQL (many workers, many machines): ``postgresql://`` means psycopg 3; connections are
  checked before use (``pool_pre_ping``: PostgreSQL and proxies drop idle ones) and recycled, and
  each process keeps a small pool, so many workers do not exhaust the server's connection slots.

:func:`open_storage` can wait for a server that is not up yet (``wait``; ``$LRSEARCH_DB_WAIT`` for
the commands, :func:`db_wait`). Processes creating the tables of a fresh database at once try
again instead of failing (:func:`lrsearch.storage.outage.is_schema_race`).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy.engine import URL

from lrsearch.errors import StorageError
from lrsearch.masking import mask_url, url_secrets
from lrsearch.storage.outage import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    SCHEMA_RACE_TRIES,
    is_schema_race,
    is_transient,
)
from lrsearch.storage.sqlite_file import check_sqlite_file, sqlite_failure
from lrsearch.storage.urls import ENV_VAR, error_detail, parse_url, resolve_url

WAIT_ENV_VAR = "LRSEARCH_DB_WAIT"  # seconds `run`, `create` and `worker` wait for the database
NETWORK_SQLITE_ENV_VAR = "LRSEARCH_ALLOW_NETWORK_SQLITE"
SQLITE_BUSY_TIMEOUT_S = 60
DEFAULT_DB_WAIT_S = 60.0
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

_log = logging.getLogger("lrsearch")


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
        except sqlite3.DatabaseError as e:
            locked = isinstance(e, sqlite3.OperationalError) and "locked" in str(e)
            if not locked or time.monotonic() >= deadline:
                raise StorageError(
                    f"storage {shown!r} is not a usable SQLite database: {sqlite_failure(e, path)}"
                ) from e
            time.sleep(0.05)


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
    parsed = parse_url(raw)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, shown, create=create)
    # Optuna fills the URL in with str.format: braces must reach it doubled.
    rendered = parsed.render_as_string(hide_password=False).replace("{", "{{").replace("}", "}}")
    start = time.monotonic()
    delay = BACKOFF_START_S
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
            detail = error_detail(e, url_secrets(raw, parsed_password=parsed.password))
            waited = time.monotonic() - start
            if is_transient(e) and waited < wait:
                if delay == BACKOFF_START_S:
                    _log.warning(
                        "lrsearch: waiting up to %.0f s for storage %r (%s)", wait, shown, detail
                    )
                time.sleep(min(delay, wait - waited))
                delay = min(2 * delay, BACKOFF_MAX_S)
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
