"""A study's trials as pandas DataFrames: one row per trial, and the long form of its curves.

pandas is imported inside the functions that build the frames, so importing this module costs a
worker (which never imports it anyway) or ``lrsearch best`` nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from lrsearch.analysis.studies import _open, _readable, study_groups
from lrsearch.errors import LrsearchError
from lrsearch.pick import cost, rank_key

# Not from lrsearch.search: that imports torch, and `lrsearch best` should start fast.
from lrsearch.schema import OUTCOME_ATTR, REASON_ATTR, STATES, Outcome, state_word
from lrsearch.storage import load_study, trial_info

if TYPE_CHECKING:
    import pandas as pd


# The columns every trials frame has besides the per-group and knob columns.
_FIXED_COLUMNS = (
    "number",
    "state",
    "value",
    "cost",
    "duration_s",
    "pruned_step",
    "reason",
    "host",
    "datetime_start",
    "datetime_complete",
    "n_evaluations",
)


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's outcome: complete, pruned, diverged, failed, interrupted, running or waiting.

    lrsearch's own word (``lrsearch.outcome``) wins over Optuna's state: a diverged trial is stored
    as PRUNED, an interrupted one as FAIL.
    """
    return state_word(trial.state.name, trial.user_attrs.get(OUTCOME_ATTR))


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """The trials of a loaded study as a DataFrame; see :func:`load_trials` for the columns.

    Raises:
        LrsearchError: The study has several objectives and is not lrsearch's.
    """
    import pandas as pd

    _readable(study)
    groups = study_groups(study)
    trials = study.get_trials(deepcopy=False)
    infos = [trial_info(t) for t in trials]
    lrs = [{g: _float(info["lrs"].get(g)) for g in groups} for info in infos]
    knobs = ["weight_decay"]
    # lrsearch's own parameters show as lr.<group> / frozen.<group>; any other, also a plain
    # Optuna study's "lr.head", is a column of its own.
    ours = {f"{kind}.{g}" for g in groups for kind in ("lr", "freeze")}
    for t in trials:
        knobs.extend(n for n in t.params if n not in ours and n not in knobs)
    cols: dict[str, Any] = {
        "number": pd.Series([t.number for t in trials], dtype="int64"),
        "state": pd.Series([trial_state(t) for t in trials]),
        "value": pd.Series(
            [_float(t.values[0]) if t.values else math.nan for t in trials], dtype="float64"
        ),
        "cost": pd.Series(
            [_float(cost(t)) if t.state == TrialState.COMPLETE else math.nan for t in trials],
            dtype="float64",
        ),
        "duration_s": pd.Series(
            [t.duration.total_seconds() if t.duration else math.nan for t in trials],
            dtype="float64",
        ),
    }
    for g in groups:
        cols[f"lr.{g}"] = pd.Series([r[g] for r in lrs], dtype="float64")
    for g in groups:
        # Unknown (a trial that died before sampling) stays <NA>, not False.
        flags = [None if math.isnan(r[g]) else r[g] == 0.0 for r in lrs]
        cols[f"frozen.{g}"] = pd.Series(flags, dtype="boolean")
    for knob in knobs:
        values = [
            info["weight_decay"] if knob == "weight_decay" else t.params.get(knob)
            for t, info in zip(trials, infos, strict=True)
        ]
        numeric = all(v is None or isinstance(v, (int, float)) for v in values)
        cols[knob] = pd.Series(
            [_float(v) for v in values] if numeric else values,
            dtype="float64" if numeric else object,
        )
    cols["pruned_step"] = pd.Series(
        [
            max(t.intermediate_values)
            if trial_state(t) in (Outcome.PRUNED, Outcome.DIVERGED) and t.intermediate_values
            else None
            for t in trials
        ],
        dtype="Int64",
    )
    cols["reason"] = pd.Series([t.user_attrs.get(REASON_ATTR) for t in trials])
    cols["host"] = pd.Series([info["host"] for info in infos])
    cols["datetime_start"] = pd.to_datetime(
        pd.Series([t.datetime_start for t in trials], dtype=object)
    )
    cols["datetime_complete"] = pd.to_datetime(
        pd.Series([t.datetime_complete for t in trials], dtype=object)
    )
    cols["n_evaluations"] = pd.Series([len(t.intermediate_values) for t in trials], dtype="int64")
    return pd.DataFrame(cols)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def load_trials(storage: optuna.storages.BaseStorage | str | None, study_name: str) -> pd.DataFrame:
    """A study's trials as a pandas DataFrame, one row per trial, in trial order.

    Columns: ``number``; ``state`` (complete, pruned, diverged, failed, interrupted, running,
    waiting); ``value`` (the metric; Optuna's: a pruned trial's is its last evaluation);
    ``cost`` (a complete trial's training cost: the second objective of a study with ``[study]
    cost``, else its wall seconds; see :mod:`lrsearch.pick`); ``duration_s``;
    ``lr.<group>`` for every group in the study's order (0.0 = frozen, NaN = never sampled);
    ``frozen.<group>`` (nullable bool); ``weight_decay`` and any other searched knob;
    ``pruned_step`` (the last reported step of a pruned or diverged trial); ``reason`` (why it
    diverged or failed); ``host`` (the worker's); ``datetime_start``, ``datetime_complete``;
    ``n_evaluations`` (intermediate values reported).

    Args:
        storage: An Optuna storage, or a storage URL (``None``: ``$LRSEARCH_STORAGE``, then
            ``sqlite:///lrsearch.db``); a URL is opened read-only-minded (no new database file).
        study_name: The study.

    Returns:
        The trials; empty (with every column) when the study has none.

    Raises:
        StorageError: The storage cannot be opened.
        StudyNotFoundError: No such study (the message lists the studies there are).
        LrsearchError: The study has several objectives and is not lrsearch's.

    Example:
        >>> df = load_trials("sqlite:///lrsearch.db", "quickstart")
        >>> df.groupby("frozen.body")["value"].mean()
    """
    return trials_frame(load_study(_open(storage), study_name))


