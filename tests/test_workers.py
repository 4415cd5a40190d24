"""Workers on one study: `create`, `worker`, the shared budget, heartbeats, lost and interrupted
trials queued again, storages that fail and come back, and passwords that never show.

The multi-process tests start real ``lrsearch worker`` processes (``tests/`` on ``PYTHONPATH`` for
the toy tasks) on SQLite and on PostgreSQL (``LRSEARCH_TEST_POSTGRES_URL``); their figures (times,
counts) are printed on lines starting ``FIGURE`` (``pytest -s`` shows them). Pure logic is
table-driven; the loop's fault handling is also tested in-process, with a scripted trainer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc
from click.testing import CliRunner, Result
from conftest import TESTS_DIR, SpecWriter, postgres_url, toy_spec_data
from optuna.trial import FrozenTrial, TrialState

import lrsearch
from lrsearch.cli import main
from lrsearch.errors import SpecError, StorageError, StudyMismatchError, StudyNotFoundError
from lrsearch.groups import LayerGroups
from lrsearch.schema import (
    LOSSES_ATTR,
    LOST_REASON,
    OUTCOME_ATTR,
    REASON_ATTR,
    RETRY_OF_ATTR,
    TRIAL_ATTR,
    BudgetCount,
)
from lrsearch.search import Liveness, create_study, prepare, run_search, run_worker
from lrsearch.space import Sample
from lrsearch.spec import StudySpec, TrainSection
from lrsearch.storage import (
    ResilientStorage,
    count_budget,
    db_wait,
    filesystem_of,
    is_transient,
    mask_url,
    open_storage,
    read_url_file,
    resolve_url,
    stored_spec,
)
from lrsearch.tasks import Task
from lrsearch.training import TrainResult

SpecBuilder = Callable[..., StudySpec]
# Generous: four processes importing torch at once on a loaded 2-core machine take a while.
STARTUP_S = 120.0
RUN_TIMEOUT_S = 240.0
FAST = {"heartbeat_interval": 1, "grace_period": 3}  # worker processes on a loaded machine
QUICK = {"heartbeat_interval": 1, "grace_period": 2}  # in this process


# --- helpers -------------------------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=True)


def _lrsearch() -> list[str]:
    script = Path(sys.executable).with_name("lrsearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lrsearch.cli"]


def _env(url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRSEARCH_")}
    # The lrsearch under test first (a worktree's, not the editable install's), then the toy tasks.
    source = Path(lrsearch.__file__).resolve().parents[1]
    paths = (str(source), str(TESTS_DIR), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    # The workers run the stored toy task: allowed as a user would allow their own (lrsearch.trust).
    env["LRSEARCH_ALLOW_TASKS"] = "toy_tasks:*"
    env["PYTHONUNBUFFERED"] = "1"
    env["LRSEARCH_ALLOW_TASKS"] = "toy_tasks:*"  # stripped above; workers run only allowed entries
    if url is not None:
        env["LRSEARCH_STORAGE"] = url
    env.update(extra)
    return env


class Workers:
    """``n`` real ``lrsearch worker`` processes on one study; their output goes to files."""

    def __init__(
        self, tmp_path: Path, url: str, study: str, n: int, *, args: Sequence[str] = ()
    ) -> None:
        self.logs = [tmp_path / f"worker{i}-{uuid.uuid4().hex[:6]}.log" for i in range(n)]
        self.procs = []
        for log in self.logs:
            with log.open("w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [*_lrsearch(), "worker", "--study", study, "--device", "cpu", *args],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=_env(url),
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"workers still running after {timeout} s:\n{self.output()}")
        return codes

    def output(self, i: int | None = None) -> str:
        logs = self.logs if i is None else [self.logs[i]]
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def workers() -> Iterator[list[Workers]]:
    """Started worker groups, killed at teardown if a test left any running."""
    started: list[Workers] = []
    yield started
    for group in started:
        group.kill()


def _spec(make_spec: SpecWriter, name: str, *, sleep_s: float, n_trials: int, **study: Any) -> Path:
    return make_spec(
        name,
        study={"n_trials": n_trials, **study},
        task={"entry": "toy_tasks:sleepy", "kwargs": {"sleep_s": sleep_s}},
    )


def _create(spec: Path, url: str) -> None:
    result = invoke("create", str(spec), "--storage", url)
    assert result.exit_code == 0, result.output


def _trials(url: str, name: str) -> list[FrozenTrial]:
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def _wait_for(what: str, check: Callable[[], Any], timeout: float = STARTUP_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _running_in(url: str, name: str, pids: Sequence[int], *, for_s: float) -> FrozenTrial | None:
    """A trial one of ``pids`` has been training for ``for_s`` seconds (mid-trial), if any."""
    now = datetime.now()
    for t in _trials(url, name):
        pid = t.user_attrs.get(TRIAL_ATTR, {}).get("pid")
        started = t.datetime_start
        running = t.state == TrialState.RUNNING and pid in pids and started is not None
        if running and (now - started).total_seconds() >= for_s:
            return t
    return None


def _check_consistent(trials: list[FrozenTrial]) -> None:
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), "trial numbers repeat or skip"
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, f"trials left RUNNING or WAITING: {left}"


def _figure(label: str, **values: Any) -> None:
    print(f"FIGURE {label}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


class Script:
    """A ``train_fn`` that plays one behaviour per call, in order, and records the samples."""

    def __init__(self, behaviours: Sequence[Callable[[Callable[[int, float], None]], float]]):
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
        value = self.behaviours[len(self.samples) - 1](report)
        return TrainResult(value, 1, 1, 0.0, "cpu", "fp32")


def complete(report: Callable[[int, float], None]) -> float:
    report(0, 0.9)
    return 0.9


def _store(url: str) -> ResilientStorage:
    return ResilientStorage(open_storage(url), shown=mask_url(url))


# --- the budget rule, pure -----------------------------------------------------------------------


def _trial_list(spec: Sequence[tuple[str, dict[str, Any]]]) -> list[FrozenTrial]:
    states = {
        "C": TrialState.COMPLETE,
        "P": TrialState.PRUNED,
        "F": TrialState.FAIL,
        "R": TrialState.RUNNING,
        "W": TrialState.WAITING,
    }
    trials = []
    for number, (state, attrs) in enumerate(spec):
        t = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=dict(attrs))
        t.state = states[state]
        t.values = [0.5] if t.state == TrialState.COMPLETE else None
        t.number = number
        trials.append(t)
    return trials


INTERRUPTED = {OUTCOME_ATTR: "interrupted"}


@pytest.mark.parametrize(
    ("trials", "expected"),
    [
        ([], (0, 0, 0)),
        ([("C", {}), ("P", {}), ("F", {})], (3, 0, 0)),
        ([("C", {}), ("R", {}), ("W", {})], (1, 1, 1)),
        # an interrupted trial never counts, queued again or not
        ([("F", INTERRUPTED), ("C", {})], (1, 0, 0)),
        # a lost trial queued again: its re-run counts instead, once it finishes
        ([("F", {}), ("W", {RETRY_OF_ATTR: 0})], (0, 0, 1)),
        ([("F", {}), ("C", {RETRY_OF_ATTR: 0})], (1, 0, 0)),
        # a chain: lost, re-run interrupted, re-run again
        (
            [("F", {}), ("F", {RETRY_OF_ATTR: 0, **INTERRUPTED}), ("P", {RETRY_OF_ATTR: 1})],
            (1, 0, 0),
        ),
        # a lost trial that was not queued again (its re-run was lost too) counts as failed
        ([("F", {}), ("F", {RETRY_OF_ATTR: 0, LOSSES_ATTR: 1})], (1, 0, 0)),
    ],
)
def test_count_budget(
    trials: list[tuple[str, dict[str, Any]]], expected: tuple[int, int, int]
) -> None:
    c = count_budget(_trial_list(trials))
    assert (c.counted, c.running, c.waiting) == expected


@pytest.mark.parametrize(
    ("count", "budget", "start"),
    [
        (BudgetCount(0, 0, 0), 3, True),
        (BudgetCount(2, 0, 0), 3, True),
        (BudgetCount(3, 0, 0), 3, False),  # met
        (BudgetCount(4, 0, 1), 3, False),  # met, even with a queued trial
        (BudgetCount(2, 1, 0), 3, False),  # the running trial would meet it: wait
        (BudgetCount(1, 1, 0), 3, True),
        (BudgetCount(2, 1, 1), 3, True),  # a queued re-run waits: run it
        (BudgetCount(0, 4, 0), 3, False),
    ],
)
def test_start_another(count: BudgetCount, budget: int, start: bool) -> None:
    assert count.start_another(budget) is start


# --- storage URLs, files, filesystems, errors: pure ----------------------------------------------


@pytest.mark.parametrize(
    ("arg", "file", "env", "env_file", "expected"),
    [
        ("sqlite:///arg.db", "sqlite:///file.db", "sqlite:///env.db", "sqlite:///ef.db", "arg"),
        (None, "sqlite:///file.db", "sqlite:///env.db", "sqlite:///ef.db", "file"),
        (None, None, "sqlite:///env.db", "sqlite:///ef.db", "env"),
        (None, None, None, "sqlite:///ef.db", "ef"),
        (None, None, None, None, "lrsearch"),
    ],
)
def test_resolve_url_order(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    arg: str | None,
    file: str | None,
    env: str | None,
    env_file: str | None,
    expected: str,
) -> None:
    monkeypatch.delenv("LRSEARCH_STORAGE_FILE", raising=False)
    path = None
    if file is not None:
        path = tmp_path / "url.txt"
        path.write_text(f"\n  {file}  \n# a comment line is not read\n")
    if env is not None:
        monkeypatch.setenv("LRSEARCH_STORAGE", env)
    if env_file is not None:
        (tmp_path / "env-url.txt").write_text(env_file)
        monkeypatch.setenv("LRSEARCH_STORAGE_FILE", str(tmp_path / "env-url.txt"))
    assert resolve_url(arg, file=path) == f"sqlite:///{expected}.db"


def test_url_file_errors_never_show_the_content(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read"):
        read_url_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(StorageError, match="is empty"):
        read_url_file(empty)
    binary = tmp_path / "secret.bin"
    binary.write_bytes(b"postgresql://u:hunter2@h/db\xff\xfe")
    with pytest.raises(StorageError) as err:
        read_url_file(binary)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 60.0), ("", 60.0), ("0", 0.0), ("2.5", 2.5), ("-1", None), ("x", None)],
)
def test_db_wait(monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: float | None) -> None:
    if raw is None:
        monkeypatch.delenv("LRSEARCH_DB_WAIT", raising=False)
    else:
        monkeypatch.setenv("LRSEARCH_DB_WAIT", raw)
    if expected is None:
        with pytest.raises(StorageError, match="LRSEARCH_DB_WAIT"):
            db_wait()
    else:
        assert db_wait() == expected


MOUNTS = """\
proc /proc proc rw 0 0
/dev/sda1 / ext4 rw 0 0
server:/export /mnt/share nfs4 rw 0 0
//nas/team /mnt/team cifs rw 0 0
me@host:/data /home/me/remote fuse.sshfs rw 0 0
/dev/sdb1 /mnt/share/local ext4 rw 0 0
/dev/sdc1 /mnt/with\\040space xfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/me/lrsearch.db", ("/", "ext4")),
        ("/mnt/share/studies/lr.db", ("/mnt/share", "nfs4")),
        ("/mnt/share/local/lr.db", ("/mnt/share/local", "ext4")),  # the deeper mount wins
        ("/mnt/shared/lr.db", ("/", "ext4")),  # a name that only starts like a mount point
        ("/mnt/team/lr.db", ("/mnt/team", "cifs")),
        ("/home/me/remote/lr.db", ("/home/me/remote", "fuse.sshfs")),
        ("/mnt/with space/lr.db", ("/mnt/with space", "xfs")),
        ("/tmp/lr.db", ("/tmp", "tmpfs")),
    ],
)
def test_filesystem_of(path: str, expected: tuple[str, str]) -> None:
    assert filesystem_of(path, MOUNTS) == expected


