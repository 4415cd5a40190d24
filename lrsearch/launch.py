"""``lrsearch launch``: several local worker processes on one study, shown as one view.

The launcher creates (or checks) the study with ``lrsearch create``, then starts ``N`` processes of
``lrsearch worker`` and watches them:

- **Devices.** With devices (``--devices 0,1``) each worker sees one GPU through
  ``CUDA_VISIBLE_DEVICES`` and is told ``--device cuda``. Each entry is one worker's GPU, so an
  entry may repeat (``0,0,0,0``: four workers on GPU 0); a list without repeats is shared
  round-robin by ``--workers`` (see :func:`assign_devices`).
- **Secrets.** The storage URL reaches the processes in ``$LRSEARCH_STORAGE``, never on their
  command lines: any user can read a process's command line (``ps``, ``/proc/<pid>/cmdline``), only
  its owner its environment. Lines relayed from the workers have the password blotted out as well.
- **One view.** The study itself is the source of truth: the launcher reads it from the storage
  about once a second (finished / budget, complete, pruned, failed, running, best) into one tqdm bar
  on stderr, and relays each worker's own lines prefixed ``[w0]``, ``[w1]``, ... (the workers' own
  progress bars are turned off with ``TQDM_DISABLE``).
- **Stopping.** Each worker runs in its own session, so a Ctrl-C in the terminal reaches only the
  launcher, which then sends every worker exactly one SIGTERM (a second signal could cut short the
  worker's own clean-up, which marks its running trial interrupted and re-queues it). Workers get
  :data:`STOP_TIMEOUT_S` seconds, then SIGKILL; a second Ctrl-C kills at once.

A worker that exits non-zero by itself is a failure: the others go on with the study (a fault on one
GPU need not stop the rest) and the launch exits 1 naming it. If the launcher itself is killed with
SIGKILL, its workers carry on to the study's budget on their own and then exit.

POSIX only (sessions and process groups).
"""

from __future__ import annotations

import contextlib
import functools
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

STORAGE_ENV = "LRSEARCH_STORAGE"
STORAGE_FILE_ENV = "LRSEARCH_STORAGE_FILE"
POLL_INTERVAL_S = 1.0
# A worker told to stop interrupts its trial and stores that in a few database writes.
STOP_TIMEOUT_S = 30.0
EXIT_INTERRUPTED = 130
_TAIL_LINES = 5


def parse_devices(text: str) -> list[str]:
    """The devices in ``--devices``: comma-separated GPU indices or UUIDs, one per worker.

    An entry may repeat: ``0,0,1,1`` is two workers on GPU 0 and two on GPU 1.

    Raises:
        ValueError: An empty entry.
    """
    devices = [d.strip() for d in text.split(",")]
    if any(not d for d in devices):
        raise ValueError(f"{text!r} has an empty entry; list GPUs like 0,1,2 (or 0,0 for two on 0)")
    return devices


def assign_devices(n_workers: int | None, devices: Sequence[str] | None) -> list[str | None]:
    """The device of each worker, or ``None`` for each (the worker's default device).

    ``devices`` is read as users write it. A list that names each GPU once is a set of GPUs that
    ``n_workers`` share round-robin (``--workers 8 --devices 0,1``: four on each). A list that
    repeats a GPU already says where every worker goes (``0,0,0,0``: four on GPU 0); a worker count
    that disagrees with it would leave unclear which entries to drop or add, so it is refused.

    Args:
        n_workers: How many workers; default one per entry of ``devices``.
        devices: GPU indices or UUIDs, or ``None`` for no per-worker device.

    Returns:
        One entry per worker: its ``CUDA_VISIBLE_DEVICES``, or ``None``.

    Raises:
        ValueError: Neither is given, a count below 1, or a count that disagrees with a list that
            repeats a GPU.
    """
    if n_workers is None:
        if not devices:
            raise ValueError("give --workers N, or --devices to run one worker per GPU")
        n_workers = len(devices)
    if n_workers < 1:
        raise ValueError(f"--workers must be at least 1, got {n_workers}")
    if not devices:
        return [None] * n_workers
    if len(set(devices)) < len(devices) and n_workers != len(devices):
        raise ValueError(
            f"--devices {','.join(devices)} names a GPU more than once, so it places one worker "
            f"per entry ({len(devices)}), but --workers is {n_workers}; drop --workers, or list "
            "one entry per worker"
        )
    return [devices[i % len(devices)] for i in range(n_workers)]


