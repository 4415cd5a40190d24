"""``lrsearch launch``: the pure parts in-process, and real launches of real worker processes.

The end-to-end tests start the launcher as users do (a process, the storage URL in the environment
or on its command line) with toy tasks from ``tests/toy_tasks.py`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import optuna
import pytest
from click.testing import CliRunner
from conftest import TESTS_DIR, delete_run_studies, postgres_url
from optuna.trial import TrialState

from lrsearch.cli import main
from lrsearch.launch import (
    EXIT_INTERRUPTED,
    Launcher,
    LaunchOptions,
    LaunchResult,
    Progress,
    WorkerExit,
    assign_devices,
    parse_devices,
    plan_workers,
    progress_of,
    redact,
)
from lrsearch.schema import OUTCOME_ATTR, RETRY_OF_ATTR
from lrsearch.storage import open_storage

SpecWriter = Callable[..., Path]
URL = "postgresql+psycopg://lr:s3cret-pw@db.example:5432/lr"
LAUNCH_TIMEOUT_S = 180


# --- devices and process plans -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", ["0"]),
        ("0,1", ["0", "1"]),
        (" 2 , 3 ", ["2", "3"]),
        ("GPU-8f2a,MIG-1", ["GPU-8f2a", "MIG-1"]),
        # Each entry is one worker's GPU: a repeat puts several workers on one GPU.
        ("0,0,0,0", ["0", "0", "0", "0"]),
        ("0,1,0", ["0", "1", "0"]),
    ],
)
def test_parse_devices(text: str, expected: list[str]) -> None:
    assert parse_devices(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty entry"), ("0,,1", "empty entry"), ("0,0,", "empty entry")],
)
def test_parse_devices_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_devices(text)


@pytest.mark.parametrize(
    ("n_workers", "devices", "expected"),
    [
        (2, None, [None, None]),
        (None, ["0", "1"], ["0", "1"]),
        (5, ["0", "1"], ["0", "1", "0", "1", "0"]),
        (1, ["3", "5"], ["3"]),
        (3, ["GPU-a"], ["GPU-a"] * 3),
        # A list that repeats a GPU is the layout itself, one worker per entry.
        (None, ["0", "0", "0", "0"], ["0"] * 4),
        (4, ["0", "0", "0", "0"], ["0"] * 4),
        (None, ["0", "0", "1"], ["0", "0", "1"]),
    ],
)
def test_assign_devices_round_robin(
    n_workers: int | None, devices: list[str] | None, expected: list[str | None]
) -> None:
    assert assign_devices(n_workers, devices) == expected


@pytest.mark.parametrize(
    ("n_workers", "devices", "message"),
    [
        (None, None, "give --workers N"),
        (None, [], "give --workers N"),
        (0, None, "at least 1"),
        # More or fewer workers than a list with repeats: which entries go or come is a guess.
        (2, ["0", "0", "0", "0"], "--devices 0,0,0,0 names a GPU more than once.*--workers is 2"),
        (8, ["0", "0", "1"], r"one worker per entry \(3\), but --workers is 8"),
    ],
)
def test_assign_devices_refuses(
    n_workers: int | None, devices: list[str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        assign_devices(n_workers, devices)


def test_workers_sharing_one_gpu_share_the_cpu_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lrsearch.threads.physical_cores", lambda: 8)
    planned = plan_workers(
        study="s", url=URL, budget=8, n_workers=None, devices=["0"] * 4, base_env={}
    )
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in planned] == ["0"] * 4
    assert all(w.argv[-2:] == ("--device", "cuda") for w in planned)
    # Four processes on one machine, GPU or not: each gets a quarter of the cores.
    assert [w.env["OMP_NUM_THREADS"] for w in planned] == ["2"] * 4


def test_workers_get_the_url_in_their_environment_never_on_their_command_line() -> None:
    base = {
        "PATH": "/bin",
        "LRSEARCH_STORAGE_FILE": "/run/secrets/url",
        "CUDA_VISIBLE_DEVICES": "7",
    }
    workers = plan_workers(
        study="s", url=URL, budget=12, n_workers=3, devices=["0", "1"], base_env=base
    )
    assert [w.name for w in workers] == ["w0", "w1", "w2"]
    for w, device in zip(workers, ["0", "1", "0"], strict=True):
        assert not any("s3cret" in a or "db.example" in a for a in w.argv)
        assert w.argv[1:] == (
            "-m", "lrsearch.cli", "worker", "--study", "s", "--n-trials", "12", "--device", "cuda"
        )  # fmt: skip
        assert w.env["LRSEARCH_STORAGE"] == URL
        assert "LRSEARCH_STORAGE_FILE" not in w.env  # one source of the URL, not two
        assert w.env["CUDA_VISIBLE_DEVICES"] == device
        assert w.env["TQDM_DISABLE"] == "1" and w.env["PATH"] == "/bin"
    cpu = plan_workers(study="s", url=URL, budget=4, n_workers=1, devices=None, base_env=base)
    assert "--device" not in cpu[0].argv
    assert cpu[0].env["CUDA_VISIBLE_DEVICES"] == "7"  # left as the user set it


def test_a_planned_worker_command_is_a_real_lrsearch_worker_command() -> None:
    (w,) = plan_workers(study="s", url=URL, budget=3, n_workers=1, devices=["0"], base_env={})
    assert w.argv[1:3] == ("-m", "lrsearch.cli")
    command = main.get_command(click.Context(main), "worker")
    assert command is not None
    parsed = command.make_context("worker", list(w.argv[4:]))
    assert parsed.params["study"] == "s" and parsed.params["n_trials"] == 3


@pytest.mark.parametrize(
    ("url", "text", "expected"),
    [
        (URL, "connect to postgresql://lr:s3cret-pw@db", "connect to postgresql://lr:***@db"),
        (URL, "password s3cret-pw twice s3cret-pw", "password *** twice ***"),
        # A password with characters a URL must encode: every spelling of it is hidden.
        ("postgresql://u:p%40s%20w%2Fd@h/db", "p@s w/d p%40s+w%2Fd p%40s%20w%2Fd", "*** *** ***"),
        ("sqlite:///studies.db", "sqlite:///studies.db", "sqlite:///studies.db"),
        ("postgresql://u:ab@h/db", "about ab", "about ab"),  # too short to hide safely
        ("not a url", "not a url", "not a url"),
    ],
)  # fmt: skip
def test_redact(url: str, text: str, expected: str) -> None:
    assert redact(text, url) == expected


# --- progress from the study's trials ------------------------------------------------------------


def _trial(number: int, state: TrialState, value: float | None = None, **attrs: Any) -> Any:
    """What the progress reads of a stored trial (a NaN value is no valid ``FrozenTrial``)."""
    values = None if value is None else [value]
    return SimpleNamespace(number=number, state=state, values=values, user_attrs=attrs)


def test_progress_counts_what_the_budget_counts() -> None:
    trials = [
        _trial(0, TrialState.COMPLETE, 0.5),
        _trial(1, TrialState.COMPLETE, 0.9),
        _trial(2, TrialState.PRUNED),
        _trial(3, TrialState.FAIL, **{OUTCOME_ATTR: "failed"}),
        _trial(4, TrialState.FAIL, **{OUTCOME_ATTR: "interrupted"}),  # does not count
        _trial(5, TrialState.FAIL),  # lost, and queued again as 7: 7 counts instead
        _trial(6, TrialState.RUNNING),
        _trial(7, TrialState.COMPLETE, float("nan"), **{RETRY_OF_ATTR: 5}),
        _trial(8, TrialState.WAITING),
    ]
    p = progress_of(trials, "maximize")
    assert p == Progress(
        finished=5, complete=3, pruned=1, failed=1, running=1, waiting=1, best_number=1,
        best_value=0.9,
    )  # fmt: skip
    low = progress_of(trials, "minimize")
    assert (low.best_number, low.best_value) == (0, 0.5)  # NaN is never the best
    assert progress_of([], "maximize") == Progress()


@pytest.mark.parametrize(
    ("create_rc", "codes", "stopped", "interrupted", "expected"),
    [
        (0, [0, 0], False, False, 0),
        (0, [0, 1], False, False, 1),
        (0, [0, -9], False, False, 1),  # killed by someone else
        (0, [0, -15], True, True, EXIT_INTERRUPTED),  # stopped by us: not a failure
        (0, [0, 3], True, True, EXIT_INTERRUPTED),
        (2, [], False, False, 2),  # a bad study file: create's own code
        (0, [1, 0], False, True, 1),  # a failure outranks the interrupt that came after it
    ],
)
def test_exit_code(
    create_rc: int, codes: list[int], stopped: bool, interrupted: bool, expected: int
) -> None:
    workers = [
        WorkerExit(f"w{i}", None, 100 + i, rc, stopped=stopped) for i, rc in enumerate(codes)
    ]
    result = LaunchResult("s", "sqlite:///x.db", 4, None, workers, interrupted, create_rc)
    assert result.exit_code == expected
    assert [w.name for w in result.failed] == [
        w.name for w in workers if w.returncode != 0 and not stopped
    ]


# --- the command, in-process (usage errors: nothing is started) ----------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --workers N, or --devices"),
        (["--devices", "0,,1"], "empty entry"),
        (["--devices", "0,0,0,0", "--workers", "2"], "but --workers is 2"),
        (["--workers", "3", "--devices", "1,1"], "drop --workers, or list one entry per worker"),
        (["--workers", "0"], "0 is not in the range"),
    ],
)
def test_launch_usage_errors(args: list[str], message: str, make_spec: SpecWriter) -> None:
    result = CliRunner().invoke(main, ["launch", str(make_spec()), *args])
    assert result.exit_code == 2
    assert message in result.output


# --- the launcher with stand-in workers (no torch: fast) -----------------------------------------

FAKE_PYTHON = """#!{python}
# Stands in for `python -m lrsearch.cli create|worker ...`; behaves by its CUDA_VISIBLE_DEVICES.
import os, signal, sys, time
command = sys.argv[3]
if command == "create":
    print("study created (stand-in)")
    sys.exit(0)
