"""The study life cycle: studies created, resumed, checked and loaded, and what a trial stored.

A study keeps its spec in its user attributes (``lrsearch.spec``): running the same study name with
a different search is refused, and readers never need the original file. The budget rule itself is
:func:`lrsearch.schema.counts_against_budget` (its SQL form: :mod:`lrsearch.storage.optuna_schema`);
:func:`counts_against_budget` here applies it to a stored trial.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Container, Iterable
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lrsearch import schema
from lrsearch.errors import SpecError, StorageError, StudyMismatchError, StudyNotFoundError
from lrsearch.limits import study_name_problem
from lrsearch.schema import OUTCOME_ATTR, RETRY_OF_ATTR, SPEC_ATTR, TRIAL_ATTR, BudgetCount
from lrsearch.spec import StudySpec

# How long to wait for the spec of a study another worker has just created (its two writes are
# not one transaction).
SPEC_WAIT_S = 5.0


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of every study in ``storage``."""
    return [s.study_name for s in storage.get_all_studies()]


def stored_spec(study: optuna.Study) -> StudySpec:
    """The spec saved inside ``study``.

    Raises:
        StorageError: The study was not created by lrsearch.
        SpecError: The stored spec no longer passes the checks of this version.
    """
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise StorageError(
            f"study {study.study_name!r} was not created by lrsearch (it has no stored spec); "
            "use another --study name"
        )
    source = f"study {study.study_name!r}"
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise SpecError(source, [f"the stored spec is not JSON ({e})"]) from e
    if not isinstance(data, dict):
        raise SpecError(source, ["the stored spec is not a table of sections"])
    return StudySpec.from_dict(data, source=source)


def load_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load an existing study.

    Raises:
        StudyNotFoundError: No study of that name; the message lists the ones there are.
    """
    names = study_names(storage)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise StudyNotFoundError(
            f"no study named {name!r} in this storage (studies here: {there}); "
            "check --study and --storage"
        )
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def create_or_resume(
    storage: optuna.storages.BaseStorage,
    name: str,
    spec: StudySpec,
    *,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """Create study ``name`` with ``spec`` saved in it, or resume it if it has the same search.

    Several workers may start on the same new study at once: one creates it, the others resume it
    (waiting briefly for the creator to store the spec).

    Returns:
        The study, and whether it already existed.

    Raises:
        StudyMismatchError: A study of that name exists with a different search (the differing keys
            are listed) or was not created by lrsearch.
        StorageError: ``name`` cannot name a study (too long for Optuna's schema).
    """
    problem = study_name_problem(name)
    if problem:
        raise StorageError(
            f"study name {name[:40] + '...' if len(name) > 40 else name!r} {problem}"
        )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            # [study] cost: a second objective, the trial's training cost, minimised.
            directions=[StudyDirection[direction.upper()], StudyDirection.MINIMIZE][
                : 2 if spec.study.cost else 1
            ],
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same_search(study, spec)
        return study, True
    # The study's own name, which `--study` may have given it, not the file's [study] name.
    spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, name=name))
    # Not sort_keys: the order of [groups] is meaning (first match wins; layer_decay is bottom-up).
    study.set_user_attr(SPEC_ATTR, json.dumps(spec.to_dict()))
    return study, False


def _check_same_search(study: optuna.Study, spec: StudySpec) -> None:
    deadline = time.monotonic() + SPEC_WAIT_S
    # A study without a spec and without trials may be another worker's, created a moment ago.
    while (
        SPEC_ATTR not in study.user_attrs
        and time.monotonic() < deadline
        and not study.get_trials(deepcopy=False)
    ):
        time.sleep(0.05)
    try:
        old = stored_spec(study)
    except (StorageError, SpecError) as e:
        raise StudyMismatchError(str(e)) from e
    diff = _diff(old.search_dict(), spec.search_dict())
    if not diff and old.groups.names != spec.groups.names:
        # Equal dicts may differ in order, and the order of [groups] is meaning.
        diff = [f"groups: order {list(old.groups.names)} -> {list(spec.groups.names)}"]
    if diff:
        raise StudyMismatchError(
            f"study {study.study_name!r} exists with a different search "
            f"({'; '.join(diff[:5])}); run it with its original file, or choose a new name "
            "with --study"
        )


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(f"{sub}: {old.get(key)!r} -> {new.get(key)!r}")
            else:
                out.extend(_diff(old[key], new[key], sub))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def trial_lrs(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The resolved ``{group: lr}`` a trial trained with (0.0 = frozen); empty if it has none."""
    return dict(trial.user_attrs.get(TRIAL_ATTR, {}).get("lrs", {}))


def trial_info(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Everything lrsearch stored about a trial when it started: lrs, weight_decay, host, pid."""
    info = dict(trial.user_attrs.get(TRIAL_ATTR, {}))
    info.setdefault("lrs", {})
    info.setdefault("weight_decay", None)
    info.setdefault("host", None)
    info.setdefault("pid", None)
    return info


def counts_against_budget(trial: FrozenTrial, replaced: Container[int]) -> bool:
    """Whether a stored trial counts against the budget (:func:`schema.counts_against_budget`).

    ``replaced``: the numbers some trial's ``lrsearch.retry_of`` names (:func:`replaced_numbers`).
    """
    return schema.counts_against_budget(
        trial.state.name, trial.user_attrs.get(OUTCOME_ATTR), trial.number, replaced
    )


def replaced_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of trials queued again after their worker was lost: their re-runs count."""
    return {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}


def count_budget(trials: Iterable[FrozenTrial], *, running: int | None = None) -> BudgetCount:
    """How far a study's trials are towards its budget (the rule: :mod:`lrsearch.search`).

    Args:
        trials: All trials of the study.
        running: How many trials are being trained now; default every RUNNING trial. The search
            passes those with a heartbeat: a trial without one can never be found stale, and
            waiting for it could last forever.
    """
    trials = list(trials)
    replaced = replaced_numbers(trials)
    return BudgetCount(
        counted=sum(1 for t in trials if counts_against_budget(t, replaced)),
        running=(
            running
            if running is not None
            else sum(1 for t in trials if t.state == TrialState.RUNNING)
        ),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
    )
