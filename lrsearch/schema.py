"""The vocabulary every writer and reader of a study shares, defined once.

What lrsearch stores beside Optuna's own columns (the user-attribute keys), the outcomes a trial can
have and the Optuna state each is stored as, the directions a metric can take, and the budget rule:
which stored trials count towards ``n_trials``. The search writes with these names; analysis,
report, launch, verify and export read with them. Standard library only, so that any reader (and
the torch-free ``lrsearch.config``) can import it without Optuna, SQLAlchemy or torch.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CONFIRM_ATTR",
    "DIRECTIONS",
    "GROUPS_ATTR",
    "LOSSES_ATTR",
    "LOST_REASON",
    "OUTCOME_ATTR",
    "REASON_ATTR",
    "RETRY_OF_ATTR",
    "SPEC_ATTR",
    "START_ATTR",
    "STATES",
    "TRIAL_ATTR",
    "BudgetCount",
    "Outcome",
    "counts_against_budget",
    "failure_outcome",
    "state_word",
    "value_outcome",
]

# Study attributes.
SPEC_ATTR = "lrsearch.spec"  # the study file as read: a resumed run with another search is refused
GROUPS_ATTR = "lrsearch.groups"  # {group: [pattern, ...]}, in order
CONFIRM_ATTR = "lrsearch.confirm"  # [winner] reseeds: what confirmation found
START_ATTR = "lrsearch.start"  # the start point enqueued by `[space] start`

# Trial attributes. TRIAL_ATTR holds {"lrs": {group: lr} for every group (0.0 = frozen),
# "weight_decay": float | None, "host": the worker's host name, "pid": its process id}: one
# attribute, so a trial costs one extra write, not four.
TRIAL_ATTR = "lrsearch.trial"
OUTCOME_ATTR = "lrsearch.outcome"  # every outcome but complete (its Optuna state says it)
REASON_ATTR = "lrsearch.reason"  # why it diverged or failed
# A trial queued again (same parameters) names the trial it re-runs, which then no longer counts
# against the budget; and how often this configuration has lost its worker so far.
RETRY_OF_ATTR = "lrsearch.retry_of"
LOSSES_ATTR = "lrsearch.losses"
LOST_REASON = "worker lost"  # the reason of a trial failed because its worker stopped beating

DIRECTIONS = ("maximize", "minimize")


class Outcome(str, Enum):
    """What became of a trial. A ``str``: stored, compared and printed as its value."""

    __str__ = str.__str__  # "complete", not "Outcome.COMPLETE", in messages and f-strings
    __format__ = str.__format__  # type: ignore[assignment]

    COMPLETE = "complete"
    PRUNED = "pruned"  # stopped early by the pruner
    DIVERGED = "diverged"  # a non-finite loss or metric
    FAILED = "failed"  # the trainer raised, ran out of memory, or its worker was lost
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C / SIGTERM: queued again, not counted

    @property
    def optuna_state(self) -> str:
        """The name of the ``optuna.trial.TrialState`` the outcome is stored as."""
        return _OPTUNA_STATE[self]


def state_word(optuna_state: str, stored: str | None) -> str:
    """The word a listing shows for a stored trial (one of :data:`STATES`).

    lrsearch's own outcome (``OUTCOME_ATTR``) wins where one is stored, since a diverged trial is
    stored PRUNED and an interrupted one FAIL; else the Optuna state's word.

    Args:
        optuna_state: The name of its ``optuna.trial.TrialState``.
        stored: Its ``OUTCOME_ATTR``, or ``None``.
    """
    return str(stored) if stored else _STATE_WORDS[optuna_state]


def failure_outcome(diverged: bool) -> Outcome:
    """The outcome of a training the trainer ended with a failure: ``diverged`` for a NaN/inf
    loss (``TrialFailure.diverged``), else ``failed``."""
    return Outcome.DIVERGED if diverged else Outcome.FAILED


def value_outcome(value: float) -> tuple[Outcome, str | None]:
    """The outcome of a training that returned ``value``, and why when it is not complete:
    ``(complete, None)``, or ``(diverged, reason)`` for a NaN/inf value, a divergence the trainer
    missed (Optuna refuses to complete a trial with one)."""
    if math.isfinite(value):
        return Outcome.COMPLETE, None
    return Outcome.DIVERGED, f"diverged: final value is {value}"


_OPTUNA_STATE = {
    Outcome.COMPLETE: "COMPLETE",
    Outcome.PRUNED: "PRUNED",
    Outcome.DIVERGED: "PRUNED",  # keeps its NaN report: TPE ranks it worst among its peers
    Outcome.FAILED: "FAIL",
    Outcome.INTERRUPTED: "FAIL",
}
# The states a listing of trials can show: every outcome, then the trials not finished yet.
STATES: tuple[str, ...] = (*(o.value for o in Outcome), "running", "waiting")
# A trial without a stored outcome, by its Optuna state's name.
_STATE_WORDS = {
    "COMPLETE": Outcome.COMPLETE.value,
    "PRUNED": Outcome.PRUNED.value,
    "FAIL": Outcome.FAILED.value,
    "RUNNING": "running",
    "WAITING": "waiting",
}
# Optuna states whose trials have ended (TrialState names).
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def counts_against_budget(
    optuna_state: str, outcome: str | None, number: int, replaced: Container[int]
) -> bool:
    """The budget rule: whether a stored trial counts towards ``n_trials``.

    It counts when it has ended (complete, pruned, diverged or failed), was not stopped by an
    interrupt (it is queued again instead), and was not queued again after its worker was lost
    (``replaced``: the numbers some trial's ``RETRY_OF_ATTR`` names; the re-run counts instead).
    The storage's one-query count (``lrsearch.storage``) is this rule written in SQL.
    """
    return (
        optuna_state in FINISHED_STATES
        and outcome != Outcome.INTERRUPTED
        and number not in replaced
    )


@dataclass(frozen=True)
class BudgetCount:
    """Where a study stands against its budget of ``n_trials`` finished trials."""

    counted: int  # finished trials that count against the budget
    running: int  # trials being trained now
    waiting: int  # queued trials: re-runs of lost or interrupted trials, or enqueued by hand

    def start_another(self, budget: int) -> bool:
        """Whether a worker should start a trial: queued work, or room the running ones leave."""
        if self.counted >= budget:
            return False
        return self.waiting > 0 or self.counted + self.running < budget