@pytest.mark.parametrize("fstype", ["nfs4", "cifs", "fuse.sshfs", "smb3"])
def test_sqlite_on_a_network_filesystem_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fstype: str, caplog: pytest.LogCaptureFixture
) -> None:
    from lrsearch.storage import engine

    monkeypatch.setattr(engine, "filesystem_of", lambda path: ("/mnt/share", fstype))
    url = f"sqlite:///{tmp_path / 'lr.db'}"
    with pytest.raises(StorageError, match=f"network filesystem \\({fstype}"):
        open_storage(url)
    assert not (tmp_path / "lr.db").exists()
    monkeypatch.setenv("LRSEARCH_ALLOW_NETWORK_SQLITE", "1")
    with caplog.at_level("WARNING", logger="lrsearch"):
        open_storage(url).engine.dispose()
    assert "network filesystem" in caplog.text


def test_sqlite_on_fuse_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lrsearch.storage import engine

    monkeypatch.setattr(engine, "filesystem_of", lambda path: ("/mnt/x", "fuse.mystery"))
    with caplog.at_level("WARNING", logger="lrsearch"):
        open_storage(f"sqlite:///{tmp_path / 'lr.db'}").engine.dispose()
    assert "FUSE filesystem" in caplog.text


def _operational(message: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))


