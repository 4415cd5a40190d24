"""``lrsearch verify --baseline single``: verify runs the one-rate baseline search itself.

A toy study (real training on the tiny toy task, seconds) that holds no single-rate trial; verify
searches one rate for every group in a study beside it and compares the winner with its best.
"""

from __future__ import annotations

import json

import optuna
import pytest
from click.testing import CliRunner
from conftest import toy_spec_data

from lrsearch.cli import main
from lrsearch.search import run_search
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage, stored_spec, trial_lrs
from lrsearch.verify import baseline_name, baseline_spec, is_single_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _per_group_study(url: str, name: str) -> None:
    data = toy_spec_data(
        name,
        study={"n_trials": 3},
        space={"freeze": ["embed"], "lr_ranges": {"head": [1e-2, 1.0]}},
    )
    run_search(StudySpec.from_dict(data), storage=url, device="cpu")


def test_verify_runs_the_single_rate_baseline_and_compares_with_it(
    sqlite_url: str, study_name: str
) -> None:
    _per_group_study(sqlite_url, study_name)
    args = ["verify", "--study", study_name, "--storage", sqlite_url, "--device", "cpu"]
    args += ["--seeds", "2", "--baseline", "single", "--baseline-trials", "3"]

    result = CliRunner().invoke(main, [*args, "--format", "json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    winner, reference = report["configs"]
    assert winner["study"] == study_name
    assert reference["study"] == baseline_name(study_name)
    assert is_single_rate(reference["lrs"]) and len(reference["runs"]) == 2
    assert report["comparison"] is not None and "single-rate reference" in report["verdict"]
    assert "searching one rate for every group" in report["reference_note"]
    storage = open_storage(sqlite_url)
    baseline = optuna.load_study(study_name=baseline_name(study_name), storage=storage)
    assert len(baseline.trials) == 3
    assert all(is_single_rate(trial_lrs(t)) for t in baseline.trials)
    assert stored_spec(baseline).space.kind == "single"
    assert "single-rate baseline" in result.stderr  # each baseline trial is shown as it ends

    # Again: the baseline is resumed (its budget met: no trial) and every run is read back.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert f"of study {baseline_name(study_name)!r}" in again.stdout
    assert "(0 new run(s))" in again.stdout
    assert len(optuna.load_study(study_name=baseline.study_name, storage=storage).trials) == 3


def test_the_baseline_spec_searches_one_rate_over_every_groups_range() -> None:
    data = toy_spec_data(
        "s",
        space={
            "lr": [1e-4, 1e-2],
            "lr_ranges": {"head": [1e-3, 0.5]},
            "freeze": ["embed"],
            "fixed": {"body": 0.0},
            "weight_decay": [1e-5, 1e-2],
        },
    )
    spec = baseline_spec(StudySpec.from_dict(data), "s.baseline-single", 7)
    assert spec.space.kind == "single" and spec.space.lr == (1e-4, 0.5)
    assert spec.space.freeze == () and spec.space.fixed == {}  # every group trains
    assert spec.space.weight_decay == (1e-5, 1e-2)
    assert (spec.study.name, spec.study.n_trials) == ("s.baseline-single", 7)
    assert spec.task == StudySpec.from_dict(data).task


def test_the_baseline_runs_a_stored_entry_only_where_it_is_allowed(
    sqlite_url: str, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _per_group_study(sqlite_url, study_name)
    monkeypatch.delenv("LRSEARCH_ALLOW_TASKS")
    args = ["verify", "--study", study_name, "--storage", sqlite_url, "--baseline", "single"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "not allowed here" in result.stderr and "--allow-task toy_tasks:tiny" in result.stderr
    names = {s.study_name for s in open_storage(sqlite_url).get_all_studies()}
    assert baseline_name(study_name) not in names  # refused before anything was created
