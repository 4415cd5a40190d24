"""Is the winner real or lucky? Retrain a trial's config with fresh seeds and compare.

A search keeps the best of many noisy trials, so the winner's value is biased upwards: part of it
may be a lucky seed. ``verify_trial`` retrains the chosen trial's per-group rates (default: the
best trial) with ``K`` seeds the search never used, and does the same for the best trial that
trained every group at one shared rate (the "single learning rate" baseline), if the study has
one. It returns each seed's value, the mean, spread and range per config, and a plain-language
verdict: does the winner beat the single rate by more than their combined spread?

Results are stored with the study, never in its trials: one study user attribute per verified
trial, ``lrsearch.verify.<trial>`` (schema ``lrsearch/verify/v1``), holding the trial's rates and
one entry per run (seed, value, outcome, seconds, device, host, UTC timestamp). Calling again with
the same ``K`` reads them back without training; a larger ``K`` trains only the missing seeds.
Seeds are ``10000, 10001, ...``, skipping any seed a trial of the search trained with, so the
verification is out of sample; both configs train with the same seeds (paired data orders).

The runs are trained and stored by :mod:`lrsearch.retrain` (which ``confirm`` shares); readers of
the stored results (``stored_verifications``) need only Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from lrsearch.errors import LrsearchError
from lrsearch.pick import best, metric, numbered, rank
from lrsearch.retrain.records import (
    ATTR_PREFIX,
    SCHEMA,
    SEED_BASE,
    RunCallback,
    search_seeds,
    stored_verifications,
    summarize,
    verify_attr,
    verify_seeds,
)
from lrsearch.retrain.retrainer import Retrainer
from lrsearch.spec import StudySpec
from lrsearch.storage import load_study, resolve_url, stored_spec, trial_info
from lrsearch.trust import check_stored_entry

__all__ = [  # the stored records' readers stay importable from here, as documented
    "ATTR_PREFIX",
    "SCHEMA",
    "SEED_BASE",
    "baseline_name",
    "baseline_spec",
    "is_single_rate",
    "run_single_baseline",
    "stored_verifications",
    "summarize",
    "verify_attr",
    "verify_seeds",
    "verify_trial",
]

if TYPE_CHECKING:
    from lrsearch.training import TrainResult

# Rates within this relative tolerance count as one rate (a JSON round trip may move the last bit).
SAME_RATE_REL_TOL = 1e-9


def is_single_rate(lrs: dict[str, float]) -> bool:
    """Whether every group trains (none frozen) at one shared rate.

    Example:
        >>> is_single_rate({"body": 1e-3, "head": 1e-3})
        True
        >>> is_single_rate({"body": 0.0, "head": 1e-3})
        False
    """
    rates = list(lrs.values())
    if not rates or not all(r > 0 for r in rates):
        return False
    return all(math.isclose(r, rates[0], rel_tol=SAME_RATE_REL_TOL) for r in rates)


def verify_trial(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    trial: int | None = None,
    seeds: int = 3,
    device: str | None = None,
    on_run: RunCallback | None = None,
    train_fn: Callable[..., TrainResult] | None = None,
    baseline_study: str | None = None,
    allow_tasks: Sequence[str] = (),
) -> dict[str, Any]:
    """Retrain a trial's config (and the best single-rate trial) with ``seeds`` fresh seeds.

    Args:
        storage: The study's storage.
        study_name: The study; its stored spec defines the task and the training.
        trial: The trial to verify, which must be complete; default: the best trial.
        seeds: How many seeds per config (runs already stored for those seeds are reused).
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        on_run: Called as ``on_run(role, trial, run)`` after each new run (progress).
        train_fn: The trainer (``train_trial``'s signature); replaceable in tests.
        baseline_study: Take the reference from this study (one :func:`run_single_baseline`
            searched) instead of ``study_name``'s own single-rate trials; its runs are stored
            with it.
        allow_tasks: Task entries allowed besides the built-in ones and ``$LRSEARCH_ALLOW_TASKS``
            (see :mod:`lrsearch.trust`); checked before the task is first imported.

    Returns:
        Plain data: ``study``, ``direction``, ``seeds``, ``configs`` (per config: ``role``
        ``winner`` or ``reference``, ``trial``, ``lrs``, ``search_value``, ``runs``, ``stats``,
        ``new_runs``, ``attr``), ``reference_note``, ``comparison`` (``difference``, ``spread``)
        or ``None``, and ``verdict``, one or two sentences.

    Raises:
        LrsearchError: ``seeds`` < 1, the study has no complete trial, or ``trial`` does not exist
            or is not complete.
        StudyNotFoundError: No such study.
        StorageError: The study was not created by lrsearch.
        UntrustedTaskError: A run must be trained and the stored task entry is not allowed here.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise LrsearchError(f"seeds must be an integer >= 1, got {seeds!r}")
    study = load_study(storage, study_name)
    stored_spec(study)  # a study lrsearch did not make is refused here, before any training
    trials = study.get_trials(deepcopy=False)
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    chosen = _pick(study, trials, trial, maximize)
    owner = study  # the study the reference trial belongs to
    taken = search_seeds(study, trials)
    if baseline_study is None:
        reference, reference_note = _reference(trials, chosen, maximize)
    else:
        owner = load_study(storage, baseline_study)
        baseline_trials = owner.get_trials(deepcopy=False)
        taken |= search_seeds(owner, baseline_trials)
        reference, reference_note = _reference(baseline_trials, None, maximize)
        if reference is not None:
            reference_note = (
                f"reference: trial {reference.number} of study {baseline_study!r}, the best of "
                f"its {len(baseline_trials)} trial(s) searching one rate for every group"
            )

    run_seeds = verify_seeds(seeds, taken)
    # One per study a run is stored in: each builds its task on its first run to train.
    retrainers = {
        s.study_name: Retrainer(
            storage, s, device=device, train_fn=train_fn, allow_tasks=allow_tasks
        )
        for s in (study, owner)
    }
    configs = []
    for role, frozen, home in (("winner", chosen, study), ("reference", reference, owner)):
        if frozen is None:
            continue
        info = trial_info(frozen)
        attr = verify_attr(frozen.number)
        runs, new = retrainers[home.study_name].runs(frozen, run_seeds, role=role, on_run=on_run)
        configs.append(
            {
                "role": role,
                "study": home.study_name,
                "trial": frozen.number,
                "lrs": dict(info["lrs"]),
                "weight_decay": info["weight_decay"],
                "search_value": metric(frozen),
                "runs": runs,
                "stats": summarize([r["value"] for r in runs]),
                "new_runs": new,
                "attr": attr,
            }
        )
    comparison = _compare(configs, maximize)
    return {
        "study": study_name,
        "direction": "maximize" if maximize else "minimize",
        "seeds": run_seeds,
        "configs": configs,
        "reference_note": reference_note,
        "comparison": comparison,
        "verdict": _verdict(configs, comparison, reference_note, maximize),
    }


def _pick(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    number: int | None,
    maximize: bool,
) -> optuna.trial.FrozenTrial:
    if number is None:
        ranked = rank(trials, maximize=maximize)
        if not ranked:
            raise LrsearchError(
                f"study {study.study_name!r} has no complete trial to verify; run more trials "
                "first (`lrsearch run`)"
            )
        chosen = ranked[0]
    else:
        chosen = numbered(trials, number, study=study.study_name, use="verify")
    if not trial_info(chosen)["lrs"]:
        raise LrsearchError(
            f"trial {chosen.number} of study {study.study_name!r} has no stored rates; it was "
            "not run by lrsearch"
        )
    return chosen


def _reference(
    trials: list[optuna.trial.FrozenTrial],
    chosen: optuna.trial.FrozenTrial | None,
    maximize: bool,
) -> tuple[optuna.trial.FrozenTrial | None, str]:
    """The best complete single-rate trial other than ``chosen``, and a note on the choice."""
    if chosen is not None and is_single_rate(trial_info(chosen)["lrs"]):
        return None, (
            f"trial {chosen.number} itself trains every group at one rate: there is no "
            "per-group gain to check against a single rate"
        )
    single = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and metric(t) is not None
        and (chosen is None or t.number != chosen.number)
        and is_single_rate(trial_info(t)["lrs"])
    ]
    if not single:
        return None, (
            "the study has no single-learning-rate trial (a complete trial with every group "
            "trained at one rate) to compare with"
        )
    top = best(single, maximize=maximize)
    assert top is not None  # every trial of `single` is a candidate
    rate = next(iter(trial_info(top)["lrs"].values()))
    return top, f"reference: trial {top.number}, the best single-rate trial (lr {rate:.3g})"


