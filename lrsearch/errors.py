"""Errors a user can fix.

Every error lrsearch raises on purpose derives from :class:`LrsearchError`; the CLI turns them into
one line on stderr and a non-zero exit. Anything else escaping is a bug.

The exit code is the error class's ``exit_code``, by one rule:

- **2**: what you wrote is wrong, as lrsearch checks it before any task code runs: a study file's
  syntax, keys and values, its groups against the model (:class:`GroupError`), its task entry's
  form and its ``[task] kwargs`` against the function's parameters; and command-line usage
  (click's own errors).
- **1**: anything else that stops a command: storage, a missing study or trial, a task module that
  cannot be imported, a task that raises, a device that is not there, a study of that name with
  another search.
"""

from __future__ import annotations

# The exit status of a command stopped by Ctrl-C / SIGTERM (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


class LrsearchError(Exception):
    """Base of every error a user can fix; its message names the problem and the fix."""

    exit_code = 1


class SpecError(LrsearchError):
    """A study file (or the spec stored in a study) is invalid.

    Collects every problem found in one pass; ``problems`` holds them one per line.
    """

    exit_code = 2

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            listed = "; ".join(self.problems)
            message = f"{source}: {len(self.problems)} problems: {listed}"
        super().__init__(message)


class TaskError(LrsearchError):
    """A task entry point cannot be imported, called, or does not behave as a task."""


class TaskSpecError(TaskError):
    """The study file's ``[task]`` is wrong: an entry not of the form ``"package.module:function"``,
    or ``kwargs`` that the function does not take."""

    exit_code = 2


class UntrustedTaskError(TaskError):
    """A task entry read from a study that this process was not told to run (lrsearch.trust)."""


class GroupError(LrsearchError):
    """Layer groups do not partition a model's trainable parameters (the study file is wrong)."""

    exit_code = 2


class StorageError(LrsearchError):
    """A storage URL is invalid or its database cannot be reached (passwords masked)."""


class StudyNotFoundError(StorageError):
    """The named study does not exist in the storage."""


class StudyMismatchError(StorageError):
    """A study of that name exists with a different spec."""


class ExportError(LrsearchError):
    """An exported optimizer config is invalid or does not fit the model it is applied to."""


class TrialFailure(Exception):
    """Raised by the trainer when a trial cannot finish; ``reason`` is stored with the trial.

    Not a user error: the search records it and goes on with the next trial.
    """

    def __init__(self, reason: str, *, diverged: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.diverged = diverged


class StorageUnavailable(StorageError):
    """The database stayed unreachable for the whole retry limit (or a stop was asked meanwhile).

    The trial in flight is not failed for it: it is stored as interrupted and queued again if the
    database answers in time, else left RUNNING for a sweep to queue it again.
    """
