"""Noise-aware winners: lrsearch.retrain.confirm, pick's mean ranking, and what shows it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from lrsearch.cli import main
from lrsearch.errors import LrsearchError
from lrsearch.export import export_config
from lrsearch.pick import Rule, pick, pooled_sd, rank_seeded
from lrsearch.report import collect
from lrsearch.retrain import confirm_study, seed_values
from lrsearch.schema import CONFIRM_ATTR
from lrsearch.search import create_study, run_search, run_worker
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage
from lrsearch.training import TrainResult
from lrsearch.verify import SEED_BASE, verify_attr, verify_trial

SpecBuilder = Callable[..., StudySpec]
T0 = datetime(2026, 1, 1)


def trial(number: int, value: float, seconds: float = 1.0) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=TrialState.COMPLETE,
        value=None,
        values=[value],
        datetime_start=T0,
        datetime_complete=T0 + timedelta(seconds=seconds),
        params={"lr": 1e-3},
        distributions={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


# --- the rule (lrsearch.pick) ---------------------------------------------------------------------

# Trial 0 has the best search value by luck: its retrainings are far worse.
LUCKY = [trial(0, 0.90, 10.0), trial(1, 0.80, 10.0), trial(2, 0.79, 4.0), trial(3, 0.60, 1.0)]
LUCKY_SEEDS: dict[int, list[float | None]] = {
    0: [0.70, 0.72],  # mean 0.773
    1: [0.81, 0.79],  # mean 0.800
    2: [0.80, 0.78],  # mean 0.790, within one seed sd (pooled: 0.064) of 0.800, 2.5x cheaper
}


def test_the_mean_ranks_confirmed_trials_and_only_them() -> None:
    assert pick(LUCKY, maximize=True).number == 0  # by the single search value
    assert pick(LUCKY, maximize=True, seeds=LUCKY_SEEDS).number == 1
    ranked = rank_seeded(LUCKY, LUCKY_SEEDS, maximize=True)
    assert [s.trial.number for s in ranked] == [1, 2, 0]  # trial 3, not confirmed, is out
    assert ranked[0].values == (0.80, 0.81, 0.79) and ranked[0].mean == pytest.approx(0.80)


def test_within_one_seed_sd_picks_the_cheapest_near_the_best_mean() -> None:
    ranked = rank_seeded(LUCKY, LUCKY_SEEDS, maximize=True)
    sd = pooled_sd(ranked)
    assert sd is not None and 0.010 < sd < 0.10  # pooled over the three trials' seeds
    chosen = pick(LUCKY, maximize=True, rule=Rule(within_sd=True), seeds=LUCKY_SEEDS)
    assert chosen.number == 2
    # With a tight spread, trial 2's mean is too far from the best: the best is the pick.
    tight = {0: [0.90, 0.90], 1: [0.80, 0.80], 2: [0.80, 0.80]}
    assert pick(LUCKY, maximize=True, rule=Rule(within_sd=True), seeds=tight).number == 0


def test_a_failed_seed_ranks_a_trial_after_the_stable_ones() -> None:
    seeds: dict[int, list[float | None]] = {0: [0.95, None], 1: [0.80, 0.80]}
    assert [s.trial.number for s in rank_seeded(LUCKY, seeds, maximize=True)] == [1, 0]
    assert pick(LUCKY, maximize=True, seeds=seeds).number == 1


def test_the_mean_ranking_minimizes_too() -> None:
    trials = [trial(0, 0.10), trial(1, 0.20)]
    seeds: dict[int, list[float | None]] = {0: [0.50, 0.50], 1: [0.20, 0.20]}
    assert pick(trials, maximize=False, seeds=seeds).number == 1


def test_within_sd_without_retrained_seeds_is_a_clear_error() -> None:
    with pytest.raises(LrsearchError, match="run `lrsearch confirm` first"):
        pick(LUCKY, maximize=True, rule=Rule(within_sd=True))
    with pytest.raises(LrsearchError, match="give one of them"):
        Rule(within=0.01, within_sd=True)


# --- a study end to end ---------------------------------------------------------------------------


def noisy(
    task: Any, groups: Any, sample: Any, cfg: Any, *, seed: int, report: Any = None, **kw: Any
) -> TrainResult:
    """Value from the rates plus a deterministic 'seed luck'; the search's seeds are lucky."""
    base = 0.5 + 0.05 * math.log10(sample.lrs["head"])
    luck = 0.2 if seed < SEED_BASE else 0.0
    if report is not None:
        report(0, base + luck)
    return TrainResult(base + luck, 1, 1, 0.01, "cpu", "fp32")


