"""Reading finished studies: the studies in a storage, their trials as data, per-group statistics.

``list_studies`` and ``best_trials`` return plain dicts, so the CLI's ``studies`` and ``best`` stay
light. ``load_trials`` and ``load_curves`` return pandas DataFrames; pandas is imported inside the
functions that build them, so nothing here costs a worker (which never imports this package anyway)
or ``lrsearch best`` the pandas import.

Which module owns what, each importing only those above it:

- :mod:`~lrsearch.analysis.studies`: ``list_studies``, opening a storage for reading, the study's
  groups in order (``study_groups``);
- :mod:`~lrsearch.analysis.trials`: the trials DataFrame (``trials_frame``, ``load_trials``), the
  curves (``curves_frame``, ``load_curves``), outcomes (``trial_state``, ``filter_states``,
  ``outcome_counts``; ``STATES`` is :mod:`lrsearch.schema`'s), the complete trials and their ranking
  by :mod:`lrsearch.pick`'s rule (``complete_rows``, ``ranked_rows``) and the knob columns;
- :mod:`~lrsearch.analysis.formats`: writing trials (``FORMATS``, ``trials_table``,
  ``write_trials``) and ``format_rate``;
- :mod:`~lrsearch.analysis.best`: ``best_trials`` and ``trial_record`` (``lrsearch best``), what a
  trial's cost means;
- :mod:`~lrsearch.analysis.takeaways`: per-group statistics and takeaways (``group_stats``,
  ``GroupStats``, ``searched_ranges``);
- :mod:`~lrsearch.analysis.importance`: fANOVA importance (``group_importance``, ``Importance``).

Example:
    >>> import lrsearch
    >>> trials = lrsearch.load_trials("sqlite:///lrsearch.db", "quickstart")
    >>> trials[trials.state == "complete"].sort_values("value").tail(3)
"""

from __future__ import annotations

from lrsearch.analysis.best import COST_MEANINGS, best_trials, cost_meaning, trial_record
from lrsearch.analysis.formats import FORMATS, format_rate, trials_table, write_trials
from lrsearch.analysis.importance import MIN_IMPORTANCE_TRIALS, Importance, group_importance
from lrsearch.analysis.studies import list_studies, study_groups
from lrsearch.analysis.takeaways import TOP_K, GroupStats, group_stats, searched_ranges
from lrsearch.analysis.trials import (
    complete_rows,
    curves_frame,
    filter_states,
    knob_columns,
    load_curves,
    load_trials,
    outcome_counts,
    ranked_rows,
    trial_state,
    trials_frame,
)

# Every outcome a trial row can show, in the order tables and plots list them.
from lrsearch.schema import STATES

__all__ = [
    "COST_MEANINGS",
    "FORMATS",
    "MIN_IMPORTANCE_TRIALS",
    "STATES",
    "TOP_K",
    "GroupStats",
    "Importance",
    "best_trials",
    "complete_rows",
    "cost_meaning",
    "curves_frame",
    "filter_states",
    "format_rate",
    "group_importance",
    "group_stats",
    "knob_columns",
    "list_studies",
    "load_curves",
    "load_trials",
    "outcome_counts",
    "ranked_rows",
    "searched_ranges",
    "study_groups",
    "trial_record",
    "trial_state",
    "trials_frame",
    "trials_table",
    "write_trials",
]