def _compare(configs: list[dict[str, Any]], maximize: bool) -> dict[str, Any] | None:
    if len(configs) < 2:
        return None
    w, r = configs[0]["stats"], configs[1]["stats"]
    if w["mean"] is None or r["mean"] is None:
        return {"difference": None, "advantage": None, "spread": None}
    difference = w["mean"] - r["mean"]
    spread = w["std"] + r["std"] if w["std"] is not None and r["std"] is not None else None
    return {
        "difference": difference,
        # Positive when the winner is better, whichever the direction.
        "advantage": difference if maximize else -difference,
        "spread": spread,
    }


def _verdict(
    configs: list[dict[str, Any]],
    comparison: dict[str, Any] | None,
    reference_note: str,
    maximize: bool,
) -> str:
    winner = configs[0]
    stats = winner["stats"]
    n_runs = len(winner["runs"])
    parts = []
    if stats["failed"]:
        parts.append(
            f"trial {winner['trial']} diverged or failed on {stats['failed']} of {n_runs} "
            "seed(s): the config is unstable"
        )
    if comparison is None:
        parts.append(reference_note)
        if stats["mean"] is not None and winner["search_value"] is not None:
            parts.append(_luck(winner, maximize))
        return "; ".join(parts) + "."
    ref = configs[1]
    advantage, spread = comparison["advantage"], comparison["spread"]
    w, r = winner["trial"], ref["trial"]
    if advantage is None:
        parts.append("no seed of one config finished, so there is nothing to compare")
    elif advantage <= 0:
        parts.append(
            f"the single-rate reference (trial {r}) is as good or better on average "
            f"(by {abs(advantage):.3g}): the per-group gain of trial {w} did not hold up"
        )
    elif spread is None:
        parts.append(
            f"trial {w} is ahead of the single-rate reference (trial {r}) by {advantage:.3g}, "
            "but one seed has no spread to judge by; verify with more seeds (--seeds 3 or more)"
        )
    elif advantage > spread:
        parts.append(
            f"trial {w} beats the single-rate reference (trial {r}) by {advantage:.3g}, more "
            f"than their combined spread ({spread:.3g}): the gain looks real"
        )
    else:
        parts.append(
            f"trial {w} is ahead of the single-rate reference (trial {r}) by {advantage:.3g}, "
            f"within their combined spread ({spread:.3g}): it may be luck; more seeds would tell"
        )
    return "; ".join(parts) + "."


