"""What an SQLite file holds, looked at read-only before Optuna opens it.

Optuna creates its tables in whatever file it is given, and lrsearch switches the file to WAL: a
``studies`` or ``trials`` pointed at the wrong file (a 0-byte file, another program's database)
would change it. So the file is read first, through a read-only connection, and a file that is not
an Optuna database is refused: by readers always, by writers when it holds other tables.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
from pathlib import Path

from lrsearch.errors import StorageError

# Tables every Optuna RDB storage has (lrsearch's studies are Optuna studies), and all of them: a
# writer stopped while Optuna created its tables leaves some of them, which is no foreign file.
OPTUNA_TABLES = frozenset({"studies", "version_info"})
OPTUNA_ALL_TABLES = OPTUNA_TABLES | {
    "alembic_version",
    "study_directions",
    "study_system_attributes",
    "study_user_attributes",
    "trial_heartbeats",
    "trial_intermediate_values",
    "trial_params",
    "trial_system_attributes",
    "trial_user_attributes",
    "trial_values",
    "trials",
}


def tables_of(path: Path) -> set[str] | None:
    """The tables in SQLite file ``path``; ``None`` when it is not an SQLite database.

    An empty file is an empty database (``set()``). Read-only: the file is not changed.

    Raises:
        OSError: The file cannot be looked at.
        sqlite3.Error: SQLite cannot read it for another reason than its content (a full disk,
            where a WAL file's shared-memory index cannot be created; a lost permission).
    """
    # Never through a file descriptor of our own: closing one drops every POSIX lock this process
    # holds on the file, those of its open SQLite connections too, and another process may then
    # checkpoint and delete the WAL under them (committed trials of a killed worker were lost).
    # SQLite's own connections share one descriptor per file and close it last.
    if path.stat().st_size == 0:
        return set()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            return None
        raise
    # sqlite_sequence, sqlite_stat1: SQLite's own, in any database.
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def check_sqlite_file(path: Path, shown: str, *, create: bool) -> None:
    """Refuse an existing file that is not an Optuna database before anything writes to it.

    Args:
        path: The SQLite file (a missing file is the caller's concern).
        shown: The storage URL, masked, for messages.
        create: Whether the caller may create Optuna's tables (``run``, ``create``, ``worker``):
            it may use an empty file, but never one holding another program's tables. Readers
            (``False``) accept only an Optuna database.

    Raises:
        StorageError: The file is not an SQLite database, is empty (readers), or holds tables
            that are not Optuna's.
    """
    try:
        tables = tables_of(path)
    except (OSError, sqlite3.Error) as e:
        why = sqlite_failure(e, path, "check --storage")
        raise StorageError(f"storage {shown!r} is not a usable SQLite database: {why}") from None
    if tables is None:
        raise StorageError(
            f"storage {shown!r} is not a usable SQLite database (not an SQLite file); "
            "check --storage"
        )
    if tables >= OPTUNA_TABLES:
        return
    if create and tables <= OPTUNA_ALL_TABLES:
        return
    if not tables:
        raise StorageError(
            f"storage {shown!r}: {str(path)!r} is an empty database, with no studies; check "
            "--storage, or run a study there first"
        )
    listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise StorageError(
        f"storage {shown!r}: {str(path)!r} is another program's database (tables: {listed}), "
        "not an lrsearch/Optuna one; left untouched: give lrsearch a file of its own"
    )


# Below this, a disk is too full for SQLite: a WAL file's shared-memory index alone is 32 KiB.
_FULL_DISK_BYTES = 1 << 20


def sqlite_failure(error: OSError | sqlite3.Error, path: Path, hint: str | None = None) -> str:
    """Why SQLite file ``path`` could not be used, for a one-line message, with ``hint`` after it.

    A full disk says so, and what to do: SQLite may report one as a "disk I/O error" (no room
    for the shared-memory index of a WAL file), so an I/O error is told apart by the free space.
    """
    if isinstance(error, OSError):
        cause, io_error = error.strerror or str(error), error.errno == errno.ENOSPC
    else:
        # The primary code of an extended one; errors raised by Python's module itself have none.
        code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
        cause, io_error = str(error), code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    if io_error:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(path.parent).free
            if free < _FULL_DISK_BYTES:
                return (
                    f"the disk is full ({free} bytes free in {str(path.parent)!r}); free some "
                    "space there and run again"
                )
    return f"{cause}; {hint}" if hint else cause
