"""The process side of a launch: start the workers, relay their lines, stop them, wait for them."""

from __future__ import annotations

import contextlib
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from lrsearch.launch.plan import child_env, path_with, plan_workers, redact
from lrsearch.launch.progress import Progress, ProgressView, read_progress
from lrsearch.launch.result import LaunchResult, WorkerExit

POLL_INTERVAL_S = 1.0
# A worker told to stop interrupts its trial and stores that in a few database writes.
STOP_TIMEOUT_S = 30.0
_TAIL_LINES = 5


class _Proc:
    """A started process and the threads relaying its output."""

    def __init__(self, name: str, device: str | None, popen: subprocess.Popen[str]) -> None:
        self.name = name
        self.popen = popen
        self.exit = WorkerExit(name, device, popen.pid)
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.threads: list[threading.Thread] = []


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How to launch: the workers, the study they share, and how the launcher watches them.

    Attributes:
        n_workers: Worker processes; ``None``: one per device.
        devices: GPU indices or UUIDs; ``None`` leaves each worker its default device.
        storage: Storage URL; ``None`` resolves as ``lrsearch.storage.resolve_url``.
        study: Study name; default ``[study] name``.
        n_trials: The study's budget of finished trials across all workers.
        poll_interval: Seconds between reads of the study's progress.
        stop_timeout: Seconds a stopped worker gets before SIGKILL.
        progress: Whether to show the progress bar (worker lines are relayed either way).
        python: The interpreter that runs ``lrsearch.cli``.
    """

    n_workers: int | None
    devices: Sequence[str] | None = None
    storage: str | None = None
    study: str | None = None
    n_trials: int | None = None
    poll_interval: float = POLL_INTERVAL_S
    stop_timeout: float = STOP_TIMEOUT_S
    progress: bool = True
    python: str = sys.executable


class Launcher:
    """Starts and watches the worker processes of one launch.

    Example::

        Launcher("study.toml", LaunchOptions(n_workers=4, storage="sqlite:///s.db")).run()

    Args:
        spec_file: The study file (its ``[study] n_trials`` is the budget unless
            ``options.n_trials``).
        options: The workers, the study and how to watch them.

    Raises:
        SpecError: The study file is invalid (nothing is started).
        ValueError: A bad worker or device count.
    """

    def __init__(self, spec_file: str | Path, options: LaunchOptions) -> None:
        from lrsearch.spec import load_spec
        from lrsearch.storage import mask_url, resolve_url

        spec = load_spec(spec_file)
        self.spec_file = Path(spec_file)
        self.options = options
        self.url = resolve_url(options.storage)
        self.shown_url = mask_url(self.url)
        self.study = options.study or spec.study.name
        self.budget = options.n_trials if options.n_trials is not None else spec.study.n_trials
        self.workers = plan_workers(
            study=self.study,
            url=self.url,
            budget=self.budget,
            n_workers=options.n_workers,
            devices=options.devices,
            python=options.python,
            allow_task=spec.task.entry,
        )
        # Workers read the spec from the study, not the file: the file's folder, where `run` looks
        # for the task's module too, reaches them on their PYTHONPATH.
        folder = str(self.spec_file.resolve().parent)
        self.workers = [
            replace(w, env={**w.env, "PYTHONPATH": path_with(w.env.get("PYTHONPATH"), folder)})
            for w in self.workers
        ]
        self._view = ProgressView(self.study, self.budget, enabled=options.progress)
        self._lines: queue.Queue[tuple[_Proc, bool, str | None]] = queue.Queue()
        self._signals: list[int] = []  # appended by the signal handler, read by the loop
        self._storage: Any = None
        self._unreachable = False

    # -- signals ---------------------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the launch to stop (what Ctrl-C does); a second request kills the workers.

        Safe to call from a signal handler or another thread.
        """
        self._signals.append(signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(signum)

    def _install_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the embedding program handles signals
                break
        return previous

    # -- output ----------------------------------------------------------------------------------

    def _write(self, text: str, *, err: bool) -> None:
        from tqdm import tqdm

        stream: IO[str] = sys.stderr if err else sys.stdout
        # A closed or broken pipe must not stop the launch.
        with contextlib.suppress(OSError, ValueError):
            tqdm.write(redact(text, self.url), file=stream)

    def _note(self, text: str) -> None:
        self._write(f"lrsearch: {text}", err=True)

    # -- processes -------------------------------------------------------------------------------

    def _start(
        self, name: str, device: str | None, argv: Sequence[str], env: Mapping[str, str]
    ) -> _Proc:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # Its own session: a terminal's Ctrl-C reaches the launcher only, which then stops
            # each worker once; and a process group to SIGKILL as a whole if it hangs.
            start_new_session=True,
        )
        proc = _Proc(name, device, popen)
        for stream, err in ((popen.stdout, False), (popen.stderr, True)):
            t = threading.Thread(target=self._pump, args=(proc, stream, err), daemon=True)
            t.start()
            proc.threads.append(t)
        return proc

    def _pump(self, proc: _Proc, stream: IO[str] | None, err: bool) -> None:
        if stream is None:  # pragma: no cover - always piped
            return
        try:
            for line in stream:
                self._lines.put((proc, err, line.rstrip("\r\n")))
        except (OSError, ValueError):  # the pipe closed under us
            pass
        finally:
            self._lines.put((proc, err, None))

    def _relay(self, timeout: float) -> None:
        """Print the lines the processes wrote, waiting up to ``timeout`` for the first."""
        try:
            proc, err, line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if line is not None:
                if err:
                    proc.tail.append(redact(line, self.url))
                self._write(f"[{proc.name}] {line}", err=err)
            try:
                proc, err, line = self._lines.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _signal(proc: _Proc, sig: int, *, group: bool = False) -> None:
        try:
            if group:
                os.killpg(proc.popen.pid, sig)
            else:
                os.kill(proc.popen.pid, sig)
        except (ProcessLookupError, PermissionError):  # already gone
            pass

    def _finish_proc(self, proc: _Proc) -> None:
        for t in proc.threads:
            t.join(timeout=5)
        for stream in (proc.popen.stdout, proc.popen.stderr):
            if stream is not None:
                stream.close()
        proc.exit.tail = list(proc.tail)

    # -- progress --------------------------------------------------------------------------------

    def _poll(self) -> Progress | None:
        from lrsearch.storage import open_storage

        try:
            if self._storage is None:
                self._storage = open_storage(self.url, create=False)
            progress = read_progress(self._storage, self.study)
        except Exception:  # a database restart or a network blip: the view waits, workers go on
            if not self._unreachable:
                self._note(f"cannot read the study from {self.shown_url} (will keep trying)")
            self._unreachable = True
            return None
        self._unreachable = False
        return progress

    # -- the launch ------------------------------------------------------------------------------

    def run(self) -> LaunchResult:
        """Create or check the study, run the workers to the budget (or a stop), and report.

        Returns:
            The final progress and each worker's exit; ``exit_code`` says how the launch ended.
        """
        previous = self._install_handlers()
        start = time.monotonic()
        result = LaunchResult(self.study, self.shown_url, self.budget, None, [])
        try:
            result.create_returncode = self._create()
            if result.create_returncode != 0:
                result.interrupted = bool(self._signals)
                return result
            if self._signals:
                result.interrupted = True
                return result
            procs = self._watch(result)
            result.workers = [p.exit for p in procs]
        finally:
            self._view.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            result.seconds = time.monotonic() - start
        result.progress = self._poll()
        if self._storage is not None:
            self._storage.engine.dispose()
        return result

    def _create(self) -> int:
        """``lrsearch create`` as a process of its own; returns its exit code."""
        argv = [self.options.python, "-m", "lrsearch.cli", "create", str(self.spec_file)]
        argv += ["--study", self.study]
        proc = self._start("create", None, argv, child_env(os.environ, self.url))
        stopped = False
        while proc.popen.poll() is None:
            self._relay(0.1)
            if self._signals and not stopped:
                self._signal(proc, signal.SIGTERM)
                stopped = True
        self._finish_proc(proc)
        self._relay(0)
        return int(proc.popen.returncode)

    def _watch(self, result: LaunchResult) -> list[_Proc]:
        first = self._poll()
        procs = [self._start(w.name, w.device, w.argv, w.env) for w in self.workers]
        for p in procs:
            device = "" if p.exit.device is None else f" on device {p.exit.device}"
            self._write(f"[{p.name}] started (pid {p.popen.pid}){device}", err=True)
        self._view.show(first, 0 if first is None else first.finished)
        live = list(procs)
        seen_signals = 0
        stop_deadline: float | None = None
        next_poll = time.monotonic() + self.options.poll_interval
        while live:
            self._relay(0.1)
            for p in list(live):
                rc = p.popen.poll()
                if rc is None:
                    continue
                live.remove(p)
                self._finish_proc(p)
                p.exit.returncode = rc
                if p.exit.failed:
                    self._note(p.exit.describe())
            if len(self._signals) > seen_signals:
                seen_signals = len(self._signals)
                result.interrupted = True
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + self.options.stop_timeout
                    self._stop(live)
                else:
                    self._kill(live, "on a second interrupt")
            if stop_deadline is not None and live and time.monotonic() > stop_deadline:
                self._kill(live, f"after {self.options.stop_timeout:g} s")
                stop_deadline = math.inf
            if time.monotonic() >= next_poll:
                self._view.show(self._poll(), 0)
                next_poll = time.monotonic() + self.options.poll_interval
        self._relay(0)
        return procs

    def _stop(self, live: list[_Proc]) -> None:
        if live:
            self._note(
                f"stopping {len(live)} worker(s); each marks its running trial interrupted "
                "(interrupt again to kill them now)"
            )
        for p in live:
            p.exit.stopped = True
            self._signal(p, signal.SIGTERM)

    def _kill(self, live: list[_Proc], why: str) -> None:
        for p in live:
            p.exit.stopped = p.exit.killed = True
            self._signal(p, signal.SIGKILL, group=True)
        if live:
            names = ", ".join(p.name for p in live)
            self._note(
                f"killed {names} {why}; a trial they were running stays RUNNING until the "
                "heartbeat grace period fails it"
            )
