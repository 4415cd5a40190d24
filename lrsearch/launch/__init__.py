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

The parts: :mod:`~lrsearch.launch.plan` (what to start: devices, command lines, environments),
:mod:`~lrsearch.launch.progress` (the study's progress, read and shown),
:mod:`~lrsearch.launch.result` (how the launch ended) and :mod:`~lrsearch.launch.launcher` (the
processes: started, relayed, stopped).
"""

from __future__ import annotations

from lrsearch.launch.launcher import POLL_INTERVAL_S, STOP_TIMEOUT_S, Launcher, LaunchOptions
from lrsearch.launch.plan import (
    STORAGE_ENV,
    STORAGE_FILE_ENV,
    Worker,
    assign_devices,
    child_env,
    cpu_threads,
    parse_devices,
    plan_workers,
    redact,
)
from lrsearch.launch.progress import Progress, ProgressView, progress_of, read_progress
from lrsearch.launch.result import EXIT_INTERRUPTED, LaunchResult, WorkerExit

__all__ = [
    "EXIT_INTERRUPTED",
    "POLL_INTERVAL_S",
    "STOP_TIMEOUT_S",
    "STORAGE_ENV",
    "STORAGE_FILE_ENV",
    "LaunchOptions",
    "LaunchResult",
    "Launcher",
    "Progress",
    "ProgressView",
    "Worker",
    "WorkerExit",
    "assign_devices",
    "child_env",
    "cpu_threads",
    "parse_devices",
    "plan_workers",
    "progress_of",
    "read_progress",
    "redact",
]
