"""The storage URL: which one is in force, what it may name, and how it is shown.

The URL comes from ``--storage``, then ``--storage-file``, then ``$LRSEARCH_STORAGE``, then the file
named by ``$LRSEARCH_STORAGE_FILE``, then ``sqlite:///lrsearch.db`` (:func:`resolve_url`): a URL
read from a file or the environment stays off command lines, where any user can read it. Passwords
are masked in every message (:func:`lrsearch.masking.mask_url`); a database's own error message is
shown with the URL's secrets hidden (:func:`error_detail`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from lrsearch.errors import StorageError
from lrsearch.masking import has_stray_at, hide, mask_url

ENV_VAR = "LRSEARCH_STORAGE"
FILE_ENV_VAR = "LRSEARCH_STORAGE_FILE"  # a file holding the URL (a Docker / Kubernetes secret)
DEFAULT_URL = "sqlite:///lrsearch.db"


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


def parse_url(url: str) -> URL:
    """``url`` parsed, checked to name a supported database, ``postgresql://`` meaning psycopg 3.

    Raises:
        StorageError: The URL does not parse, hides an unencoded ``@``, or names another database.
    """
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


def error_detail(error: BaseException, secrets: Sequence[str]) -> str:
    """The first line of the database's own message, ``secrets`` hidden."""
    cause: Any = error
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        cause = error.__cause__
    lines = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return hide(lines[0] if lines else type(cause).__name__, secrets)
