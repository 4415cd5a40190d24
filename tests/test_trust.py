"""A study database does not choose the code a worker runs (lrsearch.trust).

The stored spec is rewritten as someone with write access to the database could: ``worker`` and
``verify`` must refuse the entry in one line, import nothing, and leave the study as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner, Result
from conftest import snapshot_trials

from lrsearch.cli import main
from lrsearch.launch import plan_workers
from lrsearch.schema import SPEC_ATTR
from lrsearch.search import create_study, run_search
from lrsearch.storage import open_storage
from lrsearch.training import TrainResult
from lrsearch.trust import BUILTIN_TASKS, ENV_VAR, allowed_tasks, is_allowed


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def _complete(*args: Any, **kwargs: Any) -> TrainResult:
    return TrainResult(0.5, 4, 1, 0.01, "cpu", "fp32")


@pytest.mark.parametrize(
    ("entry", "allowed", "expected"),
    [
        ("lrsearch.tasks.digits:digits_transfer", BUILTIN_TASKS, True),
        ("os:system", BUILTIN_TASKS, False),
        ("lrsearch.tasks.vision:check_state", BUILTIN_TASKS, False),  # not a task factory
        ("my.tasks:bert", {"my.tasks:bert"}, True),
        ("my.tasks:other", {"my.tasks:bert"}, False),
        ("my.tasks:other", {"my.tasks:*"}, True),
        ("my.tasks_evil:x", {"my.tasks:*"}, False),
        ("my.tasks.sub:x", {"my.tasks:*"}, False),  # one module, not its package
        ("my.tasks", {"my.tasks:*"}, False),
    ],
)
def test_is_allowed(entry: str, allowed: set[str], expected: bool) -> None:
    assert is_allowed(entry, allowed) is expected


def test_allowed_tasks_adds_the_option_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_VAR, " a.b:c , ,d:*")
    assert allowed_tasks(["x:y"]) == BUILTIN_TASKS | {"a.b:c", "d:*", "x:y"}
    monkeypatch.delenv(ENV_VAR)
    assert allowed_tasks() == BUILTIN_TASKS


def _tamper(url: str, name: str, entry: str, kwargs: dict[str, Any]) -> None:
    """Rewrite the stored task as anyone who can write the database could."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    data = json.loads(study.user_attrs[SPEC_ATTR])
    data["task"] = {"entry": entry, "kwargs": kwargs}
    study.set_user_attr(SPEC_ATTR, json.dumps(data))


def _state(url: str, name: str) -> tuple[Any, ...]:
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    return (study.user_attrs, snapshot_trials(storage, name))


@pytest.mark.parametrize("command", ["worker", "verify"])
def test_a_tampered_entry_is_refused_and_runs_nothing(
    command: str,
    storage_url: str,
    study_name: str,
    toy_spec: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_VAR)
    # One complete trial (for verify to retrain) and room in the budget (for the worker).
    run_search(toy_spec(study_name), storage=storage_url, n_trials=1, train_fn=_complete)
    pwned = tmp_path / "pwned.txt"
    _tamper(storage_url, study_name, "os:system", {"command": f"echo PWNED > {pwned}"})
    before = _state(storage_url, study_name)

    result = invoke(command, "--storage", storage_url, "--study", study_name)

    assert result.exit_code != 0
    assert not pwned.exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "'os:system'" in lines[0] and study_name in lines[0]
    assert "--allow-task os:system" in lines[0] and ENV_VAR in lines[0]
    assert _state(storage_url, study_name) == before


def test_a_worker_runs_an_entry_allowed_on_its_command_line(
    sqlite_url: str, study_name: str, toy_spec: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR)
    create_study(toy_spec(study_name, study={"n_trials": 1}), storage=sqlite_url)
    refused = invoke("worker", "--storage", sqlite_url, "--study", study_name)
    assert refused.exit_code == 1 and "'toy_tasks:tiny'" in refused.output

    for allow in (["--allow-task", "toy_tasks:tiny"], ["--allow-task", "toy_tasks:*"]):
        ran = invoke("worker", "--storage", sqlite_url, "--study", study_name, *allow)
        assert ran.exit_code == 0, ran.output
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


def test_a_worker_runs_an_entry_allowed_by_the_environment(
    sqlite_url: str, study_name: str, toy_spec: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "other:thing, toy_tasks:tiny")
    create_study(toy_spec(study_name, study={"n_trials": 1}), storage=sqlite_url)
    ran = invoke("worker", "--storage", sqlite_url, "--study", study_name)
    assert ran.exit_code == 0, ran.output


def test_confirm_refuses_a_tampered_entry_and_run_confirms_its_own_files_entry(
    sqlite_url: str, study_name: str, toy_spec: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR)
    # run's own study file names the entry: its confirmation retrains without an allow-list.
    spec = toy_spec(study_name, study={"n_trials": 4}, winner={"reseeds": 1, "top_k": 1})
    summary = run_search(spec, storage=sqlite_url, device="cpu")
    assert summary.confirmation is not None and summary.confirmation["new_runs"] == 1
    _tamper(sqlite_url, study_name, "os:system", {"command": "echo PWNED"})
    before = _state(sqlite_url, study_name)
    result = invoke("confirm", "--storage", sqlite_url, "--study", study_name, "--reseeds", "2")
    assert result.exit_code == 1
    assert "'os:system'" in result.output and "--allow-task os:system" in result.output
    assert _state(sqlite_url, study_name) == before


def test_launched_workers_may_run_the_launch_files_entry() -> None:
    (w,) = plan_workers(
        study="s",
        url="sqlite:///x.db",
        budget=2,
        n_workers=1,
        devices=None,
        base_env={},
        allow_task="toy_tasks:tiny",
    )
    command = main.commands["worker"]
    parsed = command.make_context("worker", list(w.argv[4:]))
    assert parsed.params["allow_tasks"] == ("toy_tasks:tiny",)


def test_launch_workers_run_the_launch_files_own_entry(
    sqlite_url: str, study_name: str, make_spec: Callable[..., Path], tmp_path: Path
) -> None:
    # No $LRSEARCH_ALLOW_TASKS: the toy entry is allowed only by being in the launched file.
    tests = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRSEARCH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent), str(tests)])
    spec = make_spec(study_name, study={"n_trials": 2})
    command = ["launch", str(spec), "--workers", "1", "--storage", sqlite_url]
    done = subprocess.run(
        [sys.executable, "-m", "lrsearch.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    assert len(study.trials) == 2
