"""``[space] start = "single"``: a per-group study that begins with an enqueued one-rate sweep."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from lrsearch.errors import SpecError
from lrsearch.search import run_search
from lrsearch.space import START_ATTR, SearchSpace
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage, trial_lrs
from lrsearch.training import TrainResult

SpecBuilder = Callable[..., StudySpec]
GROUPS = ("embed", "body", "head")


def constant(
    task: Any,
    groups: Any,
    sample: Any,
    cfg: Any,
    *,
    report: Callable[[int, float], None],
    **kw: Any,
) -> Any:
    report(0, 0.5)
    return TrainResult(0.5, 1, 1, 0.01, "cpu", "fp32")


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


@pytest.mark.parametrize(
    "space",
    [
        {"freeze": ["embed"]},
        {"freeze": ["embed", "body"], "freeze_mode": "prefix"},
        {"freeze": [], "fixed": {"embed": 0.0}},
    ],
    ids=["any", "prefix", "fixed"],
)
def test_the_first_trials_train_every_searched_group_at_one_rate(
    storage_url: str, study_name: str, toy_spec: SpecBuilder, space: dict[str, Any]
) -> None:
    spec = toy_spec(
        study_name,
        space={**space, "lr": [1e-4, 1e-1], "start": "single", "start_trials": 3},
        study={"n_trials": 5},
    )
    run_search(spec, storage=storage_url, device="cpu", train_fn=constant)
    trials = _trials(storage_url, study_name)
    assert len(trials) == 5
    searched = [g for g in GROUPS if g not in space.get("fixed", {})]
    rates = []
    for t in trials[:3]:
        lrs = trial_lrs(t)
        assert len({lrs[g] for g in searched}) == 1 and lrs[searched[0]] > 0  # none frozen
        assert all(lrs[g] == 0.0 for g in space.get("fixed", {}))
        rates.append(lrs[searched[0]])
    # Spread log-uniformly: midpoints of 3 equal log-bins of [1e-4, 1e-1].
    assert [math.log10(r) for r in rates] == pytest.approx([-3.5, -2.5, -1.5])
    # Then per-group search: the sampler's own trials (random here), rates differing per group.
    assert all(len(set(trial_lrs(t).values())) > 1 for t in trials[3:])


def test_a_resumed_study_does_not_sweep_again(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, space={"start": "single", "start_trials": 2}, study={"n_trials": 4})
    run_search(spec, storage=sqlite_url, n_trials=1, device="cpu", train_fn=constant)
    run_search(spec, storage=sqlite_url, device="cpu", train_fn=constant)
    trials = _trials(sqlite_url, study_name)
    assert len(trials) == 4
    assert [len(set(trial_lrs(t).values())) for t in trials[:2]] == [1, 1]
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    assert study.user_attrs[START_ATTR] == 2


def test_the_sweep_stays_inside_every_groups_range(toy_spec: SpecBuilder) -> None:
    spec = toy_spec(
        "x",
        space={"start": "single", "start_trials": 2, "lr_ranges": {"head": [1e-3, 1.0]}},
        study={"n_trials": 10},
    )
    params = SearchSpace(spec.space, GROUPS).single_start()
    rates = [p["lr.head"] for p in params]
    assert rates == pytest.approx([10**-2.5, 10**-1.5])  # [1e-3, 1e-1], the shared range
    assert all(p["freeze.embed"] is False for p in params)


def test_ranges_without_a_shared_rate_are_refused(toy_spec: SpecBuilder) -> None:
    spec = toy_spec(
        "x",
        space={"start": "single", "lr_ranges": {"head": [0.2, 1.0]}},
        study={"n_trials": 20},
    )
    with pytest.raises(SpecError, match=r"share none.*widen lr_ranges or set start"):
        SearchSpace(spec.space, GROUPS)


def test_without_start_nothing_is_enqueued(toy_spec: SpecBuilder) -> None:
    assert SearchSpace(toy_spec("x").space, GROUPS).single_start() == []
