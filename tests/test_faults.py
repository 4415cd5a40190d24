"""Faults injected into searches, on SQLite and on the real PostgreSQL: processes killed with
SIGKILL at each point of a trial's life, Ctrl-C pressed three times in a row, SIGTERM to a program
that runs a search in-process, the database gone (for 20 s, and for longer than the retry limit),
and processes creating the same fresh database at once.

Every case then checks the study's trials (:func:`_assert_intact`): the budget honoured, nothing
RUNNING or WAITING, no configuration lost (each trial a fault ended has one re-run with its
parameters, or was never sampled and does not count), no duplicate configuration, and the values
of the trials complete before the fault unchanged.

PostgreSQL outages go through :class:`Proxy`, a TCP forwarder in a thread in front of the test
server that the test stops (listener closed, connections cut: "connection refused") and starts
again; the server itself is shared and never stopped. SQLite has no outage of that kind (a lock
held is waited for by SQLite itself, 60 s): its cases are kills and signals. Figures are printed
on ``FIGURE`` lines (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from conftest import TESTS_DIR, SpecWriter, postgres_url, to_toml, toy_spec_data
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

import lrsearch
from lrsearch.cli import main
from lrsearch.errors import StorageError, StorageUnavailable
from lrsearch.groups import LayerGroups
from lrsearch.schema import LOST_REASON, OUTCOME_ATTR, REASON_ATTR, RETRY_OF_ATTR, TRIAL_ATTR
from lrsearch.search import create_study, run_search, run_worker
from lrsearch.space import Sample
from lrsearch.spec import StudySpec, TrainSection
from lrsearch.storage import count_budget, counts_against_budget, open_storage
from lrsearch.storage.outage import RETRY_ENV_VAR, is_schema_race, retry_limit
from lrsearch.tasks import Task
from lrsearch.training import TrainResult

STARTUP_S = 120.0  # processes importing torch at once on a loaded 2-core machine
FAST = {"heartbeat_interval": 1, "grace_period": 3}
PROCS = TESTS_DIR / "fault_procs.py"
SOURCE_DIR = Path(lrsearch.__file__).resolve().parents[1]


# --- helpers -------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRSEARCH_")}
    # The lrsearch under test (a worktree's, not the editable install's), and the toy tasks.
    paths = (str(SOURCE_DIR), str(TESTS_DIR), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["LRSEARCH_ALLOW_TASKS"] = "toy_tasks:*"  # workers run only allowed entries
    env.update(extra)
    return env


def _lrsearch() -> list[str]:
    script = Path(sys.executable).with_name("lrsearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lrsearch.cli"]


def _start(args: Sequence[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, env=_env(**env))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started processes, killed at teardown if a test left any running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


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


def _mid_trial(url: str, name: str, pid: int) -> FrozenTrial | None:
    """A trial process ``pid`` is training (sampled, RUNNING), if any.

    A trial is RUNNING, with its process recorded, before the sampler writes its parameters: one
    without any is not sampled yet (the snapshot would hold no configuration to compare with).
    """
    try:
        trials = _trials(url, name)
    except (StorageError, KeyError):  # no database file, or no study, yet
        return None
    for t in trials:
        mine = t.user_attrs.get(TRIAL_ATTR, {}).get("pid") == pid
        if t.state == TrialState.RUNNING and mine and t.params:
            return t
    return None


def _config(t: FrozenTrial) -> dict[str, Any]:
    """A trial's configuration: sampled, or queued with it (a re-run not sampled yet)."""
    return dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})


def _completed(trials: Sequence[FrozenTrial]) -> dict[int, float | None]:
    return {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}