def redact(text: str, url: str) -> str:
    """``text`` with the password of storage ``url`` (any spelling of it) replaced by ``***``."""
    for form in _password_forms(url):
        text = text.replace(form, "***")
    return text


@functools.lru_cache(maxsize=8)
def _password_forms(url: str) -> tuple[str, ...]:
    from sqlalchemy.engine import make_url

    from lrsearch.masking import url_secrets

    try:
        password = make_url(url).password
    except Exception:  # a URL that does not parse: the storage reports that, masked
        password = None
    # Longest first, so a short spelling never breaks up a longer one; a one- or two-letter
    # password would blot out ordinary words and is left alone.
    forms = url_secrets(url, parsed_password=None if password is None else str(password))
    return tuple(f for f in forms if len(f) >= 3)


@dataclass(frozen=True)
class Worker:
    """One worker process to start: its name, device, command line and environment."""

    index: int
    device: str | None
    argv: tuple[str, ...]
    env: Mapping[str, str]

    @property
    def name(self) -> str:
        return f"w{self.index}"


def child_env(base: Mapping[str, str], url: str, *, device: str | None = None) -> dict[str, str]:
    """The environment of a launched process: ``base`` with the storage URL and the device in it.

    Args:
        base: The launcher's environment.
        url: The storage URL (with its password): passed here, never on a command line.
        device: A GPU index or UUID for ``CUDA_VISIBLE_DEVICES``, or ``None`` to leave it be.
    """
    env = dict(base)
    env[STORAGE_ENV] = url
    env.pop(STORAGE_FILE_ENV, None)  # the URL above is the one; no second source to disagree
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the launcher as they are written
    env["TQDM_DISABLE"] = "1"  # one progress bar, the launcher's
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def plan_workers(
    *,
    study: str,
    url: str,
    budget: int,
    n_workers: int | None,
    devices: Sequence[str] | None,
    python: str = sys.executable,
    base_env: Mapping[str, str] | None = None,
    allow_task: str | None = None,
) -> list[Worker]:
    """The ``lrsearch worker`` processes of a launch (nothing is started).

    ``allow_task``: the task entry of the launch's own study file, which its workers may run
    (``--allow-task``; see :mod:`lrsearch.trust`).

    Raises:
        ValueError: As :func:`assign_devices`.
    """
    from lrsearch.threads import physical_cores

    base = os.environ if base_env is None else base_env
    assigned = assign_devices(n_workers, devices)
    threads = cpu_threads(len(assigned), base, cpu_count=physical_cores())
    workers = []
    for i, device in enumerate(assigned):
        argv = [python, "-m", "lrsearch.cli", "worker", "--study", study, "--n-trials", str(budget)]
        if device is not None:
            argv += ["--device", "cuda"]  # the one GPU it can see; fails loudly without CUDA
        if allow_task is not None:
            argv += ["--allow-task", allow_task]
        env = child_env(base, url, device=device)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        workers.append(Worker(i, device, tuple(argv), env))
    return workers


def _path_with(path: str | None, folder: str) -> str:
    """``$PYTHONPATH`` with ``folder`` at its end."""
    return os.pathsep.join(p for p in (path, folder) if p)


