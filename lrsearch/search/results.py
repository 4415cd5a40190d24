"""What a search returns: each trial's :class:`TrialOutcome` and the run's :class:`SearchSummary`.

Plain data at the bottom of the package: the loop fills them, :mod:`lrsearch.search.api` returns
them, and ``on_trial`` callbacks (a progress bar) read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OnTrial", "SearchSummary", "TrialOutcome"]


@dataclass(frozen=True)
class TrialOutcome:
    """What became of one trial."""

    number: int
    outcome: str  # complete | pruned | diverged | failed | interrupted | lost
    value: float | None
    lrs: dict[str, float]
    seconds: float
    reason: str | None = None


@dataclass
class SearchSummary:
    """A run's result: what this run did and the study's best so far."""

    study: str
    storage: str
    direction: str
    budget: int
    resumed: bool
    already_finished: int
    outcomes: list[TrialOutcome] = field(default_factory=list)
    best_number: int | None = None
    best_value: float | None = None
    best_lrs: dict[str, float] | None = None
    interrupted: bool = False
    seconds: float = 0.0
    # Of ``seconds``, the time the trainer computed (its reports' storage writes and pruning
    # checks not counted); the rest went to asking, sampling, telling, sweeps and waits.
    training_seconds: float = 0.0
    # [winner] reseeds: what lrsearch.retrain.confirm found once the search budget was met.
    confirmation: dict[str, Any] | None = None

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)


OnTrial = Callable[[TrialOutcome, SearchSummary], None]