def _assert_intact(
    trials: Sequence[FrozenTrial],
    *,
    budget: int,
    before: dict[int, float | None] | None = None,
    slack: int = 0,
) -> None:
    """The study's trials after a fault: see the module's docstring."""
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, f"trials left RUNNING or WAITING: {left}"
    counted = count_budget(trials).counted
    assert budget <= counted <= budget + slack, f"{counted} trials count, budget {budget}"
    replaced = {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}
    for t in trials:
        faulted = t.user_attrs.get(OUTCOME_ATTR) == "interrupted" or (
            t.user_attrs.get(REASON_ATTR) == LOST_REASON
        )
        if not _config(t):
            # never sampled: nothing to lose, and it must not use the budget
            assert not counts_against_budget(t, replaced), f"trial {t.number} has no parameters"
        elif faulted:
            reruns = [r for r in trials if r.user_attrs.get(RETRY_OF_ATTR) == t.number]
            assert len(reruns) == 1, f"trial {t.number} ({t.user_attrs}) was re-run {len(reruns)}x"
            assert _config(reruns[0]) == _config(t)
    finals = [json.dumps(sorted(_config(t).items())) for t in trials if t.number not in replaced]
    finals = [c for c in finals if c != "[]"]
    assert len(set(finals)) == len(finals), "a configuration ran twice"
    if before:
        assert {n: v for n, v in _completed(trials).items() if n in before} == before


