"""Retraining stored trials with more seeds: ``lrsearch confirm`` and ``lrsearch verify``'s engine.

- :mod:`~lrsearch.retrain.records`: the runs stored with a study, their seeds and summaries
  (Optuna only: readers such as ``best``, ``export`` and ``report`` import this without torch).
- :mod:`~lrsearch.retrain.retrainer`: :class:`Retrainer`, which trains a trial's config with
  given seeds and stores each run as it ends.
- :mod:`~lrsearch.retrain.confirm`: noise-aware winners (:func:`confirm_study`), which ``run``
  calls once its search budget is met.

Below the search (which confirms at the end of ``run``) and above storage and training;
``lrsearch.verify`` (the winner against a single rate) sits above the search.
"""

from __future__ import annotations

from lrsearch.retrain.confirm import confirm_study, search_budget
from lrsearch.retrain.records import (
    describe,
    seed_values,
    stored_values,
    stored_verifications,
)
from lrsearch.retrain.retrainer import Retrainer

__all__ = [
    "Retrainer",
    "confirm_study",
    "describe",
    "search_budget",
    "seed_values",
    "stored_values",
    "stored_verifications",
]
