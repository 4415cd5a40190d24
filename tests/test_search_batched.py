"""``[train] batch_trials``: the search loop trains K trials together and each keeps its own fate.

The toy task trains for real (a few steps); the batched study is checked against the same study
trained one trial at a time. Task factories for the study files live here
(``test_search_batched:NAME``; ``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import lrsearch.search.trial as one_trial
from lrsearch.errors import LrsearchError, SpecError, TaskError
from lrsearch.schema import OUTCOME_ATTR, REASON_ATTR
from lrsearch.search import create_study, run_search, run_worker
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage, trial_lrs
from lrsearch.tasks import TensorClassificationTask
from lrsearch.training import Trainer

SpecBuilder = Callable[..., StudySpec]
GOOD = {"lr.embed": 0.05, "lr.body": 0.05, "lr.head": 0.05}
SLOW = {"lr.embed": 1e-4, "lr.body": 1e-4, "lr.head": 1e-4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(torch.relu(self.norm(self.embed(x))))))


def batchnorm_task() -> TensorClassificationTask:
    """The toy problem with a BatchNorm layer in the ``body`` group (train mode when it learns)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()

    def model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            return _NormNet()

    return TensorClassificationTask(model, x[:64], y[:64], x[64:], y[64:])


def _spec(toy_spec: SpecBuilder, name: str, k: int, **sections: Any) -> StudySpec:
    train = {"epochs": 1, "batch_size": 16, "eval_every": 1, "batch_trials": k}
    train.update(sections.pop("train", {}))
    return toy_spec(name, train=train, **sections)


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _enqueue(url: str, spec: StudySpec, name: str, params: list[dict[str, float]]) -> None:
    run_search(spec, storage=url, study_name=name, n_trials=0, device="cpu")  # creates it
    study = _study(url, name)
    for p in params:
        study.enqueue_trial(p)


def _record(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[Any, ...]]:
    return [
        (t.number, t.state, t.params, trial_lrs(t), t.values, t.intermediate_values) for t in trials
    ]


class _Spy(Trainer):
    """A trainer that records how many trials each ``train_many`` got, and may wrap their
    reports."""

    def __init__(self, wrap: Callable[[int, Any], Any] | None = None) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.wrap = wrap

    def train_many(self, *args: Any, reports: Any, **kwargs: Any) -> Any:
        self.sizes.append(len(reports))
        if self.wrap is not None:
            reports = [self.wrap(i, r) for i, r in enumerate(reports)]
        return super().train_many(*args, reports=reports, **kwargs)


def test_batched_trials_equal_one_at_a_time_within_the_budget(
    storage_url: str, new_name: Callable[[], str], toy_spec: SpecBuilder, monkeypatch: Any
) -> None:
    spy = _Spy()
    runs = {}
    for k in (1, 3):
        name = new_name()
        summary = run_search(
            _spec(toy_spec, name, k), storage=storage_url, n_trials=7, device="cpu", trainer=spy
        )
        assert [o.number for o in summary.outcomes] == list(range(7))
        runs[k] = _study(storage_url, name).get_trials()
    assert spy.sizes == [3, 3, 1]  # the budget: 7 trials, never an 8th asked
    one, batched = _record(runs[1]), _record(runs[3])
    assert [t[:4] for t in batched] == [t[:4] for t in one]  # numbers, states, samples
    assert all(t[1] == TrialState.COMPLETE for t in batched)
    for got, want in zip(batched, one, strict=True):
        assert got[4] == pytest.approx(want[4])
        assert list(got[5]) == list(want[5])
        assert list(got[5].values()) == pytest.approx(list(want[5].values()))
    assert all(t.state != TrialState.RUNNING for t in runs[3])


def test_a_worker_asks_no_more_than_the_budget_leaves(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: Any
) -> None:
    spy = _Spy()
    spec = _spec(toy_spec, study_name, 4)
    create_study(spec, storage=sqlite_url)
    run_search(spec, storage=sqlite_url, n_trials=2, device="cpu", trainer=spy)
    summary = run_worker(sqlite_url, study_name, n_trials=5, device="cpu", trainer=spy)
    assert spy.sizes == [2, 3]
    assert (summary.already_finished, len(summary.outcomes)) == (2, 3)
    assert [t.state for t in _study(sqlite_url, study_name).get_trials()] == [
        TrialState.COMPLETE
    ] * 5


