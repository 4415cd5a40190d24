"""Torch's CPU threads for a process that trains (``lrsearch run / worker --threads``).

Torch runs each operation on as many threads as the machine has cores, whatever else runs there:
on a 2-core machine shared with another job a trial measured 7x slower than with one thread, as the
threads wait on each other. The default here leaves a choice already made alone
(``$OMP_NUM_THREADS``, which ``lrsearch launch`` sets for each worker) and otherwise takes one
thread per physical core this process may run on (its CPU affinity, so ``taskset`` and container
CPU sets count) that other work is not already keeping busy (at least one thread): a thread on a
core another process holds makes every parallel operation wait for it. Busy is measured over a
tenth of a second on this process's own CPUs (Linux's ``/proc/stat``), where the 1-minute load
average would still miss a job started seconds ago; elsewhere the load average, scaled to this
process's share of the machine, stands in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

THREADS_ENV = "OMP_NUM_THREADS"
CPU_SYSFS = Path("/sys/devices/system/cpu")
PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.1  # how long the CPUs are watched: 10 of the kernel's 10 ms ticks per CPU


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


def busy_cores(
    cores: int, cpus: int, *, load: float | None = None, cpu_count: int | None = None
) -> int:
    """How many of this process's physical ``cores`` other work keeps busy, from the load average.

    The load is taken as spread evenly over the machine's CPUs: this process's share of it is
    ``load * cpus / cpu_count`` logical CPUs, ``load * cores / cpu_count`` physical cores.

    Args:
        cores: Physical cores this process may run on.
        cpus: Logical CPUs this process may run on.
        load: The 1-minute load average; default ``os.getloadavg()`` (0 where there is none).
        cpu_count: The machine's logical CPUs; default ``os.cpu_count()``.

    Returns:
        That share, rounded, at most ``cores``.
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows)
            load = 0.0
    return _as_cores(load, max(cpu_count or os.cpu_count() or cpus, cpus), cores)


def _as_cores(busy: float, cpus: int, cores: int) -> int:
    """``busy`` of ``cpus`` logical CPUs as physical cores of ``cores``: rounded, at most
    ``cores`` (a core's two busy hyperthreads are one busy core)."""
    return min(cores, int(busy * cores / max(1, cpus) + 0.5))


def _cpu_times(cpus: Collection[int], stat: Path) -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each CPU in ``cpus`` since boot."""
    times: dict[int, tuple[int, int]] = {}
    for line in stat.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(t) for t in rest.split()[:8]]  # user nice system idle iowait irq ...
            idle = ticks[3] + ticks[4]
            times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def sampled_busy(
    cpus: Collection[int],
    *,
    seconds: float = SAMPLE_S,
    stat: Path = PROC_STAT,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """How many of ``cpus`` other processes keep busy now: watched for ``seconds``.

    This process sleeps meanwhile, so the busy time is other work's. ``None`` where the CPU
    times cannot be read (not Linux, a restricted ``/proc``).

    Returns:
        Busy CPUs, as a sum of fractions (one busy loop on one CPU: about 1.0).
    """
    try:
        before = _cpu_times(cpus, stat)
        sleep(seconds)
        after = _cpu_times(cpus, stat)
    except (OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu, (busy_after, total_after) in after.items():
        busy_before, total_before = before.get(cpu, (busy_after, total_after))
        if total_after > total_before:
            busy += (busy_after - busy_before) / (total_after - total_before)
    return busy if after else None


def default_threads(
    env: Mapping[str, str] | None = None,
    *,
    cores: int | None = None,
    busy: int | None = None,
) -> int | None:
    """Torch's threads when ``--threads`` is not given; ``None``: leave torch as it is.

    Args:
        env: The process's environment; default ``os.environ``.
        cores: Physical cores this process may run on; default :func:`physical_cores`.
        busy: Of those, how many other work keeps busy; default :func:`sampled_busy` over
            this process's CPUs, else :func:`busy_cores` (the load average).

    Returns:
        ``None`` when ``$OMP_NUM_THREADS`` is set (torch has read it), else one thread per core
        not busy, at least 1.
    """
    env = os.environ if env is None else env
    if env.get(THREADS_ENV):
        return None
    cores = physical_cores() if cores is None else cores
    if busy is None:
        cpus = usable_cpus()
        now = sampled_busy(cpus)
        busy = busy_cores(cores, len(cpus)) if now is None else _as_cores(now, len(cpus), cores)
    return max(1, cores - busy)


def fewer_note(chosen: int | None, cores: int | None = None) -> str | None:
    """A line for the user when the default took fewer threads than cores (others' work)."""
    cores = physical_cores() if cores is None else cores
    if chosen is None or chosen >= cores:
        return None
    return (
        f"lrsearch: note: {chosen} CPU thread(s) of {cores} cores: other work keeps the rest "
        "busy; --threads N to choose"
    )


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
