"""Where studies live: storage URLs to Optuna RDB storages, and studies created, checked and loaded.

The URL comes from ``--storage``, then ``$LRSEARCH_STORAGE``, then ``sqlite:///lrsearch.db``.

- SQLite (one machine): the file is switched to WAL mode, so readers do not block the writer, and
  every connection waits up to a minute for a lock instead of failing with "database is locked".
  Connections use ``synchronous=NORMAL``, which WAL makes safe from corruption: a commit no longer
  waits for the disk (a trial is a dozen commits), and a power cut can lose only the last commits.
- PostgreSQL (many workers, many machines): ``postgresql://`` means psycopg 3; connections are
  checked before use (``pool_pre_ping``: PostgreSQL and proxies drop idle ones) and recycled, and
  each process keeps a small pool, so many workers do not exhaust the server's connection slots.

A study keeps its spec in its user attributes (``lrsearch.spec``): running the same study name with
a different search is refused, and readers never need the original file. Passwords are masked in
every message (``mask_url``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import optuna
import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from lrsearch.errors import SpecError, StorageError, StudyMismatchError, StudyNotFoundError
from lrsearch.spec import StudySpec

ENV_VAR = "LRSEARCH_STORAGE"
DEFAULT_URL = "sqlite:///lrsearch.db"
SPEC_ATTR = "lrsearch.spec"
# Where lrsearch keeps what readers need (here, so that readers need not import torch):
GROUPS_ATTR = "lrsearch.groups"  # study: {group: [pattern, ...]}, in order
# trial: {"lrs": {group: lr} for every group (0.0 = frozen), "weight_decay": float | None,
# "host": the worker's host name}; one attribute, so a trial costs one extra write, not three.
TRIAL_ATTR = "lrsearch.trial"
OUTCOME_ATTR = "lrsearch.outcome"  # trial: pruned | diverged | failed | interrupted
REASON_ATTR = "lrsearch.reason"  # trial: why it diverged or failed
SQLITE_BUSY_TIMEOUT_S = 60
# How long to wait for the spec of a study another worker has just created (its two writes are
# not one transaction).
SPEC_WAIT_S = 5.0
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:password|passwd|pwd)=)[^&;]*")


def resolve_url(url: str | None = None) -> str:
    """The storage URL in force: the argument, then ``$LRSEARCH_STORAGE``, then the default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print.

    Works on the text, not on a parsed URL: a URL that does not parse, or whose password holds an
    unencoded ``@`` or ``/``, must not leak it either. Everything between ``user:`` and the last
    ``@`` is hidden (at worst a little too much), and so is a ``password=`` query parameter.

    Example:
        >>> mask_url("postgresql://me:s3cret@db:5432/lr")
        'postgresql://me:***@db:5432/lr'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{host}"
    return _QUERY_SECRET.sub(r"\1***", f"{scheme}{sep}{rest}")


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:  # ValueError: a port that is no number
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
    try:
        # WAL persists in the file; set it before Optuna's engine opens it.
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"storage {shown!r} is not a usable SQLite database: {e}") from e


def open_storage(url: str | None = None, *, create: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (resolved as in :func:`resolve_url`).

    Args:
        url: Storage URL; ``None`` resolves as in :func:`resolve_url`.
        create: Whether a missing SQLite file may be created; readers pass ``False`` so that a typo
            in ``--storage`` is reported instead of leaving an empty database behind.

    Raises:
        StorageError: The URL is invalid, its driver is missing, or the database cannot be reached.
    """
    raw = resolve_url(url)
    shown = mask_url(raw)
    parsed = _parse(raw)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, shown, create=create)
    # Optuna fills the URL in with str.format: braces must reach it doubled.
    rendered = parsed.render_as_string(hide_password=False).replace("{", "{{").replace("}", "}}")
    try:
        storage = optuna.storages.RDBStorage(rendered, engine_kwargs=_engine_kwargs(parsed))
    except ImportError as e:
        raise StorageError(
            f"storage {shown!r} needs a database driver: {e}; for PostgreSQL install "
            "'lrsearch[postgres]'"
        ) from e
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError, KeyError, IndexError) as e:
        lines = str(getattr(e, "orig", None) or e).strip().splitlines()
        detail = _hide(lines[0] if lines else type(e).__name__, parsed.password)
        # `from None`: the chained driver error may repeat the connection parameters.
        raise StorageError(f"cannot open storage {shown!r}: {detail}") from None
    if parsed.get_backend_name() == "sqlite":
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connect)
        storage.engine.dispose()  # the connections Optuna opened to create its tables lack it
    return storage


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _hide(text: str, password: str | None) -> str:
    if not password:
        return text
    for form in {password, quote_plus(password), quote(password, safe="")}:
        text = text.replace(form, "***")
    return text


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
    """
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=direction,  # type: ignore[arg-type]
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same_search(study, spec)
        return study, True
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
    """Everything lrsearch stored about a trial when it started: lrs, weight_decay, host."""
    info = dict(trial.user_attrs.get(TRIAL_ATTR, {}))
    info.setdefault("lrs", {})
    info.setdefault("weight_decay", None)
    info.setdefault("host", None)
    return info