def test_pruned_slots_end_pruned_while_the_others_complete(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    median = {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    spec = _spec(toy_spec, study_name, 2, space={"freeze": None}, pruner=median)
    # The first pair completes (nothing to compare with yet); in the second, the slow one falls
    # below the median of the first pair and is pruned, the good one trains on.
    _enqueue(sqlite_url, spec, study_name, [GOOD, SLOW, GOOD, SLOW])
    summary = run_search(spec, storage=sqlite_url, n_trials=4, device="cpu")
    assert [o.outcome for o in summary.outcomes] == ["complete", "complete", "complete", "pruned"]
    trials = _study(sqlite_url, study_name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert len(trials[3].intermediate_values) < len(trials[2].intermediate_values)


def test_a_diverging_slot_is_diverged_alone(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = _spec(
        toy_spec,
        study_name,
        3,
        space={"freeze": None, "lr": [1e-4, 1e30]},
        train={"optimizer": "sgd"},
    )
    huge = {"lr.embed": 1e30, "lr.body": 1e30, "lr.head": 1e30}
    _enqueue(sqlite_url, spec, study_name, [GOOD, huge, SLOW])
    summary = run_search(spec, storage=sqlite_url, n_trials=3, device="cpu")
    assert [o.outcome for o in summary.outcomes] == ["complete", "diverged", "complete"]
    good, bad, slow = _study(sqlite_url, study_name).get_trials()
    assert (good.state, bad.state, slow.state) == (
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    )
    assert bad.user_attrs[OUTCOME_ATTR] == "diverged"
    assert "diverged" in bad.user_attrs[REASON_ATTR]
    assert math.isnan(bad.intermediate_values[max(bad.intermediate_values)])


def test_batchnorm_in_train_mode_falls_back_to_one_at_a_time(
    sqlite_url: str,
    new_name: Callable[[], str],
    toy_spec: SpecBuilder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sections = {
        "task": {"entry": "test_search_batched:batchnorm_task"},
        "groups": {"embed": ["embed"], "body": ["body", "norm"], "head": ["head"]},
        "space": {"freeze": None},
    }
    values = {}
    for k in (1, 3):
        caplog.clear()
        name = new_name()
        with caplog.at_level(logging.WARNING, logger="lrsearch"):
            run_search(
                _spec(toy_spec, name, k, **sections), storage=sqlite_url, n_trials=5, device="cpu"
            )
        warned = [r.getMessage() for r in caplog.records if "batch_trials" in r.getMessage()]
        assert len(warned) == (1 if k == 3 else 0)  # once, though both batches fell back
        values[k] = _record(_study(sqlite_url, name).get_trials())
    assert "BatchNorm layer 'norm'" in warned[0] and "one at a time" in warned[0]
    assert values[3] == values[1]  # trained exactly as one at a time


def _interrupt_slot(at_slot: int, at_step: int) -> Callable[[int, Any], Any]:
    def wrap(i: int, report: Any) -> Any:
        def interrupting(step: int, value: float) -> None:
            if i == at_slot and step == at_step:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, in the middle of the batch
            report(step, value)

        return interrupting

    return wrap


def test_ctrl_c_in_a_batch_interrupts_every_trial_of_it(
    storage_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: Any
) -> None:
    spec = _spec(toy_spec, study_name, 3)
    summary = run_search(
        spec, storage=storage_url, n_trials=6, device="cpu", trainer=_Spy(_interrupt_slot(1, 2))
    )
    assert summary.interrupted
    assert [o.outcome for o in summary.outcomes] == ["interrupted"] * 3
    trials = _study(storage_url, study_name).get_trials()
    # Nothing left RUNNING; run, as worker does, queues the interrupted configurations again.
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 3
    assert all(t.user_attrs[OUTCOME_ATTR] == "interrupted" for t in trials[:3])
    assert [t.system_attrs["fixed_params"] for t in trials[3:]] == [t.params for t in trials[:3]]

    resumed = run_search(spec, storage=storage_url, n_trials=6, device="cpu", trainer=Trainer())
    assert resumed.already_finished == 0  # interrupted trials do not count
    assert resumed.count("complete") == 6


def test_a_worker_queues_an_interrupted_batch_again(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: Any
) -> None:
    create_study(_spec(toy_spec, study_name, 3), storage=sqlite_url)
    summary = run_worker(
        sqlite_url, study_name, n_trials=6, device="cpu", trainer=_Spy(_interrupt_slot(0, 1))
    )
    assert summary.interrupted and summary.count("interrupted") == 3
    trials = _study(sqlite_url, study_name).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 3
    queued = [t.system_attrs["fixed_params"] for t in trials[3:]]  # what a re-run will train
    assert queued == [t.params for t in trials[:3]]


def test_a_slot_lost_to_another_workers_sweep_is_dropped_alone(
    storage_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: Any
) -> None:
    storage = open_storage(storage_url)

    def wrap(i: int, report: Any) -> Any:
        def sweeping(step: int, value: float) -> None:
            if i == 1 and step == 1:  # another worker fails it as lost, behind our back
                trial_id = _study(storage_url, study_name).get_trials()[1]._trial_id
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            report(step, value)

        return sweeping

    summary = run_search(
        _spec(toy_spec, study_name, 3),
        storage=storage_url,
        n_trials=3,
        device="cpu",
        trainer=_Spy(wrap),
    )
    assert [o.outcome for o in summary.outcomes] == ["complete", "lost", "complete"]
    states = [t.state for t in _study(storage_url, study_name).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_a_bug_in_the_task_fails_the_whole_batch_and_stops(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = _spec(toy_spec, study_name, 3, task={"entry": "toy_tasks:buggy"})
    with pytest.raises(TaskError, match="shapes do not match"):
        run_search(spec, storage=sqlite_url, n_trials=6, device="cpu")
    trials = _study(sqlite_url, study_name).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all("ValueError: shapes do not match" in t.user_attrs[REASON_ATTR] for t in trials)


def test_a_two_objective_study_batches(
    storage_url: str, new_name: Callable[[], str], toy_spec: SpecBuilder
) -> None:
    runs = {}
    for k in (1, 2):
        name = new_name()
        spec = _spec(toy_spec, name, k, study={"cost": "examples"})
        summary = run_search(spec, storage=storage_url, n_trials=3, device="cpu")
        assert summary.count("complete") == 3
        runs[k] = _study(storage_url, name).get_trials()
    for got, want in zip(runs[2], runs[1], strict=True):
        assert got.state == want.state == TrialState.COMPLETE
        assert got.params == want.params
        assert got.values == pytest.approx(want.values)
        assert got.intermediate_values == {}  # a two-objective trial takes no reports
    frozen = [t for t in runs[2] if trial_lrs(t)["embed"] == 0.0]
    trained = [t for t in runs[2] if trial_lrs(t)["embed"] != 0.0]
    # cost = examples seen times the share of the model that trains (steps x batch size = 64)
    assert all(t.values[1] == pytest.approx(64.0) for t in trained)
    assert all(t.values[1] < 64.0 for t in frozen)


@pytest.mark.parametrize(
    ("value", "problem"),
    [(0, "[train] batch_trials: must be >= 1, got 0"), (2.5, "[train] batch_trials: must be")],
)
def test_batch_trials_is_checked(toy_spec: SpecBuilder, value: Any, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        toy_spec("bad", train={"batch_trials": value})
    assert problem in str(info.value)


def test_batch_trials_is_stored_with_the_spec(toy_spec: SpecBuilder) -> None:
    spec = toy_spec("kept", train={"batch_trials": 4})
    assert spec.train.batch_trials == 4
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert toy_spec("default").train.batch_trials == 1


def test_an_error_while_sampling_trains_none_of_the_batch(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder, monkeypatch: Any
) -> None:
    sample = one_trial._sample

    def failing(loop: Any, trial: optuna.Trial) -> Any:
        if trial.number == 1:
            raise LrsearchError("the storage refused the trial's rates")
        return sample(loop, trial)

    monkeypatch.setattr(one_trial, "_sample", failing)
    spy = _Spy()
    with pytest.raises(LrsearchError, match="refused"):
        run_search(
            _spec(toy_spec, study_name, 3),
            storage=sqlite_url,
            n_trials=6,
            device="cpu",
            trainer=spy,
        )
    assert spy.sizes == []
    trials = _study(sqlite_url, study_name).get_trials()
    # Nothing left RUNNING; the two interrupted (sampled) configurations are queued again.
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 2
    outcomes = [t.user_attrs[OUTCOME_ATTR] for t in trials[:3]]
    assert outcomes == ["interrupted", "failed", "interrupted"]
