"""lrsearch.search: budgets, resuming, stored rates and the fate of every trial, on every backend.

Most tests inject a scripted ``train_fn`` (no torch work), so each outcome is forced exactly; one
test trains the toy task for real to see a median pruner stop a trial.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from lrsearch.errors import LrsearchError, TaskError, TrialFailure
from lrsearch.groups import LayerGroups
from lrsearch.schema import GROUPS_ATTR, OUTCOME_ATTR, REASON_ATTR
from lrsearch.search import SearchSummary, TrialOutcome, make_pruner, make_sampler, run_search
from lrsearch.space import Sample
from lrsearch.spec import StudySpec, TrainSection
from lrsearch.storage import create_or_resume, open_storage, trial_lrs
from lrsearch.tasks import Task
from lrsearch.training import TrainResult

SpecBuilder = Callable[..., StudySpec]
MEDIAN = {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0}


class Script:
    """A ``train_fn`` that plays one behaviour per call, in order, and records what it was given."""

    def __init__(self, behaviours: Sequence[str]) -> None:
        self.behaviours = list(behaviours)
        self.samples: list[Sample] = []

    def __call__(
        self,
        task: Task,
        groups: LayerGroups,
        sample: Sample,
        cfg: TrainSection,
        *,
        device: Any,
        seed: int,
        report: Callable[[int, float], None],
    ) -> TrainResult:
        self.samples.append(sample)
        kind = self.behaviours[len(self.samples) - 1]
        value = 0.9
        if kind == "complete":
            for step in range(3):
                report(step, 0.9)
        elif kind == "prune":
            report(0, 0.1)  # below the median of the completed trial: the pruner stops it
            value = 0.1
        elif kind == "diverge":
            report(0, 0.95)
            raise TrialFailure("diverged: loss is nan at step 1", diverged=True)
        elif kind == "fail":
            raise TrialFailure("CUDA out of memory at [train] batch_size = 16")
        elif kind == "nan":
            report(0, 0.95)
            value = math.nan
        elif kind == "garbage":
            value = "n/a"  # type: ignore[assignment]  # a trainer that breaks its contract
        elif kind == "bug":
            raise RuntimeError("boom in the task")
        elif kind == "interrupt":
            raise KeyboardInterrupt
        elif kind == "sleep":
            time.sleep(0.25)
        return TrainResult(value, 3, 3, 0.0, "cpu", "fp32")


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def _states(url: str, name: str) -> list[str]:
    return [t.state.name for t in _trials(url, name)]


def test_runs_exactly_the_budget_then_resumes_the_remainder(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name)
    first = run_search(
        spec, storage=storage_url, n_trials=3, device="cpu", train_fn=Script(["complete"] * 3)
    )
    assert (first.resumed, first.already_finished, len(first.outcomes)) == (False, 0, 3)
    assert first.best_number is not None and first.best_value == pytest.approx(0.9)

    script = Script(["complete"] * 5)
    second = run_search(spec, storage=storage_url, n_trials=5, device="cpu", train_fn=script)
    assert (second.resumed, second.already_finished, len(second.outcomes)) == (True, 3, 2)
    assert [o.number for o in second.outcomes] == [3, 4]
    assert len(script.samples) == 2

    third = run_search(spec, storage=storage_url, n_trials=5, device="cpu", train_fn=Script([]))
    assert (third.already_finished, third.outcomes) == (5, [])
    assert third.best_number == first.best_number  # still reported when nothing ran
    assert _states(storage_url, study_name) == ["COMPLETE"] * 5


def test_every_trial_stores_every_groups_rate(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, space={"fixed": {"body": 0.0}}, study={"seed": 3})
    script = Script(["complete"] * 6)
    run_search(spec, storage=storage_url, n_trials=6, device="cpu", train_fn=script)
    trials = _trials(storage_url, study_name)
    assert [trial_lrs(t) for t in trials] == [s.lrs for s in script.samples]
    frozen_embed = 0
    for t in trials:
        lrs = trial_lrs(t)
        assert list(lrs) == ["embed", "body", "head"]
        assert lrs["body"] == 0.0  # fixed at 0: frozen for good
        assert lrs["head"] == t.params["lr.head"]
        if t.params["freeze.embed"]:
            frozen_embed += 1
            assert lrs["embed"] == 0.0 and "lr.embed" not in t.params
        else:
            assert lrs["embed"] == t.params["lr.embed"] > 0
    assert 0 < frozen_embed < len(trials)  # both branches of the freeze choice were exercised


# behaviour of the trainer -> (state, outcome attribute, stored reason, intermediate values)
FATES: list[tuple[str, TrialState, str | None, str | None, dict[int, float]]] = [
    ("complete", TrialState.COMPLETE, None, None, {0: 0.9, 1: 0.9, 2: 0.9}),
    ("prune", TrialState.PRUNED, "pruned", None, {0: 0.1}),
    ("diverge", TrialState.PRUNED, "diverged", "loss is nan", {0: 0.95, 1: math.nan}),
    ("nan", TrialState.PRUNED, "diverged", "final value is nan", {0: 0.95, 1: math.nan}),
    ("fail", TrialState.FAIL, "failed", "CUDA out of memory", {}),
    ("garbage", TrialState.FAIL, "failed", "returned 'n/a', not a number", {}),
    ("complete", TrialState.COMPLETE, None, None, {0: 0.9, 1: 0.9, 2: 0.9}),  # it went on
]


def test_the_fate_of_every_trial(storage_url: str, study_name: str, toy_spec: SpecBuilder) -> None:
    # One run plays every behaviour (a run per row would cost a database each); the first trial
    # completes, so the median pruner has something to compare with.
    spec = toy_spec(study_name, pruner=MEDIAN)
    script = Script([behaviour for behaviour, *_ in FATES])
    summary = run_search(
        spec, storage=storage_url, n_trials=len(FATES), device="cpu", train_fn=script
    )

    trials = _trials(storage_url, study_name)
    assert len(trials) == len(summary.outcomes) == len(FATES)
    for trial, outcome, (behaviour, state, attr, reason, intermediate) in zip(
        trials, summary.outcomes, FATES, strict=True
    ):
        where = f"trial {trial.number} ({behaviour})"
        assert trial.state == state, where
        assert outcome.outcome == (attr or "complete"), where
        assert trial.user_attrs.get(OUTCOME_ATTR) == attr, where
        if reason is None:
            assert REASON_ATTR not in trial.user_attrs, where
        else:
            assert reason in trial.user_attrs[REASON_ATTR], where
            assert reason in (outcome.reason or ""), where
        assert list(trial.intermediate_values) == list(intermediate), where
        for step, value in intermediate.items():
            got = trial.intermediate_values[step]
            assert math.isnan(got) if math.isnan(value) else got == pytest.approx(value), where
        assert (trial.value is not None) == (state == TrialState.COMPLETE or behaviour == "prune")
    assert summary.count("diverged") == 2 and summary.count("failed") == 2
    assert summary.best_number == 0  # ties: the earliest


def test_a_bug_in_the_task_fails_the_trial_and_stops(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name)
    script = Script(["complete", "bug", "complete"])
    with pytest.raises(TaskError) as info:
        run_search(spec, storage=storage_url, n_trials=3, device="cpu", train_fn=script)
    assert "trial 1" in str(info.value) and "RuntimeError: boom in the task" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    trials = _trials(storage_url, study_name)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs[OUTCOME_ATTR] == "failed"
    assert trials[1].user_attrs[REASON_ATTR] == "RuntimeError: boom in the task"
    assert trials[0].value == pytest.approx(0.9)


def test_ctrl_c_fails_the_trial_and_does_not_use_up_the_budget(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name)
    summary = run_search(
        spec,
        storage=storage_url,
        n_trials=3,
        device="cpu",
        train_fn=Script(["complete", "interrupt", "complete"]),
    )
    assert summary.interrupted
    assert [o.outcome for o in summary.outcomes] == ["complete", "interrupted"]
    trials = _trials(storage_url, study_name)
    # its configuration queued again: the next run trains it first
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs[OUTCOME_ATTR] == "interrupted"

    resumed = run_search(
        spec, storage=storage_url, n_trials=3, device="cpu", train_fn=Script(["complete"] * 3)
    )
    assert resumed.already_finished == 1  # the interrupted trial does not count
    assert [o.number for o in resumed.outcomes] == [2, 3]
    assert _trials(storage_url, study_name)[2].params == trials[1].params
    assert _states(storage_url, study_name) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


def test_ctrl_c_between_trials_leaves_nothing_running(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    def on_trial(outcome: TrialOutcome, summary: SearchSummary) -> None:
        raise KeyboardInterrupt

    summary = run_search(
        toy_spec(study_name),
        storage=storage_url,
        n_trials=3,
        device="cpu",
        train_fn=Script(["complete"] * 3),
        on_trial=on_trial,
    )
    assert summary.interrupted
    assert _states(storage_url, study_name) == ["COMPLETE"]


def test_a_median_pruner_stops_a_real_training(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, space={"freeze": None}, pruner=MEDIAN)
    run_search(spec, storage=sqlite_url, n_trials=0, device="cpu")  # creates the study
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    study.enqueue_trial({"lr.embed": 0.05, "lr.body": 0.05, "lr.head": 0.05})
    study.enqueue_trial({"lr.embed": 1e-4, "lr.body": 1e-4, "lr.head": 1e-4})
    summary = run_search(spec, storage=sqlite_url, n_trials=2, device="cpu")
    assert [o.outcome for o in summary.outcomes] == ["complete", "pruned"]
    good, slow = study.get_trials()
    assert slow.state == TrialState.PRUNED
    assert len(slow.intermediate_values) < len(good.intermediate_values)
    step = max(slow.intermediate_values)
    assert slow.intermediate_values[step] < good.intermediate_values[step]


def _params(url: str, name: str) -> list[dict[str, Any]]:
    return [t.params for t in _trials(url, name)]


def test_a_seeded_study_is_reproducible(
    sqlite_url: str, new_name: Callable[[], str], toy_spec: SpecBuilder
) -> None:
    names = [new_name() for _ in range(4)]
    for name in names[:2]:
        spec = toy_spec(name, sampler={"kind": "tpe"}, study={"seed": 7})
        run_search(
            spec, storage=sqlite_url, n_trials=4, device="cpu", train_fn=Script(["complete"] * 4)
        )
    assert _params(sqlite_url, names[0]) == _params(sqlite_url, names[1])

    # Resumed in two runs: reproducible too, and the second run samples new points.
    for name in names[2:]:
        spec = toy_spec(name, sampler={"kind": "tpe"}, study={"seed": 7})
        for budget in (2, 4):
            run_search(
                spec,
                storage=sqlite_url,
                n_trials=budget,
                device="cpu",
                train_fn=Script(["complete"] * 2),
            )
    resumed = _params(sqlite_url, names[2])
    assert resumed == _params(sqlite_url, names[3])
    assert resumed[2:] != resumed[:2]


def test_another_seed_samples_other_rates(
    sqlite_url: str, new_name: Callable[[], str], toy_spec: SpecBuilder
) -> None:
    a, b = new_name(), new_name()
    for name, seed in ((a, 1), (b, 2)):
        spec = toy_spec(name, study={"seed": seed})
        run_search(
            spec, storage=sqlite_url, n_trials=2, device="cpu", train_fn=Script(["complete"] * 2)
        )
    assert _params(sqlite_url, a) != _params(sqlite_url, b)


def test_timeout_stops_starting_trials(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    start = time.perf_counter()
    summary = run_search(
        toy_spec(study_name),
        storage=storage_url,
        n_trials=100,
        timeout=0.6,
        device="cpu",
        train_fn=Script(["sleep"] * 100),
    )
    assert 1 <= len(summary.outcomes) <= 4
    assert time.perf_counter() - start < 5
    assert _states(storage_url, study_name) == ["COMPLETE"] * len(summary.outcomes)


def test_bad_input_writes_nothing(tmp_path: Path, study_name: str, toy_spec: SpecBuilder) -> None:
    path = tmp_path / "never.db"
    spec = toy_spec(study_name, train={"precision": "bf16"})
    with pytest.raises(LrsearchError, match="needs a CUDA device"):
        run_search(spec, storage=f"sqlite:///{path}", device="cpu", train_fn=Script([]))
    assert not path.exists()


@pytest.mark.parametrize(
    ("entry", "kwargs", "match"),
    [
        ("toy_tasks:exploding_factory", {}, "dataset folder /nonexistent is missing"),
        (
            "toy_tasks:tiny",
            {"n_rows": 3},
            r"does not take \[task\] kwargs .*n_rows.*parameters are",
        ),
        ("toy_tasks:typo_inside", {"n_train": 8}, "raised TypeError while building"),
        ("toy_tasks:not_a_task", {}, "without"),
    ],
)
def test_a_task_that_cannot_load_is_a_task_error(
    sqlite_url: str,
    study_name: str,
    toy_spec: SpecBuilder,
    entry: str,
    kwargs: dict[str, Any],
    match: str,
) -> None:
    spec = toy_spec(study_name, task={"entry": entry, "kwargs": kwargs})
    with pytest.raises(TaskError, match=match):
        run_search(spec, storage=sqlite_url, device="cpu", train_fn=Script([]))


def test_groups_are_stored_when_a_first_run_died_early(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name)
    study, _ = create_or_resume(
        open_storage(sqlite_url),
        study_name,
        spec,
        direction="maximize",
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
    )
    assert GROUPS_ATTR not in study.user_attrs
    run_search(spec, storage=sqlite_url, n_trials=0, device="cpu", train_fn=Script([]))
    assert study.user_attrs[GROUPS_ATTR] == {"embed": ["embed"], "body": ["body"], "head": ["head"]}


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ({"kind": "median"}, optuna.pruners.MedianPruner),
        ({"kind": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"kind": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"kind": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_make_pruner(toy_spec: SpecBuilder, pruner: dict[str, str], cls: type) -> None:
    assert isinstance(make_pruner(toy_spec("x", pruner=pruner)), cls)


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ({"kind": "tpe"}, optuna.samplers.TPESampler),
        ({"kind": "random"}, optuna.samplers.RandomSampler),
    ],
)
def test_make_sampler(toy_spec: SpecBuilder, sampler: dict[str, str], cls: type) -> None:
    assert isinstance(make_sampler(toy_spec("x", sampler=sampler)), cls)


def test_training_seconds_count_the_trainer_less_its_reports(
    storage_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the summary calls training is the trainer's time less its reports' storage writes."""
    slow = 0.05
    original = optuna.Trial.report

    def slow_report(self: optuna.Trial, value: float, step: int) -> None:
        time.sleep(slow)  # as a slow database would
        original(self, value, step)

    monkeypatch.setattr(optuna.Trial, "report", slow_report)

    def train_fn(*args: Any, report: Callable[[int, float], None], **kw: Any) -> TrainResult:
        time.sleep(0.1)  # "training"
        for step in range(2):
            report(step, 0.5)
        return TrainResult(0.5, 2, 2, 0.1, "cpu", "fp32")

    summary = run_search(
        toy_spec(study_name), storage=storage_url, n_trials=3, device="cpu", train_fn=train_fn
    )
    assert len(summary.outcomes) == 3
    # 3 trials x 0.1 s of training; the 6 slow reports (0.3 s) count outside it.
    assert 0.3 <= summary.training_seconds < 0.3 + 6 * slow
    assert summary.seconds - summary.training_seconds >= 6 * slow
