"""lrsearch.search.sampler: the sampler kinds, the ``auto`` rule, and a study run with each."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from lrsearch.errors import LrsearchError, SpecError
from lrsearch.search import make_sampler, prepare, run_search
from lrsearch.search.sampler import GP_MAX_DIMENSIONS, GP_MAX_TRIALS, choose_kind
from lrsearch.space import SearchSpace
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage
from lrsearch.training import TrainResult

SpecBuilder = Callable[..., StudySpec]
GROUPS = ("embed", "body", "head")


def smooth(
    task: Any,
    groups: Any,
    sample: Any,
    cfg: Any,
    *,
    report: Callable[[int, float], None],
    **kw: Any,
) -> Any:
    """A train_fn whose value peaks where every rate is 1e-2: a landscape a model can learn."""
    value = 1.0 - sum((math.log10(lr) + 2.0) ** 2 for lr in sample.lrs.values() if lr) / 10
    report(0, value)
    return TrainResult(value, 1, 1, 0.01, "cpu", "fp32")


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ({"kind": "gp"}, optuna.samplers.GPSampler),
        ({"kind": "tpe", "multivariate": False}, optuna.samplers.TPESampler),
        ({"kind": "auto"}, optuna.samplers.TPESampler),  # the toy space is conditional (freeze)
    ],
)
def test_each_kind_builds_its_sampler(
    toy_spec: SpecBuilder, sampler: dict[str, Any], cls: type
) -> None:
    spec = toy_spec("x", sampler=sampler)
    assert type(make_sampler(spec, space=SearchSpace(spec.space, GROUPS))) is cls


def test_tpe_group_follows_multivariate_unless_given(toy_spec: SpecBuilder) -> None:
    def flags(**sampler: Any) -> tuple[bool, bool]:
        s = make_sampler(toy_spec("x", sampler={"kind": "tpe", **sampler}))
        return s._multivariate, s._group  # type: ignore[attr-defined]

    assert flags() == (True, True)
    assert flags(group=False) == (True, False)
    assert flags(multivariate=False) == (False, False)


def test_group_without_multivariate_is_a_spec_error(toy_spec: SpecBuilder) -> None:
    with pytest.raises(SpecError, match="multivariate = true or group = false"):
        toy_spec("x", sampler={"kind": "tpe", "multivariate": False, "group": True})


@pytest.mark.parametrize(
    ("dimensions", "conditional", "n_trials", "kind"),
    [
        (5, False, 30, "gp"),
        (GP_MAX_DIMENSIONS, False, GP_MAX_TRIALS, "gp"),
        (GP_MAX_DIMENSIONS + 1, False, 30, "tpe"),
        (5, False, GP_MAX_TRIALS + 1, "tpe"),
        (5, True, 30, "tpe"),
    ],
)
def test_the_auto_rule(
    toy_spec: SpecBuilder, dimensions: int, conditional: bool, n_trials: int, kind: str
) -> None:
    spec = toy_spec("x", sampler={"kind": "auto"}, study={"n_trials": n_trials})
    assert choose_kind(spec, dimensions=dimensions, conditional=conditional) == kind


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"freeze": []}, (3, False)),
        ({"freeze": ["embed"]}, (4, True)),  # freeze.embed, then lr.* (lr.embed conditional)
        ({"freeze": ["embed", "body"], "freeze_mode": "prefix"}, (4, True)),
        ({"freeze": [], "fixed": {"embed": 0.0}, "weight_decay": [1e-5, 1e-2]}, (3, False)),
        ({"kind": "single"}, (2, False)),  # lr and freeze.embed; no rate is conditional
        ({"kind": "layer_decay", "freeze": [], "head": ["head"]}, (3, False)),
    ],
)
def test_dimensions_count_what_a_trial_samples(
    toy_spec: SpecBuilder, space: dict[str, Any], expected: tuple[int, bool]
) -> None:
    spec = toy_spec("x", space=space)
    assert SearchSpace(spec.space, GROUPS).dimensions() == expected


def test_an_auto_study_of_a_small_plain_space_runs_with_gp(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(
        study_name,
        space={"freeze": []},
        sampler={"kind": "auto", "n_startup_trials": 3},
        study={"n_trials": 8},
    )
    summary = run_search(spec, storage=sqlite_url, device="cpu", train_fn=smooth)
    assert summary.count("complete") == 8
    chosen = make_sampler(spec, space=prepare(spec, device="cpu").space)
    assert type(chosen) is optuna.samplers.GPSampler  # auto: 3 rates, no condition
    assert summary.best_value is not None and summary.best_value > 0


def test_gp_without_scipy_is_a_clear_error_before_any_write(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def no_scipy(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "scipy" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_scipy)
    spec = toy_spec(study_name, sampler={"kind": "gp"})
    with pytest.raises(LrsearchError, match=r"needs SciPy.*lrsearch\[gp\].*kind = \"tpe\""):
        run_search(spec, storage=sqlite_url, device="cpu", train_fn=smooth)
    assert optuna.get_all_study_names(open_storage(sqlite_url)) == []