def _figure(label: str, **values: Any) -> None:
    print(f"FIGURE {label}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def _backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def _sleepy(name: str, *, n_trials: int) -> dict[str, Any]:
    """A study whose trials take ~2 s (8 steps of 0.25 s): long enough to be hurt mid-way."""
    return toy_spec_data(
        name,
        study={"n_trials": n_trials, **FAST},
        task={"entry": "toy_tasks:sleepy", "kwargs": {"sleep_s": 0.25, "n_train": 128}},
    )


class Script:
    """A ``train_fn`` that plays one behaviour per call, in order."""

    def __init__(self, behaviours: Sequence[Callable[[Callable[[int, float], None]], float]]):
        self.behaviours = list(behaviours)
        self.calls = 0

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
        self.calls += 1
        value = self.behaviours[self.calls - 1](report)
        return TrainResult(value, 1, 1, 0.0, "cpu", "fp32")


def complete(report: Callable[[int, float], None]) -> float:
    report(0, 0.5)
    return 0.5 + 0.01 * time.time() % 0.4  # values differ: "unchanged" must mean something


class Proxy:
    """A TCP forwarder from a local port to the PostgreSQL server, in threads, that can go down:
    :meth:`stop` closes its listener and cuts every connection (clients see "connection refused"
    and "server closed the connection"), :meth:`start` listens on the same port again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # wakes the thread blocked in accept (close alone leaves it accepting)
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def url(self, url: str) -> str:
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            a.close()
            b.close()


def _pg_url() -> str:
    url = postgres_url()
    if url is None:
        pytest.skip("set LRSEARCH_TEST_POSTGRES_URL to run PostgreSQL tests")
    return url


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    parsed = make_url(_pg_url())
    p = Proxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    yield p
    p.stop()


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 600.0), ("", 600.0), ("90", 90.0), ("0", 0.0), ("2.5", 2.5)],
)
def test_retry_limit(monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: float) -> None:
    if raw is None:
        monkeypatch.delenv(RETRY_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(RETRY_ENV_VAR, raw)
    assert retry_limit() == expected


@pytest.mark.parametrize("raw", ["-1", "soon", "nan", "inf"])
def test_a_bad_retry_limit_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, raw: str, sqlite_url: str, study_name: str
) -> None:
    monkeypatch.setenv(RETRY_ENV_VAR, raw)
    with pytest.raises(StorageError, match=rf"\${RETRY_ENV_VAR} must be a number of seconds"):
        retry_limit()
    result = CliRunner().invoke(
        main, ["worker", "--study", study_name, "--storage", sqlite_url], env={RETRY_ENV_VAR: raw}
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("lrsearch: error: $LRSEARCH_STORAGE_RETRY must be")
    assert "Traceback" not in result.output


def test_the_storage_retry_option(sqlite_url: str, study_name: str, toy_spec: Any) -> None:
    bad = CliRunner().invoke(main, ["worker", "--study", "s", "--storage-retry", "-5"])
    assert bad.exit_code == 2 and "--storage-retry" in bad.output
    create_study(toy_spec(study_name, study={"n_trials": 1}), storage=sqlite_url)
    ok = CliRunner().invoke(
        main,
        ["worker", "--study", study_name, "--storage", sqlite_url, "--storage-retry", "30"],
    )
    assert ok.exit_code == 0, ok.output
    assert "1 complete" in ok.output


@pytest.mark.parametrize(
    ("message", "race"),
    [
        ('duplicate key value violates unique constraint "pg_type_typname_nsp_index"', True),
        ("table studies already exists", True),
        ('relation "studies" already exists', True),
        ("UNIQUE constraint failed: version_info.version_info_id", True),
        ("Connection refused", False),
        ('password authentication failed for user "me"', False),
    ],
)
def test_is_schema_race(message: str, race: bool) -> None:
    error = sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception(message))
    assert is_schema_race(error) is race


# --- concurrent creation -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no process has opened yet: a new SQLite file, or a new PostgreSQL database
    (created on the test server, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    import psycopg

    base = make_url(_pg_url())
    admin = base.set(drivername="postgresql", database="postgres").render_as_string(False)
    name = f"lrsearch_fresh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_concurrent_creates_on_a_fresh_database(
    fresh_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    n = 6
    spec = json.dumps(toy_spec_data("race"))
    start_at = time.time() + 8.0  # after every process has imported Optuna
    logs = [tmp_path / f"create{i}.log" for i in range(n)]
    for log in logs:
        args = [sys.executable, str(PROCS), "create", fresh_url, "race", spec, str(start_at)]
        procs.append(_start(args, log))
    codes = [p.wait(timeout=STARTUP_S) for p in procs]
    out = "\n".join(log.read_text() for log in logs)
    assert codes == [0] * n, out
    assert out.count("lrsearch-created") == 1 and out.count("lrsearch-resumed") == n - 1, out
    assert "waiting up to" not in out and "already exists" not in out, out
    storage = open_storage(fresh_url, create=False)
    try:
        study = optuna.load_study(study_name="race", storage=storage)
        assert StudySpec.from_dict(json.loads(study.user_attrs["lrsearch.spec"])).study.name
    finally:
        storage.engine.dispose()
    _figure(f"create/{_backend(fresh_url)}", processes=n, all_succeeded=True)


# --- kill -9 at each point of a trial's life -----------------------------------------------------


@pytest.mark.slow
def test_workers_killed_at_each_point_lose_no_configuration(
    storage_url: str, study_name: str, toy_spec: Any, tmp_path: Path, procs: list[Any]
) -> None:
    budget = 6
    create_study(toy_spec(study_name, study={"n_trials": budget, **FAST}), storage=storage_url)
    script = Script([complete] * 2)
    run_worker(storage_url, study_name, n_trials=2, device="cpu", train_fn=script)
    before = _completed(_trials(storage_url, study_name))
    points = ["before_sample", "mid_train", "before_tell"]
    for point in points:
        args = [sys.executable, str(PROCS), "die", storage_url, study_name, point]
        procs.append(_start(args, tmp_path / f"{point}.log"))
    codes = [p.wait(timeout=STARTUP_S) for p in procs]
    out = "\n".join((tmp_path / f"{point}.log").read_text() for point in points)
    assert codes == [-signal.SIGKILL] * 3, out
    trials = _trials(storage_url, study_name)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    states = [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert len(running) == 3 and sum(1 for t in running if not t.params) == 1, (states, out)

    start = time.monotonic()
    summary = run_worker(
        storage_url, study_name, device="cpu", train_fn=Script([complete] * budget)
    )
    seconds = time.monotonic() - start
    trials = _trials(storage_url, study_name)
    _assert_intact(trials, budget=budget, before=before)
    (unsampled,) = [t for t in trials if not t.params]
    assert unsampled.user_attrs[OUTCOME_ATTR] == "interrupted"
    assert "before the trial was sampled" in unsampled.user_attrs[REASON_ATTR]
    reruns = [t for t in trials if RETRY_OF_ATTR in t.user_attrs]
    assert len(reruns) == 2 and all(t.state == TrialState.COMPLETE for t in reruns)
    # the two re-runs, and two new trials in place of the three killed (one never sampled)
    assert [o.outcome for o in summary.outcomes] == ["complete"] * 4
    _figure(
        f"kill9/{_backend(storage_url)}",
        killed=3,
        reruns=len(reruns),
        trials=len(trials),
        counted=count_budget(trials).counted,
        recovered_in_s=round(seconds, 1),
    )


def test_a_rerun_killed_before_sampling_is_queued_again(
    storage_url: str, study_name: str, toy_spec: Any
) -> None:
    """A queued re-run has its parameters before it is sampled: they must not be lost."""
    create_study(toy_spec(study_name, study={"n_trials": 1, **FAST}), storage=storage_url)
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    params = {"lr.embed": 0.01, "lr.body": 0.02, "lr.head": 0.03, "freeze.embed": False}
    study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: 99})
    dead = study.ask()  # takes the queued trial; its worker dies before sampling it
    storage.record_heartbeat(dead._trial_id)
    storage.engine.dispose()
    time.sleep(FAST["grace_period"] + 1.2)  # SQLite's clock has whole seconds
    run_worker(storage_url, study_name, device="cpu", train_fn=Script([complete] * 2))
    trials = _trials(storage_url, study_name)
    (rerun,) = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == dead.number]
    assert rerun.state == TrialState.COMPLETE
    assert (rerun.params["lr.body"], rerun.params["lr.head"]) == (0.02, 0.03)


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "worker"])
def test_repeated_ctrl_c_stops_cleanly_and_loses_no_configuration(
    command: str,
    storage_url: str,
    study_name: str,
    make_spec: SpecWriter,
    tmp_path: Path,
    procs: list[Any],
) -> None:
    budget = 3
    data = _sleepy(study_name, n_trials=budget)
    spec = make_spec(text=to_toml(data))
    if command == "run":
        args = [*_lrsearch(), "run", str(spec), "--storage", storage_url, "--device", "cpu"]
    else:
        made = CliRunner().invoke(main, ["create", str(spec), "--storage", storage_url])
        assert made.exit_code == 0, made.output
        args = [*_lrsearch(), "worker", "--study", study_name, "--storage", storage_url]
        args += ["--device", "cpu"]
    log = tmp_path / "cli.log"
    proc = _start(args, log)
    procs.append(proc)
    hit = _wait_for("a trial mid-way", lambda: _mid_trial(storage_url, study_name, proc.pid))
    for _ in range(3):  # 20 ms apart, as a user who presses Ctrl-C again and again
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    code = proc.wait(timeout=60)
    out = log.read_text()
    assert code == (130 if command == "run" else 0), out
    assert "Aborted!" not in out and "Traceback" not in out, out
    trials = {t.number: t for t in _trials(storage_url, study_name)}
    assert trials[hit.number].user_attrs[OUTCOME_ATTR] == "interrupted"
    (queued,) = [t for t in trials.values() if t.state == TrialState.WAITING]
    # The stored trial, not the snapshot: its parameters may have been written one by one.
    sampled = trials[hit.number].params
    assert queued.user_attrs[RETRY_OF_ATTR] == hit.number and _config(queued) == sampled
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    before = _completed(list(trials.values()))

    script = Script([complete] * budget)
    resumed = run_search(
        StudySpec.from_dict(data),
        storage=storage_url,
        device="cpu",
        train_fn=script,
    )
    assert resumed.outcomes[0].number == queued.number  # the interrupted configuration first
    _assert_intact(_trials(storage_url, study_name), budget=budget, before=before)


@pytest.mark.slow
def test_sigterm_ends_a_program_that_runs_a_search(
    sqlite_url: str, study_name: str, tmp_path: Path, procs: list[Any]
) -> None:
    data = _sleepy(study_name, n_trials=3)
    log = tmp_path / "embedded.log"
    proc = _start([sys.executable, str(PROCS), "search", sqlite_url, json.dumps(data)], log)
    procs.append(proc)
    hit = _wait_for("a trial mid-way", lambda: _mid_trial(sqlite_url, study_name, proc.pid))
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    out = log.read_text()
    assert code == -signal.SIGTERM, out  # not absorbed: the program ends as SIGTERM ends it
    assert "returned" not in out
    trials = {t.number: t for t in _trials(sqlite_url, study_name)}
    assert trials[hit.number].user_attrs[OUTCOME_ATTR] == "interrupted"  # cleaned up first
    (queued,) = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert queued.user_attrs[RETRY_OF_ATTR] == hit.number


# --- the database gone ---------------------------------------------------------------------------


def _outage(proxy: Proxy, seconds: float) -> Callable[[Callable[[int, float], None]], float]:
    """A trial that takes the database away after its first report, for ``seconds``."""

    def trial(report: Callable[[int, float], None]) -> float:
        report(0, 0.5)
        proxy.stop()
        threading.Timer(seconds, proxy.start).start()
        report(1, 0.6)  # waits for the database
        return 0.6

    return trial


@pytest.mark.postgres
def test_an_outage_past_the_retry_limit_loses_no_configuration(
    proxy: Proxy, study_name: str, toy_spec: Any
) -> None:
    """The database is back after 5 s, past a 3 s limit: the worker stops, and its trial is
    stored interrupted (not counted) and queued again, not failed."""
    url, budget = _pg_url(), 4
    create_study(toy_spec(study_name, study={"n_trials": budget, **FAST}), storage=url)
    script = Script([complete, _outage(proxy, 5.0)])
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="kept failing"):
        run_worker(proxy.url(url), study_name, device="cpu", train_fn=script, storage_retry=3)
    stopped_after = time.monotonic() - start
    trials = _trials(url, study_name)
    before = _completed(trials)
    hit = trials[1]
    assert hit.state == TrialState.FAIL and hit.user_attrs[OUTCOME_ATTR] == "interrupted"
    assert not counts_against_budget(hit, set())
    run_worker(url, study_name, device="cpu", train_fn=Script([complete] * budget))
    _assert_intact(_trials(url, study_name), budget=budget, before=before)
    _figure("outage-past-limit/postgresql", limit_s=3, outage_s=5, stopped_after_s=stopped_after)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("seconds", [20.0, 90.0])  # the two outages, under 3 workers
def test_an_outage_under_workers_loses_nothing(
    seconds: float,
    proxy: Proxy,
    study_name: str,
    make_spec: SpecWriter,
    tmp_path: Path,
    procs: list[Any],
) -> None:
    url, budget, n = _pg_url(), 9, 3
    spec = make_spec(text=to_toml(_sleepy(study_name, n_trials=budget)))
    made = CliRunner().invoke(main, ["create", str(spec), "--storage", url])
    assert made.exit_code == 0, made.output
    logs = [tmp_path / f"worker{i}.log" for i in range(n)]
    for log in logs:
        args = [*_lrsearch(), "worker", "--study", study_name, "--device", "cpu"]
        procs.append(_start(args, log, LRSEARCH_STORAGE=proxy.url(url)))

    def all_mid_trial() -> bool:
        return all(_mid_trial(url, study_name, p.pid) for p in procs)

    _wait_for("every worker mid-trial", all_mid_trial)
    before = _completed(_trials(url, study_name))
    proxy.stop()
    time.sleep(seconds)
    proxy.start()
    codes = [p.wait(timeout=STARTUP_S) for p in procs]
    out = "\n".join(log.read_text() for log in logs)
    assert codes == [0] * n, out
    assert "lrsearch: error" not in out and "answers again" in out, out
    trials = _trials(url, study_name)
    _assert_intact(trials, budget=budget, before=before, slack=n - 1)
    _figure(
        f"outage-{seconds:.0f}s/postgresql",
        workers=n,
        budget=budget,
        trials=len(trials),
        counted=count_budget(trials).counted,
        reruns=sum(1 for t in trials if RETRY_OF_ATTR in t.user_attrs),
        calls_retried=out.count("answers again"),
    )


# --- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, where it can be mounted (root on Linux); skipped elsewhere."""
    point = tmp_path / "disk"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(disk: Path) -> Path:
    """Takes every byte left on ``disk`` (a tmpfs), so that the next write there fails."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_disk_full_mid_search_stops_with_one_line_and_loses_nothing(
    small_disk: Path, study_name: str, toy_spec: Any
) -> None:
    """The disk fills while the study is open (another worker holds it): the next write fails,
    is waited out like an outage, then stops the run with one line."""
    db = small_disk / "studies.db"
    url, budget = f"sqlite:///{db}", 6
    spec = toy_spec(study_name, study={"n_trials": budget, **FAST})
    run_search(spec, storage=url, n_trials=2, device="cpu", train_fn=Script([complete] * 2))
    before = _completed(_trials(url, study_name))
    with contextlib.closing(sqlite3.connect(db)) as other_worker:
        # Its reads keep the WAL's shared-memory index, which needs no more room; an emptied WAL:
        # one of the size it had could take the next writes without growing.
        other_worker.execute("SELECT count(*) FROM trials").fetchone()
        other_worker.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert (small_disk / "studies.db-shm").exists()
        filler = _fill(small_disk)
        script = Script([complete] * budget)
        with pytest.raises(StorageError) as error:  # waited out like an outage, for 2 s here
            run_search(spec, storage=url, device="cpu", train_fn=script, storage_retry=2)
    assert "disk is full" in str(error.value) and "\n" not in str(error.value)
    filler.unlink()
    time.sleep(FAST["grace_period"] + 1.2)  # a trial left RUNNING goes stale
    run_search(spec, storage=url, device="cpu", train_fn=Script([complete] * budget))
    _assert_intact(_trials(url, study_name), budget=budget, before=before)


def test_a_search_started_on_a_full_disk_says_so_and_loses_nothing(
    small_disk: Path, study_name: str, toy_spec: Any
) -> None:
    """No process has the study open: SQLite cannot create the WAL's shared-memory index and
    answers "disk I/O error" (found by CI, which got "not an SQLite file" for it)."""
    db = small_disk / "studies.db"
    url, budget = f"sqlite:///{db}", 4
    spec = toy_spec(study_name, study={"n_trials": budget, **FAST})
    run_search(spec, storage=url, n_trials=2, device="cpu", train_fn=Script([complete] * 2))
    before = _completed(_trials(url, study_name))
    gc.collect()  # the run's pooled connections: the last one closed removes the index
    assert not (small_disk / "studies.db-shm").exists()
    filler = _fill(small_disk)
    with pytest.raises(StorageError) as error:
        run_search(spec, storage=url, device="cpu", train_fn=Script([complete] * budget))
    message = str(error.value)
    assert "the disk is full" in message and "free some space" in message, message
    assert "not an SQLite file" not in message and "\n" not in message
    filler.unlink()
    run_search(spec, storage=url, device="cpu", train_fn=Script([complete] * budget))
    _assert_intact(_trials(url, study_name), budget=budget, before=before)


@pytest.mark.slow
def test_after_an_outage_the_other_workers_get_a_grace_period(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, study_name: str, toy_spec: Any
) -> None:
    """Every heartbeat is old when the database comes back: a worker that just got it back waits
    a grace period before it takes another worker's trial for lost (then it does)."""
    from lrsearch.search import api, prepare
    from lrsearch.storage import stored_spec

    create_study(toy_spec(study_name, study={"n_trials": 1, **FAST}), storage=sqlite_url)
    storage = open_storage(sqlite_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    other = study.ask()  # another worker's trial, sampled, its heartbeat as old as the outage
    prepare(stored_spec(study), device="cpu").space.sample(other)
    storage.record_heartbeat(other._trial_id)
    storage.engine.dispose()
    time.sleep(FAST["grace_period"] + 1.2)  # SQLite's clock has whole seconds
    connect = api._connect

    def just_recovered(url: str, retry_s: float | None = None) -> Any:
        store = connect(url, retry_s)
        store.recovered_at = time.monotonic()
        return store

    monkeypatch.setattr(api, "_connect", just_recovered)
    start = time.monotonic()
    run_worker(sqlite_url, study_name, device="cpu", train_fn=Script([complete]))
    trials = _trials(sqlite_url, study_name)
    assert time.monotonic() - start >= FAST["grace_period"]  # it waited before sweeping
    assert trials[other.number].user_attrs[REASON_ATTR] == LOST_REASON
    _assert_intact(trials, budget=1)