def cpu_threads(n_workers: int, base: Mapping[str, str], *, cpu_count: int | None) -> int | None:
    """Torch's CPU threads per worker: the cores shared out, unless the user set
    ``OMP_NUM_THREADS`` (``None``: leave it be).

    Each torch process takes as many threads as there are cores; N workers on one machine then
    run N x cores threads that wait on each other (measured: a MobileNetV2 step 15x slower).
    Every worker on the machine counts, whichever GPU it has.

    Args:
        n_workers: The workers of the launch.
        base: The launcher's environment.
        cpu_count: The cores to share (:func:`lrsearch.threads.physical_cores`: those this
            process may run on, hyperthreads of one core once); ``None`` if unknown.
    """
    if "OMP_NUM_THREADS" in base or n_workers < 2:
        return None
    return max(1, (cpu_count or 1) // n_workers)


@dataclass(frozen=True)
class Progress:
    """A study's trials by outcome, as read from its storage."""

    finished: int = 0  # counts against the budget: complete, pruned, failed (not interrupted)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0  # queued, e.g. a dead worker's trial re-queued
    best_number: int | None = None
    best_value: float | None = None


def progress_of(trials: Sequence[Any], direction: str) -> Progress:
    """Count ``trials`` (Optuna frozen trials) by outcome and find the best.

    A trial is finished when it counts against the budget, by the search's own rule
    (``lrsearch.storage.counts_against_budget``): an interrupted trial, or a lost one queued again,
    does not; its re-run does.

    Args:
        trials: A study's trials.
        direction: ``"maximize"`` or ``"minimize"``.
    """
    from optuna.trial import TrialState

    from lrsearch.pick import best, metric
    from lrsearch.storage import counts_against_budget, replaced_numbers

    replaced = replaced_numbers(trials)
    counted = {s: 0 for s in TrialState}
    running = waiting = 0
    for t in trials:
        if counts_against_budget(t, replaced):
            counted[t.state] += 1
        running += t.state == TrialState.RUNNING
        waiting += t.state == TrialState.WAITING
    top = best(trials, maximize=direction == "maximize")
    complete, pruned = counted[TrialState.COMPLETE], counted[TrialState.PRUNED]
    failed = counted[TrialState.FAIL]
    return Progress(
        finished=complete + pruned + failed,
        complete=complete,
        pruned=pruned,
        failed=failed,
        running=running,
        waiting=waiting,
        best_number=None if top is None else top.number,
        best_value=None if top is None else metric(top),
    )


def read_progress(storage: Any, study: str) -> Progress:
    """The progress of ``study`` in an Optuna ``storage`` (one read of all its trials)."""
    study_id = storage.get_study_id_from_name(study)
    direction = storage.get_study_directions(study_id)[0].name.lower()
    return progress_of(storage.get_all_trials(study_id, deepcopy=False), direction)


@dataclass
class WorkerExit:
    """How one worker process ended."""

    name: str
    device: str | None
    pid: int
    returncode: int | None = None
    stopped: bool = False  # it exited after the launcher asked it to (not a failure)
    killed: bool = False  # it ignored the stop and was killed
    tail: list[str] = field(default_factory=list)  # its last lines on stderr

    @property
    def failed(self) -> bool:
        return self.returncode not in (0, None) and not self.stopped

    def describe(self) -> str:
        where = f"pid {self.pid}" + (f", device {self.device}" if self.device is not None else "")
        rc = self.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        last = f": {self.tail[-1]}" if self.tail else ""
        return f"worker {self.name} ({where}) {how}{last}"


@dataclass
class LaunchResult:
    """What a launch did: the study's final progress and how each worker ended."""

    study: str
    storage: str  # masked
    budget: int
    progress: Progress | None
    workers: list[WorkerExit]
    interrupted: bool = False
    create_returncode: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[WorkerExit]:
        return [w for w in self.workers if w.failed]

    @property
    def exit_code(self) -> int:
        """1 when the create step or a worker failed, 130 when interrupted, else 0."""
        if self.create_returncode != 0:
            return self.create_returncode if self.create_returncode > 0 else 1
        if self.failed:
            return 1
        return EXIT_INTERRUPTED if self.interrupted else 0

    def text(self) -> str:
        """A few lines for the end of a launch."""
        p = self.progress
        head = f"study {self.study!r} in {self.storage}"
        if p is None:
            return f"{head}: progress unknown (storage unreachable)"
        lines = [
            f"{head}: {p.finished}/{self.budget} finished ({p.complete} complete, {p.pruned} "
            f"pruned, {p.failed} failed) by {len(self.workers)} worker(s) in {self.seconds:.1f} s"
            + (", interrupted" if self.interrupted else "")
        ]
        if p.running or p.waiting:
            lines.append(
                f"{p.running} trial(s) still running, {p.waiting} queued (another worker, or "
                "the next one to start, takes them)"
            )
        if p.best_number is not None:
            lines.append(f"best: trial {p.best_number}, value {p.best_value:.4g}")
        return "\n".join(lines)


class _Proc:
    """A started process and the threads relaying its output."""

    def __init__(self, name: str, device: str | None, popen: subprocess.Popen[str]) -> None:
        self.name = name
        self.popen = popen
        self.exit = WorkerExit(name, device, popen.pid)
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.threads: list[threading.Thread] = []


class Launcher:
    """Starts and watches the worker processes of one launch.

    Args:
        spec_file: The study file (its ``[study] n_trials`` is the budget unless ``n_trials``).
        n_workers: Worker processes; default one per device.
        devices: GPU indices or UUIDs; ``None`` leaves each worker its default device.
        storage: Storage URL; ``None`` resolves as ``lrsearch.storage.resolve_url``.
        study: Study name; default ``[study] name``.
        n_trials: The study's budget of finished trials across all workers.
        poll_interval: Seconds between reads of the study's progress.
        stop_timeout: Seconds a stopped worker gets before SIGKILL.
        progress: Whether to show the progress bar (worker lines are relayed either way).
        python: The interpreter that runs ``lrsearch.cli``.

    Raises:
        SpecError: The study file is invalid (nothing is started).
        ValueError: A bad worker or device count.
    """

    def __init__(
        self,
        spec_file: str | Path,
        *,
        n_workers: int | None,
        devices: Sequence[str] | None = None,
        storage: str | None = None,
        study: str | None = None,
        n_trials: int | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        progress: bool = True,
        python: str = sys.executable,
    ) -> None:
        from lrsearch.spec import load_spec
        from lrsearch.storage import mask_url, resolve_url

        spec = load_spec(spec_file)
        self.spec_file = Path(spec_file)
        self.url = resolve_url(storage)
        self.shown_url = mask_url(self.url)
        self.study = study or spec.study.name
        self.budget = n_trials if n_trials is not None else spec.study.n_trials
        self.workers = plan_workers(
            study=self.study,
            url=self.url,
            budget=self.budget,
            n_workers=n_workers,
            devices=devices,
            python=python,
            allow_task=spec.task.entry,
        )
        # Workers read the spec from the study, not the file: the file's folder, where `run` looks
        # for the task's module too, reaches them on their PYTHONPATH.
        folder = str(self.spec_file.resolve().parent)
        self.workers = [
            replace(w, env={**w.env, "PYTHONPATH": _path_with(w.env.get("PYTHONPATH"), folder)})
            for w in self.workers
        ]
        self.python = python
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.show_progress = progress
        self._lines: queue.Queue[tuple[_Proc, bool, str | None]] = queue.Queue()
        self._signals: list[int] = []  # appended by the signal handler, read by the loop
        self._bar: Any = None
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

    def _show(self, progress: Progress | None, start_finished: int) -> None:
        if not self.show_progress:
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=self.budget,
                initial=start_finished,
                desc=self.study,
                unit="trial",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if progress is None:
            self._bar.set_postfix(storage="unreachable", refresh=True)
            return
        self._bar.total = max(self.budget, progress.finished)
        self._bar.n = progress.finished
        postfix = {
            "complete": progress.complete,
            "pruned": progress.pruned,
            "failed": progress.failed,
            "running": progress.running,
        }
        if progress.waiting:
            postfix["queued"] = progress.waiting
        shown: dict[str, Any] = dict(postfix)
        shown["best"] = "-" if progress.best_value is None else f"{progress.best_value:.4g}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.refresh()

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
            if self._bar is not None:
                self._bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            result.seconds = time.monotonic() - start
        result.progress = self._poll()
        if self._storage is not None:
            self._storage.engine.dispose()
        return result

    def _create(self) -> int:
        """``lrsearch create`` as a process of its own; returns its exit code."""
        argv = [self.python, "-m", "lrsearch.cli", "create", str(self.spec_file)]
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
        self._show(first, 0 if first is None else first.finished)
        live = list(procs)
        seen_signals = 0
        stop_deadline: float | None = None
        next_poll = time.monotonic() + self.poll_interval
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
                    stop_deadline = time.monotonic() + self.stop_timeout
                    self._stop(live)
                else:
                    self._kill(live, "on a second interrupt")
            if stop_deadline is not None and live and time.monotonic() > stop_deadline:
                self._kill(live, f"after {self.stop_timeout:g} s")
                stop_deadline = math.inf
            if time.monotonic() >= next_poll:
                self._show(self._poll(), 0)
                next_poll = time.monotonic() + self.poll_interval
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
