"""The shared vocabulary (lrsearch.schema) and the one home of Optuna's private names."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from lrsearch import _optuna_compat as compat
from lrsearch.schema import (
    STATES,
    BudgetCount,
    Outcome,
    counts_against_budget,
    state_word,
)


def test_outcomes_are_strings_as_stored() -> None:
    assert Outcome.DIVERGED == "diverged"
    assert f"{Outcome.FAILED}" == "failed" and str(Outcome.PRUNED) == "pruned"
    assert json.dumps({"o": Outcome.INTERRUPTED}) == '{"o": "interrupted"}'
    assert Outcome("complete") is Outcome.COMPLETE


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (Outcome.COMPLETE, TrialState.COMPLETE),
        (Outcome.PRUNED, TrialState.PRUNED),
        (Outcome.DIVERGED, TrialState.PRUNED),
        (Outcome.FAILED, TrialState.FAIL),
        (Outcome.INTERRUPTED, TrialState.FAIL),
    ],
)
def test_each_outcome_has_one_optuna_state(outcome: Outcome, state: TrialState) -> None:
    assert TrialState[outcome.optuna_state] is state


@pytest.mark.parametrize(
    ("state", "stored", "word"),
    [
        ("COMPLETE", None, "complete"),
        ("PRUNED", None, "pruned"),
        ("PRUNED", "diverged", "diverged"),  # stored PRUNED: lrsearch's word wins
        ("FAIL", None, "failed"),
        ("FAIL", "interrupted", "interrupted"),
        ("RUNNING", None, "running"),
        ("WAITING", None, "waiting"),
    ],
)
def test_the_word_of_a_stored_trial(state: str, stored: str | None, word: str) -> None:
    assert state_word(state, stored) == word
    assert word in STATES


def test_every_optuna_state_has_a_word() -> None:
    assert {state_word(s.name, None) for s in TrialState} <= set(STATES)


def test_states_list_every_outcome_then_the_unfinished() -> None:
    assert STATES == (
        "complete",
        "pruned",
        "diverged",
        "failed",
        "interrupted",
        "running",
        "waiting",
    )


@pytest.mark.parametrize(
    ("state", "outcome", "number", "replaced", "counts"),
    [
        ("COMPLETE", None, 0, set(), True),
        ("PRUNED", "diverged", 1, set(), True),
        ("FAIL", "failed", 2, set(), True),
        ("FAIL", "interrupted", 3, set(), False),  # queued again instead
        ("FAIL", "failed", 4, {4}, False),  # lost and re-run: the re-run counts
        ("RUNNING", None, 5, set(), False),
        ("WAITING", None, 6, set(), False),
    ],
)
def test_the_budget_rule(
    state: str, outcome: str | None, number: int, replaced: set[int], counts: bool
) -> None:
    assert counts_against_budget(state, outcome, number, replaced) is counts


def test_budget_count_start_another() -> None:
    assert BudgetCount(2, 1, 0).start_another(3) is False  # the running trial would meet it
    assert BudgetCount(2, 1, 1).start_another(3) is True  # a queued re-run waits


def test_schema_imports_only_the_standard_library() -> None:
    code = (
        "import sys, lrsearch.schema; "
        "print(sorted(m for m in ('optuna', 'sqlalchemy', 'torch', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_compat_warns_once_on_an_unchecked_optuna(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_checked", False)
    monkeypatch.setattr(optuna, "__version__", "7.0.0")
    with pytest.warns(RuntimeWarning, match=r"checked against Optuna 5\.x, not 7\.0\.0"):
        compat.check_version()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_version()  # once per process


def test_compat_ids_and_tell() -> None:
    study = optuna.create_study(storage="sqlite:///:memory:")
    trial = study.ask()
    assert compat.study_id(study) == study._study_id
    assert compat.trial_id(trial) == trial._trial_id
    assert compat.tell(study, trial, 1.5, TrialState.COMPLETE) is TrialState.COMPLETE
    stored = compat.study_storage(study).get_trial(compat.trial_id(trial))
    assert stored.value == 1.5
    trials, beats, attrs = compat.rdb_tables()
    assert {trials.name, beats.name, attrs.name} == {
        "trials",
        "trial_heartbeats",
        "trial_user_attributes",
    }
