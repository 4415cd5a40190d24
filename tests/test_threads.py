"""Torch's CPU threads for training commands: physical cores from a stand-in ``/sys``."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrsearch.threads import (
    default_threads,
    parse_cpu_list,
    physical_cores,
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
def test_default_threads(env: dict[str, str], leave_alone: bool) -> None:
    assert default_threads(env) == (None if leave_alone else physical_cores())


def test_set_threads_refuses_fewer_than_one() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        set_threads(0)
