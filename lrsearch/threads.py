"""Torch's CPU threads for a process that trains (``lrsearch run / worker --threads``).

Torch runs each operation on as many threads as the machine has cores, whatever else runs there:
on a 2-core machine shared with another job a trial measured 7x slower than with one thread, as the
threads wait on each other. The default here leaves a choice already made alone
(``$OMP_NUM_THREADS``, which ``lrsearch launch`` sets for each worker) and otherwise takes one
thread per physical core this process may run on (its CPU affinity, so ``taskset`` and container
CPU sets count).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

THREADS_ENV = "OMP_NUM_THREADS"
CPU_SYSFS = Path("/sys/devices/system/cpu")


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity; every CPU where that is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call (macOS): every CPU
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: Collection[int] | None = None, *, sysfs: Path = CPU_SYSFS) -> int:
    """How many physical cores ``cpus`` span: hyperthreads of one core count once.

    Each CPU's ``topology/thread_siblings_list`` names the logical CPUs of its core; where any of
    them cannot be read (not Linux, a restricted ``/sys``), every CPU counts as a core.

    Args:
        cpus: Logical CPU numbers; default :func:`usable_cpus`.
        sysfs: Linux's CPU folder (a stand-in in tests).

    Returns:
        At least 1.
    """
    cpus = usable_cpus() if cpus is None else set(cpus)
    cores: set[frozenset[int]] = set()
    for cpu in cpus:
        try:
            siblings = (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text()
            cores.add(frozenset(parse_cpu_list(siblings)))
        except (OSError, ValueError):
            return max(1, len(cpus))
    return max(1, len(cores))


def parse_cpu_list(text: str) -> set[int]:
    """The CPUs of a Linux CPU list such as ``0-3,8``.

    Raises:
        ValueError: Not a CPU list.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def default_threads(env: Mapping[str, str] | None = None) -> int | None:
    """Torch's threads when ``--threads`` is not given; ``None``: leave torch as it is.

    Args:
        env: The process's environment; default ``os.environ``.

    Returns:
        ``None`` when ``$OMP_NUM_THREADS`` is set (torch has read it), else :func:`physical_cores`.
    """
    env = os.environ if env is None else env
    return None if env.get(THREADS_ENV) else physical_cores()


def set_threads(threads: int | None) -> int | None:
    """Set torch's CPU threads before training: ``threads``, or :func:`default_threads`.

    Args:
        threads: At least 1, or ``None`` for the default.

    Returns:
        The threads set, or ``None`` where torch was left alone.

    Raises:
        ValueError: ``threads`` below 1 (the CLI refuses it first, as a usage error).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    chosen = default_threads() if threads is None else threads
    if chosen is not None:
        import torch

        torch.set_num_threads(chosen)
    return chosen
