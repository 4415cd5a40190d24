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
``--storage-retry`` seconds (:mod:`lrsearch.storage.outage`; default :data:`STORAGE_RETRY_S`).
Processes creating the tables of a fresh database at once try again instead of failing.

A study keeps its spec in its user attributes (``lrsearch.spec``): running the same study name with
a different search is refused, and readers never need the original file. Passwords are masked in
every message (``mask_url``).

Who owns what (each module imports only those listed below it):

- :mod:`~lrsearch.storage.studies`: the study life cycle (:func:`create_or_resume`,
  :func:`load_study`, :func:`stored_spec`, :func:`study_names`), what a trial stored
  (:func:`trial_info`, :func:`trial_lrs`) and the budget over stored trials
  (:func:`count_budget`, :func:`counts_against_budget`, :func:`replaced_numbers`).
- :mod:`~lrsearch.storage.resilient`: :class:`ResilientStorage`, every call retried.
- :mod:`~lrsearch.storage.optuna_schema`: lrsearch's own SQL against Optuna's tables (the
  one-query budget count and look, first heartbeat and attribute inserts).
- :mod:`~lrsearch.storage.engine`: :func:`open_storage` (the SQLAlchemy engine, the SQLite rules,
  :func:`filesystem_of`, waiting for a server) and :func:`db_wait`.
- :mod:`~lrsearch.storage.urls`: :func:`resolve_url`, :func:`read_url_file`, parsing a URL, and
  database messages with the URL's secrets hidden.
- :mod:`~lrsearch.storage.outage`: the retry limit, which errors pass (:func:`is_transient`), and
  the race of processes creating the schema at once.
- :mod:`~lrsearch.storage.sqlite_file`: an SQLite file looked at read-only, and refused when it is
  not an Optuna database.
"""

from __future__ import annotations

from lrsearch.masking import mask_url
from lrsearch.storage.engine import (
    DEFAULT_DB_WAIT_S,
    NETWORK_FILESYSTEMS,
    NETWORK_SQLITE_ENV_VAR,
    SQLITE_BUSY_TIMEOUT_S,
    WAIT_ENV_VAR,
    db_wait,
    filesystem_of,
    open_storage,
)
from lrsearch.storage.optuna_schema import FINISHED, StudyLook
from lrsearch.storage.outage import is_transient
from lrsearch.storage.resilient import STORAGE_RETRY_S, ResilientStorage
from lrsearch.storage.studies import (
    SPEC_WAIT_S,
    count_budget,
    counts_against_budget,
    create_or_resume,
    load_study,
    replaced_numbers,
    stored_spec,
    study_names,
    trial_info,
    trial_lrs,
)
from lrsearch.storage.urls import DEFAULT_URL, ENV_VAR, FILE_ENV_VAR, read_url_file, resolve_url

__all__ = [
    "DEFAULT_DB_WAIT_S",
    "DEFAULT_URL",
    "ENV_VAR",
    "FILE_ENV_VAR",
    "FINISHED",
    "NETWORK_FILESYSTEMS",
    "NETWORK_SQLITE_ENV_VAR",
    "SPEC_WAIT_S",
    "SQLITE_BUSY_TIMEOUT_S",
    "STORAGE_RETRY_S",
    "WAIT_ENV_VAR",
    "ResilientStorage",
    "StudyLook",
    "count_budget",
    "counts_against_budget",
    "create_or_resume",
    "db_wait",
    "filesystem_of",
    "is_transient",
    "load_study",
    "mask_url",
    "open_storage",
    "read_url_file",
    "replaced_numbers",
    "resolve_url",
    "stored_spec",
    "study_names",
    "trial_info",
    "trial_lrs",
]