def _luck(winner: dict[str, Any], maximize: bool) -> str:
    stats, value = winner["stats"], float(winner["search_value"])
    best = stats["max"] if maximize else stats["min"]
    better = value > best if maximize else value < best
    if better:
        return (
            f"its search value {value:.4g} is better than every verification seed "
            f"(mean {stats['mean']:.4g}): part of it was a lucky seed"
        )
    return (
        f"its search value {value:.4g} is within the verification seeds' range "
        f"({stats['min']:.4g} to {stats['max']:.4g}, mean {stats['mean']:.4g})"
    )


BASELINE_SUFFIX = ".baseline-single"


def baseline_name(study_name: str) -> str:
    """The study ``verify --baseline single`` searches one rate in, beside ``study_name``."""
    return f"{study_name}{BASELINE_SUFFIX}"


def baseline_spec(spec: StudySpec, name: str, n_trials: int) -> StudySpec:
    """``spec`` searching one rate for every group (``[space] kind = "single"``), none frozen.

    The rate's range spans every group's range (``lr`` and ``lr_ranges``); weight decay, the task,
    groups, training, pruner and sampler stay as they are.
    """
    data = spec.to_dict()
    space = data["space"]
    ranges = [tuple(space["lr"]), *(tuple(r) for r in space.get("lr_ranges", {}).values())]
    single: dict[str, Any] = {
        "kind": "single",
        "lr": [min(r[0] for r in ranges), max(r[1] for r in ranges)],
    }
    if "weight_decay" in space:
        single["weight_decay"] = space["weight_decay"]
    data["space"] = single
    data["study"] = {**data["study"], "name": name, "n_trials": n_trials}
    return StudySpec.from_dict(data, source=f"the single-rate baseline of {spec.study.name!r}")


def run_single_baseline(
    storage: str | None,
    study_name: str,
    *,
    n_trials: int,
    device: str | None = None,
    on_trial: Callable[..., None] | None = None,
    train_fn: Callable[..., TrainResult] | None = None,
    allow_tasks: Sequence[str] = (),
) -> str:
    """Search one learning rate for every group, as ``study_name`` would train it, and return the
    study that holds that search (:func:`baseline_name`; run again, it resumes).

    Args:
        storage: The storage URL of ``study_name``; the baseline study is created beside it.
        study_name: The study whose stored spec (task, groups, training) the baseline uses.
        n_trials: The baseline's budget of finished trials.
        device, on_trial, train_fn: As for :func:`lrsearch.search.run_search`.
        allow_tasks: As for :func:`verify_trial`: the stored task entry must be allowed here.

    Raises:
        StudyNotFoundError: No such study.
        UntrustedTaskError: The stored task entry is not allowed here (nothing is imported).
        LrsearchError: The baseline has no complete trial after its budget, or any error of
            ``run_search``.
    """
    from lrsearch.search import run_search
    from lrsearch.storage import open_storage

    url = resolve_url(storage)
    spec = stored_spec(load_study(open_storage(url, create=False), study_name))
    # The entry comes from the database, not from a file the user ran: as trusted as a worker's.
    check_stored_entry(spec.task.entry, study_name, allow_tasks)
    name = baseline_name(study_name)
    summary = run_search(
        baseline_spec(spec, name, n_trials),
        storage=url,
        device=device,
        on_trial=on_trial,
        train_fn=train_fn,
    )
    if summary.interrupted:
        raise LrsearchError(
            f"the single-rate baseline {name!r} was interrupted; run verify again to resume it"
        )
    if summary.best_number is None:
        raise LrsearchError(
            f"the single-rate baseline {name!r} has no complete trial after {n_trials} trial(s); "
            "raise --baseline-trials"
        )
    return name
