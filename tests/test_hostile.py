"""Hostile values get one clear line each (issue 16, items 7, 9, 10): names, seeds, groups, and the
messages around them."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner, Result
from conftest import SpecWriter, toy_spec_data
from torch import nn

from lrsearch.cli import main
from lrsearch.cli.text import ProgressBar
from lrsearch.errors import GroupError, SpecError, StorageError
from lrsearch.groups import resolve_groups
from lrsearch.limits import MAX_GROUPS, MAX_STUDY_NAME, SEED_RANGE
from lrsearch.search import run_search
from lrsearch.search.liveness import _Heartbeat
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage
from lrsearch.training import TrainResult


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def _complete(*args: Any, **kwargs: Any) -> TrainResult:
    return TrainResult(0.5, 4, 1, 0.01, "cpu", "fp32")


def _problems(**sections: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        StudySpec.from_dict(toy_spec_data("n", **sections), source="f")
    return info.value.problems


# --- study names ----------------------------------------------------------------------------------


def test_a_study_name_too_long_for_the_schema_is_a_spec_problem() -> None:
    (problem,) = _problems(study={"name": "x" * (MAX_STUDY_NAME + 1)})
    assert problem.startswith("[study] name: must be at most 512 characters")
    StudySpec.from_dict(toy_spec_data("x" * MAX_STUDY_NAME), source="f")  # the limit itself is fine


def test_a_long_study_name_is_one_line_on_every_backend(
    storage_url: str, make_spec: SpecWriter
) -> None:
    long = "x" * 600
    for args in (["create", str(make_spec("n"))], ["worker"], ["trials"]):
        result = invoke(*args, "--study", long, "--storage", storage_url)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "at most 512 characters" in result.output
        assert long not in result.output


def test_the_library_refuses_a_long_study_name_before_writing(
    storage_url: str, toy_spec: Callable[..., Any]
) -> None:
    long = "y" * (MAX_STUDY_NAME + 1)
    with pytest.raises(StorageError, match="at most 512 characters"):
        run_search(toy_spec("n"), storage=storage_url, study_name=long, train_fn=_complete)
    assert long not in [s.study_name for s in open_storage(storage_url).get_all_studies()]


@pytest.mark.parametrize(
    "args",
    [
        ["create", "SPEC"],
        ["run", "SPEC"],
        ["launch", "SPEC", "--workers", "1"],
        ["worker"],
        ["trials"],
        ["best"],
        ["export"],
        ["verify"],
        ["report", "-o", "out"],
    ],
)
def test_an_empty_study_name_is_an_error_everywhere(
    args: list[str], make_spec: SpecWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "s.db"
    args = [str(make_spec("fromfile")) if a == "SPEC" else a for a in args]
    result = invoke(*args, "--study", "", "--storage", f"sqlite:///{db}")
    assert result.exit_code == 1
    assert result.output == "lrsearch: error: --study: a study name must not be empty\n"
    assert not db.exists()


# --- seeds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, SEED_RANGE, 2**64])
def test_a_seed_outside_numpys_range_is_a_spec_problem(seed: int) -> None:
    (problem,) = _problems(study={"seed": seed})
    assert problem.startswith("[study] seed: must be")


def test_a_study_seeded_at_the_top_of_the_range_resumes(
    sqlite_url: str, study_name: str, toy_spec: Callable[..., Any]
) -> None:
    spec = toy_spec(study_name, study={"seed": SEED_RANGE - 1})
    run_search(spec, storage=sqlite_url, n_trials=1, train_fn=_complete)
    summary = run_search(spec, storage=sqlite_url, n_trials=2, train_fn=_complete)
    assert [o.outcome for o in summary.outcomes] == ["complete"]


# --- groups ---------------------------------------------------------------------------------------


def test_too_many_groups_is_one_short_problem() -> None:
    groups = {f"g{i}": [f"p{i}"] for i in range(10_000)}
    (problem,) = _problems(groups=groups)
    assert f"at most {MAX_GROUPS}" in problem and len(problem) < 200


class _Wide(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(1, 1, bias=False) for _ in range(n))


def test_too_many_groups_are_refused_by_the_library_too() -> None:
    with pytest.raises(GroupError, match=f"at most {MAX_GROUPS}"):
        resolve_groups(_Wide(2), {f"g{i}": [f"p{i}"] for i in range(MAX_GROUPS + 1)})
    with pytest.raises(GroupError, match=f"auto_depth = 2 makes {MAX_GROUPS + 4} groups"):
        resolve_groups(_Wide(MAX_GROUPS + 4), auto_depth=2)


def test_many_groups_that_match_nothing_are_listed_briefly() -> None:
    groups: dict[str, list[str]] = {f"ghost{i}": [f"nothing{i}"] for i in range(200)}
    groups["rest"] = ["*"]
    with pytest.raises(GroupError) as info:
        resolve_groups(_Wide(2), groups)
    message = str(info.value)
    assert message.startswith("200 groups match no trainable parameter: group 'ghost0'")
    assert "(and 195 more)" in message and "ghost199" not in message
    assert len(message) < 500


# --- messages -------------------------------------------------------------------------------------


def test_heartbeat_interval_0_is_reported_once() -> None:
    problems = _problems(study={"heartbeat_interval": 0, "grace_period": 5})
    assert problems == ["[study] heartbeat_interval: must be >= 1, got 0"]


class _DeadStore:
    """A storage whose every heartbeat fails (a database gone away)."""

    def __init__(self) -> None:
        self.backend = self
        self.tried = threading.Event()

    def record_heartbeat(self, trial_id: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.tried.set()
            raise OSError("gone")


def test_a_failed_heartbeat_names_the_trial_number(caplog: pytest.LogCaptureFixture) -> None:
    store = _DeadStore()
    with caplog.at_level(logging.WARNING, logger="lrsearch"), _Heartbeat(store, 0.01) as beat:  # type: ignore[arg-type]
        beat.track(4711, 3)  # database id 4711, trial number 3
        assert store.tried.wait(5)
        time.sleep(0.05)
    assert "heartbeat of trial 3 failed" in caplog.text
    assert "4711" not in caplog.text


def test_a_plain_optuna_parameter_named_like_a_rate_is_listed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr.head", 1e-4, 1e-1, log=True), n_trials=2)
    result = invoke("trials", "--study", "plain", "--storage", url, "--format", "csv")
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split(",")
    assert "lr.head" in header


class _Summary:
    budget, already_finished, study, best_value = 3, 0, "s", 0.5

    def count(self, outcome: str) -> int:
        return 0


def test_warnings_print_above_the_progress_bar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As outside pytest: no handler on the root logger, so warnings reach stderr as they do there.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    bar = ProgressBar()
    bar.update(None, _Summary())
    message = "lrsearch: storage 'x': connection lost; trying again for up to 60 s"
    logging.getLogger("lrsearch").warning(message)
    bar.close()
    err = capsys.readouterr().err
    assert message in re.split(r"[\r\n]", err), repr(err)
    assert not logging.getLogger("lrsearch").handlers  # the bar's handler is gone with it
