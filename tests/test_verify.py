"""``lrsearch verify``: the winner and the best single-rate trial retrained with fresh seeds.

The quickstart study (real training) serves the end-to-end checks; toy studies with a scripted
trainer check the verdicts, the reference choice and the errors without training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner, Result
from conftest import RUN_PREFIX, snapshot_trials

import lrsearch
from lrsearch.cli import main
from lrsearch.cli.text import fmt
from lrsearch.errors import LrsearchError, StudyNotFoundError, TrialFailure
from lrsearch.search import run_search
from lrsearch.spec import StudySpec, load_spec
from lrsearch.storage import open_storage, trial_lrs
from lrsearch.training import TrainResult
from lrsearch.verify import (
    SCHEMA,
    SEED_BASE,
    is_single_rate,
    stored_verifications,
    summarize,
    verify_attr,
    verify_seeds,
    verify_trial,
)

ROOT = Path(__file__).resolve().parent.parent
SpecBuilder = Callable[..., StudySpec]
# Quickstart trials 0 and 1 are enqueued: one rate for every group, and the per-group config the
# task's docstring measures (~0.86 against ~0.81 for the best single rate).
SINGLE = {"freeze.stem": False, "freeze.body": False, "lr.stem": 1e-3, "lr.body": 1e-3}
SINGLE["lr.head"] = 1e-3
PER_GROUP = {"freeze.stem": True, "freeze.body": False, "lr.body": 1e-4, "lr.head": 1e-2}
QUICK_TRIALS = 8


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


class Quickstart:
    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name

    @property
    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=open_storage(self.url))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Quickstart:
    """The quickstart study, 8 trials with the median pruner, the first two enqueued."""
    url = f"sqlite:///{tmp_path_factory.mktemp('verify') / 'studies.db'}"
    name = f"{RUN_PREFIX}verify-quickstart"
    spec = load_spec(ROOT / "studies" / "quickstart.toml")
    assert spec.pruner.kind == "median"
    run_search(spec, storage=url, study_name=name, n_trials=0, device="cpu")  # creates it
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    study.enqueue_trial(SINGLE)
    study.enqueue_trial(PER_GROUP)
    summary = run_search(spec, storage=url, study_name=name, n_trials=QUICK_TRIALS, device="cpu")
    assert summary.count("complete") >= 2
    return Quickstart(url, name)


def test_verify_on_the_quickstart_prints_and_stores_every_seed(quickstart: Quickstart) -> None:
    study = quickstart.study
    before = repr(snapshot_trials(study._storage, quickstart.name))  # repr: NaN != NaN
    best = study.best_trial
    single = [
        t.number
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        if is_single_rate(trial_lrs(t))
    ]
    assert single == [0]  # sampled rates never coincide: the enqueued trial is the only one

    result = invoke(
        "verify", "--study", quickstart.name, "--storage", quickstart.url, "--seeds", "2"
    )

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "seed 10000" in out and "seed 10001" in out and "verdict: " in out
    stored = stored_verifications(quickstart.study)
    expected = {best.number} if best.number == 0 else {best.number, 0}
    assert expected <= set(stored)
    for number, record in stored.items():
        assert record["schema"] == SCHEMA and record["trial"] == number
        assert record["lrs"] == trial_lrs(study.trials[number])
        assert [r["seed"] for r in record["runs"]] == [SEED_BASE, SEED_BASE + 1]
        for run in record["runs"]:
            assert run["outcome"] == "complete" and 0.0 <= run["value"] <= 1.0
            assert datetime.fromisoformat(run["at"]).tzinfo is not None
            assert run["device"] == "cpu" and run["seconds"] > 0
            assert fmt(run["value"]) in out  # each seed's value is printed
        stats = summarize([r["value"] for r in record["runs"]])
        assert fmt(stats["mean"]) in out and fmt(stats["std"]) in out
    if best.number != 0:
        assert "reference  0" in out and "winner - reference: " in out
    # Verification writes study attributes only.
    assert repr(snapshot_trials(study._storage, quickstart.name)) == before

    # Again with more seeds: the stored runs are read back, only the new seed trains.
    calls: list[tuple[str, int, int]] = []
    again = verify_trial(
        open_storage(quickstart.url),
        quickstart.name,
        seeds=3,
        device="cpu",
        on_run=lambda role, number, run: calls.append((role, number, run["seed"])),
    )
    assert [c["new_runs"] for c in again["configs"]] == [1] * len(expected)
    assert sorted(n for _, n, _ in calls) == sorted(expected)
    assert {s for _, _, s in calls} == {SEED_BASE + 2}
    for config in again["configs"]:
        old = stored[config["trial"]]["runs"]
        assert config["runs"][:2] == old  # values and timestamps as stored
        assert len(stored_verifications(quickstart.study)[config["trial"]]["runs"]) == 3


def test_a_stored_verification_is_shown_without_training(quickstart: Quickstart) -> None:
    storage = open_storage(quickstart.url)
    verify_trial(storage, quickstart.name, trial=1, seeds=2, device="cpu")

    def no_training(*args: Any, **kwargs: Any) -> TrainResult:
        raise AssertionError("a stored run was trained again")

    shown = verify_trial(storage, quickstart.name, trial=1, seeds=2, train_fn=no_training)
    winner, reference = shown["configs"]
    assert (winner["trial"], reference["trial"]) == (1, 0)
    assert winner["new_runs"] == reference["new_runs"] == 0
    assert winner["lrs"] == {"stem": 0.0, "body": 1e-4, "head": 1e-2}
    assert shown["comparison"]["difference"] == pytest.approx(
        winner["stats"]["mean"] - reference["stats"]["mean"]
    )


@pytest.mark.parametrize(
    ("lrs", "single"),
    [
        ({"body": 1e-3, "head": 1e-3}, True),
        ({"body": 1e-3, "head": 1e-3 * (1 + 1e-12)}, True),  # a JSON round trip's last bit
        ({"body": 1e-3, "head": 1.01e-3}, False),
        ({"body": 1e-3}, True),
        ({"body": 0.0, "head": 1e-3}, False),  # a frozen group is not a single rate
        ({"body": 0.0, "head": 0.0}, False),
        ({}, False),
    ],
)
def test_is_single_rate(lrs: dict[str, float], single: bool) -> None:
    assert is_single_rate(lrs) is single


@pytest.mark.parametrize(
    ("k", "taken", "seeds"),
    [
        (1, set(), [10_000]),
        (3, set(), [10_000, 10_001, 10_002]),
        (2, {10_000, 10_002}, [10_001, 10_003]),
        (2, {5, 6}, [10_000, 10_001]),
    ],
)
def test_verify_seeds_skip_the_search_seeds(k: int, taken: set[int], seeds: list[int]) -> None:
    assert verify_seeds(k, taken) == seeds


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 0.7], {"n": 2, "failed": 0, "mean": 0.6, "min": 0.5, "max": 0.7}),
        ([0.5, None, math.nan], {"n": 1, "failed": 2, "mean": 0.5, "std": None}),
        ([None], {"n": 0, "failed": 1, "mean": None, "std": None, "min": None}),
    ],
)
def test_summarize(values: list[float | None], expected: dict[str, Any]) -> None:
    stats = summarize(values)
    for key, value in expected.items():
        assert stats[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    if stats["n"] == 2:
        assert stats["std"] == pytest.approx(math.sqrt(0.02))


# --- toy studies with a scripted trainer: the verdicts ------------------------------------------

TOY_SINGLE = {"freeze.embed": False, "lr.embed": 1e-2, "lr.body": 1e-2, "lr.head": 1e-2}
TOY_PER_GROUP = {"freeze.embed": True, "lr.body": 1e-3, "lr.head": 5e-2}


class Scripted:
    """A trainer whose value depends only on the rates (single rate or not) and the seed."""

    def __init__(self, per_group: Sequence[float | None], single: Sequence[float | None]):
        self.values = {False: list(per_group), True: list(single)}
        self.calls = 0

    def __call__(self, task: Any, groups: Any, sample: Any, cfg: Any, **kw: Any) -> TrainResult:
        self.calls += 1
        value = self.values[is_single_rate(sample.lrs)][kw["seed"] - SEED_BASE]
        if value is None:
            raise TrialFailure("diverged: loss is nan at step 3 (scripted)", diverged=True)
        return TrainResult(value, 4, 1, 0.01, "cpu", "fp32")


def toy_study(
    url: str,
    name: str,
    toy_spec: SpecBuilder,
    *,
    enqueue: Sequence[dict[str, Any]] = (TOY_SINGLE, TOY_PER_GROUP),
    n_trials: int = 2,
    **sections: Any,
) -> None:
    """A toy study whose trials complete with values by rate: the per-group trial wins."""
    spec = toy_spec(name, **sections)
    run_search(spec, storage=url, n_trials=0, device="cpu")
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    for params in enqueue:
        study.enqueue_trial(params)

    def fake(task: Any, groups: Any, sample: Any, cfg: Any, **kw: Any) -> TrainResult:
        return TrainResult(0.5 if is_single_rate(sample.lrs) else 0.9, 4, 1, 0.01, "cpu", "fp32")

    run_search(spec, storage=url, n_trials=n_trials, device="cpu", train_fn=fake)


@pytest.mark.parametrize(
    ("direction", "per_group", "single", "verdict"),
    [
        ("maximize", [0.90, 0.92], [0.80, 0.81], "more than their combined spread"),
        ("maximize", [0.85, 0.95], [0.80, 0.90], "within their combined spread"),
        ("maximize", [0.80, 0.82], [0.85, 0.86], "did not hold up"),
        ("minimize", [0.80, 0.82], [0.90, 0.91], "more than their combined spread"),
        ("minimize", [0.90, 0.92], [0.80, 0.81], "did not hold up"),
        ("maximize", [0.90, None], [0.80, 0.81], "diverged or failed on 1 of 2 seed(s)"),
    ],
)
def test_the_verdict_compares_the_means_with_the_combined_spread(
    sqlite_url: str,
    study_name: str,
    toy_spec: SpecBuilder,
    direction: str,
    per_group: list[float | None],
    single: list[float | None],
    verdict: str,
) -> None:
    toy_study(sqlite_url, study_name, toy_spec, study={"direction": direction})
    trainer = Scripted(per_group, single)

    result = verify_trial(open_storage(sqlite_url), study_name, trial=1, seeds=2, train_fn=trainer)

    assert trainer.calls == 4
    winner, reference = result["configs"]
    assert (winner["trial"], reference["trial"]) == (1, 0)
    assert [r["value"] for r in winner["runs"]] == per_group
    assert verdict in result["verdict"]
    finite = [v for v in per_group if v is not None]
    assert result["comparison"]["difference"] == pytest.approx(
        sum(finite) / len(finite) - sum(single) / len(single)  # type: ignore[arg-type]
    )
    if None in per_group:
        run = winner["runs"][per_group.index(None)]
        assert run["outcome"] == "diverged" and "nan" in run["reason"]


def test_one_seed_has_no_spread_to_judge_by(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    toy_study(sqlite_url, study_name, toy_spec)
    result = verify_trial(
        open_storage(sqlite_url), study_name, seeds=1, train_fn=Scripted([0.9], [0.8])
    )
    assert result["comparison"]["spread"] is None
    assert "more seeds" in result["verdict"]


def test_without_a_single_rate_trial_the_study_has_no_reference(
    storage_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    # Random rates, never one for all groups; the best trial's search value beats every seed.
    toy_study(storage_url, study_name, toy_spec, enqueue=(), n_trials=3)
    result = verify_trial(
        open_storage(storage_url), study_name, seeds=2, train_fn=Scripted([0.7, 0.8], [])
    )
    assert [c["role"] for c in result["configs"]] == ["winner"]
    assert result["comparison"] is None
    assert "has no single-learning-rate trial" in result["verdict"]
    assert "lucky seed" in result["verdict"]  # search value 0.9, verification at most 0.8
    stored = stored_verifications(
        optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    )
    assert [r["value"] for r in stored[result["configs"][0]["trial"]]["runs"]] == [0.7, 0.8]


def test_a_single_rate_winner_is_its_own_reference(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    toy_study(sqlite_url, study_name, toy_spec)
    result = verify_trial(
        open_storage(sqlite_url), study_name, trial=0, seeds=1, train_fn=Scripted([], [0.6])
    )
    assert [c["trial"] for c in result["configs"]] == [0]
    assert "itself trains every group at one rate" in result["verdict"]


def test_verify_is_public_and_validates_seeds(sqlite_url: str, study_name: str) -> None:
    assert lrsearch.verify_trial is verify_trial
    with pytest.raises(LrsearchError, match="seeds must be an integer >= 1, got 0"):
        verify_trial(open_storage(sqlite_url), study_name, seeds=0)
    with pytest.raises(StudyNotFoundError):
        verify_trial(open_storage(sqlite_url), study_name, seeds=1)
    assert verify_attr(7) == "lrsearch.verify.7"


# --- errors through the CLI ----------------------------------------------------------------------


@pytest.fixture
def pruned_only(sqlite_url: str, study_name: str, toy_spec: SpecBuilder) -> str:
    """A toy study whose two trials all diverged (PRUNED): nothing to verify."""

    def diverge(*args: Any, **kwargs: Any) -> TrainResult:
        raise TrialFailure("diverged: loss is nan at step 1 (scripted)", diverged=True)

    run_search(toy_spec(study_name), storage=sqlite_url, n_trials=2, train_fn=diverge)
    return study_name


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--study", "nope"], 1, "no study named 'nope'"),
        ([], 1, "has no complete trial to verify"),
        (["--trial", "1"], 1, "trial 1 of study"),
        (["--trial", "9"], 1, "has no trial 9 (trials: 0..1)"),
        (["--seeds", "0"], 2, "--seeds"),
    ],
)
def test_verify_errors_are_one_line(
    sqlite_url: str, pruned_only: str, args: list[str], code: int, expected: str
) -> None:
    study = ["--study", pruned_only] if "--study" not in args else []
    result = invoke("verify", "--storage", sqlite_url, *study, *args)
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and result.stdout == ""
    if code == 2:  # click's own usage error, like --n-trials 0
        assert "Usage:" in result.stderr and expected in result.stderr
        return
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lrsearch: error: ") and expected in lines[0]
    if args == ["--trial", "1"]:
        assert "is PRUNED, not COMPLETE" in lines[0]


def test_verify_does_not_create_a_database(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = invoke("verify", "--study", "x", "--storage", f"sqlite:///{path}")
    assert result.exit_code == 1 and "no database file" in result.stderr
    assert not path.exists()
