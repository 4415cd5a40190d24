"""Read commands change no file, and no command writes into a file that is not an Optuna database.

Each file is compared byte for byte (and its folder's listing) before and after the command.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner, Result
from conftest import SpecWriter

from lrsearch.cli import main
from lrsearch.errors import StorageError
from lrsearch.search import run_search
from lrsearch.storage import sqlite_file
from lrsearch.storage.sqlite_file import check_sqlite_file, sqlite_failure, tables_of
from lrsearch.training import TrainResult

READERS = [
    ["studies"],
    ["trials", "--study", "s"],
    ["best", "--study", "s"],
    ["export", "--study", "s"],
    ["report", "--study", "s", "-o", "out"],
    ["verify", "--study", "s"],
]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("not a database\n", encoding="utf-8")


FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "foreign": (_foreign, "another program's database (tables: customers)"),
    "empty": (_empty, "is an empty database"),
    "text": (_text, "is not a usable SQLite database"),
}


def _state(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_a_reader_refuses_a_file_that_is_not_a_study_database(
    kind: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make, message = FILES[kind]
    db = tmp_path / "data" / "x.db"
    db.parent.mkdir()
    make(db)
    before = _state(db.parent)
    result = invoke(*args, "--storage", f"sqlite:///{db}")
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert _state(db.parent) == before


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("command", ["run", "create", "worker"])
def test_a_writer_refuses_another_programs_file(
    kind: str, command: str, tmp_path: Path, make_spec: SpecWriter
) -> None:
    make, message = FILES[kind]
    db = tmp_path / "data" / "x.db"
    db.parent.mkdir()
    make(db)
    before = _state(db.parent)
    args = ["worker", "--study", "s"] if command == "worker" else [command, str(make_spec("s"))]
    result = invoke(*args, "--storage", f"sqlite:///{db}")
    if kind == "empty":  # an empty file is an empty database: a study may start in it
        assert command == "worker" or result.exit_code == 0, result.output
        return
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert _state(db.parent) == before


@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_a_missing_file_is_no_database_and_is_not_created(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--storage", f"sqlite:///{tmp_path / 'nope.db'}")
    assert result.exit_code == 1
    assert "no database file" in result.output
    assert not (tmp_path / "nope.db").exists()


def _complete(*args: Any, **kwargs: Any) -> TrainResult:
    return TrainResult(0.5, 4, 1, 0.01, "cpu", "fp32")


@pytest.mark.parametrize("args", READERS[:5], ids=lambda a: a[0])
def test_readers_leave_a_study_database_byte_identical(
    args: list[str],
    tmp_path: Path,
    toy_spec: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "data" / "x.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    run_search(toy_spec("s"), storage=url, n_trials=2, train_fn=_complete)
    conn = sqlite3.connect(db)  # everything into the main file, so only a write could change it
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _state(db.parent)
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--storage", url)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in _state(db.parent).items() if k == "x.db"} == {"x.db": before["x.db"]}


def test_a_reader_keeps_a_plain_optuna_files_journal_mode(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    optuna.create_study(study_name="plain", storage=f"sqlite:///{db}")
    before = _state(tmp_path)
    result = invoke("studies", "--storage", f"sqlite:///{db}")
    assert result.exit_code == 0 and "plain" in result.output
    assert _state(tmp_path) == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", set()), (b"hello", None), (b"SQLite format 3\x00" + b"\x00" * 100, None)],
)
def test_tables_of(content: bytes, expected: set[str] | None, tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    path.write_bytes(content)
    assert tables_of(path) == expected


def test_a_writer_takes_a_file_where_optuna_began_its_tables(tmp_path: Path) -> None:
    # A worker stopped mid-creation: some of Optuna's tables, and SQLite's own sqlite_sequence.
    path = tmp_path / "partial.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY AUTOINCREMENT)")
    conn.execute("INSERT INTO studies DEFAULT VALUES")
    conn.commit()
    conn.close()
    check_sqlite_file(path, "sqlite:///partial.db", create=True)
    with pytest.raises(StorageError, match="another program's database"):
        check_sqlite_file(path, "sqlite:///partial.db", create=False)


def _io_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 4874  # type: ignore[attr-defined]  # SQLITE_IOERR_SHMSIZE
    return error


@pytest.mark.parametrize(
    ("error", "free", "expected"),
    [
        (_io_error(), 0, "the disk is full (0 bytes free in "),
        (OSError(errno.ENOSPC, "No space left on device"), 4096, "the disk is full (4096 bytes"),
        (_io_error(), 10 << 30, "disk I/O error; check --storage"),
        (OSError(errno.EACCES, "Permission denied"), 0, "Permission denied; check --storage"),
        (sqlite3.OperationalError("database is locked"), 0, "database is locked; check --storage"),
    ],
)
def test_a_failure_on_a_full_disk_says_so_and_no_other_does(
    error: Exception, free: int, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)._replace(free=free)
    monkeypatch.setattr(sqlite_file.shutil, "disk_usage", lambda _: usage)
    told = sqlite_failure(error, tmp_path / "x.db", "check --storage")  # type: ignore[arg-type]
    assert told.startswith(expected), told
    assert ("free some space" in told) == expected.startswith("the disk is full")
