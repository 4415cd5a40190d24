"""No part of a database password is ever shown, whatever the URL's shape (lrsearch.masking).

Every password below is made of tokens (``Zq7x``, ``Wv3k``) found nowhere else, joined by the
characters that break URL parsers; each command's error path must show none of the tokens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SpecWriter

from lrsearch.cli import main
from lrsearch.launch import redact
from lrsearch.masking import hide, mask_url, url_secrets

TOKENS = ("hunter2", "TAIL", "Zq7x", "Wv3k", "Qm5t", "Rj8p")
# 127.0.0.1:1 refuses at once: every command fails on the connection, after parsing the URL.
URLS = [
    "postgresql+psycopg://u:hunter2@TAIL@127.0.0.1:5432/db",  # the issue's: an unencoded @
    "postgresql://u:Zq7x@Wv3k@127.0.0.1:1/db",
    "postgresql://u:Zq7x@Wv3k@TAIL@127.0.0.1:1/db",
    "postgresql://u:Zq7x:Wv3k@127.0.0.1:1/db",  # a colon in the password
    "postgresql://:Zq7xWv3k@127.0.0.1:1/db",  # no user
    "postgresql://u:Zq7x/Wv3k@127.0.0.1:1/db",
    "postgresql://u:Zq7x?Wv3k@127.0.0.1:1/db",
    "postgresql://u:Zq7x#Wv3k@127.0.0.1:1/db",
    "postgresql://u:Zq7x%40Wv3k@127.0.0.1:1/db",  # encoded, as it should be
    "postgresql://u:Zq7x@Wv3k@127.0.0.1:notaport/db",  # does not parse
    "postgresql://127.0.0.1:1/db?password=Zq7x@Wv3k",  # in the query
    "postgresql://127.0.0.1:1/db?sslmode=disable&password=Zq7x;Wv3k",
    "postgresql://127.0.0.1:1/db?password=Zq7x&Wv3k&sslmode=disable",
    "postgresql://u@127.0.0.1:1/db?sslpassword=Qm5tRj8p&PASSWORD=Zq7x",
    "u:Zq7x@Wv3k@127.0.0.1",  # no scheme
]


def _leaks(text: str) -> list[str]:
    return [t for t in TOKENS if t in text]


@pytest.mark.parametrize("url", URLS)
def test_mask_url_hides_every_part(url: str) -> None:
    masked = mask_url(url)
    assert not _leaks(masked), masked
    assert "***" in masked


@pytest.mark.parametrize("url", URLS)
def test_every_secret_is_found(url: str) -> None:
    text = f"connection to {url} failed: {url.partition('://')[2]}"
    assert not _leaks(hide(text, url_secrets(url))), url


def test_the_host_stays_when_nothing_is_ambiguous() -> None:
    assert mask_url("postgresql://u:a@b@db:5432/lr") == "postgresql://u:***@db:5432/lr"
    assert mask_url("postgresql://db/lr?password=x&sslmode=require") == (
        "postgresql://db/lr?password=***&sslmode=require"
    )


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(
    "args",
    [
        ["studies"],
        ["trials", "--study", "s"],
        ["best", "--study", "s"],
        ["export", "--study", "s"],
        ["report", "--study", "s", "-o", "out"],
        ["verify", "--study", "s"],
        ["worker", "--study", "s"],
        ["create", "SPEC"],
        ["run", "SPEC"],
    ],
)
def test_no_command_shows_any_part_of_a_password(
    url: str,
    args: list[str],
    make_spec: SpecWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LRSEARCH_DB_WAIT", "0")
    monkeypatch.chdir(tmp_path)
    args = [str(make_spec("s")) if a == "SPEC" else a for a in args]
    result = CliRunner().invoke(main, [*args, "--storage", url])
    assert result.exit_code != 0
    assert not _leaks(result.output), result.output
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1, result.output


def test_the_issues_url_is_refused_with_the_fix() -> None:
    url = "postgresql+psycopg://u:hunter2@TAIL@127.0.0.1:5432/db"
    result = CliRunner().invoke(main, ["studies", "--storage", url])
    assert result.exit_code == 1
    assert "unencoded '@'" in result.output and "%40" in result.output


def test_launch_shows_no_part_of_a_password(make_spec: SpecWriter, tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:hunter2@TAIL@127.0.0.1:5432/db"
    done = subprocess.run(
        [sys.executable, "-m", "lrsearch.cli", "launch", str(make_spec("s")), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**_env(), "LRSEARCH_STORAGE": url, "LRSEARCH_DB_WAIT": "0"},
    )
    assert done.returncode != 0
    assert not _leaks(done.stdout + done.stderr), done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_launch_redacts_every_spelling() -> None:
    url = "postgresql://u:Zq7x@Wv3k@h/db?sslpassword=Qm5tRj8p"
    assert not _leaks(redact("w0: Zq7x@Wv3k and Wv3k@h and Qm5tRj8p", url))


def _env() -> dict[str, str]:
    import os

    # This checkout's lrsearch (not another installed copy) and the toy tasks.
    tests = Path(__file__).resolve().parent
    paths = [str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_an_sqlite_path_may_hold_at_signs(tmp_path: Path) -> None:
    from lrsearch.storage import open_storage

    folder = tmp_path / "me@a@b"
    folder.mkdir()
    storage = open_storage(f"sqlite:///{folder / 'x@y.db'}")
    storage.engine.dispose()
    assert (folder / "x@y.db").exists()
