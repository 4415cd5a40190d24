"""Bad input through the CLI: a non-zero exit, one line that names the problem, and nothing lost.

Each case runs beside a study that already has finished trials, in the same storage (SQLite, and
PostgreSQL where configured); after the case that study's trials are all there and unchanged, and no
new study of this run has appeared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import (
    RUN_PREFIX,
    delete_run_studies,
    postgres_url,
    snapshot_trials,
    to_toml,
    toy_spec_data,
)

from lrsearch.cli import main
from lrsearch.errors import TrialFailure
from lrsearch.search import run_search
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage
from lrsearch.training import TrainResult

KEPT_TRIALS = 3
FAILED_TRIAL = 1


@dataclass(frozen=True)
class Kept:
    """A storage with a study whose trials must survive every case."""

    url: str
    name: str
    storage: optuna.storages.RDBStorage  # one engine for the snapshots of every case


def _train(
    *args: Any, seed: int, report: Callable[[int, float], None], **kwargs: Any
) -> TrainResult:
    # seed = [study] seed (0) + trial number
    if seed == FAILED_TRIAL:
        raise TrialFailure("CUDA out of memory (simulated)")
    value = 0.5 + 0.1 * seed
    report(0, value)
    return TrainResult(value, 1, 1, 0.0, "cpu", "fp32")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def kept(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kept]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('bad') / 'studies.db'}"
    else:
        pg = postgres_url()
        if pg is None:
            pytest.skip("set LRSEARCH_TEST_POSTGRES_URL to run PostgreSQL tests")
        url = pg
    name = f"{RUN_PREFIX}kept-{request.param}"
    spec = StudySpec.from_dict(toy_spec_data(name, study={"n_trials": KEPT_TRIALS}))
    summary = run_search(spec, storage=url, device="cpu", train_fn=_train)
    assert [o.outcome for o in summary.outcomes] == ["complete", "failed", "complete"]
    storage = open_storage(url)
    yield Kept(url, name, storage)
    storage.engine.dispose()
    if request.param == "postgresql":
        delete_run_studies(url)


@dataclass(frozen=True)
class Ctx:
    """What a case may refer to."""

    tmp: Path
    url: str
    kept: str
    fresh: str

    def spec(self, *, text: str | None = None, name: str | None = None, **sections: Any) -> str:
        path = self.tmp / "study.toml"
        data = toy_spec_data(name or self.fresh, **sections)
        path.write_text(text if text is not None else to_toml(data), encoding="utf-8")
        return str(path)

    def run(self, *args: str, **sections: Any) -> list[str]:
        spec = self.spec(**sections)
        return ["run", spec, "--storage", self.url, "--device", "cpu", *args]


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Ctx], list[str]]
    expected: tuple[str, ...]  # each must appear in the error line
    code: int = 1
    usage: bool = False  # click's own usage error (several lines, exit 2)
    secret: str | None = None  # must appear nowhere


CASES = [
    Case(
        "invalid-toml",
        lambda c: ["run", c.spec(text="[study\nname = 'x'\n"), "--storage", c.url],
        ("invalid TOML",),
        code=2,
    ),
    Case("unknown-key", lambda c: c.run(train={"lrate": 0.1}), ("[train] lrate", "unknown key"), 2),
    Case(
        "unknown-section",
        lambda c: c.run(optimizer={"name": "sgd"}),
        ("[optimizer]", "unknown section"),
        2,
    ),
    Case(
        "low-above-high",
        lambda c: c.run(space={"lr": [1e-1, 1e-3]}),
        ("[space] lr", "`low <= high` must hold"),
        2,
    ),
    Case(
        "low-not-positive",
        lambda c: c.run(space={"lr": [0.0, 1e-2]}),
        ("[space] lr", "`low > 0` must hold"),
        2,
    ),
    Case(
        "unmatched-parameters",
        lambda c: c.run(groups={"embed": None, "body": None}, space={"freeze": None}),
        ("match no group", "embed.weight"),
        2,
    ),
    Case(
        "group-matches-nothing",
        lambda c: c.run(groups={"ghost": ["decoder.*"]}),
        ("group 'ghost'", "matches no trainable parameter"),
        2,
    ),
    Case(
        "bad-entry-format",
        lambda c: c.run(task={"entry": "toy_tasks.tiny"}),
        ("[task] entry", "'package.module:function'"),
        2,
    ),
    Case(
        "entry-module-missing",
        lambda c: c.run(task={"entry": "no_such_package.tasks:tiny"}),
        ("cannot import task module 'no_such_package.tasks'",),
    ),
    Case(
        "entry-function-missing",
        lambda c: c.run(task={"entry": "toy_tasks:no_such_task"}),
        ("has no callable 'no_such_task'",),
    ),
    Case(
        "task-kwargs-wrong",
        lambda c: c.run(task={"kwargs": {"n_rows": 3}}),
        ("kwargs", "n_rows"),
        2,
    ),
    Case(
        "task-factory-raises",
        lambda c: c.run(task={"entry": "toy_tasks:exploding_factory"}),
        ("toy_tasks:exploding_factory", "dataset folder /nonexistent is missing"),
    ),
    Case(
        "not-a-task",
        lambda c: c.run(task={"entry": "toy_tasks:not_a_task"}),
        ("toy_tasks:not_a_task", "without"),
    ),
    Case(
        "bad-storage-url",
        lambda c: ["run", c.spec(), "--storage", "postgresql://me:bad%2Fpw@db:port/x"],
        ("invalid storage URL",),
        secret="bad%2Fpw",
    ),
    Case(
        "unsupported-scheme",
        lambda c: ["best", "--study", c.kept, "--storage", "mongodb://me:mongopw@db/x"],
        ("unsupported storage", "mongodb://me:***@db/x"),
        secret="mongopw",
    ),
    Case(
        "unreachable-postgres",
        lambda c: ["studies", "--storage", "postgresql://me:pgpw%7Bx@127.0.0.1:1/x"],
        ("cannot open storage",),
        secret="pgpw",
    ),
    Case(
        "missing-sqlite-folder",
        lambda c: ["run", c.spec(), "--storage", f"sqlite:///{c.tmp}/no/such/dir.db"],
        ("does not exist",),
    ),
    Case(
        "best-missing-study",
        lambda c: ["best", "--study", c.fresh, "--storage", c.url],
        ("no study named", "check --study"),
    ),
    Case(
        "export-missing-study",
        lambda c: ["export", "--study", c.fresh, "--storage", c.url],
        ("no study named",),
    ),
    Case(
        "export-nonexistent-trial",
        lambda c: ["export", "--study", c.kept, "--storage", c.url, "--trial", "99"],
        ("has no trial 99",),
    ),
    Case(
        "export-failed-trial",
        lambda c: ["export", "--study", c.kept, "--storage", c.url, "--trial", str(FAILED_TRIAL)],
        (f"trial {FAILED_TRIAL}", "not COMPLETE"),
    ),
    Case(
        "different-spec-same-name",
        lambda c: c.run(name=c.kept, space={"lr": [1e-3, 1e-1]}),
        ("different search", "space.lr"),
    ),
    Case(
        "missing-spec-file",
        lambda c: ["run", str(c.tmp / "nope.toml"), "--storage", c.url],
        ("nope.toml", "file not found"),
        2,
    ),
    Case(
        "cuda-without-cuda",
        lambda c: [*c.run()[:-2], "--device", "cuda"],
        ("CUDA is not available",),
    ),
    Case(
        "bf16-on-cpu",
        lambda c: c.run(train={"precision": "bf16"}),
        ("precision = 'bf16' needs a CUDA device",),
    ),
    Case(
        "freeze-unknown-group",
        lambda c: c.run(space={"freeze": ["encoder"]}),
        ("[space] freeze", "'encoder' names no group"),
        2,
    ),
    Case("n-trials-zero", lambda c: c.run("--n-trials", "0"), ("--n-trials",), 2, usage=True),
    Case(
        "top-zero",
        lambda c: ["best", "--study", c.kept, "--storage", c.url, "--top", "0"],
        ("--top",),
        2,
        usage=True,
    ),
]


def _ours(storage: optuna.storages.BaseStorage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies() if s.study_name.startswith(RUN_PREFIX)}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, kept: Kept, tmp_path: Path, study_name: str) -> None:
    if case.id == "cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    before = snapshot_trials(kept.storage, kept.name)
    studies = _ours(kept.storage)
    assert len(before) == KEPT_TRIALS

    args = case.args(Ctx(tmp_path, kept.url, kept.name, study_name))
    result = CliRunner().invoke(main, args)

    assert result.exit_code == case.code, result.output
    assert isinstance(result.exception, SystemExit)  # handled: no stray exception
    assert "Traceback" not in result.output
    if case.usage:
        assert "Usage:" in result.stderr
        assert all(e in result.stderr for e in case.expected)
    else:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("lrsearch: error: ")
        for expected in case.expected:
            assert expected in lines[0]
    if case.secret is not None:
        assert case.secret not in result.output
    assert result.stdout == ""

    after = snapshot_trials(kept.storage, kept.name)
    assert after == before
    assert _ours(kept.storage) == studies  # no new study either


def test_the_kept_study_is_what_the_cases_check(kept: Kept) -> None:
    states = [s[1] for s in snapshot_trials(kept.storage, kept.name)]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    study = optuna.load_study(study_name=kept.name, storage=kept.storage)
    assert study.best_value == pytest.approx(0.7)  # trial 2: 0.5 + 0.1 * 2


def test_there_are_enough_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 18