@pytest.fixture
def confirmed(storage_url: str, study_name: str, toy_spec: SpecBuilder) -> dict[str, Any]:
    spec = toy_spec(study_name, study={"n_trials": 8}, winner={"reseeds": 2, "top_k": 2})
    summary = run_search(spec, storage=storage_url, device="cpu", train_fn=noisy)
    return {"summary": summary, "url": storage_url, "name": study_name}


def test_run_reserves_the_retrainings_in_the_budget_and_confirms(
    confirmed: dict[str, Any],
) -> None:
    summary, url, name = confirmed["summary"], confirmed["url"], confirmed["name"]
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 4  # 8 - 2 reseeds x 2 top trials
    assert summary.budget == 4
    result = summary.confirmation
    assert result is not None and result["new_runs"] == 4
    assert result["seeds"] == [SEED_BASE, SEED_BASE + 1]
    top2 = sorted(study.trials, key=lambda t: -t.values[0])[:2]
    assert sorted(t["trial"] for t in result["trials"]) == sorted(t.number for t in top2)
    assert study.user_attrs[CONFIRM_ATTR]["trials"] == sorted(t.number for t in top2)
    for t in top2:  # stored as verify stores its runs
        record = study.user_attrs[verify_attr(t.number)]
        assert [r["seed"] for r in record["runs"]] == [SEED_BASE, SEED_BASE + 1]
        assert seed_values(study)[t.number] == pytest.approx([t.values[0] - 0.2] * 2)
    assert "ranked by the mean over seeds" in result["note"]


def test_confirm_again_trains_nothing_and_verify_reuses_the_runs(
    confirmed: dict[str, Any],
) -> None:
    storage, name = open_storage(confirmed["url"]), confirmed["name"]
    again = confirm_study(storage, name, train_fn=noisy)
    assert again["new_runs"] == 0
    assert again["trials"] == confirmed["summary"].confirmation["trials"]
    verified = verify_trial(storage, name, seeds=2, train_fn=noisy)
    assert verified["configs"][0]["new_runs"] == 0


def test_best_export_and_report_use_the_mean_and_say_so(confirmed: dict[str, Any]) -> None:
    url, name = confirmed["url"], confirmed["name"]
    winner = confirmed["summary"].confirmation["trials"][0]["trial"]
    out = CliRunner().invoke(main, ["best", "--study", name, "--storage", url])
    assert out.exit_code == 0, out.output
    assert "mean" in out.output.splitlines()[0]
    assert "ranked by the mean over seeds" in out.output
    record = json.loads(
        CliRunner()
        .invoke(main, ["best", "--study", name, "--storage", url, "--format", "json"])
        .output
    )
    assert record["trial"] == winner and record["seeds"]["n"] == 3
    config = export_config(open_storage(url), name)
    assert config["trial"] == winner and "ranked by the mean" in config["selection"]
    assert config["mean"] == pytest.approx(record["seeds"]["mean"])
    data = collect(url, name)
    assert data.best_number == winner and data.ranking and "mean" in data.ranking


def test_the_cli_confirms_a_study_without_winner_settings(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, study={"n_trials": 3})
    run_search(spec, storage=sqlite_url, device="cpu", train_fn=noisy)
    out = CliRunner().invoke(main, ["confirm", "--study", study_name, "--storage", sqlite_url])
    assert out.exit_code == 1 and "--reseeds N or set [winner] reseeds" in out.output
    # Without --reseeds (or [winner] reseeds) nothing is trained and nothing is stored.
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    assert CONFIRM_ATTR not in study.user_attrs
    out = CliRunner().invoke(
        main,
        ["best", "--study", study_name, "--storage", sqlite_url, "--within-sd"],
    )
    assert out.exit_code == 1 and "run `lrsearch confirm` first" in out.output


def test_a_budget_the_retrainings_fill_is_refused_before_any_write(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, study={"n_trials": 8}, winner={"reseeds": 2, "top_k": 2})
    with pytest.raises(LrsearchError, match="leaves none to search"):
        run_search(spec, storage=sqlite_url, n_trials=4, device="cpu", train_fn=noisy)
    assert optuna.get_all_study_names(open_storage(sqlite_url)) == []


def test_a_worker_searches_within_the_budget_left_by_the_retrainings(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, study={"n_trials": 7}, winner={"reseeds": 1, "top_k": 3})
    create_study(spec, storage=sqlite_url)
    summary = run_worker(sqlite_url, study_name, device="cpu", train_fn=noisy)
    assert summary.budget == 4 and len(summary.outcomes) == 4
    assert summary.confirmation is None  # workers search only; `lrsearch confirm` decides
    result = confirm_study(open_storage(sqlite_url), study_name, train_fn=noisy)
    assert result["new_runs"] == 3 and len(result["trials"]) == 3
