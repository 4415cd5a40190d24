"""The search of ``run`` and ``worker``: ask Optuna for a trial, train it, tell the result.

Layers, bottom up (a module imports only the ones above it in this list):

- :mod:`~lrsearch.search.results`: what a search returns (:class:`TrialOutcome`,
  :class:`SearchSummary`).
- :mod:`~lrsearch.search.sampler`: which Optuna sampler a ``[sampler] kind`` means (``auto``'s
  rule included).
- :mod:`~lrsearch.search.factories`: the study's sampler and pruner (:func:`make_sampler`,
  :func:`make_pruner`).
- :func:`prepare` and :class:`Prepared` come from :mod:`lrsearch.training.prepare`: everything
  checked before a study is touched.
- :mod:`~lrsearch.search.signals`: SIGTERM / SIGINT during a search.
- :mod:`~lrsearch.search.liveness`: heartbeats, sweeps of lost trials, re-queueing their
  configurations, and the settings of all that (:class:`Liveness`).
- :mod:`~lrsearch.search.context`: what the loop hands down to every step of a trial.
- :mod:`~lrsearch.search.fate`: a trial's outcome, decided and told to Optuna in one place.
- :mod:`~lrsearch.search.trial`: one trial's life: sample, train, report.
- :mod:`~lrsearch.search.batch`: ``[train] batch_trials``: trials trained together.
- :mod:`~lrsearch.search.loop`: the loop and the budget rule every worker follows.
- :mod:`~lrsearch.search.api`: ``create``, ``run`` and ``worker`` (:func:`create_study`,
  :func:`run_search`, :func:`run_worker`).

This package is also callable: ``lrsearch.search(model_fn, train, val, ...)`` is the notebook API
(:func:`lrsearch.notebook.search`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from lrsearch.search.api import (
    CreatedStudy,
    Liveness,
    SearchSummary,
    TrialOutcome,
    create_study,
    run_search,
    run_worker,
)
from lrsearch.search.factories import make_pruner, make_sampler
from lrsearch.training.prepare import Prepared, prepare

__all__ = [
    "CreatedStudy",
    "Liveness",
    "Prepared",
    "SearchSummary",
    "TrialOutcome",
    "create_study",
    "make_pruner",
    "make_sampler",
    "prepare",
    "run_search",
    "run_worker",
]


class _NotebookModule(types.ModuleType):
    """This package, callable as ``lrsearch.search(model_fn, train, val, ...)``.

    Importing ``lrsearch.search`` makes it the package's ``search`` attribute, which is also the
    name of the notebook API (:func:`lrsearch.notebook.search`): a call goes there.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from lrsearch.notebook import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _NotebookModule
