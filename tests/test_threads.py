"""Torch's CPU threads for training commands: physical cores from a stand-in ``/sys``."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrsearch import threads
from lrsearch.threads import (
    busy_cores,
    default_threads,
    fewer_note,
    parse_cpu_list,
    physical_cores,
    sampled_busy,
    set_threads,
    usable_cpus,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", {0}), ("0-1\n", {0, 1}), ("0,8", {0, 8}), ("0-2,8-9", {0, 1, 2, 8, 9})],
)
def test_parse_cpu_list(text: str, expected: set[int]) -> None:
    assert parse_cpu_list(text) == expected


def _sysfs(root: Path, siblings: dict[int, str]) -> Path:
    for cpu, text in siblings.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(text + "\n", encoding="utf-8")
    return root


# Four logical CPUs: two cores with two hyperthreads each (0 and 2 share one core, 1 and 3).
SMT = {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}


@pytest.mark.parametrize(
    ("siblings", "cpus", "expected"),
    [
        (SMT, {0, 1, 2, 3}, 2),
        (SMT, {0, 2}, 1),  # both threads of one core (taskset -c 0,2)
        (SMT, {0, 1}, 2),  # one thread of each core
        ({0: "0", 1: "1", 2: "2"}, {0, 1, 2}, 3),  # no hyperthreads
        ({0: "0-1", 1: "0-1"}, {0, 1}, 1),
        ({0: "0"}, {0, 1}, 2),  # cpu1's topology unreadable: every CPU counts
        ({0: "garbage", 1: "1"}, {0, 1}, 2),
        ({}, set(), 1),
    ],
)
def test_physical_cores(
    siblings: dict[int, str], cpus: set[int], expected: int, tmp_path: Path
) -> None:
    assert physical_cores(cpus, sysfs=_sysfs(tmp_path, siblings)) == expected


def test_physical_cores_of_this_process() -> None:
    assert 1 <= physical_cores() <= len(usable_cpus())


@pytest.mark.parametrize(
    ("env", "leave_alone"),
    [({"OMP_NUM_THREADS": "4"}, True), ({}, False), ({"OMP_NUM_THREADS": ""}, False)],
)
def test_default_threads(
    env: dict[str, str], leave_alone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "sampled_busy", lambda *a, **k: 0.0)  # the load varies
    assert default_threads(env) == (None if leave_alone else physical_cores())
    assert default_threads(env, cores=4, busy=0) == (None if leave_alone else 4)


def test_fewer_note() -> None:
    assert fewer_note(None, 2) is None and fewer_note(2, 2) is None
    note = fewer_note(1, 2)
    assert note is not None and note.startswith("lrsearch: note: 1 CPU thread(s) of 2 cores")


@pytest.mark.parametrize(
    ("cores", "busy", "threads"),
    [(2, 0, 2), (2, 1, 1), (2, 2, 1), (8, 3, 5), (1, 0, 1)],
)
def test_default_threads_leave_busy_cores_alone(cores: int, busy: int, threads: int) -> None:
    assert default_threads({}, cores=cores, busy=busy) == threads


@pytest.mark.parametrize(
    ("cores", "cpus", "load", "cpu_count", "busy"),
    [
        (2, 2, 0.1, 2, 0),  # a quiet machine
        (2, 2, 1.0, 2, 1),  # one busy-loop process on 2 cores
        (2, 2, 0.6, 2, 1),  # ... started half a minute ago (the average is still rising)
        (2, 2, 7.0, 2, 2),  # at most every core
        (2, 2, 32.0, 64, 1),  # 2 of 64 CPUs (a container's set): its share of the load
        (2, 4, 2.0, 4, 1),  # 2 cores with 2 hyperthreads each, half the CPUs busy
    ],
)
def test_busy_cores(cores: int, cpus: int, load: float, cpu_count: int, busy: int) -> None:
    assert busy_cores(cores, cpus, load=load, cpu_count=cpu_count) == busy


def test_set_threads_refuses_fewer_than_one() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        set_threads(0)


def _stat(ticks: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat with (busy, idle) user-time and idle ticks per CPU."""
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in ticks.items()]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n"


@pytest.mark.parametrize(
    ("after", "cpus", "busy"),
    [
        ({0: (110, 100), 1: (10, 110)}, {0, 1}, 1.0),  # cpu0 busy the whole time, cpu1 idle
        ({0: (105, 105), 1: (15, 105)}, {0, 1}, 1.0),  # half of each
        ({0: (110, 100), 1: (10, 110)}, {1}, 0.0),  # the busy CPU is not this process's
        ({0: (10, 110), 1: (10, 110)}, {0, 1}, 0.0),  # a quiet machine
    ],
)
def test_sampled_busy_counts_other_work_on_this_process_cpus(
    tmp_path: Path, after: dict[int, tuple[int, int]], cpus: set[int], busy: float
) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_stat({0: (100, 100), 1: (10, 100)}))
    waited: list[float] = []

    def sleep(seconds: float) -> None:  # time passes: the kernel's counters move on
        waited.append(seconds)
        stat.write_text(_stat(after))

    assert sampled_busy(cpus, stat=stat, sleep=sleep) == pytest.approx(busy)
    assert waited == [0.1]


def test_sampled_busy_without_proc_stat(tmp_path: Path) -> None:
    assert sampled_busy({0}, stat=tmp_path / "missing", sleep=lambda s: None) is None
    (tmp_path / "odd").write_text("cpu0 x y\n")
    assert sampled_busy({0}, stat=tmp_path / "odd", sleep=lambda s: None) is None


def test_default_threads_measure_the_cpus_when_no_busy_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: {0, 1, 2, 3})  # 2 cores, 2 threads each
    monkeypatch.setattr(threads, "sampled_busy", lambda cpus: 2.0)
    assert default_threads({}, cores=2) == 1
    monkeypatch.setattr(threads, "sampled_busy", lambda cpus: None)  # no /proc: the load average
    monkeypatch.setattr(threads, "busy_cores", lambda cores, cpus: 0)
    assert default_threads({}, cores=2) == 2
