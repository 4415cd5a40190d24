"""What a launch starts: each worker's device, command line and environment (nothing runs here).

The storage URL reaches the processes in ``$LRSEARCH_STORAGE``, never on their command lines, and
:func:`redact` blots its password out of any line relayed from them.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STORAGE_ENV = "LRSEARCH_STORAGE"
STORAGE_FILE_ENV = "LRSEARCH_STORAGE_FILE"


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


def path_with(path: str | None, folder: str) -> str:
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
