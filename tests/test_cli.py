"""The ``lrsearch`` command, in-process with click's CliRunner, and once end to end as users run it.

Click 8.2+ keeps stderr apart: ``result.stdout`` is what a pipe would read, ``result.stderr`` the
messages. A study run once per module (real toy training) serves the read-only commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import toy_tasks
from click.testing import CliRunner, Result
from conftest import RUN_PREFIX, TESTS_DIR, to_toml, toy_spec_data
from toy_tasks import ToyNet

from lrsearch.cli import main, one_line
from lrsearch.errors import StudyNotFoundError
from lrsearch.schema import OUTCOME_ATTR
from lrsearch.storage import open_storage, trial_lrs

GROUPS = ["embed", "body", "head"]
SpecWriter = Callable[..., Path]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=True)


def error_line(result: Result) -> str:
    """The one error line of a failed command (asserting there is exactly one)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lrsearch: error: ")
    assert "Traceback" not in result.output
    return lines[0]


class Finished:
    """A study run once for the module's read-only tests."""

    def __init__(self, url: str, name: str, result: Result) -> None:
        self.url, self.name, self.result = url, name, result

    @property
    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=open_storage(self.url))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    folder = tmp_path_factory.mktemp("cli")
    name = f"{RUN_PREFIX}cli-module"
    spec = folder / "study.toml"
    spec.write_text(to_toml(toy_spec_data(name, study={"n_trials": 4})), encoding="utf-8")
    url = f"sqlite:///{folder / 'studies.db'}"
    result = invoke("run", str(spec), "--storage", url, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return Finished(url, name, result)


def test_run_prints_a_summary_with_the_best_trial(finished: Finished) -> None:
    out = finished.result.stdout
    best = finished.study.best_trial
    assert f"study {finished.name!r} in sqlite:///" in out
    assert "this run: 4 trial(s)" in out and "4 complete" in out
    assert f"best: trial {best.number}, value {best.value:.4g}" in out
    table = out[out.index("group") :].splitlines()
    assert table[0].split() == ["group", "lr"]
    rows = {line.split()[0]: line.split()[1] for line in table[2:]}
    assert list(rows) == GROUPS
    for group, lr in trial_lrs(best).items():
        assert rows[group] == ("frozen" if lr == 0 else f"{lr:.3g}")


def test_run_says_how_much_of_its_time_went_outside_training(finished: Finished) -> None:
    line = next(x for x in finished.result.stdout.splitlines() if x.startswith("time: "))
    training = float(line.split()[1])
    outside = float(line.split(", ")[1].split()[0])
    total = float(finished.result.stdout.split(" trial(s) in ")[1].split()[0])
    # The toy trials train for milliseconds (test_search checks the figure itself, with sleeps).
    assert training >= 0 and outside > 0
    assert training + outside == pytest.approx(total, abs=0.15)  # each printed to 0.1 s


def test_run_again_runs_nothing_and_says_why(finished: Finished, make_spec: SpecWriter) -> None:
    spec = make_spec(finished.name, study={"n_trials": 4})
    result = invoke("run", str(spec), "--storage", finished.url, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "this run: 0 trial(s)" in result.stdout
    assert "already has 4 finished trial(s), its budget is 4" in result.stdout
    assert len(finished.study.trials) == 4


def test_studies_lists_the_study(finished: Finished) -> None:
    result = invoke("studies", "--storage", finished.url)
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.stdout.strip().splitlines()
    assert header.split() == [
        "study", "direction", "trials", "complete", "pruned", "failed", "running", "best",
    ]  # fmt: skip
    assert set(rule) <= {"-", " "}
    row = next(r.split() for r in rows if r.split()[0] == finished.name)
    assert row[1:7] == ["maximize", "4", "4", "0", "0", "0"]
    assert float(row[7]) == pytest.approx(finished.study.best_value, abs=1e-3)


def test_best_table(finished: Finished) -> None:
    result = invoke("best", "--study", finished.name, "--storage", finished.url)
    assert result.exit_code == 0, result.output
    header, _, row, cost = result.stdout.strip().splitlines()
    assert header.split() == ["trial", "value", "cost", *GROUPS]
    assert cost.startswith("cost: the trial's wall time in seconds")
    best = finished.study.best_trial
    assert int(row.split()[0]) == best.number
    assert float(row.split()[2]) == pytest.approx(best.duration.total_seconds(), rel=1e-3)


def test_best_json_is_one_object(finished: Finished) -> None:
    result = invoke("best", "--study", finished.name, "--storage", finished.url, "--format", "json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    best = finished.study.best_trial
    assert isinstance(record, dict)
    assert (record["trial"], record["value"]) == (best.number, best.value)
    assert record["lrs"] == trial_lrs(best)
    assert list(record["lrs"]) == GROUPS


@pytest.mark.parametrize("top", [2, 3])
def test_best_top(finished: Finished, top: int) -> None:
    args = ("best", "--study", finished.name, "--storage", finished.url, "--top", str(top))
    records = json.loads(invoke(*args, "--format", "json").stdout)
    values = sorted((t.value for t in finished.study.trials), reverse=True)
    assert [r["value"] for r in records] == values[:top]
    table = invoke(*args)
    assert len(table.stdout.strip().splitlines()) == 2 + top + 1  # + what cost is


def _fake_train(*args: Any, seed: int, report: Callable[[int, float], None], **kwargs: Any) -> Any:
    from lrsearch.training import TrainResult

    report(0, 0.5 + 0.01 * seed)
    return TrainResult(0.5 + 0.01 * seed, 1, 1, 0.0, "cpu", "fp32")


@pytest.mark.parametrize(
    ("space", "cost", "knobs", "meaning"),
    [
        (
            {"weight_decay": [1e-4, 1e-1]},
            "examples",
            ["weight_decay"],
            "examples trained x the share of parameters that train, the study's second objective",
        ),
        (
            {"kind": "layer_decay", "freeze": None, "head": ["head"], "weight_decay": 0.01},
            None,
            ["weight_decay", "base_lr", "decay", "head_multiplier"],
            "the trial's wall time in seconds",
        ),
    ],
)
def test_best_shows_every_searched_value_and_what_cost_is(
    sqlite_url: str,
    study_name: str,
    space: dict[str, Any],
    cost: str | None,
    knobs: list[str],
    meaning: str,
) -> None:
    from lrsearch.search import run_search
    from lrsearch.spec import StudySpec

    data = toy_spec_data(
        study_name,
        study={"n_trials": 6, "cost": cost},
        space=space,
        pruner={"kind": "none"},
    )
    run_search(StudySpec.from_dict(data), storage=sqlite_url, device="cpu", train_fn=_fake_train)
    args = ("best", "--study", study_name, "--storage", sqlite_url, "--top", "5")
    lines = invoke(*args).stdout.strip().splitlines()
    assert lines[0].split() == ["trial", "value", "cost", *GROUPS, *knobs]
    assert len(lines) == 2 + 5 + 1 and lines[-1].startswith(f"cost: {meaning}")
    records = json.loads(invoke(*args, "--format", "json").stdout)
    for line, record in zip(lines[2:-1], records, strict=True):
        cells = line.split()
        assert list(record["knobs"]) == knobs
        shown = cells[3 + len(GROUPS) :]
        assert [float(c) for c in shown] == pytest.approx(
            [record["knobs"][k] for k in knobs], rel=5e-3
        )


def test_export_json_and_file(finished: Finished, tmp_path: Path) -> None:
    base = ("export", "--study", finished.name, "--storage", finished.url)
    result = invoke(*base)
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["schema"] == "lrsearch/optimizer-config/v1"
    assert config["trial"] == finished.study.best_trial.number
    assert [g["name"] for g in config["groups"]] == GROUPS

    out = tmp_path / "best.json"
    written = invoke(*base, "-o", str(out))
    assert written.exit_code == 0, written.output
    assert written.stdout == ""
    assert f"wrote {out}" in written.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == config

    other = next(t.number for t in finished.study.trials if t.number != config["trial"])
    picked = json.loads(invoke(*base, "--trial", str(other)).stdout)
    assert picked["trial"] == other


def test_export_python_builds_the_same_optimizer(finished: Finished) -> None:
    base = ("export", "--study", finished.name, "--storage", finished.url)
    text = invoke(*base, "--format", "python").stdout
    config = json.loads(invoke(*base).stdout)
    namespace: dict[str, Any] = {}
    exec(compile(text, "best_optimizer.py", "exec"), namespace)
    model = ToyNet()
    optimizer = namespace["build_optimizer"](model)
    trained = {g["name"]: g["lr"] for g in config["groups"] if not g["frozen"]}
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == trained
    for g in config["groups"]:
        assert getattr(model, g["name"]).weight.requires_grad == (not g["frozen"])


def test_export_to_a_missing_folder_is_one_line(finished: Finished, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "best.json"
    result = invoke("export", "--study", finished.name, "--storage", finished.url, "-o", str(out))
    assert result.exit_code == 1
    assert "cannot write" in error_line(result)


def test_storage_comes_from_the_environment(finished: Finished) -> None:
    result = invoke("studies", env={"LRSEARCH_STORAGE": finished.url})
    assert result.exit_code == 0, result.output
    assert finished.name in result.stdout


def test_readers_do_not_create_a_database(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = invoke("studies", "--storage", f"sqlite:///{path}")
    assert result.exit_code == 1
    assert "no database file" in error_line(result)
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "code", "ours"),
    [
        (["--version"], 0, False),
        (["best", "--study", "x", "--bogus"], 2, False),  # click's usage errors
        (["run"], 2, False),
        (["run", "{tmp}/missing.toml"], 2, True),  # SpecError
        (["best", "--study", "nope", "--storage", "{url}"], 1, True),  # no such study
        (["studies", "--storage", "oracle://db"], 1, True),  # StorageError
    ],
)
def test_exit_codes(
    finished: Finished, tmp_path: Path, args: list[str], code: int, ours: bool
) -> None:
    result = invoke(*[a.format(tmp=tmp_path, url=finished.url) for a in args])
    assert result.exit_code == code, result.output
    if ours:
        error_line(result)
    assert "Traceback" not in result.output


def test_debug_raises_where_the_default_prints_one_line(finished: Finished) -> None:
    args = ("best", "--study", "absent", "--storage", finished.url)
    quiet = invoke(*args)
    assert quiet.exit_code == 1 and isinstance(quiet.exception, SystemExit)
    assert "no study named 'absent'" in error_line(quiet)
    loud = invoke("--debug", *args)
    assert isinstance(loud.exception, StudyNotFoundError)
    assert loud.exc_info is not None and loud.exc_info[2] is not None  # the traceback
    assert "lrsearch: error:" not in loud.stderr


def test_ctrl_c_exits_130_with_the_study_intact(
    sqlite_url: str, study_name: str, make_spec: SpecWriter
) -> None:
    spec = make_spec(study_name, task={"entry": "toy_tasks:interrupting"})
    result = invoke("run", str(spec), "--storage", sqlite_url, "--device", "cpu")
    assert result.exit_code == 130, result.output
    assert "1 interrupted" in result.stdout
    assert "interrupted; the study is intact" in result.stderr
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    trial, queued = study.trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs[OUTCOME_ATTR] == "interrupted"
    assert queued.state == optuna.trial.TrialState.WAITING  # re-run first by the next run


def test_a_task_bug_is_one_line_even_when_its_message_is_not(
    sqlite_url: str, study_name: str, make_spec: SpecWriter
) -> None:
    spec = make_spec(study_name, task={"entry": "toy_tasks:buggy"})
    result = invoke("run", str(spec), "--storage", sqlite_url, "--device", "cpu")
    assert result.exit_code == 1
    line = error_line(result)
    assert "ValueError: shapes do not match:; got (2, 3); want (3, 2)" in line
    assert "trial 0 failed in the task's code" in line


def test_the_default_device_runs(sqlite_url: str, study_name: str, make_spec: SpecWriter) -> None:
    spec = make_spec(study_name, study={"n_trials": 1})
    result = invoke("run", str(spec), "--storage", sqlite_url)
    assert result.exit_code == 0, result.output


@pytest.fixture
def threads_seen() -> Iterator[list[int]]:
    """Torch's CPU threads each time ``toy_tasks:thread_recording`` built a model (the search builds
    one to resolve the groups, then one per trial); the test process's threads are put back
    afterwards (``--threads`` sets them for the whole process)."""
    before = torch.get_num_threads()
    toy_tasks.THREADS_SEEN.clear()
    try:
        yield toy_tasks.THREADS_SEEN
    finally:
        torch.set_num_threads(before)


def _recording_spec(make_spec: SpecWriter, name: str, n_trials: int) -> Path:
    return make_spec(
        name, study={"n_trials": n_trials}, task={"entry": "toy_tasks:thread_recording"}
    )


def test_run_threads_sets_torch_threads_before_training(
    threads_seen: list[int], sqlite_url: str, study_name: str, make_spec: SpecWriter
) -> None:
    torch.set_num_threads(1)
    spec = _recording_spec(make_spec, study_name, 2)
    result = invoke("run", str(spec), "--storage", sqlite_url, "--device", "cpu", "--threads", "2")
    assert result.exit_code == 0, result.output
    assert threads_seen and set(threads_seen) == {2}  # every model built


def test_worker_threads_sets_torch_threads_before_training(
    threads_seen: list[int], sqlite_url: str, study_name: str, make_spec: SpecWriter
) -> None:
    torch.set_num_threads(1)
    spec = _recording_spec(make_spec, study_name, 1)
    assert invoke("create", str(spec), "--storage", sqlite_url).exit_code == 0
    threads_seen.clear()  # create builds the model too, to check the groups
    args = ("--study", study_name, "--storage", sqlite_url, "--device", "cpu", "--threads", "3")
    result = invoke("worker", *args)
    assert result.exit_code == 0, result.output
    assert threads_seen and set(threads_seen) == {3}


@pytest.mark.parametrize(
    ("omp", "busy", "expected"),
    [
        ("1", 1, 3),  # $OMP_NUM_THREADS set (as launch does): torch is left with what it has
        (None, 0, 2),  # else one thread per physical core this process may use ...
        (None, 1, 1),  # ... that the load average does not show busy, and a note says so
    ],
)
def test_run_default_threads(
    omp: str | None,
    busy: int,
    expected: int,
    threads_seen: list[int],
    sqlite_url: str,
    study_name: str,
    make_spec: SpecWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lrsearch.threads.physical_cores", lambda *a, **k: 2)
    monkeypatch.setattr("lrsearch.threads.sampled_busy", lambda *a, **k: float(busy))
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    torch.set_num_threads(3)
    spec = _recording_spec(make_spec, study_name, 1)
    result = invoke("run", str(spec), "--storage", sqlite_url, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert threads_seen and set(threads_seen) == {expected}
    note = "lrsearch: note: 1 CPU thread(s) of 2 cores: other work keeps the rest busy"
    assert (note in result.output) == (expected == 1), result.output


@pytest.mark.parametrize("value", ["0", "-2", "two"])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_bad_threads_is_a_usage_error(
    command: str, value: str, make_spec: SpecWriter, tmp_path: Path
) -> None:
    db = tmp_path / "studies.db"
    where = [str(make_spec())] if command == "run" else ["--study", "toy"]
    result = invoke(command, *where, "--storage", f"sqlite:///{db}", "--threads", value)
    assert result.exit_code == 2, result.output  # bad usage, as the README's exit codes say
    assert "Invalid value for '--threads'" in result.stderr
    assert "Traceback" not in result.output
    assert not db.exists()  # refused before anything ran


def _console_script() -> Path:
    script = Path(sys.executable).with_name("lrsearch")
    if not script.exists():
        pytest.skip("the lrsearch console script is not installed beside this Python")
    return script


def test_end_to_end_as_a_user_runs_it(tmp_path: Path, study_name: str) -> None:
    lrsearch = str(_console_script())
    # The toy task must import in the child as it does here.
    paths = [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("LRSEARCH_STORAGE", None)
    spec = tmp_path / "toy.toml"
    spec.write_text(to_toml(toy_spec_data(study_name)), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'e2e.db'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [lrsearch, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )

    ran = run("run", str(spec), "--storage", url, "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    assert "best: trial" in ran.stdout

    best = run("best", "--study", study_name, "--storage", url, "--format", "json")
    assert best.returncode == 0, best.stderr
    record = json.loads(best.stdout)
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    assert len(study.trials) == 3
    assert (record["trial"], record["value"]) == (study.best_trial.number, study.best_value)
    assert list(record["lrs"]) == GROUPS

    # (the one-line default is checked in-process above)
    loud = run("--debug", "best", "--study", "absent", "--storage", url)
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr
    assert "StudyNotFoundError" in loud.stderr


def test_a_foreign_multi_objective_study_does_not_break_the_readers(
    sqlite_url: str, study_name: str
) -> None:
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(sqlite_url), directions=["minimize", "maximize"]
    )
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2)
    listed = invoke("studies", "--storage", sqlite_url)
    assert listed.exit_code == 0, listed.output
    row = next(r.split() for r in listed.stdout.splitlines() if r.startswith(study_name))
    assert row[1:4] == ["minimize,maximize", "2", "2"]
    assert row[-1] == "-"  # no single best value
    best = invoke("best", "--study", study_name, "--storage", sqlite_url)
    assert best.exit_code == 1
    assert "has 2 objectives" in error_line(best)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("plain", "plain"),
        ("first\nsecond", "first; second"),
        ("  padded \n\n  lines  \n", "padded; lines"),
        ("", "(no message)"),
    ],
)
def test_one_line(message: str, expected: str) -> None:
    assert one_line(message) == expected


def test_progress_bar_times_the_first_trial_too() -> None:
    from types import SimpleNamespace

    from lrsearch.cli.text import ProgressBar

    bar = ProgressBar()
    bar.started -= 50.0  # as if the first trial took 50 s
    summary = SimpleNamespace(
        budget=3, already_finished=0, study="s", count=lambda _: 0, best_value=None
    )
    bar.update(None, summary)
    try:
        shown = bar.bar.format_dict
        assert shown["elapsed"] >= 50.0
        assert shown["rate"] == pytest.approx(1 / 50.0, rel=0.05)  # not thousands of trials/s
    finally:
        bar.close()


def test_the_progress_bar_and_the_summary_agree_on_every_count() -> None:
    import re

    from lrsearch.cli.text import ProgressBar, summary_text
    from lrsearch.search import SearchSummary, TrialOutcome

    summary = SearchSummary("s", "sqlite:///x.db", "maximize", 5, False, 0)
    bar = ProgressBar()
    for i, outcome in enumerate(["complete", "pruned", "diverged", "pruned", "failed"]):
        summary.outcomes.append(TrialOutcome(i, outcome, 0.5, {"head": 1e-3}, 0.1))
        bar.update(summary.outcomes[-1], summary)
    try:
        shown = bar.bar.format_dict["postfix"]
    finally:
        bar.close()
    line = summary_text(summary).splitlines()[1]
    in_line = {
        word: int(n) for n, word in re.findall(r"(\d+) (complete|pruned|diverged|failed)", line)
    }
    in_bar = {
        word: int(n) for word, n in re.findall(r"(complete|pruned|diverged|failed)=(\d+)", shown)
    }
    assert in_bar == in_line == {"complete": 1, "pruned": 2, "diverged": 1, "failed": 1}