device = os.environ.get("CUDA_VISIBLE_DEVICES")
mode = os.environ["FAKE_MODE"]
print("worker on device", device, "storage", os.environ["LRSEARCH_STORAGE"], flush=True)
if mode == "fail" and device == "1":
    print("lrsearch: error: boom on device 1", file=sys.stderr)
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(os.environ["FAKE_READY"], str(os.getpid())), "w").close()
    time.sleep(600)
time.sleep(1.0)
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PYTHON.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def test_a_failing_worker_fails_the_launch_and_is_named(
    fake_python: str,
    make_spec: SpecWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_MODE", "fail")
    url = "postgresql+psycopg://lr:s3cret-pw@127.0.0.1:1/none?connect_timeout=1"
    launcher = Launcher(make_spec(), LaunchOptions(
        n_workers=2, devices=["0", "1"], storage=url, python=fake_python, progress=False,
    ))  # fmt: skip
    result = launcher.run()
    out, err = capsys.readouterr()
    assert [w.returncode for w in result.workers] == [0, 3]  # w0 went on to its end
    assert [w.name for w in result.failed] == ["w1"] and result.exit_code == 1
    assert result.failed[0].describe() == (
        f"worker w1 (pid {result.workers[1].pid}, device 1) exited with code 3: "
        "lrsearch: error: boom on device 1"
    )
    assert "[create] study created (stand-in)" in out
    # Each worker's lines, prefixed, and the password they printed blotted out.
    assert "[w0] worker on device 0 storage postgresql+psycopg://lr:***@127.0.0.1:1/none" in out
    assert "[w1] lrsearch: error: boom on device 1" in err
    assert "s3cret" not in out + err


def test_workers_sharing_one_gpu_are_each_started_on_it(
    fake_python: str,
    make_spec: SpecWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    command = main.get_command(click.Context(main), "launch")
    assert command is not None
    parsed = command.make_context("launch", [str(make_spec()), "--devices", "0,0,0"])
    assert parsed.params["devices"] == ["0", "0", "0"]  # as the CLI reads it
    launcher = Launcher(make_spec(), LaunchOptions(
        n_workers=parsed.params["n_workers"], devices=parsed.params["devices"],
        storage=f"sqlite:///{tmp_path / 'none.db'}", python=fake_python, progress=False,
    ))  # fmt: skip
    result = launcher.run()
    assert result.exit_code == 0 and [w.returncode for w in result.workers] == [0, 0, 0]
    assert len({w.pid for w in result.workers}) == 3
    out = capsys.readouterr().out
    for name in ("w0", "w1", "w2"):
        assert f"[{name}] worker on device 0 " in out


def test_workers_that_ignore_the_stop_are_killed(
    fake_python: str,
    make_spec: SpecWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_MODE", "stubborn")
    ready = tmp_path / "ready"
    ready.mkdir()
    monkeypatch.setenv("FAKE_READY", str(ready))
    launcher = Launcher(make_spec(), LaunchOptions(
        n_workers=2, storage=f"sqlite:///{tmp_path / 'none.db'}",
        python=fake_python, stop_timeout=1.0, progress=False,
    ))  # fmt: skip

    def stop_when_ready() -> None:
        _wait_for(lambda: len(list(ready.iterdir())) == 2, "both workers to ignore SIGTERM")
        launcher.request_stop()

    threading.Thread(target=stop_when_ready, daemon=True).start()
    result = launcher.run()
    assert result.interrupted and result.exit_code == EXIT_INTERRUPTED
    assert all(w.stopped and w.killed and w.returncode == -signal.SIGKILL for w in result.workers)
    assert not result.failed
    assert not [w.pid for w in result.workers if _alive(w.pid)]
    err = capsys.readouterr().err
    assert "stopping 2 worker(s)" in err and "killed w0, w1 after 1 s" in err


# --- real launches of real workers ---------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRSEARCH_STORAGE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def _launch(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lrsearch.cli", "launch", *args],
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def _states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_launch_two_workers_reach_the_budget(
    sqlite_url: str, study_name: str, make_spec: SpecWriter, tmp_path: Path
) -> None:
    spec = make_spec(study_name, study={"n_trials": 6})
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = _launch(
            str(spec), "--workers", "2", "--storage", sqlite_url, env=_env(), stdout=o, stderr=e
        )
        rc = proc.wait(timeout=LAUNCH_TIMEOUT_S)
    stdout, stderr = out.read_text(), err.read_text()
    assert rc == 0, stdout + stderr
    trials = _trials(sqlite_url, study_name)
    states = _states(trials)
    finished = states.get("COMPLETE", 0)
    # The shared budget: met, overshot by at most the other worker's trial in flight.
    assert 6 <= finished <= 7 and finished == len(trials), states
    assert len({t.number for t in trials}) == len(trials)
    summary = f"{finished}/6 finished ({finished} complete, 0 pruned, 0 failed) by 2 worker(s)"
    assert summary in stdout
    # One view: both workers' own lines, prefixed; the processes and the bar on stderr.
    for name in ("w0", "w1"):
        assert f"[{name}] started (pid " in stderr
        assert f"[{name}] this run: " in stdout
    assert "[create] study" in stdout
    assert f"{study_name}: 100%" in stderr


@pytest.fixture
def one_storage_url(tmp_path: Path) -> Iterator[str]:
    """The test PostgreSQL where there is one (a password matters there), else a SQLite file."""
    url = postgres_url()
    if url is None:
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    yield url
    delete_run_studies(url)


def _url_with_password(url: str) -> tuple[str, str]:
    """``url`` with a password (PostgreSQL's trust login ignores it), and the secret to look for:
    the password, or the whole URL where there is none (SQLite)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url, url
    if not parsed.password:
        parsed = parsed.set(password="launch-s3cret-pw")
    return parsed.render_as_string(hide_password=False), str(parsed.password)


def _wait_for(what: Callable[[], bool], why: str, timeout: float = LAUNCH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {why}"
        time.sleep(0.2)


def test_ctrl_c_stops_every_worker_and_leaves_no_trial_running(
    one_storage_url: str, study_name: str, make_spec: SpecWriter, tmp_path: Path
) -> None:
    url, secret = _url_with_password(one_storage_url)
    spec = make_spec(
        study_name,
        study={"n_trials": 4},
        # 8192 one-example steps per epoch, for 100 epochs: a trial lasts until it is stopped.
        task={"entry": "toy_tasks:tiny", "kwargs": {"n_train": 8192}},
        train={"epochs": 100, "batch_size": 1, "eval_every": 0},
    )
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = _launch(
            str(spec), "--workers", "2", env=_env(LRSEARCH_STORAGE=url), stdout=o, stderr=e
        )
    workers: list[int] = []
    try:

        def both_training() -> bool:
            assert proc.poll() is None, err.read_text()
            try:
                return _states(_trials(url, study_name)).get("RUNNING", 0) == 2
            except Exception:  # the study is not there yet
                return False

        _wait_for(both_training, "both workers to start a trial")
        workers = _children(proc.pid)
        assert len(workers) == 2
        for pid in workers:
            # Any user may read a command line; only the owner the environment.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert "worker" in cmdline and secret not in cmdline
            assert secret in Path(f"/proc/{pid}/environ").read_bytes().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=LAUNCH_TIMEOUT_S) == EXIT_INTERRUPTED
    finally:
        if proc.poll() is None:  # a failed test leaves nothing running
            for pid in workers or _children(proc.pid):
                os.killpg(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    assert not [pid for pid in workers if _alive(pid)], "orphan workers"
    trials = _trials(url, study_name)
    states = _states(trials)
    assert "RUNNING" not in states, states
    interrupted = [t for t in trials if t.user_attrs.get(OUTCOME_ATTR) == "interrupted"]
    assert len(interrupted) == 2 and all(t.state == TrialState.FAIL for t in interrupted)
    output = out.read_text() + err.read_text()
    assert "stopping 2 worker(s)" in output
    if secret != url:  # a password (SQLite has none; its URL is printed, as it should be)
        assert secret not in output


@pytest.mark.parametrize(
    ("workers", "env", "cores", "expected"),
    [
        (4, {}, 16, 4),
        (3, {}, 16, 5),
        (8, {}, 2, 1),
        (1, {}, 16, None),  # one worker: torch's own default
        (4, {"OMP_NUM_THREADS": "7"}, 16, None),  # the user's choice wins
        (2, {}, None, 1),
    ],
)
def test_cpu_threads_share_the_cores(
    workers: int, env: dict[str, str], cores: int | None, expected: int | None
) -> None:
    from lrsearch.launch import cpu_threads

    assert cpu_threads(workers, env, cpu_count=cores) == expected


def test_planned_workers_get_their_share_of_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from lrsearch.launch import plan_workers

    # The physical cores this process may use (affinity, hyperthreads once), not os.cpu_count().
    monkeypatch.setattr("lrsearch.threads.physical_cores", lambda: 6)
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    planned = plan_workers(
        study="s", url="sqlite:///x.db", budget=4, n_workers=2, devices=None, base_env={}
    )
    assert [w.env["OMP_NUM_THREADS"] for w in planned] == ["3", "3"]
    mine = plan_workers(
        study="s",
        url="sqlite:///x.db",
        budget=4,
        n_workers=2,
        devices=None,
        base_env={"OMP_NUM_THREADS": "3"},
    )
    assert [w.env["OMP_NUM_THREADS"] for w in mine] == ["3", "3"]
