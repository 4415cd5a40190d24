"""Where studies live: storage URLs to Optuna RDB storages, and studies created, checked and loaded.

The URL comes from ``--storage``, then ``$LRSEARCH_STORAGE``, then ``sqlite:///lrsearch.db``.

- SQLite (one machine): the file is switched to WAL mode, so readers do not block the writer, and every
  connection waits up to a minute for a lock instead of failing with "database is locked".
- PostgreSQL (many workers, many machines): ``postgresql://`` means psycopg 3; connections are checked
  before use (``pool_pre_ping``: PostgreSQL and proxies drop idle ones) and recycled, and each process
  keeps a small pool, so many workers do not exhaust the server's connection slots.

A study keeps its spec in its user attributes (``lrsearch.spec``): running the same study name with a
different search is refused, and readers never need the original file. Passwords are masked in every
message (``mask_url``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from lrsearch.errors import SpecError, StorageError, StudyMismatchError, StudyNotFoundError
from lrsearch.spec import StudySpec

ENV_VAR = "LRSEARCH_STORAGE"
DEFAULT_URL = "sqlite:///lrsearch.db"
SPEC_ATTR = "lrsearch.spec"
SQLITE_BUSY_TIMEOUT_S = 60


def resolve_url(url: str | None = None) -> str:
    """The storage URL in force: the argument, then ``$LRSEARCH_STORAGE``, then the default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print."""
    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL may still hold a password: cut user info wholesale
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
    if parsed.password is None:
        return url
    return parsed.set(password="***").render_as_string(hide_password=False)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(
            f"invalid storage URL {mask_url(url)!r}; use sqlite:///path/to/file.db or "
            "postgresql://user@host:5432/dbname"
        ) from e
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


def _prepare_sqlite(parsed: URL, shown: str) -> None:
    database = parsed.database
    if not database or database == ":memory:":
        raise StorageError(
            f"storage {shown!r} is in memory and would vanish with this process; "
            "name a file: sqlite:///lrsearch.db"
        )
    path = Path(database)
    if not path.parent.exists():
        raise StorageError(
            f"storage {shown!r}: folder {str(path.parent)!r} does not exist; create it or fix the URL"
        )
    try:
        # WAL persists in the file; set it before Optuna's engine opens it.
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"storage {shown!r} is not a usable SQLite database: {e}") from e


def open_storage(url: str | None = None) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (resolved as in :func:`resolve_url`).

    Raises:
        StorageError: The URL is invalid, its driver is missing, or the database cannot be reached.
    """
    raw = resolve_url(url)
    shown = mask_url(raw)
    parsed = _parse(raw)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, shown)
    try:
        return optuna.storages.RDBStorage(
            parsed.render_as_string(hide_password=False), engine_kwargs=_engine_kwargs(parsed)
        )
    except ImportError as e:
        raise StorageError(
            f"storage {shown!r} needs a database driver: {e}; for PostgreSQL install "
            "'lrsearch[postgres]'"
        ) from e
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError) as e:
        detail = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise StorageError(
            f"cannot open storage {shown!r}: {detail.replace(str(parsed.password), '***')}"
        ) from None


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
    return StudySpec.from_dict(json.loads(raw), source=f"study {study.study_name!r}")


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

    Returns:
        The study, and whether it already existed.

    Raises:
        StudyMismatchError: A study of that name exists with a different search (the differing keys are
            listed) or was not created by lrsearch.
    """
    if name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        try:
            old = stored_spec(study)
        except (StorageError, SpecError) as e:
            raise StudyMismatchError(str(e)) from e
        diff = _diff(old.search_dict(), spec.search_dict())
        if diff:
            raise StudyMismatchError(
                f"study {name!r} exists with a different search ({'; '.join(diff[:5])}); "
                "run it with its original file, or choose a new name with --study"
            )
        return study, True
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=direction,  # type: ignore[arg-type]
        load_if_exists=True,  # another worker may create it between our check and here
    )
    study.set_user_attr(SPEC_ATTR, json.dumps(spec.to_dict(), sort_keys=True))
    return study, False


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
