"""Which task entries this process may import: a study's stored entry is code, the database is not.

A study stores its ``[task] entry`` (``package.module:function``) so that ``worker`` and ``verify``
need no study file. Whoever can write the database could then choose what every worker imports and
calls. So a stored entry runs only when the person starting the process allowed it here:

- a built-in task (:data:`BUILTIN_TASKS`); its stored kwargs are data, passed as keywords;
- an entry given with ``--allow-task`` (repeatable) or listed in ``$LRSEARCH_ALLOW_TASKS``
  (comma-separated). ``package.module:*`` allows every function of that one module.

``run``, ``create`` and ``launch`` read the user's own study file: its entry is allowed by being
there (``launch`` passes it to its workers as ``--allow-task``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from lrsearch.errors import UntrustedTaskError

ENV_VAR = "LRSEARCH_ALLOW_TASKS"
BUILTIN_TASKS = frozenset(
    {
        "lrsearch.tasks.digits:digits_transfer",
        "lrsearch.tasks.text:rotten_tomatoes_minilm",
        "lrsearch.tasks.vision:fashion_mnist_mobilenet",
    }
)


def allowed_tasks(extra: Iterable[str] = ()) -> frozenset[str]:
    """The entries allowed here: the built-in tasks, ``extra`` and ``$LRSEARCH_ALLOW_TASKS``."""
    listed = os.environ.get(ENV_VAR, "").split(",")
    return BUILTIN_TASKS | {e.strip() for e in (*extra, *listed) if e.strip()}


def is_allowed(entry: str, allowed: Iterable[str]) -> bool:
    """Whether ``entry`` is in ``allowed`` exactly, or its module is allowed as ``module:*``."""
    module, sep, _ = entry.partition(":")
    allowed = set(allowed)
    return entry in allowed or (bool(sep) and f"{module}:*" in allowed)


def check_stored_entry(entry: str, study: str, extra: Iterable[str] = ()) -> None:
    """Refuse to import a task entry read from a study unless it is allowed here.

    Args:
        entry: The stored ``[task] entry``.
        study: The study's name, for the message.
        extra: Entries allowed by the caller (``--allow-task``).

    Raises:
        UntrustedTaskError: ``entry`` is not allowed; nothing was imported.
    """
    if is_allowed(entry, allowed_tasks(extra)):
        return
    raise UntrustedTaskError(
        f"study {study!r} names task entry {entry!r}, which is not allowed here: an entry is code "
        "this process would import and run, and anyone who can write the study database can "
        f"change it; if you trust it, pass --allow-task {entry} (or add it to ${ENV_VAR})"
    )