def curves_frame(study: optuna.Study) -> pd.DataFrame:
    """The intermediate values of a loaded study; see :func:`load_curves`."""
    import pandas as pd

    rows = [
        (t.number, int(step), float(value), trial_state(t))
        for t in study.get_trials(deepcopy=False)
        for step, value in sorted(t.intermediate_values.items())
    ]
    frame = pd.DataFrame(rows, columns=["number", "step", "value", "state"])
    return frame.astype({"number": "int64", "step": "int64", "value": "float64"})


def load_curves(storage: optuna.storages.BaseStorage | str | None, study_name: str) -> pd.DataFrame:
    """Every intermediate value of a study, long form: ``number``, ``step``, ``value``, ``state``.

    A diverged trial's last value is NaN, at the step after its last evaluation.

    Args:
        storage: An Optuna storage or a storage URL (as in :func:`load_trials`).
        study_name: The study.

    Raises:
        StorageError: The storage cannot be opened.
        StudyNotFoundError: No such study.
    """
    return curves_frame(load_study(_open(storage), study_name))


def filter_states(trials: pd.DataFrame, states: Iterable[str]) -> pd.DataFrame:
    """The rows of ``trials`` whose ``state`` is one of ``states`` (all rows when it is empty).

    Raises:
        LrsearchError: A state that no trial can have.
    """
    wanted = list(states)
    unknown = [s for s in wanted if s not in STATES]
    if unknown:
        raise LrsearchError(f"unknown state(s) {unknown}; choose from {', '.join(STATES)}")
    if not wanted:
        return trials
    return trials[trials["state"].isin(wanted)].reset_index(drop=True)


def knob_columns(trials: pd.DataFrame) -> list[str]:
    """The extra knobs of a trials frame (weight_decay, layer decay's base_lr ...) that have a
    value in some row."""
    return [
        c
        for c in trials.columns
        if c not in _FIXED_COLUMNS
        and not c.startswith(("lr.", "frozen."))
        and trials[c].notna().any()
    ]


def outcome_counts(trials: pd.DataFrame) -> dict[str, int]:
    """How many trials ended each way, every state of :data:`STATES` present (0 when none)."""
    counts = trials["state"].value_counts()
    return {s: int(counts.get(s, 0)) for s in STATES}


def complete_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``trials`` that completed with a value."""
    return trials[(trials["state"] == Outcome.COMPLETE) & trials["value"].notna()]


def ranked_rows(trials: pd.DataFrame, *, maximize: bool) -> pd.DataFrame:
    """:func:`complete_rows`, best first in :func:`lrsearch.pick.rank`'s order (ties: the earliest).

    Args:
        trials: From :func:`load_trials` (the ``state``, ``value`` and ``number`` columns).
        maximize: The metric's direction.
    """
    done = complete_rows(trials)
    keys = [
        rank_key(float(v), int(n), maximize=maximize)
        for v, n in zip(done["value"], done["number"], strict=True)
    ]
    return done.iloc[sorted(range(len(keys)), key=keys.__getitem__)]
