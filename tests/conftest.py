"""Shared fixtures: one storage fixture over every backend, unique study names, toy study files.

PostgreSQL runs where ``LRSEARCH_TEST_POSTGRES_URL`` names a database (CI sets it), e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``; without it those cases are skipped. Studies a
test creates on PostgreSQL are deleted after it, so the shared database does not grow run after run.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

TESTS_DIR = Path(__file__).resolve().parent
# Study files name toy tasks as "toy_tasks:NAME"; in-process runs import them from here.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

POSTGRES_ENV = "LRSEARCH_TEST_POSTGRES_URL"
# Every study name of this process starts with it: teardown deletes exactly this run's studies.
RUN_PREFIX = f"t{uuid.uuid4().hex[:8]}-"

NameFactory = Callable[[], str]
SpecWriter = Callable[..., Path]


def postgres_url() -> str | None:
    """The test PostgreSQL URL, or None when the tests should skip it."""
    return os.environ.get(POSTGRES_ENV) or None


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of small models (``pytestmark`` of that module).

    On a CPU shared with other jobs, OpenMP threads only wait for each other: two threads made
    the vision tests 8x slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own $LRSEARCH_STORAGE must never receive test studies."""
    monkeypatch.delenv("LRSEARCH_STORAGE", raising=False)


@pytest.fixture(autouse=True)
def _threads_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands under test leave torch's threads alone (as under ``launch``): their default
    follows what else keeps the machine busy (lrsearch.threads), and would add a note to their
    output on a loaded machine only. Tests of that default take this away themselves."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS") or "1")


@pytest.fixture(autouse=True)
def _toy_tasks_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and verify run a stored entry only if allowed (lrsearch.trust): the toy tasks are
    the tests' own. tests/test_trust.py takes this away to see the refusals."""
    monkeypatch.setenv("LRSEARCH_ALLOW_TASKS", "toy_tasks:*")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file of this test."""
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL for each backend: a SQLite file of this test, and the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    url = postgres_url()
    if url is None:
        pytest.skip(f"set {POSTGRES_ENV} to run PostgreSQL tests")
    yield url
    delete_run_studies(url)


def delete_run_studies(url: str) -> None:
    import optuna

    from lrsearch.storage import open_storage

    storage = open_storage(url)
    try:
        for summary in storage.get_all_studies():
            if summary.study_name.startswith(RUN_PREFIX):
                optuna.delete_study(study_name=summary.study_name, storage=storage)
    finally:
        storage.engine.dispose()


@pytest.fixture
def new_name() -> NameFactory:
    """Makes study names unique to this test (and this run, on a shared database)."""

    def make() -> str:
        return f"{RUN_PREFIX}{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def study_name(new_name: NameFactory) -> str:
    """A study name no other test or run uses."""
    return new_name()


def toy_spec_data(name: str, **sections: dict[str, Any] | None) -> dict[str, Any]:
    """The tables of a toy study file; each keyword updates (or adds) a section, a value of None
    removes that key, and a section given as None is dropped."""
    data: dict[str, Any] = {
        "study": {"name": name, "n_trials": 3, "seed": 0},
        "task": {"entry": "toy_tasks:tiny"},
        "groups": {"embed": ["embed"], "body": ["body"], "head": ["head"]},
        "space": {"lr": [1e-4, 1e-1], "freeze": ["embed"]},
        "train": {"epochs": 1, "batch_size": 16, "eval_every": 1},
        "pruner": {"kind": "none"},
        "sampler": {"kind": "random"},
    }
    for section, values in sections.items():
        if values is None:
            data.pop(section, None)
            continue
        table = data.setdefault(section, {})
        for key, value in values.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return data


def to_toml(data: dict[str, Any]) -> str:
    """TOML text for ``data``: top-level tables of scalars, lists and inline tables."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{_key(section)}]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


@pytest.fixture
def make_spec(tmp_path: Path) -> SpecWriter:
    """Writes a toy study file and returns its path.

    ``make_spec(name, train={"epochs": 2})`` updates sections of the toy study (see
    :func:`toy_spec_data`); ``make_spec(text="...")`` writes the text as it is.
    """
    count = 0

    def write(name: str = "toy", *, text: str | None = None, **sections: Any) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / f"study{count}.toml"
        path.write_text(
            text if text is not None else to_toml(toy_spec_data(name, **sections)), encoding="utf-8"
        )
        return path

    return write


@pytest.fixture
def toy_spec() -> Callable[..., Any]:
    """Builds a checked ``StudySpec`` of the toy study: ``toy_spec(name, space={...})``."""
    from lrsearch.spec import StudySpec

    def build(name: str, **sections: Any) -> StudySpec:
        return StudySpec.from_dict(toy_spec_data(name, **sections), source="toy")

    return build


def snapshot_trials(storage: optuna.storages.BaseStorage, name: str) -> list[tuple[Any, ...]]:
    """Everything stored about a study's trials, comparable with ``==``."""
    study = optuna.load_study(study_name=name, storage=storage)
    return [
        (
            t.number,
            t.state.name,
            t.value,
            sorted(t.params.items()),
            json.dumps(t.user_attrs, sort_keys=True),
            sorted(t.intermediate_values.items()),
        )
        for t in study.get_trials(deepcopy=False)
    ]
