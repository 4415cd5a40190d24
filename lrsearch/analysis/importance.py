"""How much of the metric's variance each group's rate (or knob) explains: fANOVA over the complete
trials, via Optuna's ``get_param_importances``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from lrsearch.analysis.trials import complete_rows, knob_columns

if TYPE_CHECKING:
    import pandas as pd


# Fewer complete trials than this and fANOVA's forest says nothing worth a bar chart.
MIN_IMPORTANCE_TRIALS = 4


@dataclass(frozen=True)
class Importance:
    """How much of the metric's variance each group's rate (or knob) explains."""

    values: dict[str, float]  # name -> share (sums to 1), largest first; empty when not estimated
    note: str  # what was measured, or why nothing could be


def group_importance(
    study: optuna.Study, trials: pd.DataFrame, groups: Sequence[str]
) -> Importance:
    """fANOVA importance (``optuna.importance.get_param_importances``) over the complete trials.

    Optuna's own parameters make a conditional space (``lr.body`` exists only when body trained),
    and its importance looks only at parameters every trial has, so a per-group space is measured
    per group instead: each group's rate on a log scale, frozen counted as a rate a decade below
    the lowest one tried (a tree splits it off as its own region). Searched knobs (weight decay)
    join them. Other spaces (layer decay) use Optuna's parameters as they are.

    Args:
        study: The loaded study.
        trials: Its trials (:func:`trials_frame`).
        groups: Its groups, in order.

    Returns:
        The importances, or none with a note saying why (too few complete trials, nothing varied).
    """
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = complete_rows(trials)
    n = len(done)
    if n < MIN_IMPORTANCE_TRIALS:
        return Importance(
            {},
            f"too few complete trials ({n}) to estimate importance: it needs at least "
            f"{MIN_IMPORTANCE_TRIALS}",
        )
    evaluator = FanovaImportanceEvaluator(seed=0)  # seeded: the same study gives the same chart
    per_group = any(
        name.startswith("lr.")
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for name in t.params
    )
    try:
        if not per_group:
            values = get_param_importances(study, evaluator=evaluator)
            note = f"fANOVA over {n} complete trials, on the searched parameters"
        else:
            columns = _importance_columns(trials, done, groups)
            if not columns:
                return Importance({}, "no group's rate varied among the complete trials")
            values = get_param_importances(
                _derived_study(study, columns, list(done["value"])), evaluator=evaluator
            )
            note = (
                f"fANOVA over {n} complete trials; each group's rate on a log scale, frozen "
                "counted as a rate below the lowest tried"
            )
            same = [g for g in groups if g not in columns]
            if same:
                note += f"; left out, the same in every complete trial: {', '.join(same)}"
    except (ValueError, RuntimeError, ImportError) as e:
        return Importance({}, f"importance could not be estimated: {e}")
    if not values or not math.isfinite(sum(values.values())) or sum(values.values()) <= 0:
        return Importance({}, "the complete trials do not differ enough to attribute anything")
    return Importance({k: float(v) for k, v in values.items()}, note)


def _importance_columns(
    trials: pd.DataFrame, done: pd.DataFrame, groups: Sequence[str]
) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for g in groups:
        tried = trials[f"lr.{g}"]
        positive = tried[tried > 0]
        rates = done[f"lr.{g}"]
        if positive.empty or rates.isna().any():
            continue  # never trained (nothing to attribute), or a rate that was never stored
        floor = math.log10(float(positive.min())) - 1.0
        xs = [math.log10(v) if v > 0 else floor for v in rates]
        if max(xs) - min(xs) > 1e-12:
            columns[g] = xs
    for knob in knob_columns(trials):
        if knob == "freeze_depth":
            continue  # the groups' columns hold it already: frozen is a rate below the lowest
        values = done[knob]
        if values.dtype.kind != "f" or values.isna().any() or values.nunique() < 2:
            continue
        xs = [math.log10(v) for v in values] if (values > 0).all() else list(values)
        columns[knob if knob not in columns else f"{knob} (knob)"] = xs
    return columns


def _derived_study(
    study: optuna.Study, columns: dict[str, list[float]], values: list[float]
) -> optuna.Study:
    from optuna.distributions import BaseDistribution, FloatDistribution

    derived = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        direction=study.directions[0].name.lower(),  # type: ignore[arg-type]
    )
    dists: dict[str, BaseDistribution] = {
        name: FloatDistribution(min(xs), max(xs)) for name, xs in columns.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        derived.add_trials(
            [
                optuna.trial.create_trial(
                    params={name: xs[i] for name, xs in columns.items()},
                    distributions=dists,
                    value=value,
                )
                for i, value in enumerate(values)
            ]
        )
    return derived
