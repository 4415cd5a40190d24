"""lrsearch.storage: URLs, masking, SQLite and PostgreSQL settings, creating and resuming."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from conftest import postgres_url, to_toml, toy_spec_data

from lrsearch.cli import main
from lrsearch.errors import LrsearchError, StorageError, StudyMismatchError, StudyNotFoundError
from lrsearch.schema import SPEC_ATTR
from lrsearch.spec import StudySpec
from lrsearch.storage import (
    DEFAULT_URL,
    ENV_VAR,
    SQLITE_BUSY_TIMEOUT_S,
    create_or_resume,
    load_study,
    mask_url,
    open_storage,
    resolve_url,
    stored_spec,
    study_names,
)

SpecBuilder = Callable[..., StudySpec]


def _create(
    storage: optuna.storages.BaseStorage, name: str, spec: StudySpec
) -> tuple[optuna.Study, bool]:
    return create_or_resume(
        storage,
        name,
        spec,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
    )


@pytest.mark.parametrize(
    ("arg", "env", "expected"),
    [
        ("sqlite:///arg.db", "sqlite:///env.db", "sqlite:///arg.db"),
        (None, "sqlite:///env.db", "sqlite:///env.db"),
        (None, None, DEFAULT_URL),
        ("", "sqlite:///env.db", "sqlite:///env.db"),
        ("postgresql://u@h/db", None, "postgresql://u@h/db"),
    ],
)
def test_resolve_url_order(
    monkeypatch: pytest.MonkeyPatch, arg: str | None, env: str | None, expected: str
) -> None:
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)
    assert resolve_url(arg) == expected


@pytest.mark.parametrize(
    ("url", "secret", "expected"),
    [
        ("postgresql://me:s3cret@db:5432/lr", "s3cret", "postgresql://me:***@db:5432/lr"),
        ("postgresql+psycopg://me:hunter2@db/lr", "hunter2", "postgresql+psycopg://me:***@db/lr"),
        # special characters, URL-encoded as they must be
        ("postgresql://me:p%40ss%3Aw%2Frd@db/lr", "p%40ss", "postgresql://me:***@db/lr"),
        # `{` and `}` URL-encoded (Optuna formats the URL with str.format)
        ("postgresql://me:a%7Bb%7Dc@db/lr", "a%7Bb", "postgresql://me:***@db/lr"),
        ("postgresql://me:a{b}c@db/lr", "a{b}c", "postgresql://me:***@db/lr"),
        # unencoded `@` and `/` in the password: the parser sees a different password
        ("postgresql://me:p@ss@db/lr", "p@ss", "postgresql://me:***@db/lr"),
        ("postgresql://me:pa/ss@db/lr", "pa/ss", "postgresql://me:***@db/lr"),
        # unparsable: a port that is no number, no scheme
        ("postgresql://me:topsecret@db:port/lr", "topsecret", "postgresql://me:***@db:port/lr"),
        ("me:topsecret@db/lr", "topsecret", "me:***@db/lr"),
        # a password given as a query parameter
        ("postgresql://db/lr?sslmode=require&password=qq9", "qq9", None),
        # nothing to hide
        ("postgresql://me@db/lr", None, "postgresql://me@db/lr"),
        ("sqlite:///studies/lr.db", None, "sqlite:///studies/lr.db"),
        ("not a url", None, "not a url"),
    ],
)
def test_mask_url(url: str, secret: str | None, expected: str | None) -> None:
    masked = mask_url(url)
    if secret is not None:
        assert secret not in masked
        assert "***" in masked
    if expected is not None:
        assert masked == expected


def test_sqlite_is_wal_with_busy_timeout(sqlite_url: str, tmp_path: Path) -> None:
    storage = open_storage(sqlite_url)
    try:
        with sqlite3.connect(tmp_path / "studies.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        with storage.engine.connect() as connection:
            busy_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
        assert busy_ms == SQLITE_BUSY_TIMEOUT_S * 1000
        assert synchronous == 1  # NORMAL: safe with WAL, and commits skip the fsync
    finally:
        storage.engine.dispose()


def test_sqlite_path_with_braces(tmp_path: Path) -> None:
    # Optuna runs the URL through str.format; a brace in a path must survive it.
    path = tmp_path / "a{b}.db"
    storage = open_storage(f"sqlite:///{path}")
    try:
        optuna.create_study(study_name="x", storage=storage)
        assert path.exists()
    finally:
        storage.engine.dispose()


def test_postgresql_scheme_gets_psycopg() -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("needs LRSEARCH_TEST_POSTGRES_URL")
    plain = "postgresql" + url[url.index("://") :]
    storage = open_storage(plain)
    try:
        assert storage.engine.dialect.driver == "psycopg"
        assert storage.engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        storage.engine.dispose()


@pytest.mark.parametrize(
    ("make_url", "secret", "expected"),
    [
        (lambda d: "not a url", None, "invalid storage URL"),
        (lambda d: "postgresql://me:pw%21x@db:port/lr", "pw", "invalid storage URL"),
        (lambda d: "mongodb://me:mongopw@db/lr", "mongopw", "unsupported storage"),
        (lambda d: "http://example.com/db", None, "unsupported storage"),
        (lambda d: f"sqlite:///{d}/missing/lr.db", None, "does not exist"),
        (lambda d: "sqlite://", None, "in memory"),
        (lambda d: f"sqlite:///{d}/notadb.db", None, "not a usable SQLite database"),
        (lambda d: f"sqlite:///{d}", None, "not a usable SQLite database"),  # a folder
        (lambda d: "postgresql://me:pg%7Bsecret%7D@127.0.0.1:1/lr", "secret", "cannot open"),
        (lambda d: "postgresql+psycopg://me:pgsecret@127.0.0.1:1/lr", "pgsecret", "port 1"),
    ],
)
def test_open_storage_errors(
    tmp_path: Path, make_url: Callable[[Path], str], secret: str | None, expected: str
) -> None:
    (tmp_path / "notadb.db").write_bytes(b"this is not a database, just text " * 100)
    url = make_url(tmp_path)
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    if secret is not None:
        assert secret not in message
        assert secret not in repr(info.value.__cause__ or "")
    assert (tmp_path / "notadb.db").read_bytes().startswith(b"this is not a database")


def test_readers_do_not_create_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(StorageError, match="no database file"):
        open_storage(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_create_stores_the_spec(storage_url: str, study_name: str, toy_spec: SpecBuilder) -> None:
    spec = toy_spec(study_name)
    study, resumed = _create(open_storage(storage_url), study_name, spec)
    assert not resumed
    assert json.loads(study.user_attrs[SPEC_ATTR]) == spec.to_dict()
    assert stored_spec(study) == spec
    assert stored_spec(study).groups.names == ("embed", "body", "head")  # order is meaning
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_the_stored_spec_has_the_studys_own_name(
    storage_url: str, new_name: Callable[[], str], tmp_path: Path
) -> None:
    # `run --study other file.toml`: the study is 'other', and so is the name its spec says.
    file_name, renamed = new_name(), new_name()
    spec_file = tmp_path / "study.toml"
    spec_file.write_text(to_toml(toy_spec_data(file_name)), encoding="utf-8")
    result = CliRunner().invoke(
        main, ["create", str(spec_file), "--storage", storage_url, "--study", renamed]
    )
    assert result.exit_code == 0, result.output
    storage = open_storage(storage_url)
    assert stored_spec(load_study(storage, renamed)).study.name == renamed
    assert file_name not in study_names(storage)
    # The same file again under the same --study resumes it: the name is not part of the search.
    again = CliRunner().invoke(
        main, ["create", str(spec_file), "--storage", storage_url, "--study", renamed]
    )
    assert again.exit_code == 0 and "exists with the same search" in again.stdout


def test_resume_refuses_reordered_groups(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    # A parameter goes to the first group that matches: another order is another search.
    storage = open_storage(storage_url)
    _create(storage, study_name, toy_spec(study_name))
    data = toy_spec_data(study_name)
    data["groups"] = dict(reversed(list(data["groups"].items())))
    with pytest.raises(StudyMismatchError, match="groups"):
        _create(storage, study_name, StudySpec.from_dict(data))


def test_resume_same_search_with_another_budget(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    storage = open_storage(storage_url)
    first, _ = _create(storage, study_name, toy_spec(study_name))
    first.enqueue_trial({})
    bigger = toy_spec(study_name, study={"n_trials": 50, "timeout": 60})
    again, resumed = _create(storage, study_name, bigger)
    assert resumed
    assert again._study_id == first._study_id
    assert len(again.get_trials(deepcopy=False)) == 1
    assert stored_spec(again).study.n_trials == 3  # the stored spec is the first one


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"space": {"lr": [1e-5, 1e-1]}}, "space.lr"),
        ({"train": {"batch_size": 8}}, "train.batch_size"),
        ({"study": {"seed": 1}}, "study.seed"),
        ({"groups": {"rest": ["*"]}}, "groups.rest"),
        ({"task": {"kwargs": {"n_train": 32}}}, "task.kwargs"),
    ],
)
def test_resume_refuses_a_different_search(
    storage_url: str,
    study_name: str,
    toy_spec: SpecBuilder,
    change: dict[str, dict[str, Any]],
    key: str,
) -> None:
    storage = open_storage(storage_url)
    _create(storage, study_name, toy_spec(study_name))
    with pytest.raises(StudyMismatchError) as info:
        _create(storage, study_name, toy_spec(study_name, **change))
    assert key in str(info.value)
    assert study_name in str(info.value)


def test_resume_refuses_a_foreign_study(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    storage = open_storage(storage_url)
    foreign = optuna.create_study(study_name=study_name, storage=storage)
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    start = time.monotonic()
    with pytest.raises(StudyMismatchError, match="not created by lrsearch"):
        _create(storage, study_name, toy_spec(study_name))
    assert time.monotonic() - start < 3  # a study with trials is not waited on
    assert len(foreign.get_trials()) == 1


def test_resume_waits_for_a_concurrent_creator(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    # Another worker has created the study and is about to store its spec.
    spec = toy_spec(study_name)
    storage = open_storage(storage_url)
    creator = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    timer = threading.Timer(
        0.3, lambda: creator.set_user_attr(SPEC_ATTR, json.dumps(spec.to_dict()))
    )
    timer.start()
    try:
        study, resumed = _create(open_storage(storage_url), study_name, spec)
    finally:
        timer.join()
    assert resumed
    assert stored_spec(study) == spec


def test_stored_spec_that_is_not_json(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    storage = open_storage(storage_url)
    study, _ = _create(storage, study_name, toy_spec(study_name))
    study.set_user_attr(SPEC_ATTR, "{not json")
    with pytest.raises(LrsearchError, match="not JSON"):
        stored_spec(study)
    with pytest.raises(StudyMismatchError):
        _create(storage, study_name, toy_spec(study_name))


def test_load_study_missing_lists_the_studies(
    storage_url: str, new_name: Callable[[], str], toy_spec: SpecBuilder
) -> None:
    storage = open_storage(storage_url)
    there = new_name()
    _create(storage, there, toy_spec(there))
    missing = new_name()
    with pytest.raises(StudyNotFoundError) as info:
        load_study(storage, missing)
    assert repr(missing) in str(info.value)
    assert there in str(info.value)
    assert load_study(storage, there).study_name == there
