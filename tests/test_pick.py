"""Picking a trial by metric and training cost (lrsearch.pick); two-objective studies end to end."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from conftest import toy_spec_data
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

import lrsearch
from lrsearch.analysis import list_studies
from lrsearch.cli import main
from lrsearch.errors import LrsearchError, SpecError
from lrsearch.pick import Rule, cost, metric, numbered, pareto_front, pick, rank
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage, trial_lrs

T0 = datetime(2026, 1, 1)


def trial(
    number: int,
    value: float | None,
    cost_: float | None = None,
    *,
    state: TrialState = TrialState.COMPLETE,
    seconds: float = 1.0,
) -> FrozenTrial:
    """A stored-like trial: two objectives when ``cost_`` is given, else one with a wall time."""
    values = None if value is None else [value] if cost_ is None else [value, cost_]
    return FrozenTrial(
        number=number,
        state=state,
        value=None,
        values=values,
        datetime_start=T0,
        datetime_complete=T0 + timedelta(seconds=seconds),
        params={"lr": 1e-3},
        distributions={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


# (metric, cost) of a two-objective study; trial numbers are the list positions.
TWO = [(0.80, 30.0), (0.86, 40.0), (0.858, 12.0), (0.85, 8.0), (0.86, 50.0), (0.70, 5.0)]


def two() -> list[FrozenTrial]:
    return [trial(i, v, c) for i, (v, c) in enumerate(TWO)]


@pytest.mark.parametrize(
    ("rule", "maximize", "expected"),
    [
        (None, True, 1),  # best metric; 1 and 4 tie at 0.86, the earliest wins
        (Rule(), True, 1),
        (Rule(within=0.005), True, 2),  # 0.858 is within half a point of 0.86 and costs 12
        (Rule(within=0.0), True, 1),  # only the best: the cheaper of the tied two
        (Rule(within=0.011), True, 3),  # 0.85 qualifies and costs 8
        (Rule(within=1.0), True, 5),  # everything qualifies: the cheapest
        (Rule(max_cost=10.0), True, 3),  # the best among those costing <= 10
        (Rule(max_cost=45.0), True, 1),
        (Rule(max_cost=5.0), True, 5),
        (None, False, 5),  # minimise: 0.70 is best
        (Rule(within=0.15), False, 5),  # cheapest within 0.15 of 0.70: itself, cost 5
        (Rule(max_cost=9.0), False, 5),
    ],
)
def test_pick_rules(rule: Rule | None, maximize: bool, expected: int) -> None:
    assert pick(two(), maximize=maximize, rule=rule).number == expected


def test_pareto_front_is_best_first_and_strictly_cheaper() -> None:
    front = pareto_front(two(), maximize=True)
    assert [t.number for t in front] == [1, 2, 3, 5]
    # A tie on the metric: the cheaper one is on the front, the dearer one dominated.
    tied = [trial(0, 0.9, 10.0), trial(1, 0.9, 4.0), trial(2, 0.8, 6.0)]
    assert [t.number for t in pareto_front(tied, maximize=True)] == [1]
    metrics = [metric(t) for t in front]
    costs = [cost(t) for t in front]
    assert metrics == sorted(metrics, reverse=True)
    assert costs == sorted(costs, reverse=True)


def test_only_complete_finite_trials_are_candidates() -> None:
    trials = [
        trial(0, 0.9, 1.0, state=TrialState.PRUNED),
        trial(1, None, state=TrialState.FAIL),
        trial(2, 0.5, 3.0),
        trial(3, math.inf, 1.0),
    ]
    assert [t.number for t in rank(trials, maximize=True)] == [2]
    assert pick(trials, maximize=True, rule=Rule(within=1.0)).number == 2


def test_one_objective_costs_wall_seconds() -> None:
    trials = [trial(0, 0.80, seconds=20.0), trial(1, 0.799, seconds=5.0), trial(2, 0.7, seconds=1)]
    assert cost(trials[0]) == 20.0
    assert pick(trials, maximize=True).number == 0
    assert pick(trials, maximize=True, rule=Rule(within=0.002)).number == 1
    assert pick(trials, maximize=True, rule=Rule(max_cost=2.0)).number == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Rule(within=0.1, max_cost=3.0), "give one of them"),
        (lambda: Rule(within=-0.1), "--within must be a finite number >= 0"),
        (lambda: Rule(within=math.nan), "--within must be a finite number >= 0"),
        (lambda: Rule(max_cost=0.0), "--max-cost must be > 0"),
        (lambda: pick([], maximize=True), "no complete trial yet"),
        (lambda: pick(two(), maximize=True, rule=Rule(max_cost=1.0)), "the cheapest costs 5"),
    ],
)
def test_bad_rules_say_what_to_do(make: Any, message: str) -> None:
    with pytest.raises(LrsearchError, match=message):
        make()


def test_cost_with_a_pruner_is_refused_with_the_fix() -> None:
    data = toy_spec_data("x", study={"cost": "seconds"}, pruner={"kind": "median"})
    with pytest.raises(SpecError, match=r"cannot prune a two-objective trial; set \[pruner\]"):
        StudySpec.from_dict(data)
    with pytest.raises(SpecError, match=r"\[study\] cost"):
        StudySpec.from_dict(toy_spec_data("x", study={"cost": "flops"}))


def test_cost_is_part_of_the_search_identity() -> None:
    a = StudySpec.from_dict(toy_spec_data("x"))
    b = StudySpec.from_dict(toy_spec_data("x", study={"cost": "examples"}))
    assert a.search_dict() != b.search_dict()
    assert StudySpec.from_dict(b.to_dict()) == b


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("kind", ["seconds", "examples"])
def test_two_objective_study_end_to_end(storage_url: str, study_name: str, kind: str) -> None:
    spec = StudySpec.from_dict(
        toy_spec_data(
            study_name,
            study={"cost": kind, "n_trials": 8},
            space={"freeze": ["embed", "body"]},
        )
    )
    summary = lrsearch.run_search(spec, storage=storage_url, device="cpu")
    assert summary.best_value is not None
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    assert [d.name for d in study.directions] == [
        "MAXIMIZE" if spec.study.direction != "minimize" else "MINIMIZE",
        "MINIMIZE",
    ]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 for t in complete)
    if kind == "examples":
        # examples x the share of parameters that trained: a frozen group makes a trial cheaper.
        sizes = {"embed": 0, "body": 0, "head": 0}
        model = spec_model()
        for name, p in model.named_parameters():
            sizes[name.split(".")[0]] += p.numel()
        steps = math.ceil(64 / 16)
        for t in complete:
            lrs = trial_lrs(t)
            share = sum(n for g, n in sizes.items() if lrs[g] != 0) / sum(sizes.values())
            assert t.values[1] == pytest.approx(steps * 16 * share)
    else:
        for t in complete:
            assert 0 < t.values[1] <= t.duration.total_seconds()

    best = max(complete, key=lambda t: (t.values[0], -t.number))
    cheapest = min(complete, key=lambda t: (t.values[1], t.number))
    args = ("--study", study_name, "--storage", storage_url)
    record = json.loads(invoke("best", *args, "--format", "json").stdout)
    assert (record["trial"], record["value"], record["cost"]) == (best.number, *best.values)
    record = json.loads(invoke("best", *args, "--within", "1", "--format", "json").stdout)
    assert record["trial"] == cheapest.number
    front = json.loads(invoke("best", *args, "--front", "--format", "json").stdout)
    assert front[0]["value"] == best.values[0] and front[-1]["trial"] == cheapest.number
    # The whole front by default (not only its best member), and exactly the front.
    expected = pareto_front(complete, maximize=True)
    assert [r["trial"] for r in front] == [t.number for t in expected]
    assert all(
        not (o.values[0] >= t.values[0] and o.values[1] < t.values[1])
        for t in expected
        for o in complete
    )
    two_best = json.loads(invoke("best", *args, "--front", "--top", "2", "--format", "json").stdout)
    assert two_best == front[:2]
    assert [r["cost"] for r in front] == sorted((r["cost"] for r in front), reverse=True)
    exported = json.loads(invoke("export", *args, "--max-cost", str(cheapest.values[1])).stdout)
    assert exported["trial"] == cheapest.number
    assert exported["value"] == cheapest.values[0]
    # The readers take the two-objective study too.
    df = lrsearch.load_trials(storage_url, study_name)
    done = df[df.state == "complete"]
    assert list(done["cost"]) == [t.values[1] for t in complete]
    listed = list_studies(open_storage(storage_url))
    (row,) = [r for r in listed if r["study"] == study_name]
    assert row["best"] == best.values[0]


def spec_model() -> Any:
    from toy_tasks import tiny

    return tiny().build_model()


def test_trial_and_rule_together_are_a_usage_error(storage_url: str, study_name: str) -> None:
    result = invoke(
        "export", "--study", study_name, "--storage", storage_url, "--trial", "0", "--within", "1"
    )
    assert result.exit_code == 2
    assert "--within / --max-cost" in result.output


def test_numbered_takes_a_complete_trial_by_number_and_says_what_else_there_is() -> None:
    trials = [trial(0, 0.5), trial(1, None, state=TrialState.PRUNED)]
    assert numbered(trials, 0, study="s", use="export") is trials[0]
    with pytest.raises(LrsearchError, match=r"trial 1 of study 's' is PRUNED.*; verify a complete"):
        numbered(trials, 1, study="s", use="verify")
    with pytest.raises(LrsearchError, match=r"has no trial 2 \(trials: 0\.\.1\); check --trial"):
        numbered(trials, 2, study="s", use="export")
    with pytest.raises(LrsearchError, match=r"has no trial 0 \(trials: none\)"):
        numbered([], 0, study="s", use="export")