def _wrapped(error: Exception) -> Exception:
    try:
        raise optuna.exceptions.StorageInternalError("commit failed") from error
    except optuna.exceptions.StorageInternalError as e:
        return e


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_operational("database is locked"), True),
        (_operational("terminating connection due to administrator command"), True),
        (_operational("connection to server at 127.0.0.1 failed: Connection refused"), True),
        (_wrapped(_operational("server closed the connection unexpectedly")), True),
        (_operational('password authentication failed for user "me"'), False),
        (_operational('database "nope" does not exist'), False),
        (_operational("no such table: trials"), False),
        (_wrapped(ValueError("value too long")), False),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (optuna.exceptions.UpdateFinishedTrialError("finished"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_resilient_storage_retries_transient_errors_only(sqlite_url: str) -> None:
    store = ResilientStorage(open_storage(sqlite_url), shown=sqlite_url, retry_s=5.0)
    calls = []

    def flaky(n: int) -> str:
        calls.append(n)
        if len(calls) < 3:
            raise _operational("database is locked")
        return "ok"

    assert store.call(flaky, 1) == "ok"
    assert (len(calls), store.recoveries) == (3, 1)

    def broken() -> None:
        raise _operational("no such table: trials")

    with pytest.raises(sqlalchemy.exc.OperationalError):
        store.call(broken)
    store.retry_s = 0.3
    start = time.monotonic()

    def down() -> None:
        raise _operational("Connection refused")

    with pytest.raises(StorageError, match="kept failing"):
        store.call(down)
    assert time.monotonic() - start < 5.0


def test_waiting_for_a_database_that_never_comes_is_bounded_and_masked() -> None:
    url = "postgresql+psycopg://me:pw-Wait-9x@127.0.0.1:1/nowhere"  # port 1: refused at once
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        open_storage(url, wait=1.5)
    waited = time.monotonic() - start
    message = str(err.value)
    assert 1.4 <= waited < 30.0
    assert "cannot reach storage" in message and "pw-Wait-9x" not in message
    assert "me:***@127.0.0.1:1" in message
    with pytest.raises(StorageError, match="cannot open storage"):  # no wait: at once
        open_storage(url)


# --- [study] heartbeat keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("study", "problem"),
    [
        ({}, None),
        ({"heartbeat_interval": 5, "grace_period": 12}, None),
        ({"heartbeat_interval": 10, "grace_period": 10}, "must be > heartbeat_interval (10)"),
        ({"grace_period": 5}, "must be > heartbeat_interval (10)"),
        ({"heartbeat_interval": 0}, "[study] heartbeat_interval: must be >= 1"),
        ({"heartbeat_interval": 1.5}, "[study] heartbeat_interval: must be an integer"),
        ({"grace_period": "30"}, "[study] grace_period: must be an integer"),
    ],
)
def test_heartbeat_keys(study: dict[str, Any], problem: str | None) -> None:
    data = toy_spec_data("hb", study=study)
    if problem is None:
        spec = StudySpec.from_dict(data)
        assert spec.study.heartbeat_interval == study.get("heartbeat_interval", 10)
        assert spec.study.grace_period == study.get("grace_period", 30)
        again = StudySpec.from_dict(spec.to_dict())
        assert again == spec
        # not part of the search: a study resumed with other settings is the same study
        assert spec.search_dict() == StudySpec.from_dict(toy_spec_data("hb")).search_dict()
    else:
        with pytest.raises(SpecError) as err:
            StudySpec.from_dict(data)
        assert problem in str(err.value)


# --- create and worker, in-process ---------------------------------------------------------------


def test_create_then_check(
    storage_url: str, study_name: str, toy_spec: SpecBuilder, make_spec: SpecWriter
) -> None:
    spec = toy_spec(study_name, study={"n_trials": 7})
    made = create_study(spec, storage=storage_url)
    assert (made.study, made.created, made.n_trials, made.direction) == (
        study_name,
        True,
        7,
        "maximize",
    )
    assert _trials(storage_url, study_name) == []  # created, not run
    again = create_study(toy_spec(study_name, study={"n_trials": 9}), storage=storage_url)
    assert (again.created, again.n_trials) == (False, 7)  # the study keeps its budget
    with pytest.raises(StudyMismatchError, match="different search"):
        create_study(toy_spec(study_name, space={"lr": [1e-3, 1e-1]}), storage=storage_url)

    path = make_spec(study_name, study={"n_trials": 9})
    result = invoke("create", str(path), "--storage", storage_url)
    assert result.exit_code == 0, result.output
    assert "exists with the same search" in result.stdout
    assert "keeps its budget of 7" in result.stderr


def test_create_writes_nothing_on_bad_input(
    tmp_path: Path, study_name: str, toy_spec: SpecBuilder
) -> None:
    url = f"sqlite:///{tmp_path / 'lr.db'}"
    bad = [
        toy_spec(study_name, task={"entry": "toy_tasks:exploding_factory"}),
        toy_spec(study_name, groups={"head": ["nothing.*"]}),
        toy_spec(study_name, task={"entry": "toy_tasks:not_a_task"}),
    ]
    for spec in bad:
        with pytest.raises(Exception):  # noqa: B017 - each is a different LrsearchError
            create_study(spec, storage=url)
    assert not (tmp_path / "lr.db").exists()


def test_create_does_not_need_the_workers_gpu(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    made = create_study(toy_spec(study_name, train={"precision": "bf16"}), storage=sqlite_url)
    assert made.created


def test_a_worker_takes_the_spec_from_the_study(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    create_study(
        toy_spec(study_name, study={"n_trials": 3}, space={"fixed": {"body": 0.0}}),
        storage=storage_url,
    )
    script = Script([complete] * 5)
    summary = run_worker(storage_url, study_name, device="cpu", train_fn=script)
    assert (summary.budget, len(summary.outcomes), summary.interrupted) == (3, 3, False)
    assert all(s.lrs["body"] == 0.0 for s in script.samples)  # the stored space, not a file's
    more = run_worker(
        storage_url, study_name, n_trials=4, device="cpu", train_fn=Script([complete])
    )
    assert (more.already_finished, len(more.outcomes)) == (3, 1)


def test_a_worker_on_a_missing_study_fails_in_one_line(sqlite_url: str, study_name: str) -> None:
    with pytest.raises(StudyNotFoundError):
        run_worker(sqlite_url, study_name, device="cpu", train_fn=Script([]))
    result = invoke("worker", "--storage", sqlite_url, "--study", study_name)
    assert result.exit_code == 1
    assert result.stderr.startswith("lrsearch: error: no study named")


def _ask_running(url: str, name: str, *, beat: bool, **attrs: Any) -> FrozenTrial:
    """A trial as a worker leaves it when it dies mid-training: RUNNING, rates sampled."""
    store = _store(url)
    study = optuna.load_study(study_name=name, storage=store)
    prepared = prepare(stored_spec(study), device="cpu")
    trial = study.ask()
    prepared.space.sample(trial)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    # what a successive-halving pruner records at a rung: a re-run must earn it anew
    store.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.5)
    if beat:
        store.record_heartbeat(trial._trial_id)
    return store.get_trial(trial._trial_id)


def test_a_dead_workers_trial_is_failed_and_rerun_once_with_the_same_params(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    create_study(toy_spec(study_name, study={"n_trials": 2, **QUICK}), storage=storage_url)
    dead = _ask_running(storage_url, study_name, beat=True)
    twice = _ask_running(storage_url, study_name, beat=True, **{LOSSES_ATTR: 1})
    time.sleep(QUICK["grace_period"] + 1.2)  # SQLite's clock has whole seconds
    script = Script([complete] * 3)
    summary = run_worker(storage_url, study_name, device="cpu", train_fn=script)

    trials = {t.number: t for t in _trials(storage_url, study_name)}
    for t in (dead, twice):
        assert trials[t.number].state == TrialState.FAIL
        assert trials[t.number].user_attrs[REASON_ATTR] == LOST_REASON
    retries = [t for t in trials.values() if RETRY_OF_ATTR in t.user_attrs]
    assert [(t.user_attrs[RETRY_OF_ATTR], t.state) for t in retries] == [
        (dead.number, TrialState.COMPLETE)
    ]
    assert retries[0].params == dead.params and retries[0].user_attrs[LOSSES_ATTR] == 1
    assert "completed_rung_0" not in retries[0].system_attrs
    # The re-run ran first; the configuration lost twice counts as failed: 1 + 1 = the budget.
    assert summary.outcomes[0].number == retries[0].number
    assert count_budget(trials.values()).counted == 2
    assert len(summary.outcomes) == 1


def test_a_trial_without_heartbeat_is_swept_only_when_orphaned(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    create_study(toy_spec(study_name, study={"n_trials": 1, **QUICK}), storage=sqlite_url)
    orphan = _ask_running(sqlite_url, study_name, beat=False)
    run_worker(sqlite_url, study_name, device="cpu", train_fn=Script([complete]))
    states = {t.number: t.state for t in _trials(sqlite_url, study_name)}
    assert states[orphan.number] == TrialState.RUNNING  # too young to tell; not waited for
    run_worker(
        sqlite_url,
        study_name,
        n_trials=2,
        device="cpu",
        train_fn=Script([complete] * 2),
        liveness=Liveness(orphan_after_s=0.0),
    )
    after = {t.number: t for t in _trials(sqlite_url, study_name)}
    assert after[orphan.number].state == TrialState.FAIL
    assert after[orphan.number].user_attrs[REASON_ATTR] == LOST_REASON


def test_a_trial_failed_behind_its_back_does_not_crash_the_worker(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    """Another worker judged a live trial stale (heartbeats delayed past the grace period)."""
    # Failed without being queued again, the two lost trials count: 2 + 2 complete.
    create_study(toy_spec(study_name, study={"n_trials": 4}), storage=storage_url)
    store = _store(storage_url)

    def fail_mine() -> None:
        (running,) = [
            t
            for t in store.backend.get_all_trials(store.backend.get_study_id_from_name(study_name))
            if t.state == TrialState.RUNNING
        ]
        store.backend.set_trial_state_values(running._trial_id, TrialState.FAIL)

    def swept_in_training(report: Callable[[int, float], None]) -> float:
        fail_mine()
        report(0, 0.5)  # the write that finds out
        return 0.5

    def swept_before_tell(report: Callable[[int, float], None]) -> float:
        report(0, 0.5)
        fail_mine()
        return 0.5

    script = Script([swept_in_training, swept_before_tell, complete, complete])
    summary = run_worker(storage_url, study_name, device="cpu", train_fn=script)
    assert [o.outcome for o in summary.outcomes] == ["lost", "lost", "complete", "complete"]
    assert not summary.interrupted


def test_heartbeats_keep_a_long_trial_alive(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    create_study(toy_spec(study_name, study={"n_trials": 1, **QUICK}), storage=storage_url)
    store = _store(storage_url)
    ages: list[float | None] = []

    def long_trial(report: Callable[[int, float], None]) -> float:
        for step in range(4):  # 4 s, past the 2 s grace period
            time.sleep(1.0)
            study_id = store.backend.get_study_id_from_name(study_name)
            ages.extend(store.heartbeat_ages(study_id).values())
            report(step, 0.5)
        return 0.5

    summary = run_worker(storage_url, study_name, device="cpu", train_fn=Script([long_trial]))
    assert [o.outcome for o in summary.outcomes] == ["complete"]
    # Without the heartbeat thread the age would grow to 4 s; with it, it stays near its 1 s
    # interval (SQLite's clock adds up to a second).
    assert len(ages) == 4 and all(a is not None and a <= 2.5 for a in ages), ages


def test_an_interrupted_worker_trial_is_queued_again(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    create_study(toy_spec(study_name, study={"n_trials": 2}), storage=storage_url)

    def interrupt(report: Callable[[int, float], None]) -> float:
        raise KeyboardInterrupt

    first = run_worker(storage_url, study_name, device="cpu", train_fn=Script([interrupt]))
    assert first.interrupted and [o.outcome for o in first.outcomes] == ["interrupted"]
    script = Script([complete] * 2)
    second = run_worker(storage_url, study_name, device="cpu", train_fn=script)
    trials = _trials(storage_url, study_name)
    assert trials[0].user_attrs[OUTCOME_ATTR] == "interrupted"
    assert trials[1].user_attrs[RETRY_OF_ATTR] == 0 and trials[1].params == trials[0].params
    assert [o.number for o in second.outcomes] == [1, 2]
    assert count_budget(trials).counted == 2


def test_run_queues_an_interrupted_trial_again(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    """As a worker does: the configuration a Ctrl-C stopped is the first the next run trains."""

    def interrupt(report: Callable[[int, float], None]) -> float:
        raise KeyboardInterrupt

    spec = toy_spec(study_name, study={"n_trials": 2})
    summary = run_search(spec, storage=sqlite_url, device="cpu", train_fn=Script([interrupt]))
    assert summary.interrupted
    stopped, queued = _trials(sqlite_url, study_name)
    assert (stopped.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert queued.user_attrs[RETRY_OF_ATTR] == stopped.number
    resumed = run_search(spec, storage=sqlite_url, device="cpu", train_fn=Script([complete] * 2))
    assert resumed.outcomes[0].number == queued.number
    trials = _trials(sqlite_url, study_name)
    assert trials[queued.number].params == stopped.params
    assert count_budget(trials).counted == 2


def test_storage_file_option(
    sqlite_url: str, study_name: str, make_spec: SpecWriter, tmp_path: Path
) -> None:
    url_file = tmp_path / "storage-url"
    url_file.write_text(sqlite_url + "\n")
    spec = make_spec(study_name)
    made = invoke("create", str(spec), "--storage-file", str(url_file))
    assert made.exit_code == 0, made.output
    listed = invoke("studies", "--storage-file", str(url_file))
    assert study_name in listed.stdout
    from_env = invoke("studies", env={"LRSEARCH_STORAGE_FILE": str(url_file)})
    assert study_name in from_env.stdout
    # --storage comes first
    other = invoke(
        "studies",
        "--storage",
        f"sqlite:///{tmp_path / 'other.db'}",
        "--storage-file",
        str(url_file),
    )
    assert study_name not in other.output
    missing = invoke("studies", "--storage-file", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "cannot read the storage URL file" in missing.stderr


# --- real worker processes -----------------------------------------------------------------------


def _app_url(url: str, app: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={app}"


class ConnectionKiller:
    """Terminates the PostgreSQL connections named ``app`` every ``every`` seconds, in a thread.

    Only those: other tests and people share the database, and this test's own connection is not
    among them either.
    """

    def __init__(self, url: str, app: str, every: float = 0.7) -> None:
        self.engine = sqlalchemy.create_engine(url)
        self.app, self.every, self.kills = app, every, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :app AND pid <> pg_backend_pid()"
                    ),
                    {"app": self.app},
                ).all()
                conn.commit()
            self.kills += sum(1 for (ok,) in rows if ok)

    def __enter__(self) -> ConnectionKiller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self.engine.dispose()


def _backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@pytest.mark.slow
def test_four_workers_share_one_budget(
    storage_url: str, study_name: str, make_spec: SpecWriter, tmp_path: Path, workers: list[Workers]
) -> None:
    """On PostgreSQL, while the workers' connections are killed every 0.7 s."""
    budget, n = 60, 4
    spec = _spec(make_spec, study_name, sleep_s=0.0, n_trials=budget)
    _create(spec, storage_url)
    chaos = _backend(storage_url) == "postgresql"
    app = f"lrsearch-test-{uuid.uuid4().hex[:8]}"
    url = _app_url(storage_url, app) if chaos else storage_url
    start = time.monotonic()
    group = Workers(tmp_path, url, study_name, n)
    workers.append(group)
    if chaos:
        with ConnectionKiller(storage_url, app) as killer:
            codes = group.wait()
        kills = killer.kills
    else:
        codes, kills = group.wait(), 0
    seconds = time.monotonic() - start
    out = group.output()
    assert codes == [0] * n, out
    assert "lrsearch: error" not in out
    if chaos:
        assert kills > 0
    trials = _trials(storage_url, study_name)
    _check_consistent(trials)
    counted = count_budget(trials).counted
    assert budget <= counted <= budget + n - 1, out
    ran = [
        int(line.split("this run: ")[1].split()[0])
        for line in out.splitlines()
        if "this run: " in line
    ]
    assert len(ran) == n and sum(ran) == len(trials)
    # The study file has a seed; workers ignore it, or those starting together would sample alike.
    assert len({repr(sorted(t.params.items())) for t in trials}) == len(trials)
    _figure(
        f"budget/{_backend(storage_url)}",
        workers=n,
        budget=budget,
        counted=counted,
        trials=len(trials),
        per_worker=ran,
        seconds=round(seconds, 1),
        connections_killed=kills,
        calls_retried=out.count("answers again"),
        waits_at_start=out.count("waiting up to"),
    )


@pytest.mark.slow
def test_killed_and_stopped_workers_lose_no_configuration(
    storage_url: str, study_name: str, make_spec: SpecWriter, tmp_path: Path, workers: list[Workers]
) -> None:
    """Two workers mid-trial: one gets SIGKILL, the other SIGTERM; a third worker (this process)
    re-runs both configurations and finishes the budget."""
    # A budget the two workers do not reach before they are stopped: neither waits for the other.
    spec = _spec(make_spec, study_name, sleep_s=0.3, n_trials=50, **FAST)  # ~1.5 s a trial
    _create(spec, storage_url)
    group = Workers(tmp_path, storage_url, study_name, 2)
    workers.append(group)

    def both_mid_trial() -> list[FrozenTrial] | None:
        found = [_running_in(storage_url, study_name, [pid], for_s=0.3) for pid in group.pids]
        return found if all(found) else None  # type: ignore[return-value]

    killed, stopped = _wait_for("both workers mid-trial", both_mid_trial)
    group.procs[0].send_signal(signal.SIGKILL)
    killed_at = datetime.now()
    group.procs[1].send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert group.procs[1].wait(timeout=60) == 0, group.output(1)
    exit_s = time.monotonic() - sent
    assert group.procs[0].wait(timeout=30) == -signal.SIGKILL
    out = group.output(1)
    assert "1 interrupted" in out and "queued again" in out and "lrsearch: error" not in out

    trials = {t.number: t for t in _trials(storage_url, study_name)}
    assert trials[stopped.number].state == TrialState.FAIL
    assert trials[stopped.number].user_attrs[OUTCOME_ATTR] == "interrupted"
    (queued,) = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert queued.user_attrs[RETRY_OF_ATTR] == stopped.number
    assert queued.system_attrs["fixed_params"] == stopped.params
    assert trials[killed.number].state == TrialState.RUNNING  # until its grace period is over

    done = count_budget(trials.values()).counted
    # A worker that stays, with room for the two configurations only: it runs the queued one, then
    # waits for the killed worker's trial to go stale, and re-runs that.
    summary = run_worker(storage_url, study_name, n_trials=done + 2, device="cpu")
    trials = {t.number: t for t in _trials(storage_url, study_name)}
    lost = trials[killed.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs[REASON_ATTR] == LOST_REASON
    assert lost.datetime_complete is not None
    failed_after = (lost.datetime_complete - killed_at).total_seconds()
    # Stale once its last heartbeat (at most one interval before the kill) is grace_period old,
    # then found at the next sweep. Generous above: a loaded machine delays everything.
    assert FAST["grace_period"] - FAST["heartbeat_interval"] - 1 <= failed_after
    assert failed_after <= FAST["grace_period"] + 15
    for original in (killed, stopped):
        (rerun,) = [
            t for t in trials.values() if t.user_attrs.get(RETRY_OF_ATTR) == original.number
        ]
        assert rerun.params == original.params and rerun.state == TrialState.COMPLETE
        assert rerun.user_attrs[TRIAL_ATTR]["pid"] == os.getpid()
    assert not summary.interrupted
    _check_consistent(list(trials.values()))
    assert [o.outcome for o in summary.outcomes] == ["complete", "complete"]
    assert count_budget(trials.values()).counted == done + 2
    _figure(
        f"faults/{_backend(storage_url)}",
        grace_s=FAST["grace_period"],
        sigkill_trial_failed_after_s=round(failed_after, 1),
        sigterm_exit_after_s=round(exit_s, 2),
        trials=len(trials),
    )


@pytest.mark.postgres
def test_a_password_never_shows(
    study_name: str, make_spec: SpecWriter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = postgres_url()
    if base is None:
        pytest.skip("set LRSEARCH_TEST_POSTGRES_URL to run PostgreSQL tests")
    secret = "pw-Xy7-secret"
    parsed = sqlalchemy.engine.make_url(base).set(password=secret)
    url = parsed.render_as_string(hide_password=False)  # the server trusts: any password works
    url_file = tmp_path / "url"
    url_file.write_text(url)
    down = parsed.set(port=1).render_as_string(hide_password=False)  # refused at once
    spec = _spec(make_spec, study_name, sleep_s=0.0, n_trials=2)
    try:
        with caplog.at_level("INFO"):
            results = [
                invoke("create", str(spec), "--storage-file", str(url_file)),
                invoke(
                    "worker", "--study", study_name, env={"LRSEARCH_STORAGE_FILE": str(url_file)}
                ),
                # errors: a server that is not there (waited for), a study that is not there
                invoke(
                    "worker",
                    "--study",
                    study_name,
                    env={"LRSEARCH_STORAGE": down, "LRSEARCH_DB_WAIT": "1"},
                ),
                invoke("best", "--study", "nope-" + study_name, "--storage", url),
            ]
        assert [r.exit_code for r in results] == [0, 0, 1, 1], [r.output for r in results]
        assert "this run: 2 trial(s)" in results[1].stdout
        assert "cannot reach storage" in results[2].stderr
        assert "no study named" in results[3].stderr
        assert ":***@" in results[0].stdout and ":***@" in results[1].stdout
        assert "waiting up to 1 s for storage" in caplog.text
        for text in [r.output for r in results] + [caplog.text]:
            assert secret not in text
        storage = open_storage(url)
        study = optuna.load_study(study_name=study_name, storage=storage)
        stored = [study.user_attrs, storage.get_study_system_attrs(study._study_id)] + [
            (t.user_attrs, t.system_attrs) for t in study.get_trials()
        ]
        assert secret not in repr(stored)
        storage.engine.dispose()
    finally:
        from conftest import delete_run_studies

        delete_run_studies(base)
